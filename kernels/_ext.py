"""Guarded access to the native extension ``pyinpaint._C``.

This is the one module of the package that imports ``pyinpaint._C``. The package must import and
run without it (the PyTorch reference paths), so the import is guarded: when it fails, or when the
environment sets ``PYINPAINT_DISABLE_EXT=1``, :func:`available` is False, :func:`why_unavailable`
says why and :func:`warn_once` says so once per process.

The extension does not link libtorch: the wrappers here allocate the outputs with torch and hand raw
data pointers, sizes and strides (and, on CUDA, the current stream) to it. They are internal: the ops
(``vq.py``, ``sample.py``) check what a user can get wrong and ask this module which inputs the
extension takes (``nearest_code``: ``vq._ext_unavailable_reason``; ``sample_step``:
:func:`sample_step_unsupported`), so the wrappers only assert their preconditions.
"""
from __future__ import annotations

import os
import threading
import warnings

import torch

__all__ = ["available", "why_unavailable", "has_cuda", "why_no_cuda", "warn_once", "nearest_code", "cpu_isa", "cpu_isas",
           "sample_step", "sample_step_unsupported", "temperature_scaling"]

DISABLE_ENV = "PYINPAINT_DISABLE_EXT"
_FALSE_VALUES = ("", "0", "false", "no", "off")
# Functions this Python code needs from the module; a stale build without them counts as missing.
_REQUIRED = ("has_cuda", "nearest_code_cpu", "cpu_isa", "cpu_isas", "sample_step_cpu", "SCALE_NONE", "SCALE_DIVIDE",
             "SCALE_MULTIPLY")

_C = None
_reason: str | None = None


def _load() -> None:
    global _C, _reason
    flag = os.environ.get(DISABLE_ENV, "")
    if flag.strip().lower() not in _FALSE_VALUES:
        _reason = f"disabled by the environment ({DISABLE_ENV}={flag!r})"
        return
    try:
        from pyinpaint import _C as mod  # noqa: PLC0415 (the guarded import is the point)
    except Exception as exc:  # ImportError, OSError from the loader, anything the module init raises
        _reason = (
            f"pyinpaint._C could not be imported ({type(exc).__name__}: {exc}); "
            "build it with `pip install --no-build-isolation -e .`"
        )
        return
    missing = [name for name in _REQUIRED if not hasattr(mod, name)]
    if missing:
        _reason = (
            f"pyinpaint._C at {getattr(mod, '__file__', '?')} is out of date (lacks {', '.join(missing)}); "
            "rebuild it with `pip install --no-build-isolation -e .`"
        )
        return
    _C = mod


_load()

_warn_lock = threading.Lock()
_warned = False
_cuda_reason: str | None = None
_cuda_checked = False


def available() -> bool:
    """True when the native extension is loaded and usable (CPU ops at least)."""
    return _C is not None


def why_unavailable() -> str:
    """A sentence either way: why the extension is not used, or that it is loaded and used."""
    if _C is not None:
        return f"nothing: pyinpaint._C is loaded and used ({getattr(_C, '__file__', 'built in')})"
    return _reason


def warn_once() -> None:
    """Warn (once per process) that the extension is not used and why; no-op when it is."""
    global _warned
    if _C is not None or _warned:
        return
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(
        f"pyinpaint: native extension not used, falling back to the PyTorch reference ops: {_reason}",
        RuntimeWarning,
        stacklevel=2,
    )


def why_no_cuda() -> str | None:
    """Why the extension's CUDA ops cannot run here, or None when they can."""
    global _cuda_checked, _cuda_reason
    if _C is None:
        return f"the extension is not available: {_reason}"
    if not _cuda_checked:
        if not _C.has_cuda():
            _cuda_reason = "pyinpaint._C was built without CUDA (no CUDA compiler at build time, or PYINPAINT_CUDA=OFF)"
        else:
            err = _C.cuda_runtime_error()
            _cuda_reason = f"the CUDA runtime in pyinpaint._C cannot run here: {err}" if err else None
        _cuda_checked = True
    return _cuda_reason


def has_cuda() -> bool:
    """True when the extension was built with CUDA and its CUDA runtime works with this driver."""
    return why_no_cuda() is None


def cpu_isa() -> str | None:
    """SIMD variant the CPU ops use on this machine ('avx512', 'avx2', 'baseline'), or None."""
    return _C.cpu_isa() if _C is not None else None


def cpu_isas() -> list[str]:
    """All SIMD variants of the CPU ops this machine can run, best first ([] without the extension)."""
    return list(_C.cpu_isas()) if _C is not None else []


