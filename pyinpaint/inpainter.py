"""Inference: the path of one call, ``sample(image, mask, n)``.

read and check image and mask (any size) -> plan the windows the model sees (:mod:`pyinpaint.crop`: the whole
image, or a square context window around each hole region) and bring each to the model's resolution S (mirrored to
a square, never stretched; image: bilinear with half-pixel centres and no antialiasing, as the official
``test.py``'s cv2 resize; mask: a model pixel is a hole when any input pixel it covers is one, so thin holes
survive) -> masked = x * (1 - m) -> condition network once per window -> the sampler draws n structure maps per
window, all windows as one batch -> codebook vectors -> texture generator on them as one batch (raw outputs at
model size) -> bilinear back to each window's size, blended into the known pixels (:mod:`pyinpaint.blend`: "poisson"
by default, or the official "paste" of the model-size completion) and written with the input's own mask, so that
every known pixel is the input's, bit for bit -> n images at the input's size. Each step appears once.

:class:`Inpainter` holds a loaded model (:mod:`pyinpaint.modelfile`); :func:`sample` loads and caches one per
(model directory, device). Models shipped in the package are known by name (:data:`SHIPPED`, ``pyinpaint models``).
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import secrets
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pyinpaint.io import ImageLike, InpaintWarning, MaskLike, read_image, read_mask, read_pair  # noqa: F401
from pyinpaint.io import resolve_device  # noqa: F401  (the package's one device rule)
from pyinpaint.io import warn as _warn
from pyinpaint import crop
from pyinpaint.crop import STRATEGIES, Window
from pyinpaint import bounds
from pyinpaint.blend import BLENDS, check_blend
from pyinpaint.modelfile import Model, load_model
from pyinpaint.models.texture import complete
from pyinpaint.threads import check_threads, sampling_work, use_threads

Progress = Callable[[int, int], Any]

# Sampling temperatures accepted: codes are drawn as argmax(logits / T + Gumbel noise) in float32, which overflows for
# tiny T; below 1e-3 the draw is the argmax anyway (use top_k=1), above 1e3 it is uniform noise.
TEMPERATURE = (1e-3, 1e3)

# Structure samplers; all draw the same codes for a seed. The first is the default. "graph" is the cached sampler
# replayed from a CUDA graph (CUDA devices only; not yet measured on a GPU).
SAMPLERS = ("cached", "naive", "graph")
# What the known region contributes to the structure (see Inpainter.sample_structures). The first is the default:
# "known" draws the same as "sampled" where the hole reaches every code, and measured no worse elsewhere
# (docs/evaluation.md), at the same speed or faster (docs/benchmarks.md).
CONTEXTS = ("known", "sampled")


# ---------------------------------------------------------------------------------------------- pipeline
@dataclass
class Prepared:
    """One image and mask, read and checked, and the windows the model sees brought to its resolution."""

    image: np.ndarray  # H x W x 3 uint8, the input as given (RGB)
    hole: np.ndarray  # H x W bool, True = fill
    x: torch.Tensor  # [k, 3, S, S] in [-1, 1], one per window
    m: torch.Tensor  # [k, 1, S, S] in {0, 1}
    windows: list[Window]  # k windows of the input (the whole image under "resize"), none overlapping
    strategy: str = "resize"  # the strategy used: "crop" or "resize"

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
    # with k windows (k = len(prepared.windows), 1 under "resize"), rows are window-major: row w * n + i is
    # window w of output i
    codes: torch.Tensor | None = None  # [k n, S/8, S/8] sampled top codes
    completed: torch.Tensor | None = None  # [k n, 3, S, S] completions at model size, in [-1, 1]
    scores: torch.Tensor | None = None  # [n] discriminator score, mean over the windows (rank=True)
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
    def load(cls, model: str | os.PathLike | None = None, device: str | torch.device | None = None) -> "Inpainter":
        """A shipped model by name (``"faces"``, see :func:`shipped_models`; None = the default) or a model directory
        (see :mod:`pyinpaint.modelfile`); ``device`` None = CUDA if available, else CPU."""
        dev = resolve_device(device)
        return cls(load_model(model_path(model), dev), dev)

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def __repr__(self) -> str:
        return (f"Inpainter({self.model.path or 'in memory'}, {self.image_size}px, device {self.device}, "
                f"discriminator {'yes' if self.model.discriminator is not None else 'no'})")

    # ------------------------------------------------------------------ the steps of one call
    def prepare(self, image: ImageLike, mask: MaskLike, strategy: str = "auto", invert: bool = False) -> Prepared:
        """Read and check image and mask, plan the windows the model sees and bring them to its resolution S.

        ``strategy``: "resize" (the whole image), "crop" (a square context window around each hole region) or
        "auto" (crop when the image is larger than the model and the windows are smaller than the image); see
        :mod:`pyinpaint.crop`. Each window is mirrored to a square (never stretched), then the image is resized
        bilinearly with half-pixel centres and no antialiasing (official ``test.py``'s cv2.INTER_LINEAR), the mask
        by adaptive max pooling: a model pixel is a hole when any input pixel it covers is a hole, so holes never
        vanish, however thin."""
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        img, hole = read_pair(image, mask, invert)
        s = self.image_size
        used, windows = crop.plan(hole, s, strategy)
        cuts = [crop.cut(img, hole, w, s) for w in windows]
        x = torch.stack([c[0] for c in cuts]).to(self.device)
        m = torch.stack([c[1] for c in cuts]).to(self.device)
        if hole.any() and bool((m.flatten(1).min(1).values > 0).any()):
            _warn(f"at the model's resolution ({s}x{s}) the hole covers every pixel of a window: its structure is "
                  "sampled without context (known pixels are still kept at full resolution)")
        return Prepared(img, hole, x, m, windows, used)

    def check_options(self, n: int, *, seed: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                      sampler: str = "cached", rank: bool = False, context: str = CONTEXTS[0],
                      blend: str = BLENDS[0]) -> int:
        """Validate the sampling options before any work; returns the seed to use (drawn when None)."""
        check_blend(blend)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be a positive integer (got {n!r})")
        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}: available {', '.join(CONTEXTS)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: available {', '.join(SAMPLERS)}")
        if sampler == "graph" and self.device.type != "cuda":
            raise ValueError(f"sampler='graph' replays a CUDA graph: it needs a CUDA device (this Inpainter is on "
                             f"{self.device}); use 'cached'")
        try:
            ok = not isinstance(temperature, bool) and TEMPERATURE[0] <= float(temperature) <= TEMPERATURE[1]
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"temperature must be a number in [{TEMPERATURE[0]:g}, {TEMPERATURE[1]:g}] (got "
                             f"{temperature!r}); for the likeliest codes only, use top_k=1")
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
            seed = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be an integer or None (got {seed!r})") from None
        if isinstance(seed, bool) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"seed must be an integer in [0, 2**64) (got {seed})")
        return int(seed)

    @torch.inference_mode()
    def known_codes(self, prepared: Prepared | Sequence[Prepared], n: int = 1):
        """The top codes the known pixels determine, per window: :class:`pyinpaint.sampler.Context` with ``known``
        [k n, s, s] True where the VQ encoder's receptive field at that position holds no hole pixel (computed exactly
        from the model-size mask, :meth:`VQEncoder.top_reach`) and ``codes`` [k n, s, s] the encoder's codes of the
        masked window (there, the codes of the whole window); each window's repeated n times, window-major (the
        windows of several inputs in turn)."""
        from pyinpaint.sampler import Context

        masked, m = _windows(prepared)
        enc = self.model.vqvae.encoder
        codes = enc(masked, update_codebooks=False).idx_t
        return Context(_per_sample(codes, len(codes) * n), _per_sample(~enc.top_reach(m), len(codes) * n))

    @torch.inference_mode()
    def sample_structures(self, prepared: Prepared | Sequence[Prepared], n: int, *, seed: int | Sequence[int],
                          temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached",
                          progress: Progress | None = None, context: str = CONTEXTS[0]):
        """n structure maps for each of the k windows, all as one batch: the condition network once per window,
        then the sampler. ``context``: "known" (the default) takes the encoder's codes where the known pixels
        determine them (:meth:`known_codes`, per window) and draws only the rest, stopping after the last drawn
        position; "sampled" draws every position (the paper's rule). Returns :class:`pyinpaint.sampler.Sampled`
        (codes [k n, s, s], embeddings [k n, D, s, s], window-major).

        Several prepared inputs (with one seed each) are sampled as one batch, their windows in turn; each input
        draws the codes it draws alone with its seed (its own noise: :func:`pyinpaint.sampler.batch_noise`)."""
        from pyinpaint import sampler as sampling

        if context not in CONTEXTS:
            raise ValueError(f"unknown context {context!r}: available {', '.join(CONTEXTS)}")
        if isinstance(prepared, Prepared):
            segments = int(seed)
        else:
            if isinstance(seed, (int, np.integer)) or len(seed) != len(prepared):
                raise ValueError(f"several inputs need one seed each ({len(prepared)} inputs)")
            segments = [(int(sd), len(p.windows) * n) for p, sd in zip(prepared, seed)]
        masked, m = _windows(prepared)
        st = self.model.structure
        h = st.condition(masked, m)
        h = _per_sample(h, h.shape[0] * n)
        total = h.shape[-1] * h.shape[-2]
        report = None if progress is None else (lambda p: progress(p + 1, total))
        run = {"cached": sampling.sample_cached, "naive": sampling.sample_naive,
               "graph": functools.partial(sampling.sample_cached, cuda_graph=True)}.get(sampler)
        if run is not None:
            return run(st.pixelcnn, h, self.model.codebook, seed=segments, temperature=temperature, top_k=top_k,
                       progress=report, context=self.known_codes(prepared, n) if context == "known" else None)
        raise ValueError(f"unknown sampler {sampler!r}: available {', '.join(SAMPLERS)}")

    @torch.inference_mode()
    def generate(self, prepared: Prepared | Sequence[Prepared], structures: torch.Tensor) -> torch.Tensor:
        """The texture generator on the structure maps [k n, D, s, s] of the k windows (of one input or of several in
        turn) as one batch -> its raw output [k n, 3, S, S] in [-1, 1] (every pixel generated)."""
        masked, m = _windows(prepared)
        masked, m = _per_sample(masked, structures.shape[0]), _per_sample(m, structures.shape[0])
        return self.model.generator(masked, m, structures)

    def composite(self, prepared: Prepared | Sequence[Prepared], raw: torch.Tensor) -> torch.Tensor:
        """Raw outputs [k n, 3, S, S] (:meth:`generate`) -> completions at model size: generated pixels in the
        model-size hole, the window's input elsewhere (the official composite)."""
        masked, m = _windows(prepared)
        rows = raw.shape[0]
        return complete(raw, _per_sample(masked, rows).to(raw.device), _per_sample(m, rows).to(raw.device))

    def complete(self, prepared: Prepared | Sequence[Prepared], structures: torch.Tensor) -> torch.Tensor:
        """:meth:`generate`, then :meth:`composite`: completions [k n, 3, S, S] in [-1, 1]."""
        return self.composite(prepared, self.generate(prepared, structures))

    @torch.inference_mode()
    def score(self, prepared: Prepared | Sequence[Prepared], completed: torch.Tensor):
        """Discriminator score [n] of the completions [k n, 3, S, S] of the k windows at model size: per window the
        mean over the discriminator's map, then the mean over the windows (higher = judged more real). For several
        inputs (their windows in turn), a list with each one's [n]."""
        if self.model.discriminator is None:
            raise ValueError("this model file has no discriminator: it cannot score samples")
        _, m = _windows(prepared)
        n = completed.shape[0] // m.shape[0]
        per_window = self.model.discriminator(completed, _per_sample(m, completed.shape[0])).float()
        per_window = per_window.flatten(1).mean(dim=1).view(m.shape[0], n)
        if isinstance(prepared, Prepared):
            return per_window.mean(dim=0)
        return [w.mean(dim=0) for w in per_window.split([len(p.windows) for p in prepared])]

    @torch.inference_mode()
    def to_input_size(self, prepared: Prepared, raw: torch.Tensor, completed: torch.Tensor,
                      blend: str = BLENDS[0]) -> list[Image.Image]:
        """Model-size results [k n, 3, S, S] (window-major): the generator's raw outputs (:meth:`generate`) and their
        completions (:meth:`composite`) -> n images at the input's size: each window's result resized bilinearly to
        the window's size (antialiased when shrinking, mirror padding dropped) and written where the input's own
        full-resolution mask is a hole, as ``blend`` says (:mod:`pyinpaint.blend`: "poisson" blends the raw output
        into the known pixels, the official "paste" writes the completion): known pixels are the input's, bit for
        bit."""
        check_blend(blend)
        k = len(prepared.windows)
        n = raw.shape[0] // k
        shown = raw if blend == "poisson" else completed
        out = []
        for i in range(n):  # one at a time: full-size float images of large inputs are big
            canvas = prepared.image.copy()
            for w, window in enumerate(prepared.windows):
                crop.paste(canvas, prepared.hole, window, shown[w * n + i], blend)
            out.append(Image.fromarray(canvas, "RGB"))
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
    def _run(self, group: list[Prepared], size: int, seeds: list[int], *, temperature: float, top_k: int | None,
             sampler: str, rank: bool, context: str, progress: Progress | None, th) -> list[tuple]:
        """One batch: ``size`` samples of every window of every input in ``group`` (one seed each). Per input: (codes
        [k, size, s, s], raw generator outputs [k, size, 3, S, S], scores [size] or None), on the host."""
        th.phase(sampling_work(self.model.structure.pixelcnn, size * sum(len(p.windows) for p in group)))
        with self._graph_lock if sampler == "graph" else contextlib.nullcontext():
            sampled = self.sample_structures(group, size, seed=seeds, temperature=float(temperature), top_k=top_k,
                                             sampler=sampler, progress=th.wrap(progress), context=context)
        th.phase(math.inf)
        raw = self.generate(group, sampled.embeddings)
        scores = [s.cpu() for s in self.score(group, self.composite(group, raw))] if rank else [None] * len(group)
        rows = [len(p.windows) * size for p in group]
        # rows are window-major: [k * size] -> [k, size] to join the batches per window
        return [(c.cpu().unflatten(0, (len(p.windows), size)), x.cpu().unflatten(0, (len(p.windows), size)), sc)
                for p, c, x, sc in zip(group, sampled.codes.split(rows), raw.split(rows), scores)]

    def _result(self, prepared: Prepared, parts: list[tuple], seed: int, rank: bool, blend: str) -> Result:
        """The Result of one input from its batches' parts (see :meth:`_run`): batches joined per window, ranked
        when asked, brought to the input's size with ``blend``."""
        k = len(prepared.windows)
        codes = torch.cat([c for c, _, _ in parts], dim=1)
        n = codes.shape[1]
        codes = codes.flatten(0, 1)
        raw = torch.cat([c for _, c, _ in parts], dim=1).flatten(0, 1)
        scores, order = None, torch.arange(n)
        if rank:
            scores = torch.cat([s for _, _, s in parts])
            order = torch.sort(scores, descending=True, stable=True).indices
            scores = scores[order]
            rows = (torch.arange(k)[:, None] * n + order[None]).flatten()
            codes, raw = codes[rows], raw[rows]
        raw = raw.to(self.device)  # kept on the host between batches
        completed = self.composite(prepared, raw)
        images = self.to_input_size(prepared, raw, completed, blend)
        for i, (im, j) in enumerate(zip(images, order.tolist())):
            im.info.update({"seed": seed, "sample": j})
            if scores is not None:
                im.info["score"] = float(scores[i])
        return Result(images, seed, order.tolist(), codes, completed.cpu(), scores, prepared)

    @staticmethod
    def _copies(prepared: Prepared, n: int, seed: int) -> Result:
        _warn("the mask is empty (no pixel to fill): returning copies of the input")
        return Result([Image.fromarray(prepared.image, "RGB") for _ in range(n)], seed, list(range(n)),
                      prepared=prepared)

    def _alone(self, prepared: Prepared, plan: bounds.Plan, n: int, seed: int, progress: Progress | None,
               th, blend: str, **options) -> Result:
        """One input in the batches of its plan (``progress`` counts the positions of all batches)."""
        if len(plan.batches) > 1:
            _warn(plan.describe())
        parts = []
        for b, (_, size) in enumerate(plan.batches):
            report = None
            if progress is not None:  # positions of all batches, in one count
                report = functools.partial(lambda off, done, total: progress(off * total + done,
                                                                             total * len(plan.batches)), b)
            parts += self._run([prepared], size, [bounds.batch_seed(seed, b)], progress=report, th=th, **options)
        return self._result(prepared, parts, seed, options["rank"], blend)

    def inpaint(self, image: ImageLike, mask: MaskLike, n: int = 10, *, seed: int | None = None,
                temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached", rank: bool = False,
                invert: bool = False, strategy: str = "auto", progress: Progress | None = None,
                context: str = CONTEXTS[0], blend: str = BLENDS[0], threads: int | None = None,
                max_batch: int | None = None) -> Result:
        """:meth:`sample` with everything kept: the seed used, the windows, sampled codes, model-size completions,
        scores."""
        seed = self.check_options(n, seed=seed, temperature=temperature, top_k=top_k, sampler=sampler, rank=rank,
                                  context=context, blend=blend)
        threads = check_threads(threads)
        max_batch = bounds.check_max_batch(max_batch)
        n = int(n)
        options = dict(temperature=temperature, top_k=top_k, sampler=sampler, rank=rank, context=context)
        with use_threads(threads, device=self.device) as th:
            prepared = self.prepare(image, mask, strategy, invert)
            if not prepared.hole.any():
                return self._copies(prepared, n, seed)
            plan = bounds.plan(self.model, n, prepared.size, max_batch=max_batch, windows=len(prepared.windows),
                               device=self.device, blend=blend)
            return self._alone(prepared, plan, n, seed, progress, th, blend, **options)

    def inpaint_many(self, items: Sequence[tuple[ImageLike, MaskLike]], n: int = 10, *,
                     seed: int | Sequence[int] | None = None,
                     temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached", rank: bool = False,
                     invert: bool = False, strategy: str = "auto", progress: Progress | None = None,
                     context: str = CONTEXTS[0], blend: str = BLENDS[0], threads: int | None = None,
                     max_batch: int | None = None, batch_images: int | None = None) -> Iterator[Result]:
        """:meth:`inpaint` over several (image, mask) pairs, several images sampled as one batch: the Results, in
        order, each as soon as its batch is done (an iterator; the options are checked at the call, the inputs as
        they are read). Every input gets the same ``seed`` (None: one fresh seed) and the samples it would get alone
        (each its own noise), but the sampler runs once per batch of images instead of once per image, which is where
        small models spend their time (docs/benchmarks.md, "Many images"). ``seed`` may also be a sequence, one seed
        per input.

        Consecutive inputs share a batch while it holds at most ``max_batch`` samples (n per input; None: as many
        sample rows, n x windows per input, as :data:`pyinpaint.bounds.BATCH_BYTES` holds, the rule for one input),
        their memory estimates together fit the machine, and there are at most ``batch_images`` of them (None: no
        limit; 1: one at a time). An input that alone needs several batches is run alone, as :meth:`inpaint` would.
        ``progress(done, total)``: ``done`` (a float) images' worth of work of ``total`` images."""
        items = list(items)
        if isinstance(seed, (list, tuple)):
            if len(seed) != len(items):
                raise ValueError(f"one seed per input: {len(seed)} seeds for {len(items)} inputs")
            seeds = [self.check_options(n, seed=sd, temperature=temperature, top_k=top_k, sampler=sampler, rank=rank,
                                        context=context, blend=blend) for sd in seed]
        else:
            seeds = [self.check_options(n, seed=seed, temperature=temperature, top_k=top_k, sampler=sampler, rank=rank,
                                        context=context, blend=blend)] * len(items)
        threads = check_threads(threads)
        max_batch = bounds.check_max_batch(max_batch)
        if batch_images is not None and (isinstance(batch_images, bool)
                                         or not isinstance(batch_images, (int, np.integer)) or batch_images < 1):
            raise ValueError(f"batch_images must be None (no limit) or a positive integer (got {batch_images!r})")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
        for i, item in enumerate(items):
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise ValueError(f"items must be (image, mask) pairs; item {i} is {type(item).__name__}")
        return self._many(items, int(n), seeds, threads, max_batch, batch_images, invert, strategy, progress, blend,
                          dict(temperature=temperature, top_k=top_k, sampler=sampler, rank=rank, context=context))

    def _many(self, items, n, seeds, threads, max_batch, batch_images, invert, strategy, progress, blend, options):
        rows_budget = bounds.default_max_batch(self.model)  # sample rows (samples x windows) of one batch
        total = len(items)
        group: list[tuple[int, Prepared, bounds.Plan]] = []

        def run_group() -> Iterator[Result]:
            todo = [(i, p) for i, p, _ in group if p.hole.any()]
            first = group[0][0]
            done = {}
            if todo:
                report = None
                if progress is not None:
                    report = lambda d, t: progress(first + len(group) * d / t, total)  # noqa: E731
                with use_threads(threads, device=self.device) as th:
                    parts = self._run([p for _, p in todo], n, [seeds[i] for i, _ in todo], progress=report, th=th,
                                      **options)
                    done = {i: self._result(p, [part], seeds[i], options["rank"], blend)
                            for (i, p), part in zip(todo, parts)}
            for i, p, _ in group:
                yield done[i] if i in done else self._copies(p, n, seeds[i])
            if progress is not None:
                progress(float(first + len(group)), total)
            group.clear()

        for i, (image, mask) in enumerate(items):
            try:
                prepared = self.prepare(image, mask, strategy, invert)
                k = len(prepared.windows)
                plan = bounds.plan(self.model, n, prepared.size, max_batch=max_batch, windows=k, device=self.device,
                                   blend=blend)
            except Exception:
                if group:  # the inputs before a bad one (or one too big for memory) are filled first: nothing is lost
                    yield from run_group()
                raise
            if len(plan.batches) > 1:  # too big to share a batch: alone, after the waiting ones
                if group:
                    yield from run_group()
                report = None if progress is None else (lambda d, t, i=i: progress(i + d / t, total))
                with use_threads(threads, device=self.device) as th:
                    yield self._alone(prepared, plan, n, seeds[i], report, th, blend, **options)
                continue
            need = sum(pl.estimate for _, _, pl in group) + plan.estimate
            if max_batch is None:
                full = sum(len(p.windows) * n for _, p, _ in group) + k * n > rows_budget
            else:
                full = (len(group) + 1) * n > max_batch
            full = full or (plan.available is not None and need > bounds.HEADROOM * plan.available)
            if group and full:
                yield from run_group()
            group.append((i, prepared, plan))
            if batch_images is not None and len(group) >= batch_images:
                yield from run_group()
        if group:
            yield from run_group()

    def sample(self, image: ImageLike, mask: MaskLike, n: int = 10, *, seed: int | None = None,
               temperature: float = 1.0, top_k: int | None = None, sampler: str = "cached", rank: bool = False,
               invert: bool = False, strategy: str = "auto", progress: Progress | None = None,
               context: str = CONTEXTS[0], blend: str = BLENDS[0], threads: int | None = None,
               max_batch: int | None = None) -> list[Image.Image] | list[list[Image.Image]]:
        """n diverse completions of ``image`` where ``mask`` is nonzero, as PIL images at the input's size. With
        lists of images and masks (paired in order), a list of each image's n completions: several images are
        sampled as one batch (see :meth:`inpaint_many`; ``progress(done, total)`` then counts images).

        image: path, PIL image, H x W x 3 uint8 array or 3 x H x W float tensor in [0, 1] (greyscale, RGBA and
        palette images are converted with a warning). mask: path, PIL image, H x W array or tensor; nonzero /
        True / 255 = fill (``invert=True``: zero / black = fill). Files and PIL images are turned upright by their
        EXIF orientation. Pixels outside the hole are returned exactly as given. ``seed`` fixes the samples
        (None: a fresh one, stored in each image's ``info["seed"]``); ``temperature`` and ``top_k`` shape the
        code distribution; ``rank`` orders the samples by the discriminator's mean score, best first;
        ``progress(done, total)`` is called after each sampled position. ``strategy`` decides what the model sees:
        "resize" (the whole image, mirrored to a square and brought to the model's size), "crop" (a square context
        window around each hole region, about twice the hole's size and at least the model's, so a small hole in a
        large photo is filled at close to the photo's own resolution) or "auto" (default: crop when the image is
        larger than the model and the windows are smaller than the image, else resize). ``context`` is what the
        known region gives the structure: "known" (default: the codes the known pixels determine are taken, the rest
        drawn; see :meth:`sample_structures`) or "sampled" (every position drawn, the paper's rule). ``blend`` is how
        the fill meets the known pixels (:mod:`pyinpaint.blend`): "poisson" (default: the generator's output with its
        colour corrected to meet the photo at full resolution without a seam) or "paste" (the official composite, as
        generated). ``threads``: CPU
        threads (None: chosen per call from the work and the machine's load, see :mod:`pyinpaint.threads`; the
        caller's ``torch.set_num_threads`` is restored afterwards). ``max_batch``: most samples drawn as one batch
        (None: as many as fit a fixed memory budget for this model and image size, see :mod:`pyinpaint.bounds`); a
        larger n is drawn in batches, with a warning, and ``progress`` counts the positions of all batches. A call
        whose memory would exceed what the machine has available is refused (ValueError naming the largest n that
        fits).
        """
        options = dict(seed=seed, temperature=temperature, top_k=top_k, sampler=sampler, rank=rank, invert=invert,
                       strategy=strategy, progress=progress, context=context, blend=blend, threads=threads,
                       max_batch=max_batch)
        if isinstance(image, (list, tuple)) or isinstance(mask, (list, tuple)):
            if not (isinstance(image, (list, tuple)) and isinstance(mask, (list, tuple))) or len(image) != len(mask):
                raise ValueError("several images need as many masks, both as lists (paired in order); got "
                                 f"{_count(image)} and {_count(mask)}")
            return [r.images for r in self.inpaint_many(list(zip(image, mask)), n, **options)]
        return self.inpaint(image, mask, n, **options).images


def _count(x: Any) -> str:
    return f"a list of {len(x)}" if isinstance(x, (list, tuple)) else f"one {type(x).__name__}"


def _windows(prepared: Prepared | Sequence[Prepared]) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked [k, 3, S, S], m [k, 1, S, S]): the windows of one prepared input, or of several in turn."""
    if isinstance(prepared, Prepared):
        return prepared.masked, prepared.m
    return torch.cat([p.masked for p in prepared]), torch.cat([p.m for p in prepared])


def _per_sample(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-window tensors [k, ...] -> [rows, ...] with each window repeated rows / k times (window-major)."""
    return t.expand(rows, *t.shape[1:]) if t.shape[0] == 1 else t.repeat_interleave(rows // t.shape[0], dim=0)


# ---------------------------------------------------------------------------------------------- sample()
_CACHE: dict[tuple[str, str], Inpainter] = {}
_CACHE_LOCK = threading.Lock()


# The models shipped in the package: name -> folder in pyinpaint/weights/ (config.json, model.safetensors and a model
# card README.md). Shipping another model = its folder + one line here. The first is the default.
WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED = {"faces": "faces-128", "scenes": "scenes-128"}
DEFAULT_NAME = next(iter(SHIPPED))
DEFAULT_MODEL = WEIGHTS / SHIPPED[DEFAULT_NAME]


def _shipped_folder(name: str) -> Path | None:
    folder = SHIPPED.get(name) or (name if name in SHIPPED.values() else None)
    return None if folder is None else WEIGHTS / folder


def model_path(model: str | os.PathLike | None = None) -> Path:
    """The model directory of a shipped model's name (``"faces"``, or its folder name ``"faces-128"``; None = the
    default), or ``model`` itself as a path. Names never contain a slash: write ``./faces`` for a folder of that
    name. Errors: FileNotFoundError when a shipped model is missing from the installation."""
    if model is None:
        model = DEFAULT_NAME
    folder = _shipped_folder(model) if isinstance(model, str) else None
    if folder is None:
        return Path(model).expanduser()
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped model {model!r} is missing from this installation ({folder}): reinstall "
                                "pyinpaint, or pass a model directory written by `pyinpaint export` or "
                                "`pyinpaint convert-official`")
    return folder


