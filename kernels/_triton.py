"""Shared Triton plumbing for the kernels: a guarded import and a readable "can this run here?" check.

``TRITON_INTERPRET=1`` must be set before this module (and any kernel module) is imported: ``triton.jit``
reads it when a kernel is defined, so ``INTERPRET`` is read once, here, at import time as well.
"""
from __future__ import annotations

import os

import torch

try:  # never fail at import: without triton every op falls back to its PyTorch reference
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON: bool = True
    _IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, but also broken installs that raise something else
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"


def triton_unavailable_reason(*tensors: torch.Tensor) -> str | None:
    """None when a Triton kernel can run on ``tensors``, else why not, in words.

    A kernel can run when triton imports and either every tensor is on CUDA, or the interpreter is on
    (``TRITON_INTERPRET=1`` at import time) and every tensor is on the CPU.
    """
    if not HAS_TRITON:
        if _IMPORT_ERROR is None or "No module named 'triton'" in _IMPORT_ERROR:
            return "triton is not installed"
        return f"triton failed to import ({_IMPORT_ERROR})"
    devices = sorted({t.device.type for t in tensors})
    if not devices:
        return None
    if len(devices) > 1:
        return f"tensors are on different devices ({', '.join(devices)})"
    device = devices[0]
    if device == "cuda":
        return None
    if device == "cpu":
        if INTERPRET:
            return None
        return ("tensors are on the CPU and TRITON_INTERPRET is not set (set TRITON_INTERPRET=1 before "
                "importing pyinpaint to run Triton kernels in the interpreter)")
    return f"tensors are on {device}: Triton kernels here run on CUDA (or on the CPU in the interpreter) only"


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (>= 1); same as triton.next_power_of_2 but usable without triton."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
