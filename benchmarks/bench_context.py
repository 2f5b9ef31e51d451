"""Structure sampling with the known-code context (issue 16) against the full cached sampler, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_context.py [--models paper,faces-128] [--n 1,10] [--rounds 1]
        [--masks DIR] [--json OUT.json]

For each model: the PixelCNN (``paper``: ``structure_preset("paper")`` with random weights, the cost does not depend
on them; ``faces-128``: the shipped model) and its VQ encoder (``paper``: ``vqvae_preset("paper")``, random), holes
of 10 / 25 / 50 % of the image (a centre box, and the NVIDIA mask of ``--masks`` block 1-10 %, 20-30 %, 40-50 %
whose hole is nearest to the target; skipped when the folder is missing), n = 1 and 10 samples as one batch:

- ``full``: ``sample_cached`` with no context (every position drawn: today's default), once per n (its cost does
  not depend on the mask);
- ``known``: ``sample_cached`` with ``Inpainter.known_codes``'s context (exact receptive field of the top codes),
  per mask: the fraction of codes known, the fraction of positions run (up to the last drawn one), the time, the
  speed-up over ``full``.

Times are the minimum over ``--rounds`` (h and the context are made outside the timer; the context's cost, one VQ
encoder pass, is timed separately as ``ctx s``). Figures: docs/benchmarks.md.
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


def timed(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(name: str, ns: list[int], rounds: int) -> list[dict]:
    net, enc, codebook, size = load(name)
    s = size // 8
    masks = [(f"centre {int(f * 100)}%", centre_box(size, f)) for f in TARGETS]
    for f in TARGETS:
        got = nvidia_mask(f, size)
        if got is not None:
            masks.append((f"nvidia {got[0]}", got[1]))
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    rows = []
    for n in ns:
        h = torch.randn(n, net.blocks[0].cond.in_ch // 2, s, s, generator=g)
        full = timed(lambda: sample_cached(net, h, codebook, seed=0), rounds)
        print(f"{name} n={n}: full cached {full:.2f} s", flush=True)
        for label, m in masks:
            t0 = time.perf_counter()
            with torch.inference_mode():
                codes = enc(image * (1 - m), update_codebooks=False).idx_t[0]
                known = ~enc.top_reach(m)[0]
            ctx_s = time.perf_counter() - t0
            drawn = (~known).flatten().nonzero()
            run_frac = (int(drawn[-1]) + 1) / (s * s) if len(drawn) else 0.0
            t = timed(lambda: sample_cached(net, h, codebook, seed=0, context=Context(codes, known)), rounds)
            row = dict(model=name, n=n, mask=label, hole=round(float(m.mean()), 3),
                       known=round(float(known.float().mean()), 3), run=round(run_frac, 3), full_s=round(full, 3),
                       known_s=round(t, 3), ctx_s=round(ctx_s, 3), speedup=round(full / t, 2))
            rows.append(row)
            print(f"  {label:18s} hole {row['hole']:.2f}  known {row['known']:.2f}  run {row['run']:.2f}  "
                  f"known-context {t:.2f} s (+ctx {ctx_s:.3f} s)  x{full / t:.2f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="paper,faces-128")
    ap.add_argument("--n", default="1,10")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--masks", default="/work/shared/data/masks/nvidia-irregular-256",
                    help="NVIDIA mask folder (skipped when missing)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    global MASKS
    MASKS = Path(a.masks)
    torch.set_grad_enabled(False)
    rows = []
    for name in a.models.split(","):
        rows += run(name, [int(v) for v in a.n.split(",")], a.rounds)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
