"""Inference: the path of one call, ``sample(image, mask, n)``.

read and check image and mask (any size) -> bring both to the model's resolution S (image: bilinear with half-pixel
centres and no antialiasing, as the official ``test.py``'s cv2 resize; mask: a model pixel is a hole when any input
pixel it covers is one, so thin holes survive) -> masked = x * (1 - m) -> condition network once -> the sampler
draws n structure maps as one batch -> codebook vectors -> texture generator on the n maps as one batch ->
completion at model size -> bilinear back to the input's size, composited with the input's own mask so that every
known pixel is the input's, bit for bit -> n images at the input's size. Each step appears once.

:class:`Inpainter` holds a loaded model (:mod:`pyinpaint.modelfile`); :func:`sample` loads and caches one per
(model directory, device).
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import secrets
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pyinpaint import bounds
from pyinpaint.modelfile import Model, load_model
from pyinpaint.models.texture import complete
from pyinpaint.threads import check_threads, sampling_work, use_threads

ImageLike = Union[str, "os.PathLike[str]", Image.Image, np.ndarray, torch.Tensor]
MaskLike = ImageLike
Progress = Callable[[int, int], Any]

# Structure samplers; all draw the same codes for a seed. The first is the default. "graph" is the cached sampler
# replayed from a CUDA graph (CUDA devices only; not yet measured on a GPU).
SAMPLERS = ("cached", "naive", "graph")


class InpaintWarning(UserWarning):
    """Something about the input was changed or is degenerate (colour conversion, empty mask, ...)."""


_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(msg: str) -> None:
    if sys.version_info >= (3, 12):  # point at the caller's line, outside pyinpaint
        warnings.warn(msg, InpaintWarning, skip_file_prefixes=(_HERE,))
    else:
        warnings.warn(msg, InpaintWarning, stacklevel=3)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None: CUDA when available, else the CPU. An explicit CUDA device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asked for, but torch sees no CUDA device")
    return dev


# ---------------------------------------------------------------------------------------------- inputs
def _pil_to_rgb(im: Image.Image, what: str) -> np.ndarray:
    from pyinpaint.data import _to_rgb  # the loader's one colour conversion (16-bit, palette, alpha rules)

    mode = im.mode
    if mode != "RGB":
        if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
            _warn(f"{what} has an alpha channel (mode {mode}): converted to RGB, alpha dropped (not composited)")
        elif mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            _warn(f"{what} is greyscale (mode {mode}): converted to RGB")
        elif mode == "P":
            _warn(f"{what} is a palette image: converted to RGB")
        else:
            _warn(f"{what} has mode {mode}: converted to RGB")
    return np.array(_to_rgb(im), dtype=np.uint8)


def _check_finite_range(a: np.ndarray, lo: float, hi: float, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{what} values must be in [{lo:g}, {hi:g}], found [{a.min():g}, {a.max():g}]")


def read_image(image: ImageLike) -> np.ndarray:
    """Any accepted image -> H x W x 3 uint8 RGB.

    Accepted: a file path; a PIL image; a numpy array H x W x 3 (uint8 0..255, or float in [0, 1]);
    a torch tensor 3 x H x W (float in [0, 1], or uint8), optionally with a leading batch dimension of 1.
    Greyscale (H x W, 1 channel), RGBA (4 channels, alpha dropped) and palette images are converted to RGB with
    a warning. Floats become 8-bit values by round(255 x). Errors: ValueError."""
    what = "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        what = f"image {path}"
        try:
            with Image.open(path) as im:
                im.load()
                return _pil_to_rgb(im, what)
        except FileNotFoundError:
            raise FileNotFoundError(f"image file {path} does not exist") from None
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, what)
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3 or t.shape[0] not in (1, 3, 4):
            hint = " (channels first: 3 x H x W)" if t.dim() == 3 and t.shape[-1] in (3, 4) else ""
            raise ValueError(f"image tensor must be 3 x H x W{hint}, got shape {tuple(image.shape)}")
        a = t.cpu().permute(1, 2, 0).numpy()
        if t.dtype == torch.uint8:
            return _channels_to_rgb(a, what)
        if not t.is_floating_point():
            raise ValueError(f"image tensor must be float in [0, 1] or uint8, got dtype {t.dtype}")
        a = a.astype(np.float32)
        _check_finite_range(a, 0.0, 1.0, "image tensor")
        return _channels_to_rgb(np.round(a * 255.0).astype(np.uint8), what)
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"image array must be H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (greyscale), "
                             f"got shape {image.shape}")
        if a.dtype == np.uint8:
            return _channels_to_rgb(a, what)
        if a.dtype.kind == "f":
            _check_finite_range(a, 0.0, 1.0, "image array (float: values in [0, 1]; pass uint8 for 0..255)")
            return _channels_to_rgb(np.round(a.astype(np.float64) * 255.0).astype(np.uint8), what)
        if a.dtype.kind in "iu":
            _check_finite_range(a, 0, 255, "image array")
            return _channels_to_rgb(a.astype(np.uint8), what)
        raise ValueError(f"image array must be uint8 or float, got dtype {a.dtype}")
    raise ValueError(f"unsupported image type {type(image).__name__}: pass a path, a PIL image, an H x W x 3 uint8 "
                     "array or a 3 x H x W float tensor in [0, 1]")


def _channels_to_rgb(a: np.ndarray, what: str) -> np.ndarray:
    if a.shape[2] == 1:
        _warn(f"{what} is greyscale: converted to RGB")
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        _warn(f"{what} is RGBA: converted to RGB, alpha dropped (not composited)")
        a = a[:, :, :3]
    return np.array(a, dtype=np.uint8, order="C")  # a copy: the caller may change its array later


def read_mask(mask: MaskLike) -> np.ndarray:
    """Any accepted mask -> H x W bool, True = hole (to fill).

    Accepted: a file path (single-channel, or colour with equal channels; any nonzero value is a hole), a PIL
    image (same rule), a numpy array or torch tensor H x W (also 1 x H x W, 1 x 1 x H x W, H x W x 1) of bool,
    integers or floats: nonzero / True / 255 = hole. Errors: ValueError (NaN, negative values, several channels)."""
    if isinstance(mask, (str, os.PathLike)):
        from pyinpaint.data import load_mask

        path = Path(mask)
        if not path.exists():
            raise FileNotFoundError(f"mask file {path} does not exist")
        return load_mask(path)[0].numpy() > 0
    if isinstance(mask, Image.Image):
        mode = mask.mode
        if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
            a = np.asarray(mask)
        elif mode in ("LA", "La"):
            a = np.asarray(mask.getchannel("L"))
        elif mode in ("RGB", "RGBA", "RGBX", "P", "PA"):
            rgb = np.asarray(mask.convert("RGBA") if mode.startswith("P") else mask)[..., :3]
            if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                raise ValueError(f"mask must be single-channel: the {mode} mask image has differing colour channels")
            a = rgb[..., 0]
        else:
            raise ValueError(f"mask must be single-channel: PIL mode {mode} is not supported")
        return a > 0
    if isinstance(mask, torch.Tensor):
        a = mask.detach().cpu().numpy()
    elif isinstance(mask, np.ndarray):
        a = mask
    else:
        raise ValueError(f"unsupported mask type {type(mask).__name__}: pass a path, a PIL image, or an H x W "
                         "array or tensor (nonzero = hole)")
    shape = a.shape
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise ValueError(f"mask must be H x W (single channel), got shape {shape}")
    if a.dtype == np.bool_:
        return a.copy()
    if a.dtype.kind not in "iuf":
        raise ValueError(f"mask must be bool, integer or float, got dtype {a.dtype}")
    if a.dtype.kind == "f" and np.isnan(a).any():
        raise ValueError("mask contains NaN values")
    if a.size and a.min() < 0:
        raise ValueError(f"mask values must be >= 0 (nonzero = hole), found {a.min():g}")
    return a != 0


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass
class Prepared:
    """One image and mask, read, checked and brought to the model's resolution."""

    image: np.ndarray  # H x W x 3 uint8, the input as given (RGB)
    hole: np.ndarray  # H x W bool, True = fill
    x: torch.Tensor  # [1, 3, S, S] in [-1, 1]
    m: torch.Tensor  # [1, 1, S, S] in {0, 1}

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the input."""
        return self.hole.shape

    @property
    def masked(self) -> torch.Tensor:
        return self.x * (1.0 - self.m)


@dataclass
class Result:
    """Everything one call produced, in output order (ranked when asked)."""

    images: list[Image.Image]  # at the input's size
    seed: int
    order: list[int]  # index of each output among the n samples drawn (sampling order)
    codes: torch.Tensor | None = None  # [n, S/8, S/8] sampled top codes
    completed: torch.Tensor | None = None  # [n, 3, S, S] completions at model size, in [-1, 1]
    scores: torch.Tensor | None = None  # [n] mean discriminator score (rank=True)
    prepared: Prepared | None = None


class Inpainter:
    """A loaded model, ready to fill holes. ``Inpainter.load(path)``, then ``.sample(image, mask, n)``.

    One Inpainter may be shared by threads: calls run concurrently and give what they give alone (the networks
    are frozen in eval mode; the sampler's state belongs to its call), except ``sampler="graph"``, whose captured
    CUDA graphs are shared: those calls take turns (a lock)."""

    def __init__(self, model: Model, device: str | torch.device | None = None):
        self._graph_lock = threading.Lock()
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        for m in (model.vqvae, model.structure, model.generator, model.discriminator):
            if m is not None:
                m.eval().requires_grad_(False)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device | None = None) -> "Inpainter":
        """A model directory (see :mod:`pyinpaint.modelfile`); ``device`` None = CUDA if available, else CPU."""
        dev = resolve_device(device)
        return cls(load_model(path, dev), dev)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def __repr__(self) -> str:
        return (f"Inpainter({self.model.path or 'in memory'}, {self.image_size}px, device {self.device}, "
                f"discriminator {'yes' if self.model.discriminator is not None else 'no'})")

    # ------------------------------------------------------------------ the steps of one call
    def prepare(self, image: ImageLike, mask: MaskLike) -> Prepared:
        """Read and check image and mask, and bring them to the model's resolution S.

        Image: bilinear with half-pixel centres, no antialiasing (official ``test.py``'s cv2.INTER_LINEAR).
        Mask: a model pixel is a hole when any input pixel it covers is a hole (adaptive max pooling), so
        holes never vanish, however thin."""
        from pyinpaint.data import preprocess

        img = read_image(image)
        hole = read_mask(mask)
        if img.shape[:2] != hole.shape:
            raise ValueError(f"image and mask sizes differ: image is {img.shape[1]}x{img.shape[0]}, mask is "
                             f"{hole.shape[1]}x{hole.shape[0]} (width x height)")
        if hole.all():
            raise ValueError("the mask covers every pixel of the image: nothing to condition on")
        s = self.image_size
        x = preprocess(img, s, "resize")[None].to(self.device)
        m = torch.from_numpy(hole).to(self.device, torch.float32)[None, None]
        m = F.adaptive_max_pool2d(m, (s, s)) if m.shape[-2:] != (s, s) else m
        if hole.any() and bool(m.min() > 0):
            _warn(f"at the model's resolution ({s}x{s}) the hole covers every pixel: the structure is sampled "
                  "without context (known pixels are still kept at full resolution)")
        return Prepared(img, hole, x, m)

    def check_options(self, n: int, *, seed: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                      sampler: str = "cached", rank: bool = False) -> int:
        """Validate the sampling options before any work; returns the seed to use (drawn when None)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer (got {n!r})")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: available {', '.join(SAMPLERS)}")
        if sampler == "graph" and self.device.type != "cuda":
            raise ValueError(f"sampler='graph' replays a CUDA graph: it needs a CUDA device (this Inpainter is on "
                             f"{self.device}); use 'cached'")
        try:
            ok = not isinstance(temperature, bool) and math.isfinite(float(temperature)) and float(temperature) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"temperature must be a positive number (got {temperature!r})")
        k = self.model.structure.cfg.num_embeddings
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer))
                                  or not 1 <= top_k <= k):
            raise ValueError(f"top_k must be None or an integer in [1, {k}] (got {top_k!r})")
        if rank and self.model.discriminator is None:
            raise ValueError("rank=True needs a discriminator, and this model file has none (export or convert it "
                             "with its discriminator)")
        if seed is None:
            return secrets.randbelow(2 ** 31)
        try:
            return operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an integer or None (got {seed!r})") from None

    @torch.inference_mode()
    def sample_structures(self, prepared: Prepared, n: int, *, seed: int, temperature: float = 1.0,
                          top_k: int | None = None, sampler: str = "cached", progress: Progress | None = None):
        """n structure maps for one image as one batch: the condition network once, then the sampler.
        Returns :class:`pyinpaint.sampler.Sampled` (codes [n, s, s], embeddings [n, D, s, s])."""
        from pyinpaint import sampler as sampling

        st = self.model.structure
        h = st.condition(prepared.masked, prepared.m)
        h = h.expand(n, -1, -1, -1)
        total = h.shape[-1] * h.shape[-2]
        report = None if progress is None else (lambda p: progress(p + 1, total))
        run = {"cached": sampling.sample_cached, "naive": sampling.sample_naive,
               "graph": functools.partial(sampling.sample_cached, cuda_graph=True)}.get(sampler)
        if run is not None:
            return run(st.pixelcnn, h, self.model.codebook, seed=seed, temperature=temperature, top_k=top_k,
                       progress=report)
        raise ValueError(f"unknown sampler {sampler!r}: available {', '.join(SAMPLERS)}")

    @torch.inference_mode()
    def complete(self, prepared: Prepared, structures: torch.Tensor) -> torch.Tensor:
        """The texture generator on n structure maps [n, D, s, s] as one batch -> completions [n, 3, S, S]
        (generated pixels in the model-size hole, the resized input elsewhere), in [-1, 1]."""
        n = structures.shape[0]
        masked = prepared.masked.expand(n, -1, -1, -1)
        m = prepared.m.expand(n, -1, -1, -1)
        raw = self.model.generator(masked, m, structures)
        return complete(raw, masked, m)

    @torch.inference_mode()
    def score(self, prepared: Prepared, completed: torch.Tensor) -> torch.Tensor:
        """Mean discriminator score [n] of completions at model size (higher = judged more real)."""
        if self.model.discriminator is None:
            raise ValueError("this model file has no discriminator: it cannot score samples")
        return self.model.discriminator(completed, prepared.m).float().mean(dim=1)

    @torch.inference_mode()
    def to_input_size(self, prepared: Prepared, completed: torch.Tensor) -> list[Image.Image]:
        """Completions at model size -> images at the input's size: bilinear resize (antialiased when shrinking),
        then the input's own full-resolution mask decides: known pixels are the input's, bit for bit."""
        h, w = prepared.size
        s = completed.shape[-1]
        hole = torch.from_numpy(prepared.hole)[:, :, None]
        known = torch.from_numpy(prepared.image)
        out = []
        for c in completed:  # one at a time: full-size float images of large inputs are big
            up = c[None]
            if (h, w) != tuple(c.shape[-2:]):
                up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False,
                                   antialias=h < s or w < s)
            fill = up[0].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0).cpu()
            out.append(Image.fromarray(torch.where(hole, fill, known).numpy(), "RGB"))
        return out

    def decode_structures(self, codes: torch.Tensor) -> torch.Tensor:
        """Sampled top codes [n, s, s] -> pictures of the structures [n, 3, S, S] in [-1, 1] (the VQ-VAE decoder
        with the bottom level zeroed, as the official training visualisations)."""
        vq = self.model.vqvae
        with torch.inference_mode():
            quant_t = vq.encoder.vq_t.lookup(codes.to(self.device))
            zeros_b = torch.zeros(codes.shape[0], vq.cfg.embedding_dim, vq.cfg.bottom_size, vq.cfg.bottom_size,
                                  device=self.device)
            return vq.decode(quant_t, zeros_b).clamp(-1, 1)

    # ------------------------------------------------------------------ the whole call
    def inpaint(self, image: ImageLike, mask: MaskLike, n: int = 10, *, seed: int | None = None,
                temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached", rank: bool = False,
                progress: Progress | None = None, threads: int | None = None,
                max_batch: int | None = None) -> Result:
        """:meth:`sample` with everything kept: the seed used, sampled codes, model-size completions, scores."""
        seed = self.check_options(n, seed=seed, temperature=temperature, top_k=top_k, sampler=sampler, rank=rank)
        threads = check_threads(threads)
        n = int(n)
        with use_threads(threads, device=self.device) as th:
            prepared = self.prepare(image, mask)
            if not prepared.hole.any():
                _warn("the mask is empty (no pixel to fill): returning copies of the input")
                return Result([Image.fromarray(prepared.image, "RGB") for _ in range(n)], seed, list(range(n)),
                              prepared=prepared)
            plan = bounds.plan(self.model, n, prepared.size, max_batch=max_batch, device=self.device)
            if len(plan.batches) > 1:
                _warn(plan.describe())
            parts = []
            for i, (start, size) in enumerate(plan.batches):
                report = None
                if progress is not None:
                    report = functools.partial(lambda off, done, total: progress(off * total + done,
                                                                                 total * len(plan.batches)), i)
                th.phase(sampling_work(self.model.structure.pixelcnn, size))
                with self._graph_lock if sampler == "graph" else contextlib.nullcontext():
                    sampled = self.sample_structures(prepared, size, seed=bounds.batch_seed(seed, i),
                                                     temperature=float(temperature), top_k=top_k, sampler=sampler,
                                                     progress=th.wrap(report))
                th.phase(math.inf)
                completed = self.complete(prepared, sampled.embeddings)
                scores = self.score(prepared, completed).cpu() if rank else None
                parts.append((sampled.codes.cpu(), completed.cpu(), scores))
                del sampled, completed
            codes = torch.cat([c for c, _, _ in parts])
            completed = torch.cat([c for _, c, _ in parts])
            scores, order = None, torch.arange(n)
            if rank:
                scores = torch.cat([s for _, _, s in parts])
                order = torch.sort(scores, descending=True, stable=True).indices
                scores, codes, completed = scores[order], codes[order], completed[order]
            del parts
            images = self.to_input_size(prepared, completed.to(self.device))  # kept on the host between batches
        for i, (im, j) in enumerate(zip(images, order.tolist())):
            im.info.update({"seed": seed, "sample": j})
            if scores is not None:
                im.info["score"] = float(scores[i])
        return Result(images, seed, order.tolist(), codes, completed, scores, prepared)

    def sample(self, image: ImageLike, mask: MaskLike, n: int = 10, *, seed: int | None = None,
               temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached", rank: bool = False,
               progress: Progress | None = None, threads: int | None = None,
               max_batch: int | None = None) -> list[Image.Image]:
        """n diverse completions of ``image`` where ``mask`` is nonzero, as PIL images at the input's size.

        image: path, PIL image, H x W x 3 uint8 array or 3 x H x W float tensor in [0, 1] (greyscale, RGBA and
        palette images are converted with a warning). mask: path, PIL image, H x W array or tensor; nonzero /
        True / 255 = fill. Pixels outside the hole are returned exactly as given. ``seed`` fixes the samples
        (None: a fresh one, stored in each image's ``info["seed"]``); ``temperature`` and ``top_k`` shape the
        code distribution; ``rank`` orders the samples by the discriminator's mean score, best first;
        ``progress(done, total)`` is called after each sampled position (of all batches).
        ``threads``: CPU threads (None: chosen per call from the work and the machine's load, see
        :mod:`pyinpaint.threads`; the caller's ``torch.set_num_threads`` is restored afterwards). ``max_batch``:
        most samples drawn as one batch (None: as many as fit a fixed memory budget for this model and image
        size, see :mod:`pyinpaint.bounds`); a larger n is drawn in batches, with a warning. A call whose memory
        would exceed what the machine has available is refused (ValueError naming the largest n that fits).
        """
        return self.inpaint(image, mask, n, seed=seed, temperature=temperature, top_k=top_k, sampler=sampler,
                            rank=rank, progress=progress, threads=threads, max_batch=max_batch).images


