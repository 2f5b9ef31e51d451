"""Files in and out: images and masks (read, checked, EXIF-oriented), results, weights (safetensors only, never
pickles), JSON. Every file the package writes goes through :func:`atomic_write`: a temporary file renamed into place,
with the user's normal file mode (umask), never replacing a file unless the caller allows it."""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, torch.Tensor]
MaskLike = ImageLike

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MASK_EXTENSIONS = IMAGE_EXTENSIONS + (".bmp", ".tif", ".tiff")

# The largest image (width x height) read or accepted, against decompression bombs and out-of-memory crashes:
# 100 megapixels by default (a 12000 x 8000 photo). Raise it with ``pyinpaint.io.MAX_PIXELS = ...``, the
# environment variable PYINPAINT_MAX_PIXELS or the command line's --max-pixels.
MAX_PIXELS = int(os.environ.get("PYINPAINT_MAX_PIXELS", 100_000_000))


class InpaintWarning(UserWarning):
    """Something about the input was changed, looks wrong or is degenerate (colour conversion, a mask that looks
    inverted or lossy, an empty mask, ...)."""


_HERE = os.path.dirname(os.path.abspath(__file__))


def warn(msg: str) -> None:
    """An :class:`InpaintWarning` pointing at the caller's line outside pyinpaint."""
    if sys.version_info >= (3, 12):
        warnings.warn(msg, InpaintWarning, skip_file_prefixes=(_HERE,))
    else:
        warnings.warn(msg, InpaintWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, write, *, overwrite: bool = True) -> None:
    """Call ``write(tmp_path)``, then move the file to ``path``: readers see the old file or the new one, never
    half of one. The file gets the user's normal mode (0666 minus the umask). ``overwrite=False`` never replaces an
    existing file, even one that appears while writing (FileExistsError naming it)."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} already exists: not replaced (pass --overwrite / overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name exists: no window in which another file is replaced
            except FileExistsError:
                raise FileExistsError(f"{path} already exists: not replaced (pass --overwrite / overwrite=True "
                                      "to replace it)") from None
            except OSError:  # a file system without hard links
                if os.path.lexists(path):
                    raise FileExistsError(f"{path} already exists: not replaced") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    atomic_write(path, write, overwrite=overwrite)


def load_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors are copied to contiguous CPU memory first)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (no code is executed, unlike pickle-based checkpoints)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str = "weights") -> None:
    """``load_state_dict(strict=True)`` with a readable error listing what does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"{what} do not fit the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shapes {shapes[:5]}")
    module.load_state_dict(state, strict=True)


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """3xHxW tensor in [-1, 1] -> HxWx3 uint8 (clipped)."""
    x = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def image_grid(rows: list[list[torch.Tensor]], gap: int = 2) -> Image.Image:
    """A grid of 3xHxW images in [-1, 1] (all the same size), white gaps between them."""
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = to_uint8_image(img)
    return Image.fromarray(canvas)