def _require() -> None:
    if _C is None:
        raise RuntimeError(f"pyinpaint._C is not available: {_reason}")


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor, *, out=None, _cpu_isa: str = ""):
    """Nearest code per row with the native extension: (idx int64 [N], emb [N, D] in the codebook's dtype), as
    ``pyinpaint.kernels.vq.nearest_code_reference``.

    Preconditions (``vq.nearest_code`` ensures them): z [N, D] with a contiguous last dim (rows may be strided),
    codebook [K, D] contiguous, norms [K] float32 contiguous (``vq.code_norms``), one device; float32 on the CPU,
    float32 or float16 (z and codebook alike) on CUDA. ``out=(idx, emb)``: contiguous outputs to write into (not
    overlapping the inputs). ``_cpu_isa`` (tests, benchmarks) forces one of :func:`cpu_isas` on the CPU (an unknown
    one raises ValueError). RuntimeError when the extension (or its CUDA part) is unavailable. Not differentiable.
    """
    _require()
    n, d = z.shape
    k = codebook.shape[0]
    assert codebook.shape == (k, d) and norms.shape == (k,) and (d == 1 or z.stride(1) == 1)
    assert codebook.is_contiguous() and norms.is_contiguous() and norms.dtype == torch.float32
    if out is None:
        out = (torch.empty(n, dtype=torch.int64, device=z.device), torch.empty(n, d, dtype=codebook.dtype,
                                                                              device=z.device))
    idx, emb = out
    assert idx.shape == (n,) and emb.shape == (n, d) and idx.is_contiguous() and emb.is_contiguous()
    if n == 0:
        return idx, emb
    if z.device.type == "cpu":
        _C.nearest_code_cpu(
            z.data_ptr(), z.stride(0), codebook.data_ptr(), norms.data_ptr(), idx.data_ptr(), emb.data_ptr(),
            n, k, d, torch.get_num_threads(), _cpu_isa,
        )
    else:
        reason = why_no_cuda()
        if reason is not None:
            raise RuntimeError(f"nearest_code: {reason}")
        dtype_code = _C.DTYPE_FLOAT32 if z.dtype == torch.float32 else _C.DTYPE_FLOAT16
        stream = torch.cuda.current_stream(z.device).cuda_stream
        _C.nearest_code_cuda(
            z.data_ptr(), z.stride(0), codebook.data_ptr(), norms.data_ptr(), idx.data_ptr(), emb.data_ptr(),
            n, k, d, dtype_code, stream, z.device.index,
        )
    # the tensors are referenced by this frame until the call has returned; on CUDA the launch is ordered on the
    # current stream like any torch op.
    return idx, emb


# ----------------------------------------------------------------------------------------------------
# sample_step: one position of the cached sampler (pyinpaint.kernels.sample holds the rule and the dispatch)
# ----------------------------------------------------------------------------------------------------
_MISSING = object()
_scalings: dict[tuple[str, float], tuple[int, float] | None] = {}
_probe: torch.Tensor | None = None


def _probe_values() -> torch.Tensor:
    """4096 float32 values with random mantissas, both signs, magnitudes 2^-8 .. 2^9 (fixed seed)."""
    global _probe
    if _probe is None:
        g = torch.Generator().manual_seed(0)
        mant = torch.rand(4096, generator=g, dtype=torch.float64) + 1.0
        sign = torch.randint(0, 2, (4096,), generator=g, dtype=torch.float64) * 2 - 1
        exp = torch.randint(-8, 9, (4096,), generator=g, dtype=torch.float64)
        _probe = (sign * mant * torch.pow(2.0, exp)).to(torch.float32)
    return _probe


def temperature_scaling(temperature: float, device: torch.device | str) -> tuple[int, float] | None:
    """How torch rounds ``float32_logits / temperature`` on ``device``, as (mode, float32 operand) for the native op.

    torch divides on the CPU (one IEEE float32 division by float32(T)) but multiplies by a reciprocal on CUDA when T is
    a Python scalar (``a * (1/T)``, the reciprocal rounded from float64 in recent versions, from float32 in older
    ones). Rather than hard-coding a torch version, the answer is found once per (device, T) by dividing 4096 probe
    values with torch itself and keeping the first candidate rounding that reproduces all of them: (SCALE_DIVIDE,
    float32(T)), (SCALE_MULTIPLY, float32(1/T)), (SCALE_MULTIPLY, 1f/float32(T)). (SCALE_NONE, 1.0) at T == 1, as
    the rule skips the division there. None when no candidate matches (the native op then cannot reproduce torch's
    draws and must not be used). On CUDA the first call per T synchronises the device once. (4096 values catch
    every practical difference; a rounding that differed from torch's on fewer than about 1 in 4096 values would
    go unseen, and would change a code only where a one-ulp change flips the argmax.)
    """
    _require()
    if temperature == 1.0:
        return _C.SCALE_NONE, 1.0
    if not isinstance(device, torch.device):
        device = torch.device(device)
    key = (device, float(temperature))
    hit = _scalings.get(key, _MISSING)
    if hit is not _MISSING:
        return hit
    probe = _probe_values()
    with torch.no_grad():
        got = (probe.to(device) / temperature).cpu()  # the same expression as the rule's `logits.float() / T`
        t64 = float(temperature)
        t32 = torch.tensor(t64, dtype=torch.float32)
        candidates = (
            (_C.SCALE_DIVIDE, t32),
            (_C.SCALE_MULTIPLY, torch.tensor(1.0 / t64 if t64 != 0 else float("inf"), dtype=torch.float32)),
            (_C.SCALE_MULTIPLY, torch.ones((), dtype=torch.float32) / t32),
        )
        result = None
        for mode, operand in candidates:
            mine = probe / operand if mode == _C.SCALE_DIVIDE else probe * operand  # tensor-tensor: plain IEEE ops
            if torch.equal(mine, got):
                result = (mode, float(operand))
                break
    _scalings[key] = result
    return result


