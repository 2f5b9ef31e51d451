"""Sampling structure maps from the PixelCNN.

One sampling rule (:func:`draw`, defined with :func:`shape_logits` in ``pyinpaint.kernels.sample``) serves every
sampler: temperature and top-k shape the logits, and the randomness is Gumbel noise fixed in advance per (sample,
position) by the seed (:func:`gumbel_noise`), so ``argmax(logits / T + G)`` needs no host synchronisation and any
two samplers given the same seed draw the same codes. ``sample_naive`` is the paper's sampler: the whole network
at every position (the reference). ``sample_cached`` draws the same codes incrementally: the network's step mode
(``PixelCNN.init_state`` / ``step``) keeps what later positions need, so each position costs about 1/1000 of a full
pass; its draw, code write and embedding gather are one fused op (``pyinpaint.kernels.sample.sample_step``: the
C++/CUDA extension when it is built, else the same rule in PyTorch, with identical codes).

Both samplers take an optional :class:`Context`: positions whose code is already known (the VQ encoder's code of
the masked image where the hole cannot reach it, see ``Inpainter.known_codes``) take that code instead of a draw.
Positions known in every row are not drawn at all, and nothing after the last drawn position runs (nothing later
reads it). Without a context every position is drawn (the paper's rule). Drawn positions use the same noise
either way, so the naive and the cached sampler still draw the same codes for a seed in every mode.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pyinpaint.kernels import sample as sample_op
from pyinpaint.kernels.sample import draw_reference as draw
from pyinpaint.kernels.sample import shape_logits
from pyinpaint.models.structure import PixelCNN

__all__ = ["gumbel_noise", "batch_noise", "shape_logits", "draw", "entropy_bits", "Sampled", "Context",
           "sample_naive", "sample_cached"]


def gumbel_noise(seed: int, n: int, positions: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gumbel(0, 1) noise [n, positions, k] drawn on the CPU from ``seed`` (so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, positions, k, generator=g, dtype=torch.float64)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny, max=1 - 1e-16)
    return (-torch.log(-torch.log(u))).to(torch.float32).to(device)


Seed = int | Sequence[tuple[int, int]]  # one seed, or (seed, rows) segments: see batch_noise


def batch_noise(seed: Seed, n: int, positions: int, k: int,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise of a batch of n rows: :func:`gumbel_noise` of ``seed`` for all rows, or, with ``seed`` a sequence of
    (seed, rows) segments whose rows add up to n, each segment's own noise in turn. Several images sampled in one
    batch, each its own segment, so draw what each draws alone."""
    if isinstance(seed, Sequence):
        if sum(rows for _, rows in seed) != n:
            raise ValueError(f"the seed segments cover {sum(rows for _, rows in seed)} rows, the batch has {n}")
        return torch.cat([gumbel_noise(s, rows, positions, k, device) for s, rows in seed])
    return gumbel_noise(seed, n, positions, k, device)


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of softmax(logits) over the last axis (max log2 K)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2.0)


@dataclass
class Sampled:
    codes: torch.Tensor  # [N, s, s] int64
    embeddings: torch.Tensor  # [N, D, s, s]
    entropy: torch.Tensor | None  # [N, s, s] bits, of the model's distribution (T = 1) at each drawn position


@dataclass
class Context:
    """Codes known before sampling: where ``known`` [N, s, s] (bool) is True the sampler takes ``codes`` [N, s, s]
    (int64) instead of drawing. Either may be [s, s] (the same for every row of the batch)."""

    codes: torch.Tensor
    known: torch.Tensor


@dataclass
class _Plan:
    """A context laid out for a sampler: flat [N, L] tensors and, per position, what the whole batch needs."""

    codes: torch.Tensor | None  # [N, L] int64 (None: no context)
    known: torch.Tensor | None  # [N, L] bool
    all_known: list[bool]  # per position: known in every row (no draw)
    any_known: list[bool]  # per position: known in some row (drawn, then overridden there)
    last: int  # the last position drawn in some row (-1: none); later positions are all known and never run