def save_image(path: str | os.PathLike, img: Image.Image, *, overwrite: bool = True) -> None:
    """Write a PNG atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- reading images
_PIL_LIMIT_LOCK = threading.Lock()


def check_pixels(width: int, height: int, what: str) -> None:
    """Refuse images larger than :data:`MAX_PIXELS` (decompression bombs, out-of-memory crashes)."""
    if width * height > MAX_PIXELS:
        raise ValueError(f"{what} has {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the limit of "
                         f"{MAX_PIXELS / 1e6:g}: if it is genuine, raise the limit (pyinpaint.io.MAX_PIXELS, "
                         "PYINPAINT_MAX_PIXELS or --max-pixels)")


@contextlib.contextmanager
def _opened(path: Path, what: str, orient: bool):
    """A fully decoded PIL image of a file (EXIF orientation applied when ``orient``), size-checked before
    decoding. Errors: FileNotFoundError, ValueError naming the file."""
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS, saved or 0)
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with im:
            check_pixels(*im.size, what)
            im.load()
            yield ImageOps.exif_transpose(im) if orient else im
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} is a folder, not an image file") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} is too large to decode safely ({e}): raise pyinpaint.io.MAX_PIXELS if it is "
                         "genuine") from None
    except (OSError, SyntaxError, EOFError) as e:
        raise ValueError(f"cannot read {what}: {e}") from None


def load_image(path: str | os.PathLike, *, orient: bool = False) -> Image.Image:
    """Open an image file as a fully decoded RGB ``PIL.Image`` (the training and evaluation loader).

    Greyscale, palette, CMYK and RGBA files become RGB (alpha is dropped, not composited, as the official
    ``tf.image.decode_*(channels=3)`` does); 16-bit greyscale keeps its high byte, as TF's 8-bit decoding does.
    EXIF orientation is ignored, as in the official loader, unless ``orient`` (what :func:`read_image` does for
    photos to inpaint). Files over :data:`MAX_PIXELS` are refused. An unreadable or truncated file raises
    ``ValueError`` naming the file."""
    path = Path(path)
    with _opened(path, f"image {path}", orient) as im:
        return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a.astype(np.uint32) >> 8  # 16-bit: keep the high byte
        a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(a[:, :, None], 3, axis=2))
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    return im.convert("RGB")


def _pil_to_rgb(im: Image.Image, what: str) -> np.ndarray:
    mode = im.mode
    if mode != "RGB":
        if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
            warn(f"{what} has an alpha channel (mode {mode}): converted to RGB, alpha dropped (not composited)")
        elif mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            warn(f"{what} is greyscale (mode {mode}): converted to RGB")
        elif mode == "P":
            warn(f"{what} is a palette image: converted to RGB")
        else:
            warn(f"{what} has mode {mode}: converted to RGB")
    return np.array(_to_rgb(im), dtype=np.uint8)


def _check_finite_range(a: np.ndarray, lo: float, hi: float, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{what} values must be in [{lo:g}, {hi:g}], found [{a.min():g}, {a.max():g}]")


def _channels_to_rgb(a: np.ndarray, what: str) -> np.ndarray:
    if a.shape[2] == 1:
        warn(f"{what} is greyscale: converted to RGB")
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        warn(f"{what} is RGBA: converted to RGB, alpha dropped (not composited)")
        a = a[:, :, :3]
    return np.array(a, dtype=np.uint8, order="C")  # a copy: the caller may change its array later


def _tensor_to_numpy(t: torch.Tensor, what: str) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_complex():
        raise ValueError(f"{what} must be real, got dtype {t.dtype}")
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # float16 / bfloat16 / float8: exact in float32, which numpy can hold
    return t.numpy()


def read_image(image: ImageLike) -> np.ndarray:
    """Any accepted image -> H x W x 3 uint8 RGB.

    Accepted: a file path; a PIL image; a numpy array H x W x 3 (uint8 0..255, or float in [0, 1]);
    a torch tensor 3 x H x W (float of any precision in [0, 1], or uint8), optionally with a leading batch dimension
    of 1. Files and PIL images are turned upright by their EXIF orientation (phone photos), as they are displayed.
    Greyscale (H x W, 1 channel), RGBA (4 channels, alpha dropped), palette, 16-bit and CMYK images are converted to
    RGB with a warning. Floats become 8-bit values by round(255 x). Images over :data:`MAX_PIXELS` are refused.
    Errors: FileNotFoundError, ValueError (one line, naming the input)."""
    what = "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        what = f"image {path}"
        with _opened(path, what, orient=True) as im:
            return _pil_to_rgb(im, what)
    if isinstance(image, Image.Image):
        check_pixels(*image.size, what)
        return _pil_to_rgb(ImageOps.exif_transpose(image), what)
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            hint = " (channels first: 3 x H x W)" if t.dim() == 3 and t.shape[-1] in (3, 4) else ""
            raise ValueError(f"image tensor must be 3 x H x W{hint}, got shape {tuple(image.shape)}")
        check_pixels(t.shape[2], t.shape[1], what)
        if t.dtype == torch.uint8:
            return _channels_to_rgb(t.cpu().permute(1, 2, 0).numpy(), what)
        if not t.is_floating_point():
            raise ValueError(f"image tensor must be float in [0, 1] or uint8, got dtype {t.dtype}")
        a = _tensor_to_numpy(t.permute(1, 2, 0), "image tensor").astype(np.float64)
        _check_finite_range(a, 0.0, 1.0, "image tensor (float: values in [0, 1]; pass uint8 for 0..255)")
        return _channels_to_rgb(np.round(a * 255.0).astype(np.uint8), what)
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (greyscale), "
                             f"got shape {image.shape}")
        check_pixels(a.shape[1], a.shape[0], what)
        if a.dtype == np.uint8:
            return _channels_to_rgb(a, what)
        if a.dtype.kind == "f":
            _check_finite_range(a, 0.0, 1.0, "image array (float: values in [0, 1]; pass uint8 for 0..255)")
            return _channels_to_rgb(np.round(a.astype(np.float64) * 255.0).astype(np.uint8), what)
        if a.dtype.kind in "iu":
            _check_finite_range(a, 0, 255, "image array (integers: values in 0..255)")
            return _channels_to_rgb(a.astype(np.uint8), what)
        raise ValueError(f"image array must be uint8 or float, got dtype {a.dtype}")
    raise ValueError(f"unsupported image type {type(image).__name__}: pass a path, a PIL image, an H x W x 3 uint8 "
                     "array or a 3 x H x W float tensor in [0, 1]")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The package's one device rule. None or "auto": CUDA when available, else the CPU; under torchrun (LOCAL_RANK
    set), "auto" and "cuda" mean this process's GPU, ``cuda:LOCAL_RANK``. An explicit device must exist (ValueError
    naming it and what to use instead)."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but torch sees no CUDA device: use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


# ---------------------------------------------------------------------------------------------- reading masks
def mask_values(im: Image.Image, what: str) -> np.ndarray:
    """The values of a mask image, H x W: single-channel modes as they are (``LA``: its ``L`` band), RGB / RGBA /
    palette images whose colour channels are all equal (alpha ignored); anything else is a ValueError."""
    mode = im.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return np.asarray(im)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel("L"))
    if mode in ("RGB", "RGBA", "RGBX", "P", "PA"):
        rgb = np.asarray(im.convert("RGBA") if mode.startswith("P") else im)[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise ValueError(f"{what} must be single-channel: it is {mode} with differing colour channels (save it as "
                             "a greyscale PNG, white = hole)")
        return rgb[..., 0]
    raise ValueError(f"{what} must be single-channel: PIL mode {mode} is not supported (save it as a greyscale PNG, "
                     "white = hole)")


def _check_mask_looks(hole: np.ndarray, values: np.ndarray | None, what: str, jpeg: bool, invert: bool) -> None:
    """Warn about masks that look inverted or lossy (the file is used as given)."""
    if jpeg:
        warn(f"{what} is a JPEG: lossy compression leaves grey values around the hole and every nonzero pixel counts "
             "as hole, so the hole grows (by about 9 % on typical masks): save masks as PNG")
    elif values is not None and values.dtype == np.uint8 and hole.any():
        top = values.max()
        grey = np.count_nonzero((values > 0) & (values < top))
        if grey > 0.01 * np.count_nonzero(hole):
            warn(f"{what} has grey values ({grey} pixels neither 0 nor {top}, as lossy compression or a soft brush "
                 "leaves): every nonzero pixel counts as hole; save a binary PNG (0 = keep, 255 = hole)")
    h, w = hole.shape
    if hole.mean() > 0.5 and h > 2 and w > 2 and not hole.all():
        border = np.concatenate([hole[0], hole[-1], hole[1:-1, 0], hole[1:-1, -1]])
        if border.mean() > 0.9:
            flag = "without invert" if invert else "invert=True / --invert-mask"
            warn(f"{what} looks inverted: its hole covers {hole.mean():.0%} of the image and {border.mean():.0%} of "
                 f"its border (nonzero / white = the pixels to FILL); if it marks the pixels to keep, use {flag}")


def read_mask(mask: MaskLike, invert: bool = False) -> np.ndarray:
    """Any accepted mask -> H x W bool, True = hole (to fill).

    Accepted: a file path (single-channel, or colour with equal channels; any nonzero value is a hole; EXIF
    orientation applied, as for the image), a PIL image (same rule), a numpy array or torch tensor H x W (also
    1 x H x W, 1 x 1 x H x W, H x W x 1) of bool, integers or floats: nonzero / True / 255 = hole. ``invert=True``
    flips the convention (zero = hole). Warns (InpaintWarning) when the mask is a JPEG, has many grey values, or
    looks inverted. Errors: FileNotFoundError, ValueError (NaN, negative values, several channels)."""
    what, values, jpeg = "mask", None, False
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        what = f"mask {path}"
        with _opened(path, what, orient=True) as im:
            jpeg = im.format == "JPEG" or path.suffix.lower() in (".jpg", ".jpeg")
            a = values = mask_values(im, what)
    elif isinstance(mask, Image.Image):
        check_pixels(*mask.size, what)
        jpeg = mask.format == "JPEG"
        a = values = mask_values(ImageOps.exif_transpose(mask), what)
    elif isinstance(mask, (torch.Tensor, np.ndarray)):
        a = _tensor_to_numpy(mask, "mask tensor") if isinstance(mask, torch.Tensor) else mask
        shape = a.shape
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim != 2:
            raise ValueError(f"mask must be H x W (single channel), got shape {shape}")
        check_pixels(a.shape[1], a.shape[0], what)
    else:
        raise ValueError(f"unsupported mask type {type(mask).__name__}: pass a path, a PIL image, or an H x W "
                         "array or tensor (nonzero = hole)")
    if a.dtype == np.bool_:
        hole = a.copy()
    else:
        if a.dtype.kind not in "iuf":
            raise ValueError(f"{what} must be bool, integer or float, got dtype {a.dtype}")
        if a.dtype.kind == "f" and np.isnan(a).any():
            raise ValueError(f"{what} contains NaN values")
        if a.size and a.min() < 0:
            raise ValueError(f"{what} values must be >= 0 (nonzero = hole), found {a.min():g}")
        hole = np.asarray(a != 0)
    if invert:
        hole = ~hole
    _check_mask_looks(hole, values, what, jpeg, invert)
    return hole


def read_pair(image: ImageLike, mask: MaskLike, invert: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read and check an image and its mask together: (H x W x 3 uint8, H x W bool hole). Errors (ValueError): the
    sizes differ (EXIF orientation applied to both), or the hole covers every pixel."""
    img = read_image(image)
    hole = read_mask(mask, invert)
    if img.shape[:2] != hole.shape:
        raise ValueError(f"image and mask sizes differ: {_name(image, 'image')} is {img.shape[1]}x{img.shape[0]}, "
                         f"{_name(mask, 'mask')} is {hole.shape[1]}x{hole.shape[0]} (width x height; EXIF "
                         "orientation applied): draw the mask on the image as it is displayed")
    if hole.all():
        raise ValueError(f"{_name(mask, 'the mask')} covers every pixel of the image: nothing to condition on"
                         + ("" if invert else " (if white marks the pixels to keep, use invert=True / --invert-mask)"))
    return img, hole


