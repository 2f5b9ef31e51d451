"""The work behind ``pyinpaint serve``, free of any web framework: limits, decoding uploads, the one mapping of a
request's options to :meth:`Inpainter.inpaint` keyword arguments, the models by name (each loaded once), and the
queue (one sampling at a time, the others waiting with their place known).

Everything the page can name is a key of an in-memory table (an upload id, a job id, a model name from the
server's list): no request names a file of the server's disk.
"""
from __future__ import annotations

import io
import itertools
import math
import secrets
import threading
import time
import warnings
import zipfile
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pyinpaint.blend import BLENDS
from pyinpaint.crop import STRATEGIES
from pyinpaint.inpainter import SHIPPED, WEIGHTS, Inpainter
from pyinpaint.io import read_image, read_mask


class RequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status, the message is shown on the page as is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def shipped_models() -> dict[str, str | Path]:
    """The models shipped inside the package, by the name the page's model menu shows (name -> what
    :meth:`Inpainter.load` takes)."""
    return {name: WEIGHTS / folder for name, folder in SHIPPED.items()}


def strategies() -> tuple[str, ...]:
    """The fill strategies the page offers (``Inpainter.inpaint``'s ``strategy=``; the first is the default)."""
    return STRATEGIES


def blends() -> tuple[str, ...]:
    """How fills meet the photo, as the page offers it (``Inpainter.inpaint``'s ``blend=``; the first is the
    default)."""
    return BLENDS


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how much the server keeps in memory."""

    max_upload_bytes: int = 20 * 2 ** 20  # one request's body
    max_side: int = 4096  # image and mask width and height, pixels
    max_n: int = 32  # fills per request
    keep_bytes: int = 512 * 2 ** 20  # uploads and finished results kept (oldest forgotten first)

    def check_upload_size(self, size: int | None) -> None:
        if size is not None and size > self.max_upload_bytes:
            raise RequestError(f"the upload is {_mb(size)}, larger than this server's limit of "
                               f"{_mb(self.max_upload_bytes)} (pyinpaint serve --max-upload-mb)", 413)


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"


# ---------------------------------------------------------------------------------------------- decoding
def _open(data: bytes, what: str, limits: Limits) -> Image.Image:
    """A PIL image of an uploaded file, its size checked before its pixels are decoded."""
    if not data:
        raise RequestError(f"the {what} file is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, Image.DecompressionBombError):
        raise RequestError(f"the {what} file is not an image this server can read (PNG, JPEG, WebP, BMP, TIFF, "
                           "GIF)", 415) from None
    w, h = im.size
    if w > limits.max_side or h > limits.max_side:
        raise RequestError(f"the {what} is {w}x{h} pixels; this server takes at most {limits.max_side} pixels a "
                           "side (pyinpaint serve --max-side)", 413)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f"the {what} file is damaged: {e}", 415) from None
    return im


def decode_image(data: bytes, limits: Limits) -> tuple[np.ndarray, list[str]]:
    """An uploaded photo -> (H x W x 3 uint8, notes on what was converted: alpha dropped, greyscale, ...)."""
    im = _open(data, "photo", limits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rgb = read_image(im)
        except ValueError as e:
            raise RequestError(f"the photo cannot be used: {e}", 415) from None
    return rgb, [str(w.message).replace("image ", "the photo ", 1) for w in caught]


def decode_mask(data: bytes, limits: Limits, size: tuple[int, int] | None = None) -> np.ndarray:
    """An uploaded mask file (nonzero / white = hole) -> H x W bool; ``size`` (height, width) is the photo's."""
    im = _open(data, "mask", limits)
    try:
        hole = read_mask(im)
    except ValueError as e:
        raise RequestError(f"the mask cannot be used: {e}", 415) from None
    if size is not None and hole.shape != tuple(size):
        raise RequestError(f"the mask is {hole.shape[1]}x{hole.shape[0]} pixels but the photo is {size[1]}x{size[0]}: "
                           "they must be the same size")
    return hole


def encode_png(a: np.ndarray | Image.Image) -> bytes:
    im = a if isinstance(a, Image.Image) else Image.fromarray(a)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- options