# ---------------------------------------------------------------------------------------------- sample()
_CACHE: dict[tuple[str, str], Inpainter] = {}
_CACHE_LOCK = threading.Lock()


DEFAULT_MODEL = Path(_HERE) / "weights" / "faces-128"  # shipped inside the package (see its README.md)


def default_model() -> Path:
    """The model directory :func:`sample` uses when none is given: the faces model shipped with the package."""
    if not (DEFAULT_MODEL / "model.safetensors").is_file():
        raise FileNotFoundError(f"the default model is missing from this installation ({DEFAULT_MODEL}): reinstall "
                                "pyinpaint, or pass model=PATH, a model directory written by `pyinpaint export` or "
                                "`pyinpaint convert-official`")
    return DEFAULT_MODEL


def get_inpainter(model: str | os.PathLike | Inpainter | None, device: str | torch.device | None = None) -> Inpainter:
    """The cached :class:`Inpainter` of a model directory (None: the default model) on a device (loaded on first
    use)."""
    if isinstance(model, Inpainter):
        return model
    if model is None:
        model = default_model()
    dev = resolve_device(device)
    key = (str(Path(model).expanduser().resolve()), str(dev))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Inpainter.load(key[0], dev)
        return _CACHE[key]


def clear_cache() -> None:
    """Forget the Inpainters :func:`sample` loaded (e.g. after a model directory was rewritten)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def sample(image: ImageLike, mask: MaskLike, n: int = 10, *, seed: int | None = None, temperature: float = 1.0,
           top_k: int | None = None, model: str | os.PathLike | Inpainter | None = None,
           device: str | torch.device | None = None, sampler: str = "cached", rank: bool = False,
           progress: Progress | None = None, threads: int | None = None,
           max_batch: int | None = None) -> list[Image.Image]:
    """n diverse completions of ``image`` where ``mask`` is nonzero (see :meth:`Inpainter.sample`), with the
    model directory ``model`` (default: the faces model shipped with pyinpaint, 128 px) loaded once per
    (model, device) and cached."""
    return get_inpainter(model, device).sample(image, mask, n, seed=seed, temperature=temperature, top_k=top_k,
                                               sampler=sampler, rank=rank, progress=progress, threads=threads,
                                               max_batch=max_batch)
