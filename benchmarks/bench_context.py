"""Structure sampling with the known-code context (issue 16) against the full cached sampler, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_context.py [--models paper,faces-128] [--n 1,10] [--rounds 1]
        [--targets 0.1,0.25,0.5] [--masks DIR] [--json OUT.json]

For each model: the PixelCNN (``paper``: ``structure_preset("paper")`` with random weights, the cost does not depend
on them; ``faces-128``: the shipped model) and its VQ encoder (``paper``: ``vqvae_preset("paper")``, random), holes
of 10 / 25 / 50 % of the image (a centre box, and the NVIDIA mask of ``--masks`` block 1-10 %, 20-30 %, 40-50 %
whose hole is nearest to the target; skipped when the folder is missing), n = 1 and 10 samples as one batch:

- ``full``: ``sample_cached`` with no context (every position drawn: today's default);
- ``known``: ``sample_cached`` with ``Inpainter.known_codes``'s context (exact receptive field of the top codes):
  the fraction of codes known, the fraction of positions run (up to the last drawn one), the time, the speed-up
  over ``full``. Per mask, ``full`` and ``known`` run back to back (pairs: a loaded machine drifts), after one
  warm-up sampling per model and n (the first call pays for allocations and oneDNN's primitive set-up).

Times are the minimum over ``--rounds`` of the process's CPU time (``time.process_time``: with one thread it
counts only this process's work, so other processes on a loaded machine disturb it far less than the wall clock,
which is printed too); h and the context are made outside the timer, the context's cost (one VQ encoder pass and
the receptive field) is timed separately as ``ctx``. Figures: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pyinpaint.config import structure_preset, vqvae_preset
from pyinpaint.inpainter import DEFAULT_MODEL
from pyinpaint.models.structure import PixelCNN
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.sampler import Context, sample_cached

TARGETS = (0.10, 0.25, 0.50)
NVIDIA_BLOCKS = {0.10: range(0, 2000), 0.25: range(4000, 6000), 0.50: range(8000, 10000)}
MASKS = Path("/work/shared/data/masks/nvidia-irregular-256")


def load(name: str):
    """(pixelcnn, vq encoder, codebook, image size) of a model: 'paper' (random) or a model directory name."""
    if name == "paper":
        torch.manual_seed(0)
        st, vq = structure_preset("paper", dropout=0.0), vqvae_preset("paper")
        return PixelCNN(st).eval(), VQVAE(vq).eval().encoder, torch.randn(st.num_embeddings, st.embedding_dim), 256
    from pyinpaint.modelfile import load_model

    model = load_model(DEFAULT_MODEL if name == "faces-128" else name, "cpu")
    return model.structure.pixelcnn.eval(), model.vqvae.encoder.eval(), model.codebook, model.image_size


def centre_box(size: int, frac: float) -> torch.Tensor:
    side = int(round(size * frac ** 0.5))
    a = (size - side) // 2
    m = torch.zeros(1, 1, size, size)
    m[..., a:a + side, a:a + side] = 1
    return m


def nvidia_mask(frac: float, size: int, scan: int = 200) -> tuple[str, torch.Tensor] | None:
    """The mask of the block around ``frac`` (first ``scan`` files, no border holes) whose hole is nearest to it."""
    if not MASKS.is_dir():
        return None
    best = None
    for i in list(NVIDIA_BLOCKS[frac])[:scan]:
        path = MASKS / f"{i:05d}.png"
        a = np.asarray(Image.open(path).convert("L")) > 0
        d = abs(a.mean() - frac)
        if best is None or d < best[0]:
            best = (d, path.name, a)
    m = torch.from_numpy(best[2]).float()[None, None]
    return best[1], F.adaptive_max_pool2d(m, (size, size)) if m.shape[-1] != size else m


def timed(fn, rounds: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of fn, the round with the least CPU time."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        best = min(best, (time.process_time() - c0, time.perf_counter() - t0))
    return best


def run(name: str, ns: list[int], rounds: int, targets: list[float]) -> list[dict]:
    net, enc, codebook, size = load(name)
    s = size // 8
    masks = [(f"centre {int(f * 100)}%", centre_box(size, f)) for f in targets]
    for f in targets:
        got = nvidia_mask(f, size)
        if got is not None:
            masks.append((f"nvidia {got[0]}", got[1]))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    rows = []
    for n in ns:
        h = torch.randn(n, net.blocks[0].cond.in_ch // 2, s, s, generator=g)
        warm = torch.ones(s, s, dtype=torch.bool)
        warm[1] = False  # row 0 prefilled, row 1 drawn, then stop: every path once
        sample_cached(net, h, codebook, seed=0, context=Context(torch.zeros(s, s, dtype=torch.int64), warm))
        print(f"{name} n={n}:", flush=True)
        for label, m in masks:
            t0 = time.process_time()
            with torch.inference_mode():
                codes = enc(image * (1 - m), update_codebooks=False).idx_t[0]
                known = ~enc.top_reach(m)[0]
            ctx_s = time.process_time() - t0
            drawn = (~known).flatten().nonzero()
            run_frac = (int(drawn[-1]) + 1) / (s * s) if len(drawn) else 0.0
            full, full_wall = timed(lambda: sample_cached(net, h, codebook, seed=0), rounds)
            t, wall = timed(lambda: sample_cached(net, h, codebook, seed=0, context=Context(codes, known)), rounds)
            row = dict(model=name, n=n, mask=label, hole=round(float(m.mean()), 3),
                       known=round(float(known.float().mean()), 3), run=round(run_frac, 3), full_s=round(full, 3),
                       known_s=round(t, 3), ctx_s=round(ctx_s, 3), speedup=round(full / t, 2),
                       full_wall_s=round(full_wall, 2), known_wall_s=round(wall, 2))
            rows.append(row)
            print(f"  {label:18s} hole {row['hole']:.2f}  known {row['known']:.2f}  run {row['run']:.2f}  "
                  f"full {full:.2f} s CPU ({full_wall:.1f} s wall)  known-context {t:.2f} s CPU (+ctx {ctx_s:.3f} s; "
                  f"{wall:.1f} s wall)  x{full / t:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="paper,faces-128")
    ap.add_argument("--n", default="1,10")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--targets", default="0.1,0.25,0.5", help="hole fractions (of 0.1, 0.25, 0.5)")
    ap.add_argument("--masks", default="/work/shared/data/masks/nvidia-irregular-256",
                    help="NVIDIA mask folder (skipped when missing)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    global MASKS
    MASKS = Path(a.masks)
    torch.set_grad_enabled(False)
    rows = []
    for name in a.models.split(","):
        rows += run(name, [int(v) for v in a.n.split(",")], a.rounds, [float(v) for v in a.targets.split(",")])
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