def _name(x: Any, default: str) -> str:
    return f"{default.split()[-1]} {x}" if isinstance(x, (str, os.PathLike)) else default


# ---------------------------------------------------------------------------------------------- many inputs, outputs
@dataclass
class Pair:
    """One image and its mask, and the name its results are written under (the image's file name stem)."""

    name: str
    image: Path
    mask: Path


def _files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in extensions)


def pair_inputs(paths: Sequence[str | os.PathLike]) -> list[Pair]:
    """The (image, mask) pairs of a command line: ``IMAGE_FOLDER MASK_FOLDER`` (paired by file name without the
    extension: ``a.jpg`` with ``a.png``) or ``IMAGE MASK [IMAGE MASK ...]``. Checks that every path exists and every
    file has its partner; the error names each unpaired file. Errors: FileNotFoundError, ValueError."""
    paths = [Path(p).expanduser() for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
    folders = [p.is_dir() for p in paths]
    if any(folders):
        if len(paths) == 1:
            raise ValueError(f"{paths[0]} is a folder of images: give the folder of their masks after it")
        if len(paths) != 2 or not all(folders):
            raise ValueError("give either two folders (images, then masks) or image/mask file pairs, not a mix: "
                             + ", ".join(f"{p}{'/' if d else ''}" for p, d in zip(paths, folders)))
        images, masks = _files(paths[0], IMAGE_EXTENSIONS), _files(paths[1], MASK_EXTENSIONS)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {paths[0]}")
        by_stem: dict[str, list[Path]] = {}
        for m in masks:
            by_stem.setdefault(m.stem, []).append(m)
        twice = [", ".join(p.name for p in v) for v in by_stem.values() if len(v) > 1]
        if twice:
            raise ValueError(f"several masks for one image name in {paths[1]}: {'; '.join(twice)}")
        stems = [p.stem for p in images]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise ValueError(f"several images with one name in {paths[0]}: " + ", ".join(
                p.name for p in images if p.stem in dup))
        lonely_images = [p.name for p in images if p.stem not in by_stem]
        lonely_masks = [m.name for m in masks if m.stem not in set(stems)]
        if lonely_images or lonely_masks:
            parts = []
            if lonely_images:
                parts.append(f"images without a mask in {paths[1]}: {', '.join(lonely_images)}")
            if lonely_masks:
                parts.append(f"masks without an image in {paths[0]}: {', '.join(lonely_masks)}")
            raise ValueError("unpaired files (an image and its mask share a file name, e.g. a.jpg and a.png): "
                             + "; ".join(parts))
        return [Pair(p.stem, p, by_stem[p.stem][0]) for p in images]
    if len(paths) % 2:
        raise ValueError(f"image/mask files come in pairs: {len(paths)} files given (the last, {paths[-1]}, has no "
                         "partner)")
    pairs = [Pair(paths[i].stem, paths[i], paths[i + 1]) for i in range(0, len(paths), 2)]
    names = [p.name for p in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"several images named {', '.join(dup)}: their results would share file names; rename "
                         "them or run them separately")
    return pairs


@dataclass
class OutputPlan:
    """What a run will write into a folder, checked before any work (see :func:`plan_outputs`)."""

    out: Path
    files: dict[str, list[Path]]  # name -> the files its results go to (n results, then the grid if any)
    skip: list[str] = field(default_factory=list)  # names whose results all exist (--skip-existing)
    replace: list[Path] = field(default_factory=list)  # existing files that will be replaced
    remove: dict[str, list[Path]] = field(default_factory=dict)  # name -> older results of it beyond n, removed

    def todo(self, name: str) -> bool:
        return name not in self.skip

    def summary(self) -> str:
        """A sentence on what happens to files already there ('' when nothing does)."""
        parts = []
        if self.skip:
            parts.append(f"skipping {len(self.skip)} image(s) whose results exist")
        if self.replace:
            parts.append(f"replacing {len(self.replace)} existing file(s)")
        stale = sum(len(v) for v in self.remove.values())
        if stale:
            parts.append(f"removing {stale} older result(s) beyond this run's n")
        return "; ".join(parts)


def result_names(name: str, n: int, grid: bool = True) -> list[str]:
    """File names of the n results of image ``name`` and of its grid: ``name_00.png`` ... ``name_grid.png``."""
    width = max(2, len(str(n - 1)))
    return [f"{name}_{i:0{width}d}.png" for i in range(n)] + ([f"{name}_grid.png"] if grid else [])


def plan_outputs(out: str | os.PathLike, names: Sequence[str], n: int, *, grid: bool = True, overwrite: bool = False,
                 skip_existing: bool = False) -> OutputPlan:
    """Check an output folder before any work: it is a folder (or can be created) and writable, and writing the
    results of ``names`` (n each, see :func:`result_names`) replaces no file unless ``overwrite``, and leaves no
    older results of the same names beside the new ones (``name_NN.png`` beyond n: refused, or removed with
    ``overwrite``). ``skip_existing``: names whose n results all exist are skipped; the partial results of the
    others (this tool's file names only) are replaced. Errors: FileExistsError, PermissionError, ValueError."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} is a file, not a folder: choose a folder for -o/--out")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {probe}: choose another -o/--out")
    plan = OutputPlan(out, {name: [out / f for f in result_names(name, n, grid)] for name in names})
    if not out.exists():
        return plan
    present = {p.name for p in out.iterdir()}
    conflicts: list[Path] = []
    for name, files in plan.files.items():
        mine = {f.name for f in files}
        pattern = re.compile(re.escape(name) + r"_\d{2,}\.png")
        older = sorted(out / f for f in present if f not in mine and pattern.fullmatch(f))
        existing = [f for f in files if f.name in present]
        if skip_existing and all(f.name in present for f in files[:n]) and not older:
            plan.skip.append(name)
            continue
        if older:
            if not overwrite:
                raise FileExistsError(f"{out} holds older results of {name} beyond this run's {n} ("
                                      f"{', '.join(p.name for p in older[:3])}{' ...' if len(older) > 3 else ''}): "
                                      "they would mix with the new ones; pass --overwrite to replace and remove "
                                      "them, or choose another -o/--out")
            plan.remove[name] = older
        if existing and not (overwrite or skip_existing):
            conflicts.extend(existing)
        plan.replace.extend(existing)
    if conflicts:
        shown = ", ".join(p.name for p in conflicts[:3]) + (f" and {len(conflicts) - 3} more" if len(conflicts) > 3
                                                            else "")
        raise FileExistsError(f"{out} already holds {shown}: pass --overwrite to replace them, --skip-existing to "
                              "keep finished images, or choose another -o/--out")
    return plan