def _int(fields: Mapping[str, str], name: str, lo: int, hi: int | None, default: int | None) -> int | None:
    raw = (fields.get(name) or "").strip()
    if raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise RequestError(f"{name} must be a whole number (got {raw!r})") from None
    if v < lo or (hi is not None and v > hi):
        raise RequestError(f"{name} must be between {lo} and {hi} (got {v})" if hi is not None else
                           f"{name} must be at least {lo} (got {v})")
    return v


def inpaint_options(fields: Mapping[str, str], models: "Models", limits: Limits) -> tuple[str, dict[str, Any]]:
    """The one place where a request's form fields become (model name, :meth:`Inpainter.inpaint` keyword arguments).
    Fields: n, seed (empty: a fresh one), temperature, top_k (empty: all codes), model (a name from the server's
    list), strategy, blend. Checks what it can without the model; the model checks the rest (e.g. top_k's upper
    bound)."""
    model = (fields.get("model") or "").strip() or models.default
    if model not in models.names:
        raise RequestError(f"unknown model {model!r}: this server has {', '.join(models.names)}")
    raw_t = (fields.get("temperature") or "").strip() or "1"
    try:
        temperature = float(raw_t)
    except ValueError:
        temperature = math.nan
    if not (math.isfinite(temperature) and temperature > 0):
        raise RequestError(f"temperature must be a positive number (got {raw_t!r})")
    strategy = (fields.get("strategy") or "").strip() or strategies()[0]
    if strategy not in strategies():
        raise RequestError(f"unknown strategy {strategy!r}: this server offers {', '.join(strategies())}")
    blend = (fields.get("blend") or "").strip() or blends()[0]
    if blend not in blends():
        raise RequestError(f"unknown blend {blend!r}: this server offers {', '.join(blends())}")
    kwargs: dict[str, Any] = {"n": _int(fields, "n", 1, limits.max_n, 10),
                              "seed": _int(fields, "seed", 0, 2 ** 63 - 1, None),
                              "temperature": temperature,
                              "top_k": _int(fields, "top_k", 1, None, None), "strategy": strategy,
                              "blend": blend}
    return model, kwargs


# ---------------------------------------------------------------------------------------------- models
class Models:
    """The models the page may choose, by name; each is loaded on first use, once, and kept."""

    def __init__(self, choices: Mapping[str, str | Path], default: str | None = None, device: str | None = None):
        if not choices:
            raise ValueError("no model to serve")
        self._choices = dict(choices)
        self.default = default or next(iter(self._choices))
        if self.default not in self._choices:
            raise ValueError(f"unknown model {self.default!r}: available {', '.join(self._choices)}")
        self.device = device
        self._loaded: dict[str, Inpainter] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._choices)

    def device_name(self) -> str:
        """The device the models run on: the default model's once loaded, else the one asked for ("auto": CUDA when
        available, else the CPU)."""
        with self._lock:
            inp = self._loaded.get(self.default)
        return str(inp.device) if inp is not None else str(self.device or "auto")

    def get(self, name: str) -> Inpainter:
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = Inpainter.load(self._choices[name], device=self.device)
            return self._loaded[name]


# ---------------------------------------------------------------------------------------------- memory
class Kept:
    """Items by id, the oldest forgotten once the total size passes a budget (the newest item is always kept)."""

    def __init__(self, budget: int):
        self.budget = budget
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item: Any, nbytes: int, key: str | None = None) -> str:
        key = key or secrets.token_urlsafe(12)
        with self._lock:
            self._items[key] = (item, nbytes)
            total = sum(b for _, b in self._items.values())
            while total > self.budget and len(self._items) > 1:
                _, (_, b) = self._items.popitem(last=False)
                total -= b
        return key

    def resize(self, key: str, nbytes: int) -> None:
        with self._lock:
            if key in self._items:
                self._items[key] = (self._items[key][0], nbytes)

    def get(self, key: str, what: str) -> Any:
        with self._lock:
            if key not in self._items:
                raise RequestError(f"no {what} {key!r} on this server (it may have been forgotten to free memory, or "
                                   "the server restarted): open the photo again", 404)
            return self._items[key][0]


