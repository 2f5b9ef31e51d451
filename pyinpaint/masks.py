"""Seeded, reproducible mask generators (official ``net/nn.py``), mask files, and the one mask factory.

Masks are float32 tensors ``1 x H x W``, ``1`` = hole (missing), ``0`` = known. Nothing here touches a
global random state: every random choice is drawn from a ``numpy.random.Generator`` seeded from
``(seed, epoch, index, stream)``, so mask ``i`` is the same whatever was drawn before it, in whichever
process it is drawn (DataLoader workers, DDP ranks, a resumed run).

Official sources (``USTC-JialunPeng/Diverse-Structure-Inpainting``): ``net/nn.py`` (``random_bbox``,
``bbox2mask``, ``brush_stroke_mask``), ``train_*.py`` (how the training mask is chosen), ``test.py`` and
the authors' reply in issue #10 (the test mask protocol). The official numbers are for 256 x 256 images;
every length here is given in pixels *at that 256-px reference* and scaled linearly to the requested size
(vertical lengths by ``H / 256``, horizontal ones by ``W / 256``, stroke widths by ``sqrt(H * W) / 256``),
so at 256 the official values apply unchanged.
"""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw

from pyinpaint.data import FLIST_SUFFIXES, RNG, PathLike, _as_rng, _nonneg_int, _randint, _seeded, list_images
from pyinpaint.io import MASK_EXTENSIONS, mask_values

__all__ = [
    "MASK_EXTENSIONS",
    "MASK_SPECS",
    "center_mask",
    "center_box_mask",
    "box_mask",
    "stroke_mask",
    "random_mask",
    "protocol_mask",
    "load_mask",
    "MaskFolder",
    "MaskSource",
    "make_mask_source",
]

MASK_SPECS = ("center", "center-box", "random", "box", "stroke", "protocol")

# Stream tags mixed into every seed (distinct from pyinpaint.data's image stream "IMG").
_MASK_STREAM = 0x4D534B  # "MSK"
_MASKFILE_STREAM = 0x4D4649  # "MFI"
_PROTOCOL_STREAM = 0x50524F  # "PRO"

_REF = 256  # the official image size; all mask lengths below are given at this size

Size = Union[int, Sequence[int]]