def _plan(context: Context | None, n: int, height: int, width: int, k: int, device: torch.device) -> _Plan:
    length = height * width
    if context is None:
        return _Plan(None, None, [False] * length, [False] * length, length - 1)
    codes, known = context.codes, context.known
    if known.dtype != torch.bool:
        raise ValueError(f"context.known must be a bool tensor, got {known.dtype}")
    if codes.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"context.codes must be an integer tensor, got {codes.dtype}")
    for name, t in (("codes", codes), ("known", known)):
        if tuple(t.shape) not in ((n, height, width), (height, width)):
            raise ValueError(f"context.{name} must be [{n}, {height}, {width}] or [{height}, {width}], "
                             f"got {tuple(t.shape)}")
    codes = codes.to(device, torch.int64).expand(n, height, width).reshape(n, length)
    known = known.to(device).expand(n, height, width).reshape(n, length)
    if bool(((codes < 0) | (codes >= k))[known].any()):
        raise ValueError(f"context.codes must be in [0, {k}) where known")
    all_known = known.all(0).tolist()
    any_known = known.any(0).tolist()
    drawn = [p for p, a in enumerate(all_known) if not a]
    return _Plan(codes, known, all_known, any_known, drawn[-1] if drawn else -1)


@torch.no_grad()
def sample_naive(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, *, seed: Seed = 0,
                 temperature: float = 1.0, top_k: int | None = None, entropy: bool = False,
                 progress: Callable[[int], None] | None = None, context: Context | None = None) -> Sampled:
    """The paper's sampler: for each position in raster order, run the whole PixelCNN on what has been sampled
    so far (zeros elsewhere) and draw that position's code. Without ``context`` all positions are sampled, the
    known region too; with one, known positions take its codes (see :class:`Context` and the module notes).

    h: [N, C_h, s, s] (one row per sample: repeat an image's h for several samples); codebook [K, D]. ``seed``: an
    integer, or (seed, rows) segments (see :func:`batch_noise`). ``progress(position)`` is called after each
    position. Entropy is 0 where a code is known.
    """
    n, _, s, _ = h.shape
    k, d = codebook.shape
    plan = _plan(context, n, s, s, k, h.device)
    was_training = pixelcnn.training
    pixelcnn.eval()
    noise = batch_noise(seed, n, s * s, k, h.device)
    e = torch.zeros(n, d, s, s, device=h.device, dtype=codebook.dtype)
    codes = torch.zeros(n, s, s, dtype=torch.int64, device=h.device)
    ent = torch.zeros(n, s, s, device=h.device) if entropy else None
    h_proj = pixelcnn.condition_projections(h) if plan.last >= 0 else None
    try:
        for p in range(s * s):
            y, x = divmod(p, s)
            if plan.all_known[p]:
                idx = plan.codes[:, p]
            else:
                logits = pixelcnn(e, h_proj=h_proj)[:, :, y, x]
                idx = draw(logits, noise[:, p], temperature, top_k)
                if plan.any_known[p]:
                    idx = torch.where(plan.known[:, p], plan.codes[:, p], idx)
                if ent is not None:
                    ent[:, y, x] = entropy_bits(logits)
                    if plan.any_known[p]:
                        ent[:, y, x].masked_fill_(plan.known[:, p], 0.0)
            codes[:, y, x] = idx
            e[:, :, y, x] = codebook[idx]
            if progress is not None:
                progress(p)
    finally:
        pixelcnn.train(was_training)
    return Sampled(codes, e, ent)