def default_model() -> Path:
    """The model directory :func:`sample` uses when none is given: the faces model shipped with the package."""
    return model_path(None)


def _card_line(card: str, heading: str) -> str:
    """The first sentence of a section of a model card, without markdown."""
    m = re.search(rf"^## {heading}\s*\n+(.+?)(?:\.\s|\(|;|\n\n)", card, re.M | re.S)
    return " ".join(m.group(1).replace("`", "").replace("*", "").split()) if m else "see its model card"


def shipped_models() -> list[dict[str, Any]]:
    """The models shipped in the package, default first: name, folder, image size, megabytes on disk, number of
    parameters and what it was trained on (from each model's config.json and card)."""
    from pyinpaint.modelfile import read_config

    out = []
    for name, folder in SHIPPED.items():
        path = WEIGHTS / folder
        if not (path / "model.safetensors").is_file():
            out.append({"name": name, "path": path, "missing": True})
            continue
        config = read_config(path)
        card = (path / "README.md").read_text(encoding="utf-8") if (path / "README.md").is_file() else ""
        out.append({"name": name, "path": path, "image_size": config["vqvae"]["image_size"],
                    "megabytes": (path / "model.safetensors").stat().st_size / 1e6,
                    "trained_on": _card_line(card, "Data"), "default": name == DEFAULT_NAME})
    return out


