"""A folder of images, several sampled in one batch (``Inpainter.inpaint_many``) against one at a time, same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_many.py [--model faces] [--images DIR] [--masks DIR] [--count 50]
        [--n 1,10] [--rounds 2] [--json OUT.json]

``count`` (image, mask) pairs: the images of ``--images`` (default ``../shared/data/faces/val``, the first
``count`` in sorted order; without it, crops of scikit-image's astronaut) at 256 x 256, each with an NVIDIA mask of
``--masks`` (every 20th file, so every hole size appears; without it, seeded stroke masks). For each n:

- ``alone``: ``inpaint_many(..., batch_images=1)``: one image per sampler batch (what the CLI's folder mode did
  before: one ``inpaint`` call per image);
- ``batched``: ``inpaint_many(...)``: as many images per batch as the memory budget holds (``pyinpaint.bounds``).

The whole call is timed (reading, sampling, texture generator, compositing), rounds interleaved (a loaded machine
drifts); the minimum over rounds of the process's CPU time (with one thread it counts only this process's work) and
of the wall clock. Both runs draw the same codes (checked here). Figures: docs/benchmarks.md, "Many images".
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pyinpaint import bounds
from pyinpaint.inpainter import Inpainter

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "faces" / "val"
MASKS = ROOT.parent / "shared" / "data" / "masks" / "nvidia-irregular-256"


def pairs(images: Path, masks: Path, count: int) -> tuple[list, str]:
    from PIL import Image

    from pyinpaint.masks import MaskSource

    if images.is_dir():
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
        imgs = [np.asarray(Image.open(f).convert("RGB").resize((256, 256), Image.BILINEAR)) for f in files]
        what = f"{len(imgs)} images of {images}"
    else:
        from skimage import data as skdata

        astro = skdata.astronaut()
        imgs = [np.ascontiguousarray(astro[(i * 5) % 256:(i * 5) % 256 + 256, (i * 7) % 256:(i * 7) % 256 + 256])
                for i in range(count)]
        what = f"{count} crops of scikit-image's astronaut"
    if masks.is_dir():
        files = sorted(masks.iterdir())[::20]
        holes = [np.asarray(Image.open(files[i % len(files)]).convert("L")) > 127 for i in range(len(imgs))]
        what += f", NVIDIA masks (every 20th file of {masks})"
    else:
        src = MaskSource("stroke", 256, seed=0)
        holes = [src.sample(i)[0].numpy() > 0 for i in range(len(imgs))]
        what += ", seeded stroke masks"
    return list(zip(imgs, holes)), what


def run(inp: Inpainter, items: list, n: int, batch_images: int | None):
    c0, w0 = time.process_time(), time.perf_counter()
    res = list(inp.inpaint_many(items, n, seed=0, batch_images=batch_images))
    return time.process_time() - c0, time.perf_counter() - w0, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="faces")
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--masks", type=Path, default=MASKS)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--n", default="1,10")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    inp = Inpainter.load(a.model, "cpu")
    items, what = pairs(a.images, a.masks, a.count)
    print(f"{a.model}: {what}; threads {torch.get_num_threads()}; batch budget {bounds.default_max_batch(inp.model)} "
          f"sample rows")
    out = []
    for n in (int(x) for x in a.n.split(",")):
        run(inp, items[:2], n, None)  # warm-up (allocations, oneDNN primitives)
        best = {"alone": [np.inf, np.inf], "batched": [np.inf, np.inf]}
        codes = {}
        for _ in range(a.rounds):
            for name, b in (("alone", 1), ("batched", None)):
                cpu, wall, res = run(inp, items, n, b)
                best[name] = [min(best[name][0], cpu), min(best[name][1], wall)]
                codes[name] = [r.codes for r in res]
        same = all(torch.equal(x, y) for x, y in zip(codes["alone"], codes["batched"]))
        row = {"n": n, "images": len(items), **{f"{k}_cpu_s": v[0] for k, v in best.items()},
               **{f"{k}_wall_s": v[1] for k, v in best.items()}, "same_codes": same,
               "speedup_cpu": best["alone"][0] / best["batched"][0], "speedup_wall": best["alone"][1] / best["batched"][1]}
        out.append(row)
        print(f"n={n}: {len(items)} images: one at a time {best['alone'][0]:.2f} s CPU ({best['alone'][1]:.2f} s wall), "
              f"batched {best['batched'][0]:.2f} s CPU ({best['batched'][1]:.2f} s wall): "
              f"{row['speedup_cpu']:.2f}x CPU, {row['speedup_wall']:.2f}x wall; "
              f"{len(items) * n / best['batched'][1]:.1f} vs {len(items) * n / best['alone'][1]:.1f} results/s; "
              f"same codes: {same}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
