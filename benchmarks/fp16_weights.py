"""Would float16 weight files change what a model samples? (issue 17: ship float16 only if no sampled code changes)

    OMP_NUM_THREADS=1 python benchmarks/fp16_weights.py [--model faces] [--images DIR] [--masks DIR] [--count 20]
        [-n 10] [--json OUT.json]

The model as shipped (float32) against the same model with every floating-point weight rounded to float16 and back
(what loading a float16 file gives: ``pyinpaint.modelfile`` loads F16 tensors into float32 parameters), on ``count``
validation images (default ``../shared/data/faces/val``, evenly spread) with NVIDIA masks (every 20th file of
``--masks``, one per image, so every hole size appears), n samples each, seed = the case number, default options
(context "known", resize to the model's size). Reports the sampled codes that differ (cases, samples, positions),
the largest pixel difference, the PSNR in the hole against the original for both (best of n and mean), and the file
sizes. Figures: docs/benchmarks.md, "Float16 weights".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save

from pyinpaint.evaluate import hole_metrics, spread
from pyinpaint.inpainter import Inpainter

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "faces" / "val"
MASKS = ROOT.parent / "shared" / "data" / "masks" / "nvidia-irregular-256"


def main() -> None:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="faces")
    ap.add_argument("--images", type=Path, default=IMAGES)
    ap.add_argument("--masks", type=Path, default=MASKS)
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    full = Inpainter.load(a.model, "cpu")
    half = Inpainter.load(a.model, "cpu")
    nets = [m for m in (half.model.vqvae, half.model.structure, half.model.generator, half.model.discriminator) if m]
    state = {}
    with torch.no_grad():
        for i, net in enumerate(nets):
            for name, t in net.state_dict().items():
                state[f"{i}.{name}"] = t.detach().clone()
                if t.is_floating_point():
                    t.copy_(t.to(torch.float16).to(t.dtype))
    sizes = {dt: len(st_save({k: (v.to(dt) if v.is_floating_point() else v) for k, v in state.items()}))
             for dt in (torch.float32, torch.float16)}
    files = spread(sorted(p for p in a.images.iterdir() if p.suffix.lower() in (".jpg", ".png")), a.count)
    masks = sorted(a.masks.iterdir())[::20]
    s = full.image_size
    cases = []
    for i, f in enumerate(files):
        img = np.asarray(Image.open(f).convert("RGB").resize((s, s), Image.BILINEAR))
        hole = np.asarray(Image.open(masks[(i * len(masks)) // len(files)]).convert("L").resize((s, s), Image.BILINEAR)) > 127
        cases.append((img, hole))
    seeds = list(range(len(cases)))
    ra = list(full.inpaint_many(cases, a.n, seed=seeds))
    rb = list(half.inpaint_many(cases, a.n, seed=seeds))
    diff_cases = diff_samples = diff_positions = 0
    max_pixel = 0
    psnr = {"float32": [], "float16": []}
    for (img, hole), x, y in zip(cases, ra, rb):
        d = x.codes != y.codes
        diff_cases += bool(d.any())
        diff_samples += int(d.flatten(1).any(1).sum())
        diff_positions += int(d.sum())
        for u, v in zip(x.images, y.images):
            max_pixel = max(max_pixel, int(np.abs(np.asarray(u, int) - np.asarray(v, int)).max()))
        for key, r in (("float32", x), ("float16", y)):
            p = [hole_metrics(np.asarray(im), img, hole)["psnr"] for im in r.images]
            psnr[key].append((max(p), float(np.mean(p))))
    out = {"model": a.model, "cases": len(cases), "n": a.n, "cases_with_other_codes": diff_cases,
           "samples_with_other_codes": diff_samples, "codes_differing": diff_positions,
           "codes_total": int(sum(r.codes.numel() for r in ra)), "max_pixel_difference": max_pixel,
           **{f"psnr_best_{k}": float(np.mean([b for b, _ in v])) for k, v in psnr.items()},
           **{f"psnr_mean_{k}": float(np.mean([m for _, m in v])) for k, v in psnr.items()},
           "file_mb_float32": sizes[torch.float32] / 1e6, "file_mb_float16": sizes[torch.float16] / 1e6}
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
