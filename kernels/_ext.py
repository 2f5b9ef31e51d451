"""Guarded access to the native extension ``pyinpaint._C``.

This is the one module of the package that imports ``pyinpaint._C``. The package must import and
run without it (the PyTorch reference paths), so the import is guarded: when it fails, or when the
environment sets ``PYINPAINT_DISABLE_EXT=1``, :func:`available` is False, :func:`why_unavailable`
says why and :func:`warn_once` says so once per process.

The extension does not link libtorch: the wrappers here validate the tensors, allocate the outputs
with torch and hand raw data pointers, sizes and strides (and, on CUDA, the current stream) to it.
"""
from __future__ import annotations

import os
import threading
import warnings

import torch

__all__ = ["available", "why_unavailable", "has_cuda", "why_no_cuda", "warn_once", "nearest_code", "cpu_isa", "cpu_isas"]

DISABLE_ENV = "PYINPAINT_DISABLE_EXT"
_FALSE_VALUES = ("", "0", "false", "no", "off")
# Functions this Python code needs from the module; a stale build without them counts as missing.
_REQUIRED = ("has_cuda", "nearest_code_cpu", "cpu_isa", "cpu_isas")

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


def why_unavailable() -> str | None:
    """Why the extension is not used, or None when it is."""
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


def _check_nearest_code_args(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor) -> None:
    for name, t in (("z", z), ("codebook", codebook), ("norms", norms)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"nearest_code: {name} must be a torch.Tensor, got {type(t).__name__}")
    if z.dim() != 2:
        raise ValueError(f"nearest_code: z must be 2-D [N, D], got shape {tuple(z.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"nearest_code: codebook must be 2-D [K, D], got shape {tuple(codebook.shape)}")
    if norms.dim() != 1:
        raise ValueError(f"nearest_code: norms must be 1-D [K], got shape {tuple(norms.shape)}")
    n, d = z.shape
    k, dc = codebook.shape
    if d != dc:
        raise ValueError(f"nearest_code: z has {d} channels but the codebook has codes of size {dc}")
    if norms.shape[0] != k:
        raise ValueError(f"nearest_code: norms has {norms.shape[0]} entries for a codebook of {k} codes")
    if k < 1 or d < 1:
        raise ValueError(f"nearest_code: empty codebook (shape {tuple(codebook.shape)})")
    if not (z.device == codebook.device == norms.device):
        raise ValueError(
            f"nearest_code: z, codebook and norms must be on one device, got {z.device}, {codebook.device}, {norms.device}"
        )
    dev = z.device.type
    if dev == "cpu":
        if z.dtype != torch.float32 or codebook.dtype != torch.float32:
            raise ValueError(
                f"nearest_code: on the CPU z and codebook must be float32, got {z.dtype} and {codebook.dtype}"
            )
    elif dev == "cuda":
        if z.dtype not in (torch.float32, torch.float16):
            raise ValueError(f"nearest_code: on CUDA z must be float32 or float16, got {z.dtype}")
        if codebook.dtype != z.dtype:
            raise ValueError(f"nearest_code: codebook dtype {codebook.dtype} differs from z dtype {z.dtype}")
    else:
        raise ValueError(f"nearest_code: unsupported device {z.device} (cpu or cuda)")
    if norms.dtype != torch.float32:
        raise ValueError(f"nearest_code: norms must be float32, got {norms.dtype}")
    if not codebook.is_contiguous():
        raise ValueError("nearest_code: codebook must be contiguous")
    if not norms.is_contiguous():
        raise ValueError("nearest_code: norms must be contiguous")
    if d > 1 and z.stride(1) != 1:
        raise ValueError(f"nearest_code: z's last dimension must be contiguous (strides {tuple(z.stride())})")


def _check_out(out, n: int, d: int, codebook: torch.Tensor):
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise ValueError("nearest_code: out must be a pair of tensors (idx, emb)")
    idx, emb = out
    if idx.shape != (n,) or idx.dtype != torch.int64 or idx.device != codebook.device or not idx.is_contiguous():
        raise ValueError(
            f"nearest_code: out idx must be a contiguous int64 tensor of shape ({n},) on {codebook.device}, "
            f"got {idx.dtype} {tuple(idx.shape)} on {idx.device}"
        )
    if emb.shape != (n, d) or emb.dtype != codebook.dtype or emb.device != codebook.device or not emb.is_contiguous():
        raise ValueError(
            f"nearest_code: out emb must be a contiguous {codebook.dtype} tensor of shape ({n}, {d}) on "
            f"{codebook.device}, got {emb.dtype} {tuple(emb.shape)} on {emb.device}"
        )
    return idx, emb


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor, *, out=None, _cpu_isa: str = ""):
    """Nearest code per row with the native extension.

    z [N, D] (rows may be strided, last dim contiguous), codebook [K, D] contiguous, norms [K]
    float32 contiguous (|e_k|^2, see ``pyinpaint.kernels.vq.code_norms``), all on one device;
    float32 on the CPU, float32 or float16 (z and codebook alike) on CUDA.
    Returns (idx int64 [N], emb [N, D] in the codebook's dtype), as
    ``pyinpaint.kernels.vq.nearest_code_reference``; ``out=(idx, emb)`` writes into preallocated
    contiguous tensors (which must not overlap the inputs) and returns them.
    Raises ValueError for unsupported inputs and RuntimeError when the extension (or its CUDA
    part) is unavailable. Not differentiable.
    ``_cpu_isa`` (tests, benchmarks) forces one of :func:`cpu_isas` on the CPU.
    """
    _require()
    _check_nearest_code_args(z, codebook, norms)
    n, d = z.shape
    k = codebook.shape[0]
    if out is None:
        idx = torch.empty(n, dtype=torch.int64, device=z.device)
        emb = torch.empty(n, d, dtype=codebook.dtype, device=z.device)
    else:
        idx, emb = _check_out(out, n, d, codebook)
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
    # z, codebook, norms, idx and emb are referenced by this frame until the call has returned; on
    # CUDA the launch is ordered on the current stream like any torch op.
    return idx, emb
