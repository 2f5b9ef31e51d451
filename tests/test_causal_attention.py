"""Strictly causal multi-head attention: the reference, the Triton kernels (forward and backward), dispatch.

Run the Triton tests on a machine without a GPU with
``TRITON_INTERPRET=1 pytest tests/test_causal_attention.py -q``; without the interpreter (and without
CUDA) they skip with the reason.

Correctness rules (docs/kernel-notes.md):
  - the reference is checked against an independent formulation (F.scaled_dot_product_attention with a
    boolean strict-causal mask on rows >= 1, row 0 = 0) in float64, and by gradcheck;
  - float32 kernel vs the float32 reference: tight (atol = rtol = 1e-5; both round in float32 with
    reductions of length <= 100 over O(1) values, so the expected differences are ~1e-6);
  - float16 / bfloat16 (flash-attention's rule): against the float32 reference on the same (rounded)
    inputs, the kernel's error must be at most 2x the error of the same computation done in PyTorch in
    that dtype, plus one unit in the last place of the largest reference value;
  - outputs, statistics and gradients go into NaN-poisoned buffers (strided, to test the stores), so an
    unwritten element is caught; row 0's output, dq of row 0 and dk, dv of the last position are exactly 0.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pyinpaint.kernels import _triton
from pyinpaint.kernels import causal_attention as ca
from conftest import skip_unless_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAN = float("nan")


_skip_unless_triton = skip_unless_triton


def _gen(seed):
    return torch.Generator().manual_seed(seed)  # on the CPU, so CUDA runs see the same data


def _qkv(B, H, L, Dk, Dv, *, dtype=torch.float32, seed=0, layout="contiguous", mult=1.0):
    """q, k [B, H, L, Dk], v [B, H, L, Dv] as leaves that require grad, in one of three layouts.

    contiguous: plain [B, H, L, D]; projected: sliced out of one [B, L, H, 2 Dk + Dv] projection and
    transposed (as a 1x1 conv over NHWC features gives them); permuted: from [L, B, H, 2 D] tensors,
    every other feature (inner stride 2), permuted to [B, H, L, D]. q and k are multiplied by mult.
    """
    g = _gen(seed)

    def dev(t):
        return t.to(dtype).to(DEVICE)  # generated on the CPU; the copy keeps a contiguous layout

    if layout == "contiguous":
        ts = (dev(torch.randn(B, H, L, Dk, generator=g) * mult), dev(torch.randn(B, H, L, Dk, generator=g) * mult),
              dev(torch.randn(B, H, L, Dv, generator=g)))
    elif layout == "projected":
        proj = torch.randn(B, L, H, 2 * Dk + Dv, generator=g)
        proj[..., :2 * Dk] *= mult
        proj = dev(proj)
        ts = tuple(t.transpose(1, 2) for t in (proj[..., :Dk], proj[..., Dk:2 * Dk], proj[..., 2 * Dk:]))
    elif layout == "permuted":
        ts = (dev(torch.randn(L, B, H, 2 * Dk, generator=g) * mult),
              dev(torch.randn(L, B, H, 2 * Dk, generator=g) * mult),
              dev(torch.randn(L, B, H, 2 * Dv, generator=g)))
        ts = tuple(t[..., ::2].permute(1, 2, 0, 3) for t in ts)
    else:
        raise AssertionError(layout)
    if layout != "contiguous" and B * H * L > 1:
        assert not any(t.is_contiguous() for t in ts)
    return tuple(t.detach().requires_grad_() for t in ts)  # detach keeps the strides


def _grad_out(q, v, seed):
    B, H, L, _ = q.shape
    return torch.randn(B, H, L, v.shape[3], generator=_gen(seed + 7)).to(v.dtype).to(DEVICE)


def _poisoned(shape, dtype):
    """NaN buffer of ``shape`` [B, H, L(, D)] stored as [B, L, H(, D)]: strided, like a NHWC feature map."""
    perm = (0, 2, 1, 3) if len(shape) == 4 else (0, 2, 1)
    store = [shape[i] for i in perm]
    return torch.full(store, NAN, dtype=dtype, device=DEVICE).permute(*perm)


def _run_kernel(q, k, v, do, scale=None, block_m=None, block_n=None):
    """Forward and backward launchers into poisoned buffers. Returns (out, (dq, dk, dv), (m, l))."""
    _skip_unless_triton(q, k, v)
    B, H, L, Dk = q.shape
    Dv = v.shape[3]
    out = _poisoned((B, H, L, Dv), q.dtype)
    stats = (_poisoned((B, H, L), torch.float32), _poisoned((B, H, L), torch.float32))
    with torch.no_grad():
        o, m, lsum = ca.causal_attention_fwd_triton(q, k, v, scale, out=out, stats=stats,
                                                    block_m=block_m, block_n=block_n)
        assert o.data_ptr() == out.data_ptr() and m.data_ptr() == stats[0].data_ptr()
        grads = (_poisoned(q.shape, q.dtype), _poisoned(k.shape, k.dtype), _poisoned(v.shape, v.dtype))
        dq, dk, dv = ca.causal_attention_bwd_triton(q, k, v, o, m, lsum, do, scale, grads=grads,
                                                    block_m=block_m, block_n=block_n)
        assert all(a.data_ptr() == b.data_ptr() for a, b in zip((dq, dk, dv), grads))
    return o, (dq, dk, dv), (m, lsum)


def _reference_with_grads(q, k, v, do, scale=None, fn=ca.causal_attention_reference):
    out = fn(q, k, v, scale)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), grads


def _expected_stats(q, k, scale):
    """m_i = max_{j<i} s_ij (0 for row 0), l_i = sum_{j<i} exp(s_ij - m_i), in float64."""
    L = q.shape[2]
    s = torch.matmul(q.double(), k.double().transpose(-1, -2)) * scale
    allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.amax(-1)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    lsum = torch.exp(s - m[..., None]).sum(-1)
    return m, lsum


def _check_structure(out, grads, L):
    """No NaN / inf anywhere (the buffers were poisoned), row 0 and the last key exactly 0."""
    dq, dk, dv = grads
    for name, t in (("out", out), ("dq", dq), ("dk", dk), ("dv", dv)):
        assert torch.isfinite(t).all(), f"{name} has NaN/inf (unwritten or unstable)"
    assert (out[:, :, 0] == 0).all(), "row 0 attends to nothing: its output must be exactly 0"
    assert (dq[:, :, 0] == 0).all(), "row 0's output is constant: dq of row 0 must be exactly 0"
    assert (dk[:, :, L - 1] == 0).all() and (dv[:, :, L - 1] == 0).all(), \
        "no query attends the last position: its dk and dv must be exactly 0"


# ---------------------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------------------
def _sdpa_formulation(q, k, v, scale):
    """Independent formulation: rows >= 1 by F.scaled_dot_product_attention with an explicit boolean
    mask j < i (every such row has a key), row 0 = 0."""
    L = q.shape[2]
    allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1)
    rest = F.scaled_dot_product_attention(q[:, :, 1:], k, v, attn_mask=allowed[1:], scale=scale)
    return torch.cat([torch.zeros_like(rest[:, :, :1]), rest], dim=2)


@pytest.mark.parametrize("scale", [None, 0.37])
@pytest.mark.parametrize("B,H,L,Dk,Dv", [(2, 3, 17, 5, 7), (1, 2, 64, 16, 64), (2, 1, 2, 4, 16)])
def test_reference_matches_sdpa_float64(B, H, L, Dk, Dv, scale):
    q, k, v = _qkv(B, H, L, Dk, Dv, dtype=torch.float64, seed=L + Dk, mult=1.5)
    do = _grad_out(q, v, L)
    ref, ref_grads = _reference_with_grads(q, k, v, do, scale)
    sdpa_scale = 1.0 / math.sqrt(Dk) if scale is None else scale
    alt, alt_grads = _reference_with_grads(q, k, v, do, sdpa_scale,
                                           fn=lambda q_, k_, v_, s_: _sdpa_formulation(q_, k_, v_, s_))
    assert (ref[:, :, 0] == 0).all()
    # the official +1e-10 in the denominator is the only difference: relative 1e-10 (row sums are >= 1)
    torch.testing.assert_close(ref, alt, rtol=1e-9, atol=1e-9)
    for a, b in zip(ref_grads, alt_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_reference_gradcheck_float64():
    q, k, v = _qkv(1, 2, 6, 3, 4, dtype=torch.float64, seed=3)
    assert torch.autograd.gradcheck(lambda a, b, c: ca.causal_attention_reference(a, b, c), (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: ca.causal_attention_reference(a, b, c, 0.8), (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp64", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize("L", [1, 2, 17])
def test_reference_row0_zero_no_nan(L, dtype):
    q, k, v = _qkv(2, 3, L, 5, 7, dtype=dtype, seed=L, mult=3.0)
    do = _grad_out(q, v, L)
    out, grads = _reference_with_grads(q, k, v, do)
    assert out.dtype == dtype and out.shape == (2, 3, L, 7)
    _check_structure(out, grads, L)


def test_reference_large_logits():
    """Logits ~1e3 apart (integer q, k: logits exact) and all-negative logits: no inf/NaN, official values."""
    q, k, v = _large_logit_inputs(torch.float64, seed=5)
    out = ca.causal_attention_reference(q, k, v, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _sdpa_formulation(q, k, v, 1.0), rtol=1e-9, atol=1e-9)


def _large_logit_inputs(dtype, seed, B=2, H=2, L=64, Dk=16, Dv=24):
    """Integer q, k in [-30, 30]: q.k is an exact integer (|q.k| <= 14400) whatever the summation order,
    so with a power-of-two scale the logits are exact in float32 and ~1e3 apart."""
    g = _gen(seed)
    q = torch.randint(-30, 31, (B, H, L, Dk), generator=g).to(dtype)
    k = torch.randint(-30, 31, (B, H, L, Dk), generator=g).to(dtype)
    k[:, :, ::5] -= 40  # some keys push every logit of a row far negative
    v = torch.randn(B, H, L, Dv, generator=g).to(dtype)
    return tuple(t.to(DEVICE).requires_grad_() for t in (q, k, v))


# ---------------------------------------------------------------------------------------------------
# kernels vs the reference
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("Dk,Dv", [(4, 16), (16, 64), (5, 7)])
@pytest.mark.parametrize("L", [1, 2, 17, 64, 100])
@pytest.mark.parametrize("B,H", [(1, 1), (2, 3)])
def test_kernel_float32(B, H, L, Dk, Dv):
    q, k, v = _qkv(B, H, L, Dk, Dv, seed=1000 * B + 10 * L + Dk, mult=1.5)
    do = _grad_out(q, v, L)
    out, grads, (m, lsum) = _run_kernel(q, k, v, do)
    ref, ref_grads = _reference_with_grads(q, k, v, do)
    _check_structure(out, grads, L)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda s: f"d{name}: {s}")
    m_exp, l_exp = _expected_stats(q.detach(), k.detach(), 1.0 / math.sqrt(Dk))
    torch.testing.assert_close(m.double(), m_exp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lsum.double(), l_exp, rtol=1e-5, atol=1e-5)
    assert (m[:, :, 0] == 0).all() and (lsum[:, :, 0] == 0).all()


@pytest.mark.parametrize("layout", ["projected", "permuted"])
@pytest.mark.parametrize("B,H,L,Dk,Dv", [(2, 3, 100, 16, 64), (1, 3, 17, 5, 7), (2, 1, 64, 4, 16)])
def test_kernel_non_contiguous(B, H, L, Dk, Dv, layout):
    q, k, v = _qkv(B, H, L, Dk, Dv, seed=L + Dv, layout=layout, mult=1.5)
    assert not q.is_contiguous() and not k.is_contiguous() and not v.is_contiguous()
    do = _grad_out(q, v, L).transpose(1, 2).contiguous().transpose(1, 2)  # strided grad_out too
    out, grads, _ = _run_kernel(q, k, v, do)
    ref, ref_grads = _reference_with_grads(q, k, v, do)
    _check_structure(out, grads, L)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (16, 64), (64, 16), (32, 128)])
def test_kernel_block_sizes(block_m, block_n):
    """Every key/query block split: equal blocks, more keys than queries per block, fewer, and blocks
    larger than L."""
    q, k, v = _qkv(2, 1, 100, 5, 7, seed=block_m + block_n, mult=1.5)
    do = _grad_out(q, v, 3)
    out, grads, _ = _run_kernel(q, k, v, do, block_m=block_m, block_n=block_n)
    ref, ref_grads = _reference_with_grads(q, k, v, do)
    _check_structure(out, grads, 100)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _same_dtype_formulation(q, k, v, scale):
    """The computation done in PyTorch in the inputs' dtype (flash-attention's "pt" baseline): logits,
    softmax and P rounded to the dtype. Row 0 gets a dummy key (itself) before the softmax and is zeroed
    after, so nothing is NaN, in the output or the gradients."""
    L = q.shape[2]
    allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1)
    softmax_allowed = allowed.clone()
    softmax_allowed[0, 0] = True
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    p = torch.softmax(s.masked_fill(~softmax_allowed, float("-inf")), dim=-1).masked_fill(~allowed, 0)
    return torch.matmul(p, v)


def _assert_flash_rule(name, kern, pt, ref):
    ref = ref.float()
    err_kern = (kern.float() - ref).abs().max().item()
    err_pt = (pt.float() - ref).abs().max().item()
    ulp = torch.finfo(kern.dtype).eps * ref.abs().max().item()
    assert err_kern <= 2 * err_pt + ulp, (f"{name}: kernel error {err_kern:.3g} > 2 x PyTorch same-dtype error "
                                          f"{err_pt:.3g} + 1 ulp {ulp:.3g}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("Dk,Dv", [(4, 16), (16, 64), (5, 7)])
@pytest.mark.parametrize("L,layout", [(17, "contiguous"), (100, "projected")])
def test_kernel_half_dtypes(L, layout, Dk, Dv, dtype):
    q, k, v = _qkv(2, 3, L, Dk, Dv, dtype=dtype, seed=L * Dk + Dv, layout=layout, mult=1.5)
    do = _grad_out(q, v, L)
    scale = 1.0 / math.sqrt(Dk)
    out, grads, _ = _run_kernel(q, k, v, do)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    _check_structure(out, grads, L)
    # float32 reference on the same (rounded) inputs
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref, ref_grads = _reference_with_grads(q32, k32, v32, do.float())
    pt, pt_grads = _reference_with_grads(q, k, v, do, scale, fn=_same_dtype_formulation)
    _assert_flash_rule("out", out, pt, ref)
    for name, a, p, r in zip(("dq", "dk", "dv"), grads, pt_grads, ref_grads):
        _assert_flash_rule(name, a, p, r)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_kernel_large_logits(scale):
    q, k, v = _large_logit_inputs(torch.float32, seed=11)
    s = (q.detach() @ k.detach().transpose(-1, -2)) * scale
    assert s.abs().max() > 1e3 and s.std() > 1e2  # logits ~1e3 apart
    do = _grad_out(q, v, 11)
    out, grads, _ = _run_kernel(q, k, v, do, scale)
    ref, ref_grads = _reference_with_grads(q, k, v, do, scale)
    _check_structure(out, grads, q.shape[2])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_kernel_custom_scale_through_autograd():
    """The differentiable op (autograd Function) with a non-default scale and only some inputs needing grad."""
    q, k, v = _qkv(2, 3, 33, 5, 7, seed=21, mult=1.5)
    _skip_unless_triton(q, k, v)
    do = _grad_out(q, v, 21)
    out = ca.causal_attention_triton(q, k, v, 0.37)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = _reference_with_grads(q, k, v, do, 0.37)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # dq not needed: the dQ kernel is skipped, dk / dv unchanged
    qd = q.detach()
    out = ca.causal_attention_triton(qd, k, v, 0.37)
    dk, dv = torch.autograd.grad(out, (k, v), do)
    torch.testing.assert_close(dk, ref_grads[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, ref_grads[2], rtol=1e-5, atol=1e-5)
    # a stride-0 grad_out (the expanded ones of out.sum())
    grads = torch.autograd.grad(ca.causal_attention_triton(q, k, v).sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ca.causal_attention_reference(q, k, v).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_kernel_empty_batch():
    q, k, v = _qkv(0, 2, 5, 4, 16, seed=1)
    _skip_unless_triton(q, k, v)
    out, m, lsum = ca.causal_attention_fwd_triton(q, k, v)
    assert out.shape == (0, 2, 5, 16) and m.shape == (0, 2, 5)


def test_launcher_validation():
    q, k, v = _qkv(1, 2, 8, 4, 16, seed=2)
    _skip_unless_triton(q, k, v)
    with pytest.raises(ValueError, match="power of two >= 16"):
        ca.causal_attention_fwd_triton(q, k, v, block_m=8)
    with pytest.raises(ValueError, match="power of two >= 16"):
        ca.causal_attention_fwd_triton(q, k, v, block_n=48)
    with pytest.raises(ValueError, match="out must be"):
        ca.causal_attention_fwd_triton(q, k, v, out=torch.empty(1, 2, 8, 15, device=DEVICE))
    with pytest.raises(ValueError, match="stats\\[0\\] must be"):
        bad = (torch.empty(1, 2, 8, device=DEVICE, dtype=torch.float16), torch.empty(1, 2, 8, device=DEVICE))
        ca.causal_attention_fwd_triton(q, k, v, stats=bad)


# ---------------------------------------------------------------------------------------------------
# dispatch and validation
# ---------------------------------------------------------------------------------------------------
def test_auto_and_torch_backends():
    q, k, v = _qkv(2, 3, 17, 5, 7, seed=31)
    do = _grad_out(q, v, 31)
    ref, ref_grads = _reference_with_grads(q, k, v, do)
    for backend in ("auto", "torch", "sdpa"):
        out, grads = _reference_with_grads(q, k, v, do, fn=lambda a, b, c, s: ca.causal_attention(a, b, c, s,
                                                                                                 backend=backend))
        if backend == "torch":
            assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))
        else:  # auto on the CPU is the fused-attention path: the same function, other rounding
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            for a, b in zip(grads, ref_grads):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if DEVICE == "cpu":
        assert ca.reason(q, k, v).startswith("sdpa: tensors are on cpu")
        assert "never routes CPU tensors to the Triton interpreter" in ca.reason(q, k, v)
    assert ca.reason(q, k, v, "torch") == "torch: requested explicitly"
    assert ca.reason(q, k, v, "sdpa") == "sdpa: requested explicitly"


@pytest.mark.parametrize("L", [1, 2, 17, 64])
def test_sdpa_path_matches_reference(L):
    q, k, v = _qkv(2, 3, L, 5, 7, seed=71 + L)
    q, k, v = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    ref = ca.causal_attention_reference(q, k, v)
    out = ca.causal_attention_sdpa(q, k, v)
    assert torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :]))
    # In float64 the official +1e-10 in the denominator (a sum >= 1) is visible: a relative 1e-10 at most.
    torch.testing.assert_close(out, ref, rtol=2e-10, atol=1e-13)
    if L > 1:  # at L = 1 the output is a constant zero (no graph to differentiate)
        go = torch.randn_like(ref)
        g_ref = torch.autograd.grad(ref, (q, k, v), go)
        g_out = torch.autograd.grad(out, (q, k, v), go)
        for a, b in zip(g_out, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max()))  # cancellations
    big = [t.detach() * 40 for t in (q, k)]  # logits ~1e3 apart: still finite and equal
    out = ca.causal_attention_sdpa(big[0], big[1], v.detach())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ca.causal_attention_reference(big[0], big[1], v.detach()), rtol=2e-10, atol=1e-13)


def test_triton_backend_explicit():
    q, k, v = _qkv(2, 3, 17, 5, 7, seed=41)
    why = _triton.triton_unavailable_reason(q, k, v)
    if why is not None:
        assert ca.reason(q, k, v, "triton").startswith("none: backend='triton' was requested but cannot run")
        with pytest.raises(RuntimeError, match="cannot run"):
            ca.causal_attention(q, k, v, backend="triton")
        return
    assert ca.reason(q, k, v, "triton").startswith("triton: requested explicitly")
    do = _grad_out(q, v, 41)
    out, grads = _reference_with_grads(q, k, v, do, fn=lambda a, b, c, s: ca.causal_attention(a, b, c, s,
                                                                                             backend="triton"))
    ref, ref_grads = _reference_with_grads(q, k, v, do)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_float64_not_on_the_kernel():
    q, k, v = _qkv(1, 2, 9, 4, 16, dtype=torch.float64, seed=51)
    assert ca.reason(q, k, v, "triton").startswith("none:") and "float64" in ca.reason(q, k, v, "triton")
    with pytest.raises(RuntimeError, match="float64"):
        ca.causal_attention(q, k, v, backend="triton")
    if DEVICE == "cpu":
        assert ca.reason(q, k, v).startswith("sdpa:")
    else:
        assert ca.reason(q, k, v).startswith("torch:")  # auto falls back on CUDA
    torch.testing.assert_close(ca.causal_attention(q, k, v), ca.causal_attention_reference(q, k, v),
                               rtol=2e-10, atol=1e-13)  # float64: the +1e-10 is a relative 1e-10 at most


def test_input_validation():
    q, k, v = _qkv(1, 2, 9, 4, 16, seed=61)
    cases = [
        ((q[0], k, v), "must be 4-D"),
        ((q, k[..., :3], v), "k must have the shape of q"),
        ((q, k, v[:, :, :8]), "v must be \\[B, H, L, Dv\\]"),
        ((q[..., :0], k[..., :0], v), "Dk must be >= 1"),
        ((q, k, v[..., :0]), "Dv must be >= 1"),
        ((q, k, v.double()), "one dtype"),
        ((q.long(), k.long(), v.long()), "float32, float16, bfloat16 or float64"),
        ((q[:, :, :0], k[:, :, :0], v[:, :, :0]), "L must be >= 1"),
    ]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            ca.causal_attention(*args)
        with pytest.raises(ValueError, match=match):
            ca.causal_attention_reference(*args)
    with pytest.raises(ValueError, match="scale must be"):
        ca.causal_attention(q, k, v, torch.tensor(0.5))
    with pytest.raises(ValueError, match="scale must be finite"):
        ca.causal_attention(q, k, v, float("inf"))
    with pytest.raises(ValueError, match="backend must be one of"):
        ca.causal_attention(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ca.reason(q, k, v, backend="ext")