def sample_step_unsupported(logits, noise, codebook, temperature, top_k, codes_out=None, emb_out=None) -> str | None:
    """None when :func:`sample_step` takes these inputs, else why not (in words). The inputs have passed
    ``pyinpaint.kernels.sample``'s checks (shapes, options); this is the extension's own rule on top."""
    if _C is None:
        return f"the extension is not available: {_reason}"
    device = logits.device
    if device.type == "cuda":
        why = why_no_cuda()
        if why is not None:
            return why
    elif device.type != "cpu":
        return f"the C++ extension runs on the CPU and CUDA only, tensors are on {device}"
    n, k = logits.shape
    f32 = torch.float32
    for name, t in (("logits", logits), ("noise", noise), ("codebook", codebook)):
        if t.dtype != f32:
            return f"{name} must be float32, got {t.dtype}"
    for name, t in (("logits", logits), ("noise", noise)):
        if k > 1 and t.stride(1) != 1:
            return f"{name}'s last dimension must be contiguous (strides {t.stride()})"
    if not codebook.is_contiguous():
        return "codebook must be contiguous"
    if codes_out is not None and n > 1 and codes_out.stride(0) < 1:
        return f"codes_out must have a positive stride (e.g. the column codes[:, p] of a code map), got {codes_out.stride()}"
    if emb_out is not None and (emb_out.dtype != f32 or not emb_out.is_contiguous()):
        return f"emb_out must be a contiguous float32 tensor, got {emb_out.dtype} with strides {emb_out.stride()}"
    if device.type == "cuda" and top_k is not None and top_k < k and k > _C.SAMPLE_CUDA_MAX_TOPK_K:
        return f"on CUDA top-k filtering takes at most {_C.SAMPLE_CUDA_MAX_TOPK_K} codes (got {k})"
    if temperature_scaling(temperature, device) is None:
        return (f"torch's rounding of logits / {temperature} on {device} matches none of the native op's "
                f"(division, or product with a float32 reciprocal)")
    return None


def sample_step(logits: torch.Tensor, noise: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0,
                top_k: int | None = None, *, codes_out: torch.Tensor | None = None,
                emb_out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of the sampler with the native extension: (codes int64 [B], embeddings float32 [B, D]).

    The rule of ``pyinpaint.sampler.draw`` (logits / T unless T == 1, everything below the top_k-th largest to -inf,
    + noise, argmax with the first index on ties and the first NaN winning), then ``codebook[codes]``; the codes are
    bit-identical to ``draw``'s on the same device (see :func:`temperature_scaling`).
    Preconditions (``pyinpaint.kernels.sample.sample_step`` checks them; :func:`sample_step_unsupported` is None):
    logits, noise float32 [B, K] with a contiguous last dim (rows may be strided, e.g. ``noise[:, p]``); codebook
    float32 [K, D] contiguous; codes_out int64 [B] with a positive stride (e.g. ``codes[:, p]``), emb_out float32
    [B, D] contiguous, both allocated when None and not overlapping the inputs. Not differentiable. On CUDA the
    launch is asynchronous on the current stream.
    """
    _require()
    n, k = logits.shape
    d = codebook.shape[1]
    device = logits.device
    if codes_out is None:
        codes_out = torch.empty(n, dtype=torch.int64, device=device)
    if emb_out is None:
        emb_out = torch.empty(n, d, dtype=torch.float32, device=device)
    if n == 0:
        return codes_out, emb_out
    scaling = temperature_scaling(temperature, device)
    assert scaling is not None, "sample_step_unsupported() says why"
    mode, scale = scaling
    top = 0 if top_k is None or top_k == k else top_k
    if device.type == "cpu":
        _C.sample_step_cpu(
            logits.data_ptr(), logits.stride(0), noise.data_ptr(), noise.stride(0), codebook.data_ptr(), n, k, d,
            mode, scale, top, codes_out.data_ptr(), codes_out.stride(0), emb_out.data_ptr(),
        )
    else:
        stream = torch.cuda.current_stream(device).cuda_stream
        _C.sample_step_cuda(
            logits.data_ptr(), logits.stride(0), noise.data_ptr(), noise.stride(0), codebook.data_ptr(), n, k, d,
            mode, scale, top, codes_out.data_ptr(), codes_out.stride(0), emb_out.data_ptr(), stream, device.index,
        )
    # every tensor is referenced by this frame until the call has returned; on CUDA the launch is ordered on the
    # current stream like any torch op.
    return codes_out, emb_out
