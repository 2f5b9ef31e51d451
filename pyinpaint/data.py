"""Image-folder datasets with the official preprocessing (the mask generators are in :mod:`pyinpaint.masks`).

Conventions (as in the official code, converted to PyTorch's channel-first layout):

* images are float32 tensors ``3 x H x W`` in ``[-1, 1]`` (``x / 127.5 - 1`` of the RGB values);
* masks are float32 tensors ``1 x H x W``, ``1`` = hole (missing), ``0`` = known.

Reproducibility: nothing here touches a global random state. Every random choice is drawn from a
``numpy.random.Generator`` seeded from the tuple ``(seed, epoch, index, stream)`` (a
``numpy.random.SeedSequence``), so item ``i`` of epoch ``e`` is the same whatever was drawn before it,
in whichever worker process and order it is loaded: training can resume mid-epoch and get exactly
the crops and masks it would have got. (Bit-for-bit stability across numpy versions is what numpy's
NEP 19 promises for ``Generator``: stable in practice, not guaranteed forever.)

Official sources (``USTC-JialunPeng/Diverse-Structure-Inpainting``): ``data/data_loader.py`` (image
preprocessing), ``net/nn.py`` (``random_bbox``, ``bbox2mask``, ``brush_stroke_mask``),
``train_*.py`` (how the training mask is chosen), ``test.py`` and the authors' reply in issue #10
(the test mask protocol). The official numbers are for 256 x 256 images; every length here is given
in pixels *at that 256-px reference* and scaled linearly to the requested size (vertical lengths by
``H / 256``, horizontal ones by ``W / 256``, stroke widths by ``sqrt(H * W) / 256``), so at 256 the
official values apply unchanged.
"""
from __future__ import annotations

import math
import operator
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from pyinpaint.io import IMAGE_EXTENSIONS, load_image  # reading image files lives in io

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECIPES",
    "list_images",
    "load_image",
    "preprocess",
    "ImageFolder",
]

RECIPES = ("faces", "scenes", "resize", "center-crop")
FLIST_SUFFIXES = (".txt", ".flist")

# Stream tag mixed into every seed, so that the image crop and the mask of the same (seed, epoch, index)
# never share random numbers (the mask streams are in pyinpaint.masks).
_IMAGE_STREAM = 0x494D47  # "IMG"

PathLike = Union[str, "os.PathLike[str]"]
RNG = Union[np.random.Generator, np.random.RandomState, int, np.random.SeedSequence, None]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
def _nonneg_int(value, name: str) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _as_rng(rng: RNG) -> np.random.Generator | np.random.RandomState:
    """A Generator (or a legacy RandomState, kept as is) from a Generator, a seed or None.

    A ``RandomState`` is accepted so that, seeded like the official script's ``np.random``, the
    stroke masks reproduce the official ones exactly (see :func:`stroke_mask`).
    """
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    return np.random.default_rng(rng)


def _randint(rng, low: int, high: int) -> int:
    """Uniform int in [low, high): ``Generator.integers`` or ``RandomState.randint``."""
    if isinstance(rng, np.random.RandomState):
        return int(rng.randint(low, high))
    return int(rng.integers(low, high))


