"""The one backend ladder of the ops, and the launcher helpers they share.

Every op (``vq``, ``causal_conv``, ``causal_attention``, ``decode_attention``, ``sample``) checks its inputs, says
why each of its accelerated backends cannot run (``triton``: :func:`pyinpaint.kernels._triton.triton_unavailable_reason`
plus its dtype rule; ``ext``: the extension's own rule) and hands that to :func:`choose`, which returns a
:class:`Choice` (backend, reason). The ops' ``reason()`` functions print it; their public functions run it.

The ladder, for ``backend``:
  - a reference backend ("torch", "sdpa"): runs, "requested explicitly";
  - "triton" / "ext": runs when it can, else ``Choice(None, why)`` (the op raises RuntimeError with ``why``);
  - "auto" on CUDA: Triton when the op has it and it can run, else the op's reference ("torch"). A backend in
    :data:`OPT_IN_ON_CUDA` is never picked there;
  - "auto" elsewhere: the extension when the op has it and it takes the inputs, else the op's CPU reference
    (``cpu``, e.g. "sdpa"). Auto never sends CPU tensors to the Triton interpreter.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The CUDA paths that stay opt-in until a GPU has run them (none has: this project's GPU paths are compiled and
# interpreter-tested only, see docs/design.md): the C++/CUDA extension's kernels (``nearest_code_cuda``,
# ``sample_step_cuda``) run only with backend="ext", and the sampler's CUDA graph only with cuda_graph=True. The
# Triton kernels are auto on CUDA: the interpreter runs the same programs on the CPU in the tests.
OPT_IN_ON_CUDA = frozenset({"ext"})

_INTERPRETER_NOTE = "auto never routes CPU tensors to the Triton interpreter (pass backend='triton' to force it)"


@dataclass(frozen=True)
class Choice:
    """The dispatch's answer: the backend to run (None: the requested one cannot run) and why, in words."""

    backend: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.backend or 'none'}: {self.reason}"

    def require(self) -> str:
        """The backend to run; RuntimeError with the reason when the requested one cannot run."""
        if self.backend is None:
            raise RuntimeError(self.reason)
        return self.backend


def choose(backend: str, backends: tuple[str, ...], device: torch.device, *,
           triton: Callable[[], str | None] | None = None, ext: Callable[[], str | None] | None = None,
           cpu: str = "torch", cpu_note: str = "", on_ext_missing: Callable[[], None] | None = None) -> Choice:
    """Walk the ladder (module docstring) for ``backend``, one of the op's ``backends``.

    ``triton`` / ``ext``: None when the op has no such backend, else a function saying why it cannot run on these
    inputs (None: it can); called only when the ladder reaches that rung (the extension's check may sync a CUDA
    device, so auto on CUDA never calls it). ``cpu``: the op's reference off CUDA (``cpu_note`` says what it is).
    ``on_ext_missing``: called when auto passes over the extension (it warns once per process).
    """
    if backend not in backends:
        raise ValueError(f"backend must be one of {backends}, got {backend!r}")
    if backend == "triton":
        why = triton()
        if why is not None:
            return Choice(None, f"backend='triton' was requested but cannot run: {why}")
        where = "in the Triton interpreter" if device.type == "cpu" else f"on {device}"
        return Choice("triton", f"requested explicitly; runs {where}")
    if backend == "ext":
        why = ext()
        if why is not None:
            return Choice(None, f"backend='ext' was requested but cannot run: {why}")
        return Choice("ext", f"requested explicitly; runs on {device}")
    if backend != "auto":
        return Choice(backend, "requested explicitly")
    if device.type == "cuda":
        if triton is None:
            opt_in = " and ".join(sorted(set(backends) & OPT_IN_ON_CUDA))
            return Choice("torch", f"the CUDA op of the extension is not yet validated on a GPU (backend='{opt_in}' "
                                   f"runs it)" if opt_in else "tensors are on CUDA")
        why = triton()
        if why is not None:
            return Choice("torch", f"tensors are on CUDA but the Triton kernel cannot run: {why}")
        return Choice("triton", "tensors are on CUDA and triton is available")
    if ext is not None:
        why = ext()
        if why is None:
            return Choice("ext", f"tensors are on {device.type} and the C++ extension's op takes them")
        if on_ext_missing is not None:
            on_ext_missing()
        return Choice(cpu, f"tensors are on {device.type} and the C++ op cannot run ({why}); {_INTERPRETER_NOTE}")
    note = f": {cpu_note}" if cpu_note else ""
    return Choice(cpu, f"tensors are on {device.type}{note}; {_INTERPRETER_NOTE}")


# ----------------------------------------------------------------------------------------------------
# Launcher helpers shared by the Triton launchers
# ----------------------------------------------------------------------------------------------------
def check_out(name: str, t, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A caller's preallocated output: ValueError unless it is a ``dtype`` tensor of ``shape`` on ``device``."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device:
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be {dtype} {tuple(shape)} on {device}, got {got}")
    return t


def check_pow2(name: str, value, minimum: int = 1, why: str = "") -> int:
    """A block size: ValueError unless a power of two >= ``minimum`` (``why`` says why that minimum)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= {minimum}{why}, got {value!r}")
    return value


def device_ctx(t: torch.Tensor):
    """Launch on ``t``'s CUDA device (a no-op context on the CPU, in the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def dtype_reason(t: torch.Tensor, dtypes, what: str = "the input") -> str | None:
    """Why a kernel that takes ``dtypes`` cannot take ``t`` (None: it can)."""
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"{what} has dtype {t.dtype}; the kernel takes {names}"
    return None