@dataclass
class Upload:
    image: np.ndarray  # H x W x 3 uint8, as decoded
    png: bytes  # the same pixels as PNG: what the page shows and paints on
    notes: list[str]


def store_upload(kept: Kept, data: bytes, limits: Limits) -> tuple[str, Upload]:
    image, notes = decode_image(data, limits)
    up = Upload(image, encode_png(image), notes)
    return kept.put(up, image.nbytes + len(up.png)), up


# ---------------------------------------------------------------------------------------------- the queue
@dataclass
class Job:
    id: str
    upload_id: str
    model: str
    kwargs: dict[str, Any]
    image: np.ndarray | None
    hole: np.ndarray | None
    state: str = "queued"  # queued -> running -> done | error
    done: int = 0
    total: int = 0
    error: str | None = None
    seed: int | None = None
    pngs: list[bytes] = field(default_factory=list)
    seconds: float | None = None


class Queue:
    """One worker thread runs the jobs one at a time, in the order they came; the others wait."""

    def __init__(self, models: Models, kept: Kept):
        self.models = models
        self.kept = kept
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pyinpaint-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, upload_id: str, upload: Upload, hole: np.ndarray, model: str, kwargs: dict[str, Any]) -> Job:
        if not hole.any():
            raise RequestError("the mask is empty: paint over the area to fill first")
        if hole.all():
            raise RequestError("the mask covers the whole photo: leave some of it to fill from")
        job = Job(secrets.token_urlsafe(12), upload_id, model, kwargs, upload.image, hole)
        with self._cond:
            if self._closed:
                raise RequestError("the server is shutting down", 503)
            self.kept.put(job, upload.image.nbytes, key=job.id)
            self._pending.append(job)
            self._cond.notify()
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        job: Job = self.kept.get(job_id, "job")
        with self._cond:
            out: dict[str, Any] = {"job": job.id, "state": job.state, "model": job.model}
            if job.state == "queued":
                ahead = list(itertools.takewhile(lambda j: j is not job, self._pending))
                out["position"] = 1 + sum(j.state == "queued" for j in ahead)  # 1 = the next to run
                out["ahead"] = len(ahead)  # jobs before it, the running one included
            elif job.state == "running":
                out.update(done=job.done, total=job.total)
            elif job.state == "done":
                out.update(seed=job.seed, n=len(job.pngs), seconds=round(job.seconds, 2),
                           images=[f"/api/jobs/{job.id}/{i}.png" for i in range(len(job.pngs))],
                           original=f"/api/images/{job.upload_id}.png", zip=f"/api/jobs/{job.id}.zip")
            else:
                out["error"] = job.error
        return out

    def result(self, job_id: str) -> Job:
        job: Job = self.kept.get(job_id, "job")
        if job.state != "done":
            raise RequestError(f"job {job_id} is {job.state}, it has no results" +
                               (f": {job.error}" if job.error else ""), 409)
        return job

    def zip(self, job_id: str) -> bytes:
        job = self.result(job_id)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
            for i, png in enumerate(job.pngs):
                z.writestr(f"fill_{i:02d}_seed{job.seed}.png", png)
        return buf.getvalue()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._pending[0]
                job.state = "running"
            try:
                self._work(job)
            except Exception as e:  # shown on the page; the worker goes on with the next job
                job.error = str(e) or type(e).__name__
                with self._cond:
                    job.state = "error"
            finally:
                job.image = job.hole = None
                with self._cond:
                    self._pending.popleft()

    def _work(self, job: Job) -> None:
        t0 = time.perf_counter()
        inp = self.models.get(job.model)

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        kwargs = dict(job.kwargs)
        res = inp.inpaint(job.image, job.hole, kwargs.pop("n"), progress=progress, **kwargs)
        pngs = [encode_png(im) for im in res.images]
        with self._cond:
            job.pngs, job.seed, job.seconds = pngs, res.seed, time.perf_counter() - t0
            job.state = "done"
        self.kept.resize(job.id, sum(len(p) for p in pngs))
