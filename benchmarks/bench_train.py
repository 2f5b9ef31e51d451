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

``--interleave`` compares speed options of one training step in ONE process, alternating the variants step by
step (A, B, C, A, B, C, ...) so that a loaded machine slows them alike, and reports medians and their ratio to
the first variant; ``--discriminator`` splits a texture step into its parts; ``--decode`` times reading and
preprocessing training images (the data loading a step waits for without workers):

    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --interleave base channels-last compile threads2 --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --discriminator --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --decode /work/shared/data/scenes/train
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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


def worker(stage: str, preset: str, precision: str, steps: int, batch: int, out: str, data: str = "",
           recipe: str = "faces", workers: int = 0) -> None:
    from pyinpaint.data import ImageFolder
    from pyinpaint.train.loop import TrainArgs, resolve_device, train

    device = resolve_device("auto")
    task, size = _task(stage, preset, device)
    args = TrainArgs(out=out, steps=steps + 1, batch_size=batch, log_every=1, val_every=10**9, ckpt_every=10**9,
                     device=str(device), precision=precision, ema_decay=0.9997, workers=workers)
    images = ImageFolder(data, size=size, recipe=recipe) if data else RandomImages(2 * batch, size)
    train(task, images, None, args, device=device, progress=False)


def measure(stage: str, preset: str, procs: int, precision: str, steps: int, batch: int, data: str = "",
            recipe: str = "faces", workers: int = 0) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "run")
        cmd = [__file__, "--worker", stage, preset, precision, str(steps), str(batch), out, data, recipe, str(workers)]
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


VARIANTS = {  # name: (StepContext options, threads)
    "base": ({}, 1),
    "channels-last": ({"channels_last": True}, 1),
    "compile": ({"compile": True}, 1),
    "compile+channels-last": ({"compile": True, "channels_last": True}, 1),
    "threads2": ({}, 2),
}


def _context(task, device: torch.device, **options):
    from pyinpaint.train.loop import Distributed, StepContext

    ctx = StepContext(device, "fp32", 1, Distributed(), task.optimizers(), **options)
    task.distribute(ctx)
    return ctx


def _timed_step(task, ctx, x: torch.Tensor, step: int, threads: int) -> float:
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        ctx.begin(step, [(ctx.batch_format(x), step * x.shape[0])])
        task.train_step(ctx)
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(1)


