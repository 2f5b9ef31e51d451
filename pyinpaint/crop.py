"""Where the model looks: context windows around the holes of a full-resolution mask, cut to the model's square
and pasted back. Pure functions on arrays and tensors; no model code.

Strategies (see :func:`plan`):

* ``"resize"``: one window, the whole image.
* ``"crop"``: one square window per hole region: the connected components of the hole (8-connected), each with a
  window of side ``factor`` x its bounding box's longer side, at least the model's size ``S`` where the image allows,
  centred on the box and shifted to lie inside the image, clipped to the image where it is smaller; components whose
  windows overlap are merged (their boxes joined) until no two windows overlap. Windows never overlap, so no window's
  context contains another window's fill, and all windows are filled in one batched call.
* ``"auto"``: crop when the image is larger than the model (either side above ``S``) and the windows are smaller
  than the image, else resize.

Cut (:func:`cut`): a window is padded to a square by mirroring (``numpy.pad`` ``"symmetric"``: the photo's own
texture continues, where edge replication would draw flat streaks the model never saw in training; the hole is
mirrored with it, so no hidden pixel becomes context), then brought to ``S`` x ``S``: the image with half-pixel
bilinear (no antialiasing, as the official ``test.py``), the mask by adaptive max pooling (a model pixel is a hole
when any pixel it covers is one, so thin holes survive). Paste (:func:`paste`): the model-size completion is brought
back to the padded square's size (bilinear, antialiased when shrinking), the padding dropped, and only the window's
hole pixels are written: every known pixel stays the input's, bit for bit. With ``blend="poisson"`` the generator's
raw output is brought back instead and blended into the window's known pixels (:mod:`pyinpaint.blend`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pyinpaint.blend import check_blend, hole_box, poisson_fill_

STRATEGIES = ("auto", "crop", "resize")
FACTOR = 2.0  # window side over the hole box's longer side: the hole is about a quarter of the window, like the
#               official centre mask (128 of 256) the models were trained and evaluated with


@dataclass(frozen=True)
class Window:
    """A rectangle of the image, ``[top, top + height) x [left, left + width)``; square unless clipped."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)

    def overlaps(self, other: "Window") -> bool:
        return (self.top < other.top + other.height and other.top < self.top + self.height
                and self.left < other.left + other.width and other.left < self.left + self.width)


Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (half-open)


