"""Training throughput (images per second) of each stage through the real training loop: presets, processes
(torchrun DDP), precision.

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py                      # small preset, 1 vs 2 processes, fp32
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --presets small paper --precisions fp32 bf16

Each case runs in its own process group (``torchrun --standalone`` for 2+ processes) on random images held in
memory (no files, no data loading cost), random initial weights, one warm-up step then ``--steps`` timed steps
at the global ``--batch`` (each process takes batch / processes). The time is that of the loop's own log
(between the log line after the warm-up step and the last one), so it covers everything a training step does:
data order, masks, forward and backward, DDP all-reduce, optimiser, EMA. Figures and their meaning:
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset

STAGES = ("vqvae", "structure", "texture")


class RandomImages(Dataset):
    def __init__(self, n: int, size: int):
        self.x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _task(stage: str, preset: str, device: torch.device):
    from pyinpaint.config import structure_preset, texture_preset, vqvae_preset
    from pyinpaint.masks import make_mask_source
    from pyinpaint.models.vqvae import VQVAE

    torch.manual_seed(0)
    vq_cfg = vqvae_preset(preset)
    if stage == "vqvae":
        from pyinpaint.train.vqvae import VQVAETask

        return VQVAETask(vq_cfg, device=device), vq_cfg.image_size
    vq = VQVAE(vq_cfg)
    masks = make_mask_source("random", vq_cfg.image_size)
    if stage == "structure":
        from pyinpaint.train.structure import StructureTask

        cfg = structure_preset(preset, image_size=vq_cfg.image_size, embedding_dim=vq_cfg.embedding_dim,
                               num_embeddings=vq_cfg.num_embeddings)
        return StructureTask(cfg, vq, masks, masks, device=device), vq_cfg.image_size
    from pyinpaint.train.texture import TextureTask

    cfg = texture_preset(preset, image_size=vq_cfg.image_size, embedding_dim=vq_cfg.embedding_dim)
    return TextureTask(cfg, vq, masks, masks, device=device), vq_cfg.image_size


def worker(stage: str, preset: str, precision: str, steps: int, batch: int, out: str) -> None:
    from pyinpaint.train.loop import TrainArgs, resolve_device, train

    device = resolve_device("auto")
    task, size = _task(stage, preset, device)
    args = TrainArgs(out=out, steps=steps + 1, batch_size=batch, log_every=1, val_every=10**9, ckpt_every=10**9,
                     device=str(device), precision=precision, ema_decay=0.9997)
    train(task, RandomImages(2 * batch, size), None, args, device=device, progress=False)


def measure(stage: str, preset: str, procs: int, precision: str, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        cmd = [__file__, "--worker", stage, preset, precision, str(steps), str(batch), out]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *cmd]
        else:
            cmd = [sys.executable, *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if res.returncode != 0:
            raise RuntimeError(f"{stage} {preset} x{procs} {precision} failed:\n{res.stderr[-2000:]}")
        log = [json.loads(ln) for ln in (Path(out) / "log.jsonl").read_text().splitlines()]
    seconds = log[-1]["seconds"] - log[0]["seconds"]  # after the warm-up step to the last
    return steps * batch / seconds


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        stage, preset, precision, steps, batch, out = sys.argv[2:8]
        worker(stage, preset, precision, int(steps), int(batch), out)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--presets", nargs="+", default=["small"])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    p.add_argument("--batch", type=int, default=8, help="global batch (the paper's 8)")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, global batch {a.batch}, {a.steps} timed steps, OMP_NUM_THREADS=1 per process")
    print("| stage | preset | processes | precision | images/s |")
    print("|---|---|---|---|---|")
    for preset in a.presets:
        for stage in a.stages:
            for precision in a.precisions:
                for procs in a.procs:
                    ips = measure(stage, preset, procs, precision, a.steps, a.batch)
                    print(f"| {stage} | {preset} | {procs} | {precision} | {ips:.2f} |", flush=True)


if __name__ == "__main__":
    main()