def get_inpainter(model: str | os.PathLike | Inpainter | None, device: str | torch.device | None = None) -> Inpainter:
    """The cached :class:`Inpainter` of a shipped model's name or a model directory (None: the default model) on a
    device (loaded on first use)."""
    if isinstance(model, Inpainter):
        return model
    dev = resolve_device(device)
    key = (str(model_path(model).resolve()), str(dev))
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
           invert: bool = False, strategy: str = "auto", progress: Progress | None = None,
           context: str = CONTEXTS[0], blend: str = BLENDS[0], threads: int | None = None,
           max_batch: int | None = None) -> list[Image.Image] | list[list[Image.Image]]:
    """n diverse completions of ``image`` where ``mask`` is nonzero (``invert=True``: zero; lists of images and
    masks: a list of each one's completions, sampled in shared batches; see :meth:`Inpainter.sample`), with
    ``model`` (a shipped model's name such as ``"faces"``, a model directory, or an :class:`Inpainter`; default: the
    faces model shipped with pyinpaint, 128 px) loaded once per (model, device) and cached."""
    return get_inpainter(model, device).sample(image, mask, n, seed=seed, temperature=temperature, top_k=top_k,
                                               sampler=sampler, rank=rank, invert=invert,
                                               strategy=strategy, progress=progress, context=context,
                                               blend=blend, threads=threads, max_batch=max_batch)