def _seeded(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _read_flist(path: Path) -> list[Path]:
    """A file list as the official code takes it: one path per line, relative to the list file."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            p = Path(line).expanduser()
            out.append(p if p.is_absolute() else path.parent / p)
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FileNotFoundError(f"file list {path} names missing files: {', '.join(missing[:3])}{more}")
    return out


def list_images(root: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """All image files under ``root``, recursively, sorted.

    Extensions are matched case-insensitively (``.jpg .jpeg .png .webp`` by default). Hidden files
    and folders (name starting with ``.``, e.g. macOS ``._x.jpg`` resource forks) are skipped.
    Symlinked folders are followed (each real folder once). ``root`` may also be an official-style
    file list (``.txt`` / ``.flist``: one path per line, relative paths resolved against the list's
    folder), returned in its own order.

    Raises ``FileNotFoundError`` if ``root`` does not exist and ``ValueError`` if it holds no images;
    both name the folder.
    """
    root = Path(root).expanduser()
    exts = tuple(e.lower() for e in extensions)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if root.is_file():
        if root.suffix.lower() in FLIST_SUFFIXES:
            files = _read_flist(root)
            if not files:
                raise ValueError(f"file list {root} is empty")
            return files
        raise ValueError(f"{root} is a file, not a folder (or a .txt/.flist file list)")
    files: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop or a folder reached twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        base = Path(dirpath)
        files.extend(base / f for f in filenames if not f.startswith(".") and f.lower().endswith(exts))
    if not files:
        raise ValueError(f"no images ({', '.join(exts)}) found in folder {root}")
    return sorted(files)


def _tf1_resize_bilinear(a: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """``tf.image.resize_images(method=0)`` of TF 1.12 on an ``H x W x C`` float32 array.

    Legacy TF bilinear: ``align_corners=False`` *without* half-pixel centres (source coordinate
    ``y * in / out``, not ``(y + 0.5) * in / out - 0.5``), no antialiasing, float32 arithmetic.
    This is not what PIL or ``torch.nn.functional.interpolate`` compute.
    """
    in_h, in_w = a.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return a

    def axis(n_in: int, n_out: int):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.arange(n_out, dtype=np.float32) * scale
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)

    y0, y1, yl = axis(in_h, out_h)
    x0, x1, xl = axis(in_w, out_w)
    xl = xl[None, :, None]
    top = a[y0][:, x0] + (a[y0][:, x1] - a[y0][:, x0]) * xl
    bottom = a[y1][:, x0] + (a[y1][:, x1] - a[y1][:, x0]) * xl
    return (top + (bottom - top) * yl[:, None, None]).astype(np.float32)


def _resize_bilinear(a: np.ndarray, out_h: int, out_w: int, antialias: bool) -> np.ndarray:
    """Half-pixel-centre bilinear, as ``cv2.resize(INTER_LINEAR)`` (official ``test.py``) when
    ``antialias`` is False; with ``antialias`` the kernel widens when shrinking (as PIL's)."""
    if a.shape[:2] == (out_h, out_w):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=antialias)
    return t[0].permute(1, 2, 0).numpy()


def _random_crop(a: np.ndarray, size: int, rng) -> np.ndarray:
    """``tf.image.random_crop``: offsets uniform in ``[0, H - size]`` and ``[0, W - size]``."""
    h, w = a.shape[:2]
    top = _randint(rng, 0, h - size + 1)
    left = _randint(rng, 0, w - size + 1)
    return a[top : top + size, left : left + size]


def _short_side_to(a: np.ndarray, size: int, antialias: bool, only_up: bool) -> np.ndarray:
    h, w = a.shape[:2]
    short = min(h, w)
    if short == size or (only_up and short > size):
        return a
    if h <= w:
        nh, nw = size, max(size, int(round(w * size / h)))
    else:
        nh, nw = max(size, int(round(h * size / w))), size
    return _resize_bilinear(a, nh, nw, antialias)


def preprocess(
    image: Image.Image | np.ndarray,
    size: int = 256,
    recipe: str = "resize",
    rng: RNG = None,
    *,
    load_size: int | None = None,
    antialias: bool = False,
) -> torch.Tensor:
    """One image (PIL RGB or ``H x W x 3`` array of 0..255) -> float32 ``3 x size x size`` in [-1, 1].

    Recipes (``size`` is any positive int; 256 is the official one):

    * ``"faces"``: the official training recipe (``data_loader.py``, CelebA-HQ): resize to a
      ``load_size`` square (default ``round(size * 266 / 256)``, i.e. 266 for 256, half rounded up)
      with TF 1.12's legacy bilinear, then a uniform random ``size`` crop.
    * ``"scenes"``: the official Places2/ImageNet training recipe: a uniform random ``size`` crop of
      the image as it is; an image whose shorter side is below ``size`` is first scaled up (aspect
      kept) so that its shorter side is ``size`` (the official code would fail there).
    * ``"resize"``: evaluation (official ``test.py``, CelebA-HQ): resize to ``size x size`` with
      ``cv2.INTER_LINEAR``-style bilinear (half-pixel centres, no antialiasing).
    * ``"center-crop"``: evaluation for Places2/ImageNet (the authors centre-cropped their test
      images offline, issue #17): resize the shorter side to ``size`` (aspect kept, same bilinear)
      and crop the centre. An image whose shorter side is already ``size`` is only cropped.

    ``antialias=True`` replaces both official bilinear resizes by an antialiased half-pixel one
    (better when shrinking large images a lot; the official code does not antialias).
    Values are computed in float32 and clipped to [0, 255] before scaling, as in the official loader
    (no rounding back to 8 bits after the resize).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
    size = _nonneg_int(size, "size")
    if size == 0:
        raise ValueError("size must be positive")
    a = np.asarray(image, dtype=np.float32)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H x W x 3), got shape {a.shape}")
    if recipe in ("faces", "scenes"):
        rng = _as_rng(rng)
    if recipe == "faces":
        ls = int(math.floor(size * 266 / 256 + 0.5)) if load_size is None else int(load_size)
        if ls < size:
            raise ValueError(f"load_size ({ls}) must be >= size ({size})")
        if antialias:
            a = _resize_bilinear(a, ls, ls, antialias=True)
        else:
            a = _tf1_resize_bilinear(a, ls, ls)
        a = _random_crop(a, size, rng)
    elif recipe == "scenes":
        a = _short_side_to(a, size, antialias, only_up=True)
        a = _random_crop(a, size, rng)
    elif recipe == "resize":
        a = _resize_bilinear(a, size, size, antialias)
    else:  # center-crop
        a = _short_side_to(a, size, antialias, only_up=False)
        h, w = a.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        a = a[top : top + size, left : left + size]
    a = np.clip(a, 0.0, 255.0) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))


class ImageFolder(Dataset):
    """All images under a folder (recursively, see :func:`list_images`), preprocessed by a recipe.

    ``ds[i]`` is a float32 ``3 x size x size`` tensor in [-1, 1]; see :func:`preprocess` for the
    recipes. The random crop of item ``i`` depends only on ``(seed, epoch, i)``: call
    ``set_epoch(e)`` at the start of each epoch (as with ``DistributedSampler``). Note that
    ``DataLoader(persistent_workers=True)`` keeps copies of the dataset in its workers, which do
    not see a later ``set_epoch``; there, index with ``ds[(epoch, i)]`` (e.g. from a sampler that
    yields pairs) or use non-persistent workers.
    """

    def __init__(
        self,
        root: PathLike,
        size: int = 256,
        recipe: str = "faces",
        seed: int = 0,
        *,
        load_size: int | None = None,
        antialias: bool = False,
    ):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}: expected one of {', '.join(RECIPES)}")
        size = _nonneg_int(size, "size")
        if size == 0:
            raise ValueError("size must be positive")
        self.root = Path(root)
        self.paths = list_images(root)
        self.size = size
        self.recipe = recipe
        self.seed = _nonneg_int(seed, "seed")
        self.load_size = load_size
        self.antialias = bool(antialias)
        self.epoch = 0

    @property
    def is_random(self) -> bool:
        return self.recipe in ("faces", "scenes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _nonneg_int(epoch, "epoch")

    def __len__(self) -> int:
        return len(self.paths)

    def _index(self, index) -> int:
        i = operator.index(index)
        n = len(self.paths)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        return i % n

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator that draws item ``index``'s crop in ``epoch`` (default: current epoch)."""
        e = self.epoch if epoch is None else _nonneg_int(epoch, "epoch")
        return _seeded(self.seed, e, self._index(index), _IMAGE_STREAM)

    def get(self, index: int, epoch: int | None = None) -> torch.Tensor:
        """Item ``index`` as of ``epoch`` (default: the current epoch)."""
        i = self._index(index)
        img = load_image(self.paths[i])
        rng = self.rng(i, epoch) if self.is_random else None
        return preprocess(
            img, self.size, self.recipe, rng, load_size=self.load_size, antialias=self.antialias
        )

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, tuple):
            epoch, index = index
            return self.get(index, epoch)
        return self.get(index)

    def __repr__(self) -> str:
        extra = f", load_size={self.load_size}" if self.load_size is not None else ""
        extra += ", antialias=True" if self.antialias else ""
        return (
            f"{type(self).__name__}(root='{self.root}', images={len(self)}, size={self.size}, "
            f"recipe='{self.recipe}', seed={self.seed}, epoch={self.epoch}{extra})"
        )
