"""Strictly causal attention at the paper's shapes: the reference vs plain PyTorch SDPA vs Triton.

    pytest benchmarks/bench_causal_attention.py --benchmark-only

B = 8, H = 8 heads, L = 32 x 32 = 1024 positions, Dk = 16, Dv = 64 (the PixelCNN's attention layer),
float32, forward alone (no grad) and forward + backward (torch.autograd.grad of a fixed dL/dout).
Backends, all on the same device ("cuda" if available, else "cpu"):
  - reference: ``causal_attention_reference``, the official formula literally (L x L tensors);
  - sdpa: "the plain PyTorch formulation", F.scaled_dot_product_attention with an explicit boolean
    mask j < i (built once, outside the timed call), row 0 given a dummy key and zeroed afterwards;
  - sdpa_shifted (for information): the same with is_causal=True and no mask tensor, shifted by one:
    queries 1 .. L-1 against keys / values 0 .. L-2 under the ordinary causal mask (j <= i) is exactly
    j < i; row 0 is zero. Lets PyTorch take its fused causal kernels;
  - triton: ``causal_attention(..., backend="triton")``, timed on CUDA only (the interpreter is not a speed).
Each backend's output is checked once against the reference before it is timed.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyinpaint.kernels import _triton
from pyinpaint.kernels import causal_attention as ca

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
B, H, L, DK, DV = 8, 8, 1024, 16, 64
SCALE = DK ** -0.5


def _inputs(requires_grad):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(B, H, L, DK, generator=g) for _ in range(2))
    v = torch.randn(B, H, L, DV, generator=g)
    do = torch.randn(B, H, L, DV, generator=g)
    q, k, v, do = (t.to(DEVICE) for t in (q, k, v, do))
    if requires_grad:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
    return q, k, v, do


def _sdpa_op():
    allowed = torch.ones(L, L, dtype=torch.bool, device=DEVICE).tril(-1)  # j < i
    softmax_allowed = allowed.clone()
    softmax_allowed[0, 0] = True  # row 0 has no key: give it itself, then zero its output
    keep = torch.ones(L, 1, device=DEVICE)
    keep[0] = 0.0

    def op(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=softmax_allowed, scale=SCALE) * keep

    return op


def _sdpa_shifted(q, k, v):
    rest = F.scaled_dot_product_attention(q[:, :, 1:], k[:, :, :-1], v[:, :, :-1], is_causal=True, scale=SCALE)
    return F.pad(rest, (0, 0, 1, 0))  # row 0 = 0


def _op(backend):
    if backend == "reference":
        return lambda q, k, v: ca.causal_attention_reference(q, k, v)
    if backend == "sdpa":
        return _sdpa_op()
    if backend == "sdpa_shifted":
        return _sdpa_shifted
    return lambda q, k, v: ca.causal_attention(q, k, v, backend="triton")


def _skip_reason(backend, q):
    if backend == "triton":
        if DEVICE != "cuda":
            return "Triton is timed on CUDA only (no GPU here; the interpreter is not a speed)"
        return _triton.triton_unavailable_reason(q)
    return None


@pytest.mark.parametrize("backend", ["reference", "sdpa", "sdpa_shifted", "triton"])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_causal_attention(benchmark, mode, backend):
    q, k, v, do = _inputs(requires_grad=mode == "fwd+bwd")
    why = _skip_reason(backend, q)
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    op = _op(backend)
    benchmark.group = f"causal attention {mode}: B={B} H={H} L={L} Dk={DK} Dv={DV} float32 on {DEVICE}"
    benchmark.extra_info.update(device=DEVICE, B=B, H=H, L=L, Dk=DK, Dv=DV, backend=backend, mode=mode)

    def run():
        if mode == "fwd":
            with torch.no_grad():
                out = op(q, k, v)
        else:
            out = op(q, k, v)
            out = (out.detach(), *torch.autograd.grad(out, (q, k, v), do))
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    got = run()  # warm-up (Triton compiles here) and the correctness check
    with torch.no_grad():
        ref = ca.causal_attention_reference(q, k, v)
    out = got if mode == "fwd" else got[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert (out[:, :, 0] == 0).all()
    del got, out, ref
    benchmark(run)