def sample_cached(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, *, seed: Seed = 0,
                  temperature: float = 1.0, top_k: int | None = None, entropy: bool = False,
                  progress: Callable[[int], None] | None = None, draw_backend: str = "auto",
                  cuda_graph: bool = False, context: Context | None = None) -> Sampled:
    """The incremental sampler: the same codes as :func:`sample_naive` for the same seed and ``context`` (same
    noise, same rule, logits equal up to float32 rounding), at about 1/1000 of its arithmetic.

    ``context``: known codes (see :class:`Context`). Positions known in every row are not drawn: the state goes
    through them without the output layers (runs of them in one batched call, ``PixelCNN.prefill``), and the run
    stops after the last drawn position.

    The u stream advances a row at a time; the ul stream, the attention K/V caches and the output layers a
    position at a time; h is projected once (see ``PixelCNN.step``). Nothing is read back to the host in the
    loop. h: [N, C_h, s, s] (one row per sample); codebook [K, D]. ``progress(position)`` is called after each
    position. ``draw_backend``: the backend of the per-position op (``pyinpaint.kernels.sample.sample_step``: the
    draw, the code write and the embedding gather): "auto" (the C++/CUDA extension when it can take the tensors,
    else PyTorch; decided once, at the first position), "torch" or "ext". Every backend draws the same codes.

    ``cuda_graph=True`` (CUDA tensors only) replays the whole sampling (state set-up and every position) from a CUDA
    graph captured at the first call for this network, shape and option set (the first call runs eagerly once to
    warm up, then captures): no Python and no kernel-launch overhead between positions. The codes are those of the
    eager sampler. ``progress`` is then called once, after the replay. Not yet run on a GPU (see
    docs/benchmarks.md): the eager path is the default.
    """
    n, _, height, width = h.shape
    k = codebook.shape[0]
    plan = _plan(context, n, height, width, k, h.device)
    was_training = pixelcnn.training
    pixelcnn.eval()
    try:
        with torch.inference_mode():
            noise = batch_noise(seed, n, height * width, k, h.device)
            if cuda_graph:
                codes, ent = _replay_graphed(pixelcnn, h, codebook, noise, temperature, top_k, entropy, draw_backend,
                                             plan)
                if progress is not None:
                    progress(height * width - 1)
            else:
                codes = torch.zeros(n, height * width, dtype=torch.int64, device=h.device)
                ent = torch.zeros(n, height * width, device=h.device) if entropy else None
                _cached_loop(pixelcnn, h, codebook, noise, codes, ent, temperature, top_k, draw_backend, plan,
                             progress)
    finally:
        pixelcnn.train(was_training)
    with torch.no_grad():  # ordinary tensors out (inference tensors cannot enter autograd later)
        codes = codes.view(n, height, width).clone()
        embeddings = codebook[codes].permute(0, 3, 1, 2).contiguous()
        ent = None if ent is None else ent.view(n, height, width).clone()
    return Sampled(codes, embeddings, ent)


def _cached_loop(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, noise: torch.Tensor, codes: torch.Tensor,
                 ent: torch.Tensor | None, temperature: float, top_k: int | None, draw_backend: str, plan: _Plan,
                 progress: Callable[[int], None] | None = None) -> None:
    """The cached sampler's work, into ``codes`` [N, L] (and ``ent`` [N, L]): state set-up, then every position up
    to the last drawn one. No host synchronisation, no allocation that depends on data: a CUDA graph can capture
    it whole (the plan's per-position flags are host data, fixed before the loop)."""
    n, _, height, width = h.shape
    length = height * width
    if plan.codes is not None:
        codes.copy_(plan.codes)  # known positions keep these; drawn ones are overwritten below
    if plan.last < 0:  # everything known: nothing to run
        if progress is not None:
            for q in range(length):
                progress(q)
        return
    state = pixelcnn.init_state(n, height, width, h=h)
    e_prev = None
    step = None
    p = 0
    while p <= plan.last:
        if plan.all_known[p]:  # a run of known positions: the state advances through it in one call
            end = p
            while plan.all_known[end + 1]:
                end += 1
            known = codebook[plan.codes[:, p:end + 1]]  # [N, R, D]
            first = torch.zeros_like(known[:, :1]) if e_prev is None else e_prev[:, None]  # (not read at p = 0)
            pixelcnn.prefill(state, torch.cat([first, known[:, :-1]], dim=1), p)  # the inputs: codes at p-1 .. end-1
            e_prev = known[:, -1]
            if progress is not None:
                for q in range(p, end + 1):
                    progress(q)
            p = end + 1
            continue
        logits = pixelcnn.step(state, e_prev, p)
        if step is None:  # logits' dtype, device and layout are the same at every position: decide once
            step = sample_op.step_function(sample_op.choose_backend(
                logits, noise[:, p], codebook, temperature, top_k, draw_backend, codes_out=codes[:, p]).require())
        _, e_prev = step(logits, noise[:, p], codebook, temperature, top_k, codes_out=codes[:, p])
        if plan.any_known[p]:  # known in some rows (several images in one batch): their codes win
            torch.where(plan.known[:, p], plan.codes[:, p], codes[:, p], out=codes[:, p])
            e_prev = codebook[codes[:, p]]
        if ent is not None:
            ent[:, p] = entropy_bits(logits)
            if plan.any_known[p]:
                ent[:, p].masked_fill_(plan.known[:, p], 0.0)
        if progress is not None:
            progress(p)
        p += 1
    if progress is not None:  # the positions after the last draw: known, nothing to run
        for q in range(plan.last + 1, length):
            progress(q)