def interleave(stages, preset: str, variants: list[str], rounds: int, batch: int) -> None:
    """Each variant its own task (same initial weights); one untimed step each (compiles), then ``rounds``
    rounds of one timed step per variant in turn."""
    device = torch.device("cpu")
    torch.set_num_threads(1)
    print(f"one process, interleaved, batch {batch}, {rounds} rounds, load: {os.getloadavg()[0]:.1f}")
    print("| stage | variant | first step s | median step s | images/s | vs " + variants[0] + " |")
    print("|---|---|---|---|---|---|")
    for stage in stages:
        tasks, first = {}, {}
        for name in variants:
            options, threads = VARIANTS[name]
            task, size = _task(stage, preset, device)
            ctx = _context(task, device, **options)
            x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
            first[name] = _timed_step(task, ctx, x, 0, threads)
            tasks[name] = (task, ctx, threads)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(rounds):
            for name in variants:
                task, ctx, threads = tasks[name]
                times[name].append(_timed_step(task, ctx, x, r + 1, threads))
        base = statistics.median(times[variants[0]])
        for name in variants:
            med = statistics.median(times[name])
            print(f"| {stage} | {name} | {first[name]:.2f} | {med:.3f} | {batch / med:.2f} | {base / med:.2f}x |",
                  flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


def discriminator_share(preset: str, rounds: int, batch: int) -> None:
    """The parts of a texture step, interleaved: the whole step, and the discriminator's own forward + backward
    as the step runs it (once on the completions in the generator step, once on real + completed images)."""
    from pyinpaint.models.texture import hinge_d_loss

    device = torch.device("cpu")
    torch.set_num_threads(1)
    task, size = _task("texture", preset, device)
    ctx = _context(task, device)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    m = task.masks.batch(0, batch, device=device)
    d = task.model.discriminator

    def d_parts() -> float:
        t = time.perf_counter()
        comp = x.clone().requires_grad_(True)
        (-d(comp, m, update_u=True).mean()).backward()  # generator step: D on the completions, grad to the input
        logits = d(torch.cat([x, x]), torch.cat([m, m]), update_u=True)  # discriminator step: real + fake
        hinge_d_loss(*logits.chunk(2)).backward()
        d.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    _timed_step(task, ctx, x, 0, 1)
    d_parts()
    step_t, d_t = [], []
    for r in range(rounds):
        step_t.append(_timed_step(task, ctx, x, r + 1, 1))
        d_t.append(d_parts())
    s, dd = statistics.median(step_t), statistics.median(d_t)
    print(f"texture {preset}, batch {batch}, {rounds} rounds, load {os.getloadavg()[0]:.1f}: step {s:.3f} s, "
          f"discriminator forward+backward {dd:.3f} s = {100 * dd / s:.0f}% of the step")


def decode_cost(folder: str, size: int, n: int) -> None:
    """Seconds per image to read, decode and preprocess training images (the ImageFolder the CLI trains on)."""
    from pyinpaint.data import ImageFolder

    torch.set_num_threads(1)
    for recipe in ("faces", "scenes"):
        ds = ImageFolder(folder, size=size, recipe=recipe, seed=0)
        k = min(n, len(ds))
        t = time.perf_counter()
        for i in range(k):
            ds[i]
        per = (time.perf_counter() - t) / k
        print(f"{folder} ({len(ds)} images) at {size}px, recipe {recipe}: {1000 * per:.2f} ms per image "
              f"(mean of {k}), load {os.getloadavg()[0]:.1f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        stage, preset, precision, steps, batch, out, data, recipe, workers = sys.argv[2:11]
        worker(stage, preset, precision, int(steps), int(batch), out, data, recipe, int(workers))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--presets", nargs="+", default=["small"])
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up step)")
    p.add_argument("--batch", type=int, default=8, help="global batch (the paper's 8)")
    p.add_argument("--data", default="", help="train on this image folder (ImageFolder) instead of images in memory")
    p.add_argument("--recipe", default="faces", choices=["faces", "scenes"], help="the preprocessing of --data")
    p.add_argument("--workers", nargs="+", type=int, default=[0], help="data loader workers (with --data)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run the cases this many times, interleaved, and report the median images/s")
    p.add_argument("--interleave", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                   help=f"compare speed options in one process, interleaved ({', '.join(VARIANTS)}; the first is "
                        "the reference)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per variant with --interleave / --discriminator")
    p.add_argument("--discriminator", action="store_true", help="the discriminator's share of a texture step")
    p.add_argument("--decode", metavar="FOLDER", help="time decoding + preprocessing the images of FOLDER")
    p.add_argument("--decode-size", type=int, default=128, help="training resolution for --decode (default 128)")
    a = p.parse_args()
    if a.interleave or a.discriminator or a.decode:
        if a.decode:
            decode_cost(a.decode, a.decode_size, 200)
        if a.discriminator:
            discriminator_share(a.presets[0], a.rounds, a.batch)
        if a.interleave:
            interleave(a.stages, a.presets[0], a.interleave, a.rounds, a.batch)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}, global batch {a.batch}, {a.steps} timed steps, OMP_NUM_THREADS=1 per process", end="")
    data = f", data {a.data} ({a.recipe})" if a.data else ""
    print(f"{data}, {a.repeat} interleaved repeat(s), load {os.getloadavg()[0]:.1f}")
    print("| stage | preset | processes | precision | workers | images/s |")
    print("|---|---|---|---|---|---|")
    cases = [(stage, preset, precision, procs, workers) for preset in a.presets for stage in a.stages
             for precision in a.precisions for procs in a.procs for workers in a.workers]
    results: dict[tuple, list[float]] = {case: [] for case in cases}
    for _ in range(a.repeat):  # A, B, A, B, ...: a load that changes slows every case alike
        for case in cases:
            stage, preset, precision, procs, workers = case
            results[case].append(measure(stage, preset, procs, precision, a.steps, a.batch, a.data, a.recipe, workers))
    for (stage, preset, precision, procs, workers), ips in results.items():
        print(f"| {stage} | {preset} | {procs} | {precision} | {workers} | {statistics.median(ips):.2f} |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
