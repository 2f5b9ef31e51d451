"""One position of the sampler: the sampling rule, fused with the code write and the codebook gather.

The rule (``draw_reference``, which ``pyinpaint.sampler.draw`` is): shape the logits (float32, divided by the
temperature unless it is 1, everything below the top_k-th largest value set to -inf, ties with it kept), add the
Gumbel noise fixed per (sample, position), take the argmax (the first index on ties, as torch.argmax). With the
noise fixed in advance, argmax(logits / T + G) is a draw from softmax(logits / T) that needs no host sync.

This file holds, in order:
  - the PyTorch reference (``shape_logits``, ``draw_reference``, ``sample_step_reference``): the rule itself, the
    path without the extension and the ground truth;
  - the public dispatch ``sample_step(..., backend=)`` and ``reason(...)``, which says which backend would run
    and why.

Backends: "torch" (the reference: about six small torch ops per position), "ext" (the C++/CUDA extension,
``kernels/_ext.py``: one call; codes bit-identical to the reference on the same device, embeddings gathered
from the same rows). "auto" takes "ext" whenever it can run on the CPU (float32 logits, noise and codebook), else "torch"; on CUDA the
extension's kernel (built when nvcc is found) runs only when asked for, until it has been validated on a GPU.

NaN: every backend follows torch: a NaN ranks above +inf for top-k (a NaN k-th value masks nothing) and is never
masked (``NaN < kth`` is false), and the first NaN of logits / T + noise wins the argmax; so a row with a NaN logit
draws its first NaN. -inf logits are fine (a row of -inf draws code 0).
"""
from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from . import _ext
from ._dispatch import Choice, choose

BACKENDS = ("auto", "torch", "ext")


# ----------------------------------------------------------------------------------------------------
# PyTorch reference: the one definition of the sampling rule
# ----------------------------------------------------------------------------------------------------
def shape_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """logits [..., K] -> logits / T with everything outside the top k set to -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive (got {temperature})")
    out = logits.float() / temperature if temperature != 1.0 else logits.float()
    if top_k is not None:
        if not 1 <= top_k <= logits.shape[-1]:
            raise ValueError(f"top_k must be in [1, {logits.shape[-1]}] (got {top_k})")
        if top_k < logits.shape[-1]:
            kth = out.topk(top_k, dim=-1).values[..., -1:]
            out = out.masked_fill(out < kth, float("-inf"))
    return out


def draw_reference(logits: torch.Tensor, noise: torch.Tensor, temperature: float = 1.0,
                   top_k: int | None = None) -> torch.Tensor:
    """The one sampling rule: argmax(shaped logits + Gumbel noise) = a draw from softmax(shaped logits)."""
    return torch.argmax(shape_logits(logits, temperature, top_k) + noise, dim=-1)


def sample_step_reference(logits: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0,
                          top_k: int | None = None, *, codes_out: torch.Tensor | None = None,
                          emb_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw_reference`` then ``codebook[codes]``: (codes int64 [B], embeddings [B, D] in the codebook's dtype),
    written into ``codes_out`` / ``emb_out`` when given."""
    idx = draw_reference(logits, noise, temperature, top_k)
    emb = codebook[idx]
    if codes_out is not None:
        codes_out.copy_(idx)
        idx = codes_out
    if emb_out is not None:
        emb_out.copy_(emb)
        emb = emb_out
    return idx, emb