def hole_boxes(hole: np.ndarray) -> list[Box]:
    """Bounding boxes of the 8-connected components of ``hole`` (H x W bool), in raster order of their first pixel.
    Row runs joined by union-find: linear in the number of runs, no SciPy."""
    hole = np.asarray(hole, bool)
    d = np.diff(np.pad(hole, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    ys, x0s = np.nonzero(d == 1)
    _, x1s = np.nonzero(d == -1)
    parent = list(range(len(ys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(ys, np.arange(hole.shape[0] + 1))
    for y in range(1, hole.shape[0]):
        a, a_end = row_start[y - 1], row_start[y]
        b, b_end = row_start[y], row_start[y + 1]
        while a < a_end and b < b_end:  # runs of rows y-1 and y, both sorted by x: touching (8-connected) ones join
            if x0s[a] <= x1s[b] and x0s[b] <= x1s[a]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if x1s[a] < x1s[b]:
                a += 1
            else:
                b += 1
    boxes: dict[int, list[int]] = {}
    for i in range(len(ys)):
        r = find(i)
        y, x0, x1 = int(ys[i]), int(x0s[i]), int(x1s[i])
        if r not in boxes:
            boxes[r] = [y, x0, y + 1, x1]
        else:
            bx = boxes[r]
            bx[0], bx[1], bx[2], bx[3] = min(bx[0], y), min(bx[1], x0), max(bx[2], y + 1), max(bx[3], x1)
    return [tuple(b) for b in boxes.values()]


def window_for(box: Box, shape: tuple[int, int], size: int, factor: float = FACTOR) -> Window:
    """The square window of a hole box: side ``factor`` x the box's longer side, at least ``size``, centred on the
    box, shifted inside the image; clipped to the image where the image is smaller than the side."""
    y0, x0, y1, x1 = box
    h, w = shape
    side = max(math.ceil(factor * max(y1 - y0, x1 - x0)), size, y1 - y0, x1 - x0)
    wh, ww = min(side, h), min(side, w)

    def place(lo: int, hi: int, extent: int, n: int) -> int:
        start = (lo + hi - extent) // 2
        return min(max(start, 0), n - extent)

    return Window(place(y0, y1, wh, h), place(x0, x1, ww, w), wh, ww)


def plan(hole: np.ndarray, size: int, strategy: str = "auto", factor: float = FACTOR) -> tuple[str, list[Window]]:
    """(strategy used, windows) for a full-resolution ``hole`` (H x W bool) and a model of ``size`` px: see the
    module's docstring. An empty hole gets the whole image as its one window."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"the crop factor must be a number >= 1 (got {factor!r})")
    h, w = hole.shape
    whole = [Window(0, 0, h, w)]
    if strategy == "resize" or not hole.any() or (strategy == "auto" and max(h, w) <= size):
        return "resize", whole
    boxes = hole_boxes(hole)
    while True:
        windows = [window_for(b, (h, w), size, factor) for b in boxes]
        pair = next(((i, j) for i in range(len(windows)) for j in range(i + 1, len(windows))
                     if windows[i].overlaps(windows[j])), None)
        if pair is None:
            break
        i, j = pair
        a, b = boxes[i], boxes[j]
        boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
        del boxes[j]
    if strategy == "auto" and windows == whole:
        return "resize", whole
    return "crop", windows


def _square_pads(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that makes a height x width rectangle square."""
    side = max(height, width)
    dy, dx = side - height, side - width
    return dy // 2, dy - dy // 2, dx // 2, dx - dx // 2


def cut(image: np.ndarray, hole: np.ndarray, window: Window, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of ``image`` (H x W x 3 uint8) and ``hole`` (H x W bool) at the model's resolution: (x [3, S, S] in
    [-1, 1], m [1, S, S] in {0, 1}), mirrored to a square first (see the module's docstring)."""
    from pyinpaint.data import preprocess

    ys, xs = window.slices
    img, m = image[ys, xs], hole[ys, xs]
    t, b, l, r = _square_pads(window.height, window.width)
    if t or b or l or r:
        img = np.pad(img, ((t, b), (l, r), (0, 0)), mode="symmetric")
        m = np.pad(m, ((t, b), (l, r)), mode="symmetric")
    x = preprocess(img, size, "resize")
    mt = torch.from_numpy(np.ascontiguousarray(m)).to(torch.float32)[None]
    if mt.shape[-2:] != (size, size):
        mt = F.adaptive_max_pool2d(mt[None], (size, size))[0]
    return x, mt


def paste(canvas: np.ndarray, hole: np.ndarray, window: Window, completed: torch.Tensor, blend: str = "paste") -> None:
    """Write one model-size result ([3, S, S] in [-1, 1]) of ``window`` into ``canvas`` (H x W x 3 uint8, the image
    being filled), at the window's hole pixels only (``hole``: H x W bool, the full-resolution mask).

    ``blend="paste"``: ``completed`` is the model-size completion, written as it is; ``blend="poisson"``: it is the
    generator's raw output, blended into the window's known pixels (:mod:`pyinpaint.blend`)."""
    check_blend(blend)
    side = max(window.height, window.width)
    s = completed.shape[-1]
    up = completed[None].float()
    if side != s:
        up = F.interpolate(up, size=(side, side), mode="bilinear", align_corners=False, antialias=side < s)
    elif blend == "poisson":
        up = up.clone()  # blended in place below: never the caller's tensor
    t, _, l, _ = _square_pads(window.height, window.width)
    up = up[:, :, t:t + window.height, l:l + window.width]
    ys, xs = window.slices
    inside = hole[ys, xs]
    if blend == "poisson":  # only the hole's box is solved: its pixels as floats, nothing more
        mask = torch.from_numpy(np.ascontiguousarray(inside)).to(up.device)
        box = hole_box(mask)
        if box is not None:
            part = torch.from_numpy(np.ascontiguousarray(canvas[ys, xs][box])).to(up.device)
            part = part.permute(2, 0, 1).float().div_(127.5).sub_(1.0)
            poisson_fill_(up[(..., *box)], part, mask[box])
            del part
    fill = up[0].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    canvas[ys, xs][inside] = fill[inside]
