"""Sampling structure maps from the PixelCNN.

One sampling rule (:func:`draw`, defined with :func:`shape_logits` in ``pyinpaint.kernels.sample``) serves every
sampler: temperature and top-k shape the logits, and the randomness is Gumbel noise fixed in advance per (sample,
position) by the seed (:func:`gumbel_noise`), so ``argmax(logits / T + G)`` needs no host synchronisation and any
two samplers given the same seed draw the same codes. ``sample_naive`` is the paper's sampler: the whole network
at every position (the reference). ``sample_cached`` draws the same codes incrementally: the network's step mode
(``PixelCNN.init_state`` / ``step``) keeps what later positions need, so each position costs about 1/1000 of a full
pass; its draw, code write and embedding gather are one fused op (``pyinpaint.kernels.sample.sample_step``: the
C++/CUDA extension when it is built, else the same rule in PyTorch, with identical codes).
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pyinpaint.kernels import sample as sample_op
from pyinpaint.kernels.sample import draw_reference as draw
from pyinpaint.kernels.sample import shape_logits
from pyinpaint.models.structure import PixelCNN

__all__ = ["gumbel_noise", "shape_logits", "draw", "entropy_bits", "Sampled", "sample_naive", "sample_cached"]


def gumbel_noise(seed: int, n: int, positions: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Gumbel(0, 1) noise [n, positions, k] drawn on the CPU from ``seed`` (so every device gets the same numbers)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, positions, k, generator=g, dtype=torch.float64)
    u = u.clamp_(min=torch.finfo(torch.float64).tiny, max=1 - 1e-16)
    return (-torch.log(-torch.log(u))).to(torch.float32).to(device)


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of softmax(logits) over the last axis (max log2 K)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2.0)


@dataclass
class Sampled:
    codes: torch.Tensor  # [N, s, s] int64
    embeddings: torch.Tensor  # [N, D, s, s]
    entropy: torch.Tensor | None  # [N, s, s] bits, of the model's distribution (T = 1) at each drawn position


@torch.no_grad()
def sample_naive(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, *, seed: int = 0,
                 temperature: float = 1.0, top_k: int | None = None, entropy: bool = False,
                 progress: Callable[[int], None] | None = None) -> Sampled:
    """The paper's sampler: for each position in raster order, run the whole PixelCNN on what has been sampled
    so far (zeros elsewhere) and draw that position's code. All positions are sampled, the known region too.

    h: [N, C_h, s, s] (one row per sample: repeat an image's h for several samples); codebook [K, D].
    ``progress(position)`` is called after each position.
    """
    n, _, s, _ = h.shape
    k, d = codebook.shape
    was_training = pixelcnn.training
    pixelcnn.eval()
    noise = gumbel_noise(seed, n, s * s, k, h.device)
    e = torch.zeros(n, d, s, s, device=h.device, dtype=codebook.dtype)
    codes = torch.zeros(n, s, s, dtype=torch.int64, device=h.device)
    ent = torch.zeros(n, s, s, device=h.device) if entropy else None
    h_proj = pixelcnn.condition_projections(h)
    try:
        for p in range(s * s):
            y, x = divmod(p, s)
            logits = pixelcnn(e, h_proj=h_proj)[:, :, y, x]
            idx = draw(logits, noise[:, p], temperature, top_k)
            codes[:, y, x] = idx
            e[:, :, y, x] = codebook[idx]
            if ent is not None:
                ent[:, y, x] = entropy_bits(logits)
            if progress is not None:
                progress(p)
    finally:
        pixelcnn.train(was_training)
    return Sampled(codes, e, ent)


def sample_cached(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, *, seed: int = 0,
                  temperature: float = 1.0, top_k: int | None = None, entropy: bool = False,
                  progress: Callable[[int], None] | None = None, draw_backend: str = "auto",
                  cuda_graph: bool = False) -> Sampled:
    """The incremental sampler: the same codes as :func:`sample_naive` for the same seed (same noise, same rule,
    logits equal up to float32 rounding), at about 1/1000 of its arithmetic.

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
    was_training = pixelcnn.training
    pixelcnn.eval()
    try:
        with torch.inference_mode():
            noise = gumbel_noise(seed, n, height * width, k, h.device)
            if cuda_graph:
                codes, ent = _replay_graphed(pixelcnn, h, codebook, noise, temperature, top_k, entropy, draw_backend)
                if progress is not None:
                    progress(height * width - 1)
            else:
                codes = torch.zeros(n, height * width, dtype=torch.int64, device=h.device)
                ent = torch.zeros(n, height * width, device=h.device) if entropy else None
                _cached_loop(pixelcnn, h, codebook, noise, codes, ent, temperature, top_k, draw_backend, progress)
    finally:
        pixelcnn.train(was_training)
    with torch.no_grad():  # ordinary tensors out (inference tensors cannot enter autograd later)
        codes = codes.view(n, height, width).clone()
        embeddings = codebook[codes].permute(0, 3, 1, 2).contiguous()
        ent = None if ent is None else ent.view(n, height, width).clone()
    return Sampled(codes, embeddings, ent)


def _cached_loop(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, noise: torch.Tensor, codes: torch.Tensor,
                 ent: torch.Tensor | None, temperature: float, top_k: int | None, draw_backend: str,
                 progress: Callable[[int], None] | None = None) -> None:
    """The cached sampler's work, into ``codes`` [N, L] (and ``ent`` [N, L]): state set-up, then every position.
    No host synchronisation, no allocation that depends on data: a CUDA graph can capture it whole."""
    n, _, height, width = h.shape
    state = pixelcnn.init_state(n, height, width, h=h)
    e_prev = None
    step = None
    for p in range(height * width):
        logits = pixelcnn.step(state, e_prev, p)
        if step is None:  # logits' dtype, device and layout are the same at every position: decide once
            step = sample_op.step_function(sample_op.choose_backend(
                logits, noise[:, p], codebook, temperature, top_k, draw_backend, codes_out=codes[:, p]).require())
        _, e_prev = step(logits, noise[:, p], codebook, temperature, top_k, codes_out=codes[:, p])
        if ent is not None:
            ent[:, p] = entropy_bits(logits)
        if progress is not None:
            progress(p)


@dataclass
class _Graphed:
    """A captured sampling run and its static buffers (inputs h, noise; outputs codes, entropy)."""

    graph: "torch.cuda.CUDAGraph"
    h: torch.Tensor
    noise: torch.Tensor
    codes: torch.Tensor
    ent: torch.Tensor | None


# network -> {(shapes, options, where its weights live): _Graphed}; weak, so a graph goes with its network
_GRAPHS: "weakref.WeakKeyDictionary[PixelCNN, dict[tuple, _Graphed]]" = weakref.WeakKeyDictionary()


def _replay_graphed(pixelcnn: PixelCNN, h: torch.Tensor, codebook: torch.Tensor, noise: torch.Tensor,
                    temperature: float, top_k: int | None, entropy: bool, draw_backend: str):
    """(codes [N, L], entropy or None) of :func:`_cached_loop`, replayed from a CUDA graph (captured on first use)."""
    if h.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors (h is on {h.device})")
    # The graph reads the weights and the codebook where they were at capture: their addresses are part of the key
    # (a network moved or reloaded is captured again; weights changed in place are picked up).
    where = (codebook.data_ptr(), *(t.data_ptr() for t in pixelcnn.parameters()))
    key = (tuple(h.shape), h.dtype, str(h.device), tuple(codebook.shape), float(temperature), top_k, bool(entropy),
           draw_backend, where)
    graphs = _GRAPHS.setdefault(pixelcnn, {})
    g = graphs.get(key)
    if g is None:
        n, _, height, width = h.shape
        g = _Graphed(torch.cuda.CUDAGraph(), h.clone(), noise.clone(),
                     torch.zeros(n, height * width, dtype=torch.int64, device=h.device),
                     torch.zeros(n, height * width, device=h.device) if entropy else None)
        args = (pixelcnn, g.h, codebook, g.noise, g.codes, g.ent, temperature, top_k, draw_backend)
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
    g.graph.replay()
    return g.codes.clone(), None if g.ent is None else g.ent.clone()