# ----------------------------------------------------------------------------------------------------
# Input checks shared by every backend
# ----------------------------------------------------------------------------------------------------
def _check_inputs(logits, noise, codebook, temperature, top_k, codes_out, emb_out) -> None:
    """Shapes, devices and options every backend needs; raises ValueError with what is wrong."""
    for name, t in (("logits", logits), ("noise", noise), ("codebook", codebook)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, K], got shape {tuple(logits.shape)}")
    if codebook.dim() != 2 or codebook.shape[0] != logits.shape[1]:
        raise ValueError(f"codebook must be [K, D] with K = {logits.shape[1]} (the logits' width), "
                         f"got shape {tuple(codebook.shape)}")
    if noise.shape != logits.shape:
        raise ValueError(f"noise must have the logits' shape {tuple(logits.shape)}, got {tuple(noise.shape)}")
    if logits.shape[1] == 0 or codebook.shape[1] == 0:
        raise ValueError(f"empty codebook (shape {tuple(codebook.shape)})")
    if not (logits.device == noise.device == codebook.device):
        raise ValueError(f"logits, noise and codebook must be on one device, got {logits.device}, {noise.device}, "
                         f"{codebook.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a Python number, got {type(temperature).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (got {temperature})")
    k = logits.shape[1]
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= k):
        raise ValueError(f"top_k must be None or an int in [1, {k}] (got {top_k!r})")
    n, d = logits.shape[0], codebook.shape[1]
    if codes_out is not None and (not isinstance(codes_out, torch.Tensor) or codes_out.shape != (n,)
                                  or codes_out.dtype != torch.int64 or codes_out.device != logits.device):
        raise ValueError(f"codes_out must be an int64 tensor of shape ({n},) on {logits.device}")
    if emb_out is not None and (not isinstance(emb_out, torch.Tensor) or emb_out.shape != (n, d)
                                or emb_out.dtype != codebook.dtype or emb_out.device != logits.device):
        raise ValueError(f"emb_out must be a {codebook.dtype} tensor of shape ({n}, {d}) on {logits.device}")


# ----------------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------------
def choose_backend(logits: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0,
                   top_k: int | None = None, backend: str = "auto", *, codes_out: torch.Tensor | None = None,
                   emb_out: torch.Tensor | None = None) -> Choice:
    """The dispatch's :class:`Choice` for inputs like these (a loop decides once, then runs
    ``step_function(choice.require())``). Raises ValueError for bad inputs on every backend.

    Auto takes the extension when it can take the inputs on the CPU; on CUDA its kernel runs only when asked
    for (``_dispatch.OPT_IN_ON_CUDA``), which also keeps auto from the extension's temperature probe (a device
    sync: a CUDA-graph capture of the sampler must not meet it)."""
    _check_inputs(logits, noise, codebook, temperature, top_k, codes_out, emb_out)
    return choose(backend, BACKENDS, logits.device, on_ext_missing=_ext.warn_once,
                  ext=lambda: _ext.sample_step_unsupported(logits, noise, codebook, temperature, top_k, codes_out,
                                                           emb_out))


def reason(logits: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0,
           top_k: int | None = None, backend: str = "auto") -> str:
    """Which backend ``sample_step(logits, noise, codebook, temperature, top_k, backend=backend)`` would run, and
    why. Returns "<backend>: <why>", or "none: <why>" when an explicitly requested backend cannot run."""
    return str(choose_backend(logits, noise, codebook, temperature, top_k, backend))


def step_function(backend: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The implementation behind a chosen backend ("torch" or "ext", from :func:`choose_backend`), with
    ``sample_step``'s signature less ``backend``; it checks nothing (the choice did)."""
    if backend == "ext":
        return _ext.sample_step
    if backend == "torch":
        return sample_step_reference
    raise ValueError(f"step_function takes 'torch' or 'ext', got {backend!r}")


def sample_step(logits: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0,
                top_k: int | None = None, *, codes_out: torch.Tensor | None = None,
                emb_out: torch.Tensor | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One position of the sampler: (codes int64 [B], embeddings [B, D]) = (draw, codebook[draw]).

    logits, noise: [B, K] (noise may be a row-strided view such as ``noise[:, p]`` of [B, positions, K]); codebook
    [K, D]; temperature > 0; top_k None or 1..K. codes_out: an int64 [B] tensor to write the codes into (e.g.
    ``codes[:, p]``), emb_out: a [B, D] tensor for the embeddings (float32 contiguous for "ext"); allocated when
    None. backend: "auto" (the extension when it can take the inputs, else PyTorch), "torch" or "ext"; an explicit
    backend that cannot run raises RuntimeError with the reason. Outputs carry no autograd history.
    """
    chosen = choose_backend(logits, noise, codebook, temperature, top_k, backend, codes_out=codes_out,
                            emb_out=emb_out).require()
    if chosen == "ext":  # the op writes no autograd history
        return _ext.sample_step(logits, noise, codebook, temperature, top_k, codes_out=codes_out, emb_out=emb_out)
    with torch.no_grad():
        return sample_step_reference(logits.detach(), noise.detach(), codebook.detach(), temperature, top_k,
                                     codes_out=codes_out, emb_out=emb_out)
