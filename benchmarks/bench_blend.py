"""What the Poisson blend costs: whole ``sample`` calls with ``blend="poisson"`` against ``blend="paste"``, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_blend.py [--sizes 256,1024,2048] [--n 10] [--rounds 3] [--json OUT]

The shipped faces model, the demo photo (``pyinpaint/assets/astronaut-face.png``) resized to each size (bicubic), a
seeded stroke mask (``pyinpaint.masks.stroke_mask``, the official free-form generator; its hole is printed), n
samples, ``strategy="resize"`` (one window: the whole photo, so the solve covers the stroke's box at full size).
Per size the two blends run back to back in pairs (a loaded machine drifts); times are the minimum over ``--rounds``
of the process's CPU time (one thread: only this process's work), the wall clock printed beside. Figures:
docs/benchmarks.md, "Poisson blend".
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pyinpaint
from pyinpaint.inpainter import Inpainter
from pyinpaint.masks import stroke_mask

PHOTO = Path(pyinpaint.__file__).resolve().parent / "assets" / "astronaut-face.png"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="256,1024,2048")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    inp = Inpainter.load("faces")
    photo = Image.open(PHOTO).convert("RGB")
    inp.sample(np.asarray(photo), np.asarray(stroke_mask(photo.size[0], np.random.default_rng(0))[0]) > 0, 1,
               seed=0, threads=1)  # warm-up: allocations, oneDNN set-up
    rows = []
    for size in (int(s) for s in a.sizes.split(",")):
        image = np.asarray(photo.resize((size, size), Image.Resampling.BICUBIC))
        hole = stroke_mask(size, np.random.default_rng(1))[0].numpy() > 0
        best = {"poisson": (float("inf"), 0.0), "paste": (float("inf"), 0.0)}
        for _ in range(a.rounds):
            for blend in best:
                c0, w0 = time.process_time(), time.perf_counter()
                inp.sample(image, hole, a.n, seed=0, blend=blend, strategy="resize", threads=1)
                cpu, wall = time.process_time() - c0, time.perf_counter() - w0
                best[blend] = min(best[blend], (cpu, wall))
        row = {"size": size, "hole": float(hole.mean()), "n": a.n,
               **{f"{b}_cpu_s": t[0] for b, t in best.items()}, **{f"{b}_wall_s": t[1] for b, t in best.items()}}
        row["ratio"] = row["poisson_cpu_s"] / row["paste_cpu_s"]
        rows.append(row)
        print(f"{size} px, hole {100 * row['hole']:.0f} %, n={a.n}: paste {row['paste_cpu_s']:.2f} s, poisson "
              f"{row['poisson_cpu_s']:.2f} s CPU ({row['ratio']:.2f}x; wall {row['paste_wall_s']:.2f} / "
              f"{row['poisson_wall_s']:.2f} s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