@dataclass
class _Graphed:
    """A captured sampling run and its static buffers (inputs h, noise, the context's codes; outputs codes,
    entropy)."""

    graph: "torch.cuda.CUDAGraph"
    h: torch.Tensor
    noise: torch.Tensor
    codes: torch.Tensor
    ent: torch.Tensor | None
    plan: _Plan


# network -> {(shapes, options, where its weights live): _Graphed}; weak, so a graph goes with its network
_GRAPHS: "weakref.WeakKeyDictionary[PixelCNN, dict[tuple, _Graphed]]" = weakref.WeakKeyDictionary()


def _replay_graphed(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, noise: torch.Tensor,
                    temperature: float, top_k: int | None, entropy: bool, draw_backend: str, plan: _Plan):
    """(codes [N, L], entropy or None) of :func:`_cached_loop`, replayed from a CUDA graph (captured on first use)."""
    if h.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors (h is on {h.device})")
    # The graph reads the weights and the codebook where they were at capture: their addresses are part of the key
    # (a network moved or reloaded is captured again; weights changed in place are picked up).
    where = (codebook.data_ptr(), *(t.data_ptr() for t in pixelcnn.parameters()))
    key = (tuple(h.shape), h.dtype, str(h.device), tuple(codebook.shape), float(temperature), top_k, bool(entropy),
           draw_backend, where,
           None if plan.known is None else plan.known.cpu().numpy().tobytes())  # which positions run is captured
    graphs = _GRAPHS.setdefault(pixelcnn, {})
    g = graphs.get(key)
    if g is None:
        n, _, height, width = h.shape
        g = _Graphed(torch.cuda.CUDAGraph(), h.clone(), noise.clone(),
                     torch.zeros(n, height * width, dtype=torch.int64, device=h.device),
                     torch.zeros(n, height * width, device=h.device) if entropy else None,
                     _Plan(None if plan.codes is None else plan.codes.clone(),
                           None if plan.known is None else plan.known.clone(), plan.all_known, plan.any_known,
                           plan.last))
        args = (pixelcnn, g.h, codebook, g.noise, g.codes, g.ent, temperature, top_k, draw_backend, g.plan)
        side = torch.cuda.Stream(h.device)  # warm-up off the default stream (kernel compilation, cuBLAS handles)
        side.wait_stream(torch.cuda.current_stream(h.device))
        with torch.cuda.stream(side):
            _cached_loop(*args)
        torch.cuda.current_stream(h.device).wait_stream(side)
        with torch.cuda.graph(g.graph):
            _cached_loop(*args)
        graphs[key] = g
    g.h.copy_(h)
    g.noise.copy_(noise)
    if plan.codes is not None:
        g.plan.codes.copy_(plan.codes)
    g.graph.replay()
    return g.codes.clone(), None if g.ent is None else g.ent.clone()
