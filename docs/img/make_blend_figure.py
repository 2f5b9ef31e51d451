"""Makes docs/img/blend-faces.jpg and docs/img/blend-scenes.jpg: the shipped models on public-domain / CC0 photos
(scikit-image's sample images), with the official composite, the Poisson blend and OpenCV's Telea side by side.

    OMP_NUM_THREADS=1 python docs/img/make_blend_figure.py          # needs the eval extra (OpenCV)

Rows: one photo with a mask (seeded masks drawn here: six thin lines, 3-8 px wide, the kind of hole where a seam
shows; and pyinpaint's centre box. The evaluation's NVIDIA masks and photos may not be shown). Columns: the photo, the masked input, Telea, then two
samples (seed 0, samples 1 and 2) each as pasted (`blend="paste"`) and as blended (`blend="poisson"`). The samples
are the same in both blends (same seed: same codes); only the composite differs.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw
from skimage import data as skdata

import pyinpaint
from pyinpaint.masks import center_mask

OUT = Path(__file__).resolve().parent
SIZE = 256


def square(img: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    crop = img[top:top + side, left:left + side]
    return np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def lines_mask(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    im = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, SIZE, 4))
        d.line([x0, y0, x1, y1], fill=255, width=int(rng.integers(3, 9)))
    return np.asarray(im) > 0


def label(tile: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(tile.copy())
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 7 * len(text) + 8, 16], fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255))
    return np.asarray(im)


def figure(model: str, photos: list[np.ndarray], out: Path) -> None:
    rows = []
    for r, photo in enumerate(photos):
        for kind in ("lines", "centre"):
            hole = lines_mask(10 + r) if kind == "lines" else center_mask(SIZE)[0].numpy() > 0
            masked = photo.copy()
            masked[hole] = 255
            telea = cv2.inpaint(np.ascontiguousarray(photo), hole.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
            tiles = [label(photo, "photo"), label(masked, f"{kind} mask"), label(telea, "Telea")]
            fills = {b: pyinpaint.sample(photo, hole, 3, seed=0, model=model, blend=b, strategy="resize")
                     for b in ("paste", "poisson")}
            for i in (1, 2):
                for b in ("paste", "poisson"):
                    tiles.append(label(np.asarray(fills[b][i]), f"sample {i}, {b}"))
            rows.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(out, quality=88)
    print(f"wrote {out}")


def main() -> None:
    face = np.asarray(Image.open(Path(pyinpaint.__file__).resolve().parent / "assets" / "astronaut-face.png")
                      .convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    figure("faces", [face], OUT / "blend-faces.jpg")
    coffee, rocket = skdata.coffee(), skdata.rocket()
    figure("scenes", [square(coffee, 0, 100, 400), square(rocket, 0, 100, 427)], OUT / "blend-scenes.jpg")


if __name__ == "__main__":
    main()
