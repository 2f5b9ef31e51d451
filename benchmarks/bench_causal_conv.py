"""Causal convolution of the PixelCNN at the paper's shapes: PyTorch reference vs the Triton kernels.

    pytest benchmarks/bench_causal_conv.py --benchmark-only

The first conv of a gated residual block: x [8, 128, 32, 32], concat_elu (256 input channels) -> 128
output channels, the u stream's down-shifted [2, 3] and the ul stream's down-right-shifted [2, 2]
filter, with bias. Timed: forward (no autograd) and forward + backward (grads of x, weight and bias).
The reference is the plain PyTorch formulation (F.elu / cat, F.pad, F.conv2d). Every backend runs on
the same device ("cuda" if available, else "cpu"); Triton is timed on CUDA only (the interpreter is
not a speed), bfloat16 too. Each backend's answer is checked once before it is timed.
"""
from __future__ import annotations

import pytest
import torch

from pyinpaint.kernels import _triton
from pyinpaint.kernels import causal_conv as cc

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N, C, O, H, W = 8, 128, 128, 32, 32
LAYERS = [("down", (2, 3)), ("down_right", (2, 2))]


def _inputs(kind, fh, fw, dtype):
    g = torch.Generator().manual_seed(fh * 10 + fw)
    x = torch.randn(N, C, H, W, generator=g)
    w = torch.randn(O, 2 * C, fh, fw, generator=g) * (2 * C * fh * fw) ** -0.5
    b = torch.randn(O, generator=g) * 0.1
    grad = torch.randn(N, O, H, W, generator=g)
    return [t.to(DEVICE, dtype) for t in (x, w, b, grad)]


def _skip_reason(backend, dtype, x, w):
    if DEVICE != "cuda":
        if backend == "triton":
            return "Triton is timed on CUDA only (no GPU here; the interpreter is not a speed)"
        if dtype != torch.float32:
            return "bfloat16 is timed on CUDA only"
    if backend == "triton":
        return cc._dtype_unsupported_reason(x) or _triton.triton_unavailable_reason(x, w)
    return None


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _check_once(got, x, w, b, kind, dtype):
    """float32 within 1e-4 of the reference; bfloat16 within 2x the same-dtype PyTorch error (vs float64)."""
    exact = cc.causal_conv2d_reference(x.double(), w.double(), b.double(), kind=kind, concat_elu=True)
    err = (got.double() - exact).abs().max().item()
    if dtype == torch.float32:
        assert err < 1e-4, err
    else:
        same = cc.causal_conv2d_reference(x, w, b, kind=kind, concat_elu=True)
        assert err <= 2 * (same.double() - exact).abs().max().item(), err


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("kind,filt", LAYERS, ids=[f"{k}-{a}x{b}" for k, (a, b) in LAYERS])
def test_causal_conv(benchmark, kind, filt, mode, dtype, backend):
    x, w, b, grad = _inputs(kind, *filt, dtype)
    why = _skip_reason(backend, dtype, x, w)
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    name = str(dtype).replace("torch.", "")
    benchmark.group = (f"causal_conv {kind} {filt[0]}x{filt[1]} {mode}: N={N} C={C} (2C with concat_elu) O={O} "
                       f"H=W={H} {name} on {DEVICE}")
    benchmark.extra_info.update(device=DEVICE, kind=kind, filter=list(filt), mode=mode, dtype=name,
                                backend=backend, N=N, C=C, O=O, H=H, W=W, concat_elu=True)

    if mode == "forward":
        def run():
            with torch.no_grad():
                y = cc.causal_conv2d(x, w, b, kind=kind, concat_elu=True, backend=backend)
            _sync()
            return y
    else:
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))

        def run():
            xr.grad = wr.grad = br.grad = None
            y = cc.causal_conv2d(xr, wr, br, kind=kind, concat_elu=True, backend=backend)
            y.backward(grad)
            _sync()
            return y

    y = run()  # warm-up (Triton compiles here) and the correctness check
    _check_once(y.detach(), x, w, b, kind, dtype)
    benchmark(run)