def _hw(size: Size) -> tuple[int, int]:
    """``256`` -> ``(256, 256)``; ``(H, W)`` -> ``(H, W)``; positive ints only."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (operator.index(v) for v in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or a pair (H, W) of ints, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _px(length: float, n: int) -> int:
    """A length given at the 256-px reference, scaled to an axis of ``n`` pixels."""
    return int(round(length * n / _REF))


def _mask_tensor(hole: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hole, dtype=np.float32))[None]


# --------------------------------------------------------------------------------------------
# Generated masks (official net/nn.py)
# --------------------------------------------------------------------------------------------
def _bbox2mask(
    h: int, w: int, top: int, left: int, bh: int, bw: int, max_delta: float, rng
) -> np.ndarray:
    """Official ``bbox2mask``: the box shrunk by ``dh`` rows at top and bottom and ``dw`` columns
    at left and right, ``dh, dw`` uniform in ``[0, max_delta // 2]`` (max_delta scaled per axis)."""
    dh = _randint(rng, 0, _px(max_delta, h) // 2 + 1)
    dw = _randint(rng, 0, _px(max_delta, w) // 2 + 1)
    m = np.zeros((h, w), np.float32)
    m[top + dh : top + bh - dh, left + dw : left + bw - dw] = 1.0
    return m


def _hole_size(h: int, w: int, hole: float) -> tuple[int, int]:
    bh, bw = max(1, _px(hole, h)), max(1, _px(hole, w))
    if bh > h or bw > w:
        raise ValueError(f"hole {hole} (at 256 px) does not fit a {h}x{w} image")
    return bh, bw


def center_mask(size: Size = 256) -> torch.Tensor:
    """The official centre hole: half the size, centred (128 x 128 at (64, 64) for 256).

    Official ``random_bbox(random_mask=False)`` + ``bbox2mask`` with ``max_delta=0`` (the default of
    the training scripts, and the README's "center 128x128 holes" of the released centre models).
    Exactly 25 % holes for even sizes.
    """
    h, w = _hw(size)
    bh, bw = h // 2, w // 2
    m = np.zeros((h, w), np.float32)
    m[(h - bh) // 2 : (h - bh) // 2 + bh, (w - bw) // 2 : (w - bw) // 2 + bw] = 1.0
    return _mask_tensor(m)


def center_box_mask(
    size: Size = 256, rng: RNG = None, max_delta: float = 32, *, hole: float = 128
) -> torch.Tensor:
    """The official training "center" mode with a non-zero ``max_delta``: the centred box of
    :func:`center_mask`, each side pair shrunk by a random ``0..max_delta // 2`` px (official
    ``bbox2mask`` on the centred bbox; lengths at the 256-px reference). With ``max_delta=0`` this
    is :func:`center_mask` (the official scripts' default ``--max_delta 0``)."""
    h, w = _hw(size)
    rng = _as_rng(rng)
    bh, bw = _hole_size(h, w, hole)
    return _mask_tensor(_bbox2mask(h, w, (h - bh) // 2, (w - bw) // 2, bh, bw, max_delta, rng))


def box_mask(
    size: Size = 256, rng: RNG = None, max_delta: float = 32, *, hole: float = 128, margins: float = 0
) -> torch.Tensor:
    """Official ``random_bbox(random_mask=True)`` + ``bbox2mask``: a ``hole x hole`` box (128 at
    256) at a uniform position, top in ``[margins, H - margins - hole)`` (TF's exclusive upper
    bound, so the box never touches the bottom/right border exactly), then shrunk per axis by a
    random ``0..max_delta // 2`` px on both sides. At 256 with ``max_delta=32`` the box is
    96..128 px a side: 14.1 % to 25 % holes. Lengths are at the 256-px reference, scaled per axis.
    """
    h, w = _hw(size)
    rng = _as_rng(rng)
    bh, bw = _hole_size(h, w, hole)
    mh, mw = _px(margins, h), _px(margins, w)
    if bh + 2 * mh > h or bw + 2 * mw > w:
        raise ValueError(f"hole {hole} with margins {margins} (at 256 px) does not fit a {h}x{w} image")
    top = _randint(rng, mh, max(h - mh - bh, mh + 1))
    left = _randint(rng, mw, max(w - mw - bw, mw + 1))
    return _mask_tensor(_bbox2mask(h, w, top, left, bh, bw, max_delta, rng))


def stroke_mask(
    size: Size = 256,
    rng: RNG = None,
    *,
    min_width: float = 12,
    max_width: float = 40,
    flip: bool = False,
) -> torch.Tensor:
    """Official ``brush_stroke_mask`` (free-form strokes, DeepFill v2 style).

    1-3 strokes; each a polyline of 4..11 segments whose directions alternate around
    ``2 pi / 5 +- 2 pi / 15`` (reflected for even segments), segment lengths
    ``clip(N(r, r // 2), 0, 2r)`` with ``r = sqrt(H^2 + W^2) / 8`` (45 px at 256), drawn with
    ``ImageDraw.line`` of width ``int(U(12, 40))`` plus a disc at every vertex. The radius scales
    with the size by construction; the widths are given at 256 and scaled by ``sqrt(H * W) / 256``.

    The official code then draws two normals and, when positive, calls ``mask.transpose(FLIP_...)``
    but discards the result: no flip ever happens. That is reproduced (the two normals are drawn
    and ignored) unless ``flip=True``, which applies the flips the official code meant to.

    Pass a ``numpy.random.RandomState`` seeded like the official run's ``np.random`` to get the
    official masks exactly at 256 (same draws in the same order). For non-square sizes the official
    code swaps H and W when placing the first vertex (``h, w = mask.size`` is ``(W, H)``); that only
    matters off the official square sizes and is not reproduced: the start point is uniform over
    the image.
    """
    h, w = _hw(size)
    rng = _as_rng(rng)
    normal = rng.normal
    uniform = rng.uniform
    mean_angle = 2 * math.pi / 5
    angle_range = 2 * math.pi / 15
    wscale = math.sqrt(h * w) / _REF
    average_radius = math.sqrt(h * h + w * w) / 8
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(_randint(rng, 1, 4)):
        num_vertex = _randint(rng, 4, 12)
        angle_min = mean_angle - uniform(0, angle_range)
        angle_max = mean_angle + uniform(0, angle_range)
        angles = []
        for i in range(num_vertex):
            if i % 2 == 0:
                angles.append(2 * math.pi - uniform(angle_min, angle_max))
            else:
                angles.append(uniform(angle_min, angle_max))
        vertex = [(int(_randint(rng, 0, w)), int(_randint(rng, 0, h)))]
        for i in range(num_vertex):
            # np.clip in the official code; min/max gives the same values, faster on scalars
            r = float(normal(loc=average_radius, scale=average_radius // 2))
            r = min(max(r, 0.0), 2 * average_radius)
            new_x = min(max(vertex[-1][0] + r * math.cos(angles[i]), 0), w)
            new_y = min(max(vertex[-1][1] + r * math.sin(angles[i]), 0), h)
            vertex.append((int(new_x), int(new_y)))
        width = max(1, int(uniform(min_width * wscale, max_width * wscale)))
        draw.line(vertex, fill=1, width=width)
        half = width // 2
        for vx, vy in vertex:
            draw.ellipse((vx - half, vy - half, vx + half, vy + half), fill=1)
    # Official: `if np.random.normal() > 0: mask.transpose(Image.FLIP_LEFT_RIGHT)` (same for
    # FLIP_TOP_BOTTOM) -- the transposed image is never assigned, so the mask is never flipped.
    flip_lr = normal() > 0
    flip_tb = normal() > 0
    if flip:
        if flip_lr:
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if flip_tb:
            mask = mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return _mask_tensor(np.asarray(mask) > 0)


def random_mask(size: Size = 256, rng: RNG = None, max_delta: float = 32) -> torch.Tensor:
    """The official training random mask (``--random_mask True``): with probability 0.5 a
    :func:`box_mask`, else a :func:`stroke_mask`.

    ``max_delta=32`` is the value of the architecture notes; the official scripts' default is
    ``--max_delta 0`` (then the box is always exactly 128 x 128).
    """
    rng = _as_rng(rng)
    if rng.random() < 0.5:
        return box_mask(size, rng, max_delta)
    return stroke_mask(size, rng)


def protocol_mask(size: Size = 256, index: int = 0, seed: int = 0) -> torch.Tensor:
    """Mask ``index`` of the authors' test protocol (their script in issue #10 of the official repo).

    Even ``index``: the union of 3 :func:`box_mask` with ``max_delta=64`` (as the script: each box
    64..128 px a side at 256); odd ``index``: the union of 5 :func:`stroke_mask`. The authors drew
    10,000 such masks once with an unseeded RNG; this draws mask ``index`` from ``(seed, index)``
    alone, so any subset is reproducible on its own.
    """
    index = _nonneg_int(index, "index")
    rng = _seeded(_nonneg_int(seed, "seed"), index, _PROTOCOL_STREAM)
    if index % 2 == 0:
        parts = [box_mask(size, rng, 64) for _ in range(3)]
    else:
        parts = [stroke_mask(size, rng) for _ in range(5)]
    return torch.stack(parts).amax(dim=0)


# --------------------------------------------------------------------------------------------
# Masks from files
# --------------------------------------------------------------------------------------------


def load_mask(
    path: PathLike, size: Size | None = None, invert: bool = False, threshold: float = 0
) -> torch.Tensor:
    """A mask file -> float32 ``1 x H x W`` (1 = hole).

    A pixel is a hole when its value is above ``threshold`` (default 0: any nonzero value, so 255,
    1 and True all mean hole, as the official "255 = missing" files); ``invert=True`` flips that
    (0 = hole). Accepted: single-channel files (PIL modes ``1``, ``L``, ``I``, ``I;16*``, ``F``;
    ``LA`` uses its ``L`` band), and RGB/RGBA/palette files whose colour channels are all equal
    (alpha ignored); anything else raises ``ValueError`` ("mask must be single-channel").
    With ``size`` the binary mask is resized with nearest-neighbour (PIL ``NEAREST``), so it stays
    binary. JPEG masks are lossy: use a ``threshold`` such as 127 for them.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            a = mask_values(im, f"mask {path}")
    except FileNotFoundError:
        raise
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"cannot read mask {path}: {e}") from e
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read mask {path}: {e}") from e
    hole = a > threshold
    if invert:
        hole = ~hole
    if size is not None:
        h, w = _hw(size)
        if hole.shape != (h, w):
            small = Image.fromarray(hole.astype(np.uint8) * 255)
            hole = np.asarray(small.resize((w, h), Image.Resampling.NEAREST)) > 0
    return _mask_tensor(hole)


class MaskFolder:
    """Mask files under a folder (recursively, sorted; ``.png .jpg .jpeg .webp .bmp .tif .tiff``).

    ``folder[i]`` is :func:`load_mask` of file ``i``: float32 ``1 x H x W``, 1 = hole (nonzero
    pixels, or zero pixels with ``invert=True``), resized with nearest to ``size`` if given.
    """

    def __init__(
        self, root: PathLike, size: Size | None = None, invert: bool = False, *, threshold: float = 0
    ):
        self.root = Path(root)
        try:
            self.paths = list_images(root, MASK_EXTENSIONS)
        except ValueError as e:
            raise ValueError(f"no mask files found in folder {self.root}") from e
        except FileNotFoundError:
            raise FileNotFoundError(f"mask folder not found: {self.root}") from None
        self.size = None if size is None else _hw(size)
        self.invert = bool(invert)
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> torch.Tensor:
        i = operator.index(index)
        n = len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} masks")
        return load_mask(self.paths[i], self.size, self.invert, self.threshold)

    def __repr__(self) -> str:
        size = "None" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        return (
            f"{type(self).__name__}(root='{self.root}', masks={len(self)}, size={size}, "
            f"invert={self.invert})"
        )


# --------------------------------------------------------------------------------------------
# One mask factory for the CLI
# --------------------------------------------------------------------------------------------
class MaskSource:
    """Masks by ``(index, epoch)``; build with :func:`make_mask_source`.

    ``sample(index, epoch=0)`` returns a float32 ``1 x H x W`` mask that depends only on
    ``(seed, epoch, index)``: no hidden state, safe in DataLoader workers and on resume.
    """

    def __init__(self, kind: str, size: Size, seed: int = 0, *, folder: MaskFolder | None = None,
                 file: Path | None = None, invert: bool = False, max_delta: float = 32):
        self.kind = kind
        self.size = _hw(size)
        self.seed = _nonneg_int(seed, "seed")
        self.folder = folder
        self.file = file
        self.invert = bool(invert)
        self.max_delta = max_delta
        self._perm_epoch: int | None = None
        self._perm: np.ndarray | None = None
        self._fixed: torch.Tensor | None = None

    def _file_index(self, index: int, epoch: int) -> int:
        # A fresh permutation of the files per epoch: each file once per len(folder) indices.
        n = len(self.folder)  # type: ignore[arg-type]
        if self._perm_epoch != epoch:
            self._perm = _seeded(self.seed, epoch, _MASKFILE_STREAM).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[index % n])  # type: ignore[index]

    def sample(self, index: int, epoch: int = 0) -> torch.Tensor:
        index = _nonneg_int(index, "index")
        epoch = _nonneg_int(epoch, "epoch")
        k = self.kind
        if k in ("center", "file"):  # always the same mask: computed once
            if self._fixed is None:
                if k == "center":
                    self._fixed = center_mask(self.size)
                else:
                    self._fixed = load_mask(self.file, self.size, self.invert)  # type: ignore[arg-type]
            return self._fixed.clone()
        if k == "protocol":  # a fixed test set: mask `index` whatever the epoch
            return protocol_mask(self.size, index, self.seed)
        if k == "folder":
            return self.folder[self._file_index(index, epoch)]  # type: ignore[index]
        rng = _seeded(self.seed, epoch, index, _MASK_STREAM)
        if k == "center-box":
            return center_box_mask(self.size, rng, self.max_delta)
        if k == "box":
            return box_mask(self.size, rng, self.max_delta)
        if k == "stroke":
            return stroke_mask(self.size, rng)
        return random_mask(self.size, rng, self.max_delta)

    def batch(self, start: int, n: int, epoch: int = 0, device: str | torch.device = "cpu") -> torch.Tensor:
        """Masks ``start .. start + n - 1`` stacked: ``n x 1 x H x W`` on ``device``."""
        return torch.stack([self.sample(start + i, epoch) for i in range(n)]).to(device)

    def __repr__(self) -> str:
        what = {"folder": f", folder={self.folder!r}", "file": f", file='{self.file}'"}
        what = what.get(self.kind, "")
        return (
            f"{type(self).__name__}('{self.kind}', size={self.size[0]}x{self.size[1]}, "
            f"seed={self.seed}{what})"
        )


def make_mask_source(
    spec: str | os.PathLike, size: Size, seed: int = 0, *, invert: bool = False, max_delta: float = 32
) -> MaskSource:
    """One mask factory for the CLI.

    ``spec`` is one of:

    * ``"center"``: :func:`center_mask`, the same for every index;
    * ``"center-box"``: :func:`center_box_mask` (centre box with random shrink);
    * ``"random"``: :func:`random_mask` (box or strokes, the official random-mask training);
    * ``"box"`` / ``"stroke"``: :func:`box_mask` / :func:`stroke_mask` only;
    * ``"protocol"``: :func:`protocol_mask` ``(size, index, seed)``; the epoch is ignored (a fixed
      test set);
    * a folder of mask files (or an official-style ``.txt``/``.flist`` file list): a
      :class:`MaskFolder` resized to ``size``; each epoch visits the files in its own seeded
      permutation (``index % len`` beyond one pass);
    * a single mask file: that mask for every index.

    The names win over a folder of the same name (write ``./random`` for the folder).
    ``invert`` applies to files; ``max_delta`` (at 256 px) to the box kinds.
    """
    if isinstance(spec, str) and spec in MASK_SPECS:
        return MaskSource(spec, size, seed, max_delta=max_delta)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in FLIST_SUFFIXES):
        return MaskSource("folder", size, seed, folder=MaskFolder(path, size, invert))
    if path.is_file():
        src = MaskSource("file", size, seed, file=path, invert=invert)
        src.sample(0)  # read it now: a bad file fails here, not in the first batch
        return src
    raise ValueError(
        f"unknown mask spec {str(spec)!r}: expected one of {', '.join(MASK_SPECS)}, "
        "or the path of an existing folder of mask files (or of one mask file)"
    )
