"""Multi-head STRICTLY causal attention over the raster of a feature map (the PixelCNN's attention).

Per batch and head, for queries q [L, Dk], keys k [L, Dk], values v [L, Dv] (official ``net/nn.py``,
``gated_resnet(..., causal_attention=True)``)::

    logits = q k^T / sqrt(Dk)              (the caller may pass another scale)
    mask[i, j] = 1 iff j < i               (strictly earlier raster positions: no self)
    logits = logits - (1 - mask) * 1e10
    logits = logits - max_j logits
    e      = exp(logits) * mask
    out    = (e / (sum_j e + 1e-10)) v

Since every row i >= 1 has an unmasked entry, its maximum is the maximum over j < i, and
out_i = sum_{j<i} exp(s_ij - m_i) v_j / (sum_{j<i} exp(s_ij - m_i) + 1e-10) with m_i = max_{j<i} s_ij.
Row 0 attends to nothing: its output is exactly 0 (never NaN). Likewise no query attends the last
position, so its key and value get zero gradient.

This file holds, in order:
  - input checks and the PyTorch reference ``causal_attention_reference`` (the official formula,
    literally: it materialises L x L tensors, differentiable by autograd);
  - the Triton kernels (flash-attention style: online softmax in float32, key blocks only up to the
    diagonal, per-row statistics (m, l) saved for the backward, never an L x L tensor; backward:
    D = rowsum(dO * O), then one kernel for dK and dV and one for dQ, both recomputing P from (m, l)),
    their launchers and the autograd Function;
  - the public dispatch ``causal_attention(..., backend=)`` and ``reason(...)``.

Precision: the kernels cast every load to float32 right away (the interpreter gets bfloat16 wrong
otherwise) and accumulate in float32. float32 inputs use IEEE dots; float16 / bfloat16 inputs use TF32
dots on the upcast values, which is exact for the inputs (at most 10 mantissa bits) and rounds P to
TF32 before the P V product (as flash-attention rounds P to the input dtype). Outputs and gradients are
stored in the input dtype. float64 is supported by the reference only. As in flash-attention,
D = rowsum(dO * O) uses the stored (rounded) O; in bfloat16 that dominates the error of dq and dk, within
flash-attention's rule (2x PyTorch's error plus one ulp): the price of not keeping a float32 copy of O
(figures: docs/benchmarks.md, "Causal attention").
"""
from __future__ import annotations

import math

import torch

from ._dispatch import Choice, check_out, check_pow2, choose, device_ctx, dtype_reason
from ._triton import HAS_TRITON, next_power_of_2, triton_unavailable_reason

if HAS_TRITON:
    import triton
    import triton.language as tl

BACKENDS = ("auto", "torch", "sdpa", "triton")
MASK_VALUE = 1e10  # official: logits - (1 - mask) * 1e10
EPS = 1e-10  # official: + 1e-10 in the softmax denominator
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (*_KERNEL_DTYPES, torch.float64)


# ----------------------------------------------------------------------------------------------------
# Input checks shared by every backend
# ----------------------------------------------------------------------------------------------------
def _check_inputs(q, k, v, scale=None) -> None:
    """Shapes, devices, dtypes and scale every backend needs; raises ValueError with what is wrong."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, L, D], got shape {tuple(t.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q [B, H, L, Dk] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, H, L, Dv] with B, H, L = {tuple(q.shape[:3])} as q, got {tuple(v.shape)}")
    if q.shape[2] < 1:
        raise ValueError(f"the length L must be >= 1 (row 0 needs no key, but there must be a row), got shape "
                         f"{tuple(q.shape)}")
    if q.shape[3] < 1:
        raise ValueError(f"the query/key width Dk must be >= 1, got shape {tuple(q.shape)}")
    if v.shape[3] < 1:
        raise ValueError(f"the value width Dv must be >= 1, got shape {tuple(v.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q, k, v must be float32, float16, bfloat16 or float64, got {q.dtype}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float, torch.SymInt, torch.SymFloat)):
            raise ValueError(f"scale must be a Python number or None, got {type(scale).__name__}")
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale must be finite, got {scale}")


def _default_scale(dk: int) -> float:
    return 1.0 / math.sqrt(dk)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None) -> torch.Tensor:
    """The official formula, literally (materialises L x L tensors). Differentiable by autograd.

    q, k: [B, H, L, Dk]; v: [B, H, L, Dv]; returns [B, H, L, Dv] in the inputs' dtype. scale None is
    1/sqrt(Dk) (logits divided by sqrt(Dk), as the official code does). float16 / bfloat16 inputs are
    computed in float32 (the official 1e10 mask constant overflows float16) and the result rounded back.
    """
    _check_inputs(q, k, v, scale)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
    L = q.shape[2]
    mask = torch.ones(L, L, dtype=compute, device=q.device).tril(-1)  # mask[i, j] = 1 iff j < i
    dot = torch.matmul(qc, kc.transpose(-1, -2))
    dot = dot / math.sqrt(q.shape[3]) if scale is None else dot * float(scale)
    dot = dot - (1.0 - mask) * MASK_VALUE  # masked softmax
    dot = dot - dot.amax(dim=-1, keepdim=True)
    causal_exp_dot = torch.exp(dot) * mask
    causal_probs = causal_exp_dot / (causal_exp_dot.sum(dim=-1, keepdim=True) + EPS)
    return torch.matmul(causal_probs, vc).to(q.dtype)


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _fwd_kernel(
        Q, K, V, O, M, Lse,
        scale, H, L, DK, DV,
        sqb, sqh, sql, sqd,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        sob, soh, sol, sod,
        smb, smh, sml,             # strides of M and Lse ([B, H, L] float32, same layout)
        BLOCK_M: tl.constexpr,     # queries per program
        BLOCK_N: tl.constexpr,     # keys per step (powers of two, so one of BLOCK_M, BLOCK_N divides the other)
        BLOCK_DK: tl.constexpr,    # >= 16, power of two; Dk masked up to it
        BLOCK_DV: tl.constexpr,
        DOT_PREC: tl.constexpr,    # "ieee" for float32 inputs, "tf32" for float16 / bfloat16
    ):
        """One program: BLOCK_M queries of one (batch, head) against keys 0 .. start_m + BLOCK_M - 2.

        Stage 1: key blocks entirely before start_m (no mask). Stage 2: the blocks that reach the
        diagonal, mask j < i.
        Saves m_i (row max of the scaled logits, 0 for a row with no key) and l_i = sum_j exp(s_ij - m_i).
        """
        LOG2E: tl.constexpr = 1.4426950408889634
        start_m = tl.program_id(1) * BLOCK_M
        bh = tl.program_id(0).to(tl.int64)  # (batch, head) on axis 0: B * H may pass 65535
        b = bh // H
        h = bh % H
        scale = tl.cast(scale, tl.float32)  # a Python float arrives as float64 under torch.compile

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_m = offs_m < L
        mask_dk = offs_dk < DK
        mask_dv = offs_dv < DV

        q_base = Q + b * sqb + h * sqh
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        q = tl.load(q_base + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                    mask=mask_m[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)

        # stage 1: key blocks that end by start_m precede every query of this program (keys < start_m < L)
        lo = (start_m // BLOCK_N) * BLOCK_N
        for start_n in range(0, lo, BLOCK_N):
            offs_kn = start_n + offs_n
            kt = tl.load(k_base + offs_kn[None, :] * skl + offs_dk[:, None] * skd,
                         mask=mask_dk[:, None], other=0.0).to(tl.float32)          # [BLOCK_DK, BLOCK_N]
            vb = tl.load(v_base + offs_kn[:, None] * svl + offs_dv[None, :] * svd,
                         mask=mask_dv[None, :], other=0.0).to(tl.float32)          # [BLOCK_N, BLOCK_DV]
            s = tl.dot(q, kt, input_precision=DOT_PREC) * scale
            m_new = tl.maximum(m_i, tl.max(s, axis=1))                          # finite: no masked entry
            alpha = tl.exp2((m_i - m_new) * LOG2E)
            p = tl.exp2((s - m_new[:, None]) * LOG2E)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p, vb, input_precision=DOT_PREC)
            m_i = m_new

        # stage 2: the diagonal, keys lo .. min(start_m + BLOCK_M - 1, L) - 1, strict mask j < i
        hi = tl.minimum(start_m + BLOCK_M - 1, L)
        for start_n in range(lo, hi, BLOCK_N):
            offs_kn = start_n + offs_n
            mask_kn = offs_kn < L
            kt = tl.load(k_base + offs_kn[None, :] * skl + offs_dk[:, None] * skd,
                         mask=mask_dk[:, None] & mask_kn[None, :], other=0.0).to(tl.float32)
            vb = tl.load(v_base + offs_kn[:, None] * svl + offs_dv[None, :] * svd,
                         mask=mask_kn[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)
            s = tl.dot(q, kt, input_precision=DOT_PREC) * scale
            causal = (offs_kn[None, :] < offs_m[:, None]) & mask_kn[None, :]
            s = tl.where(causal, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # row 0 (no key yet): no -inf - -inf
            alpha = tl.exp2((m_i - m_use) * LOG2E)
            p = tl.exp2((s - m_use[:, None]) * LOG2E)                            # masked: exp2(-inf) = 0
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p, vb, input_precision=DOT_PREC)
            m_i = m_new

        m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
        out = acc / (l_i + 1e-10)[:, None]  # official epsilon; row 0: 0 / 1e-10 = 0
        o_base = O + b * sob + h * soh
        tl.store(o_base + offs_m[:, None] * sol + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
                 mask=mask_m[:, None] & mask_dv[None, :])
        tl.store(M + b * smb + h * smh + offs_m * sml, m_i, mask=mask_m)
        tl.store(Lse + b * smb + h * smh + offs_m * sml, l_i, mask=mask_m)

    @triton.jit
    def _bwd_preprocess_kernel(
        O, DO, Delta, H, L, DV,
        sob, soh, sol, sod,
        sdob, sdoh, sdol, sdod,
        smb, smh, sml,
        BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):
        """Delta_i = sum_d dO_id O_id in float32 (the rowsum(P * dP) of the softmax gradient)."""
        start_m = tl.program_id(1) * BLOCK_M
        bh = tl.program_id(0).to(tl.int64)  # (batch, head) on axis 0: B * H may pass 65535
        b = bh // H
        h = bh % H
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, DV, BLOCK_DV):
            offs_d = d0 + tl.arange(0, BLOCK_DV)
            mask = mask_m[:, None] & (offs_d < DV)[None, :]
            o = tl.load(O + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :] * sod,
                        mask=mask, other=0.0).to(tl.float32)
            do = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdol + offs_d[None, :] * sdod,
                         mask=mask, other=0.0).to(tl.float32)
            acc += tl.sum(o * do, axis=1)
        tl.store(Delta + b * smb + h * smh + offs_m * sml, acc, mask=mask_m)

    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, M, Lse, Delta, DK_, DV_,
        scale, H, L, DK, DV,
        sqb, sqh, sql, sqd,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        sdob, sdoh, sdol, sdod,
        smb, smh, sml,             # strides of M and Lse
        sdeb, sdeh, sdel,          # strides of Delta
        sdkb, sdkh, sdkl, sdkd,   # dK strides
        sdvb, sdvh, sdvl, sdvd,    # dV strides
        BLOCK_M: tl.constexpr,     # queries per step
        BLOCK_N: tl.constexpr,     # keys per program
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """One program: BLOCK_N keys of one (batch, head) against every later query.

        P_ij = exp(s_ij - m_i) / (l_i + 1e-10) recomputed from the saved statistics;
        dV_j = sum_i P_ij dO_i; dS_ij = P_ij (dO_i . v_j - Delta_i); dK_j = scale * sum_i dS_ij q_i.
        Stage 1: the diagonal query blocks (mask j < i), stage 2: query blocks entirely after the keys.
        """
        LOG2E: tl.constexpr = 1.4426950408889634
        start_n = tl.program_id(1) * BLOCK_N
        bh = tl.program_id(0).to(tl.int64)
        b = bh // H
        h = bh % H
        scale = tl.cast(scale, tl.float32)

        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_n = offs_n < L
        mask_dk = offs_dk < DK
        mask_dv = offs_dv < DV

        kb = tl.load(K + b * skb + h * skh + offs_n[:, None] * skl + offs_dk[None, :] * skd,
                     mask=mask_n[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)   # [BLOCK_N, BLOCK_DK]
        vb = tl.load(V + b * svb + h * svh + offs_n[:, None] * svl + offs_dv[None, :] * svd,
                     mask=mask_n[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)   # [BLOCK_N, BLOCK_DV]
        kt = tl.trans(kb)
        vt = tl.trans(vb)
        dk = tl.zeros([BLOCK_N, BLOCK_DK], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdob + h * sdoh
        st_base = b * smb + h * smh

        # stage 1: the query blocks that overlap keys start_n .. start_n + BLOCK_N - 1 (the diagonal)
        lo = (start_n // BLOCK_M) * BLOCK_M
        mid = ((start_n + BLOCK_N + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
        for start_m in range(lo, tl.minimum(mid, L), BLOCK_M):
            offs_m = start_m + offs_m0
            mask_m = offs_m < L
            qb = tl.load(q_base + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                         mask=mask_m[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)
            dob = tl.load(do_base + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                          mask=mask_m[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)
            m_r = tl.load(M + st_base + offs_m * sml, mask=mask_m, other=float("inf"))  # padding rows: P = 0
            l_r = tl.load(Lse + st_base + offs_m * sml, mask=mask_m, other=0.0)
            d_r = tl.load(Delta + b * sdeb + h * sdeh + offs_m * sdel, mask=mask_m, other=0.0)
            s = tl.dot(qb, kt, input_precision=DOT_PREC) * scale
            causal = (offs_n[None, :] < offs_m[:, None]) & mask_m[:, None]
            s = tl.where(causal, s, float("-inf"))
            p = tl.exp2((s - m_r[:, None]) * LOG2E) * (1.0 / (l_r + 1e-10))[:, None]
            dv += tl.dot(tl.trans(p), dob, input_precision=DOT_PREC)
            dp = tl.dot(dob, vt, input_precision=DOT_PREC)
            ds = p * (dp - d_r[:, None])
            dk += tl.dot(tl.trans(ds), qb, input_precision=DOT_PREC)

        # stage 2: query blocks after every key of this program (no causal mask)
        for start_m in range(mid, L, BLOCK_M):
            offs_m = start_m + offs_m0
            mask_m = offs_m < L
            qb = tl.load(q_base + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                         mask=mask_m[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)
            dob = tl.load(do_base + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                          mask=mask_m[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)
            m_r = tl.load(M + st_base + offs_m * sml, mask=mask_m, other=float("inf"))
            l_r = tl.load(Lse + st_base + offs_m * sml, mask=mask_m, other=0.0)
            d_r = tl.load(Delta + b * sdeb + h * sdeh + offs_m * sdel, mask=mask_m, other=0.0)
            s = tl.dot(qb, kt, input_precision=DOT_PREC) * scale
            p = tl.exp2((s - m_r[:, None]) * LOG2E) * (1.0 / (l_r + 1e-10))[:, None]
            dv += tl.dot(tl.trans(p), dob, input_precision=DOT_PREC)
            dp = tl.dot(dob, vt, input_precision=DOT_PREC)
            ds = p * (dp - d_r[:, None])
            dk += tl.dot(tl.trans(ds), qb, input_precision=DOT_PREC)

        dk = dk * scale
        tl.store(DK_ + b * sdkb + h * sdkh + offs_n[:, None] * sdkl + offs_dk[None, :] * sdkd,
                 dk.to(DK_.dtype.element_ty), mask=mask_n[:, None] & mask_dk[None, :])
        tl.store(DV_ + b * sdvb + h * sdvh + offs_n[:, None] * sdvl + offs_dv[None, :] * sdvd,
                 dv.to(DV_.dtype.element_ty), mask=mask_n[:, None] & mask_dv[None, :])

    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, DO, M, Lse, Delta, DQ,
        scale, H, L, DK, DV,
        sqb, sqh, sql, sqd,
        skb, skh, skl, skd,
        svb, svh, svl, svd,
        sdob, sdoh, sdol, sdod,
        smb, smh, sml,             # strides of M and Lse
        sdeb, sdeh, sdel,          # strides of Delta
        sdqb, sdqh, sdql, sdqd,
        BLOCK_M: tl.constexpr,     # queries per program
        BLOCK_N: tl.constexpr,     # keys per step
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr,
    ):
        """One program: BLOCK_M queries; dQ_i = scale * sum_{j<i} dS_ij k_j, keys as in the forward."""
        LOG2E: tl.constexpr = 1.4426950408889634
        start_m = tl.program_id(1) * BLOCK_M
        bh = tl.program_id(0).to(tl.int64)  # (batch, head) on axis 0: B * H may pass 65535
        b = bh // H
        h = bh % H
        scale = tl.cast(scale, tl.float32)

        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_dv = tl.arange(0, BLOCK_DV)
        mask_m = offs_m < L
        mask_dk = offs_dk < DK
        mask_dv = offs_dv < DV

        qb = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sql + offs_dk[None, :] * sqd,
                     mask=mask_m[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)
        dob = tl.load(DO + b * sdob + h * sdoh + offs_m[:, None] * sdol + offs_dv[None, :] * sdod,
                      mask=mask_m[:, None] & mask_dv[None, :], other=0.0).to(tl.float32)
        st_base = b * smb + h * smh
        m_r = tl.load(M + st_base + offs_m * sml, mask=mask_m, other=float("inf"))
        l_r = tl.load(Lse + st_base + offs_m * sml, mask=mask_m, other=0.0)
        d_r = tl.load(Delta + b * sdeb + h * sdeh + offs_m * sdel, mask=mask_m, other=0.0)
        inv_l = 1.0 / (l_r + 1e-10)
        dq = tl.zeros([BLOCK_M, BLOCK_DK], dtype=tl.float32)
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh

        lo = (start_m // BLOCK_N) * BLOCK_N
        for start_n in range(0, lo, BLOCK_N):
            offs_kn = start_n + offs_n
            kb = tl.load(k_base + offs_kn[:, None] * skl + offs_dk[None, :] * skd,
                         mask=mask_dk[None, :], other=0.0).to(tl.float32)             # [BLOCK_N, BLOCK_DK]
            vt = tl.load(v_base + offs_kn[None, :] * svl + offs_dv[:, None] * svd,
                         mask=mask_dv[:, None], other=0.0).to(tl.float32)             # [BLOCK_DV, BLOCK_N]
            s = tl.dot(qb, tl.trans(kb), input_precision=DOT_PREC) * scale
            p = tl.exp2((s - m_r[:, None]) * LOG2E) * inv_l[:, None]
            dp = tl.dot(dob, vt, input_precision=DOT_PREC)
            ds = p * (dp - d_r[:, None])
            dq += tl.dot(ds, kb, input_precision=DOT_PREC)

        hi = tl.minimum(start_m + BLOCK_M - 1, L)
        for start_n in range(lo, hi, BLOCK_N):
            offs_kn = start_n + offs_n
            mask_kn = offs_kn < L
            kb = tl.load(k_base + offs_kn[:, None] * skl + offs_dk[None, :] * skd,
                         mask=mask_kn[:, None] & mask_dk[None, :], other=0.0).to(tl.float32)
            vt = tl.load(v_base + offs_kn[None, :] * svl + offs_dv[:, None] * svd,
                         mask=mask_dv[:, None] & mask_kn[None, :], other=0.0).to(tl.float32)
            s = tl.dot(qb, tl.trans(kb), input_precision=DOT_PREC) * scale
            causal = (offs_kn[None, :] < offs_m[:, None]) & mask_kn[None, :]
            s = tl.where(causal, s, float("-inf"))
            p = tl.exp2((s - m_r[:, None]) * LOG2E) * inv_l[:, None]
            dp = tl.dot(dob, vt, input_precision=DOT_PREC)
            ds = p * (dp - d_r[:, None])
            dq += tl.dot(ds, kb, input_precision=DOT_PREC)

        dq = dq * scale
        tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdql + offs_dk[None, :] * sdqd,
                 dq.to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_dk[None, :])


# ----------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------
def _dtype_unsupported_reason(q: torch.Tensor) -> str | None:
    return dtype_reason(q, _KERNEL_DTYPES, "q")


def _check_block(name: str, value: int) -> int:
    return check_pow2(name, value, 16, " (tl.dot)")


def _blocks(L: int, block_m: int | None, block_n: int | None, default_m: int, default_n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): the given sizes, or the defaults clipped to L (never below 16, for tl.dot)."""
    cap = max(16, next_power_of_2(L))
    bm = _check_block("block_m", block_m if block_m is not None else min(default_m, cap))
    bn = _check_block("block_n", block_n if block_n is not None else min(default_n, cap))
    return bm, bn


def _num_warps(dtype: torch.dtype) -> int:
    # float32 takes the IEEE (FMA) path of tl.dot, which holds more in registers: with 4 warps the sm_90 build
    # of the dK/dV kernel at 32 x 64 spills 14 KB and the dQ kernel at 64 x 32 a little; the defaults below
    # with 8 warps do not spill (ptxas -v for sm_90a, compiled without a GPU; not timed)
    return 8 if dtype == torch.float32 else 4


def _prepare(q, k, v, scale):
    _check_inputs(q, k, v, scale)
    why = _dtype_unsupported_reason(q) or triton_unavailable_reason(q, k, v)
    if why is not None:
        raise RuntimeError(f"the Triton causal-attention kernel cannot run: {why}")
    return float(_default_scale(q.shape[3]) if scale is None else scale)


def _stats_strides(m: torch.Tensor) -> tuple[int, int, int]:
    return m.stride(0), m.stride(1), m.stride(2)


def causal_attention_fwd_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale=None,
    *,
    out: torch.Tensor | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward kernel, no autograd. Returns (out [B, H, L, Dv] in q's dtype, m [B, H, L], l [B, H, L]).

    m: per-row maximum of the scaled logits over the keys j < i (0 for row 0), float32; l: per-row
    sum_j<i exp(s_ij - m_i), float32 (0 for row 0). q, k, v may have any strides. out / stats: optional
    preallocated buffers (any strides; tests poison them). block_m / block_n: queries / keys per block,
    powers of two >= 16 (tuning knobs; defaults 64 / 32, clipped to L).
    """
    scale = _prepare(q, k, v, scale)
    B, H, L, Dk = q.shape
    Dv = v.shape[3]
    if out is None:
        out = torch.empty(B, H, L, Dv, dtype=q.dtype, device=q.device)
    check_out("out", out, (B, H, L, Dv), q.dtype, q.device)
    if stats is None:
        stats = (torch.empty(B, H, L, dtype=torch.float32, device=q.device),
                 torch.empty(B, H, L, dtype=torch.float32, device=q.device))
    m, lsum = stats
    check_out("stats[0]", m, (B, H, L), torch.float32, q.device)
    check_out("stats[1]", lsum, (B, H, L), torch.float32, q.device)
    if m.stride() != lsum.stride():
        raise ValueError("stats[0] and stats[1] must have the same strides")
    if B * H * L == 0:
        return out, m, lsum
    bm, bn = _blocks(L, block_m, block_n, 64, 32)
    grid = (B * H, triton.cdiv(L, bm))  # depends on shapes only
    with device_ctx(q):
        _fwd_kernel[grid](
            q, k, v, out, m, lsum,
            scale, H, L, Dk, Dv,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(), *_stats_strides(m),
            BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_DK=max(16, next_power_of_2(Dk)), BLOCK_DV=max(16, next_power_of_2(Dv)),
            DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
            num_warps=_num_warps(q.dtype),
        )
    return out, m, lsum


def causal_attention_bwd_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    m: torch.Tensor,
    lsum: torch.Tensor,
    grad_out: torch.Tensor,
    scale=None,
    *,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    need_dq: bool = True,
    block_m: int | None = None,
    block_n: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Backward kernels, no autograd. Returns (dq or None, dk, dv) in the inputs' dtype.

    out, m, lsum: what ``causal_attention_fwd_triton`` returned for these inputs; grad_out: dL/dout
    [B, H, L, Dv] (any strides). grads: optional preallocated (dq, dk, dv), any strides (dq ignored when
    need_dq is False). block_m / block_n: queries / keys per block, powers of two >= 16 (the dK/dV kernel
    takes block_n keys per program and steps over block_m queries, default 16 / 64 for float32 and
    32 / 64 otherwise; the dQ kernel the other way round, default 64 / 32; clipped to L).
    """
    scale = _prepare(q, k, v, scale)
    B, H, L, Dk = q.shape
    Dv = v.shape[3]
    check_out("out", out, (B, H, L, Dv), q.dtype, q.device)
    check_out("m", m, (B, H, L), torch.float32, q.device)
    check_out("lsum", lsum, (B, H, L), torch.float32, q.device)
    if m.stride() != lsum.stride():
        raise ValueError("m and lsum must have the same strides")
    if grad_out.shape != out.shape or grad_out.device != q.device or not grad_out.is_floating_point():
        raise ValueError(f"grad_out must be a floating tensor {tuple(out.shape)} on {q.device}, got "
                         f"{grad_out.dtype} {tuple(grad_out.shape)} on {grad_out.device}")
    if grads is None:
        dq = torch.empty_like(q, memory_format=torch.contiguous_format) if need_dq else None
        dk = torch.empty_like(k, memory_format=torch.contiguous_format)
        dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    else:
        dq, dk, dv = grads
        if need_dq:
            check_out("grads[0]", dq, q.shape, q.dtype, q.device)
        check_out("grads[1]", dk, k.shape, k.dtype, k.device)
        check_out("grads[2]", dv, v.shape, v.dtype, v.device)
    if B * H * L == 0:
        if need_dq:
            dq.zero_()
        dk.zero_()
        dv.zero_()
        return dq, dk, dv

    block_dk = max(16, next_power_of_2(Dk))
    block_dv = max(16, next_power_of_2(Dv))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    delta = torch.empty(B, H, L, dtype=torch.float32, device=q.device)
    with device_ctx(q):
        pm = min(64, max(16, next_power_of_2(L)))
        _bwd_preprocess_kernel[(B * H, triton.cdiv(L, pm))](
            out, grad_out, delta, H, L, Dv,
            *out.stride(), *grad_out.stride(), *_stats_strides(delta),
            BLOCK_M=pm, BLOCK_DV=min(64, block_dv), num_warps=4,
        )
        # dK, dV: block_n keys per program, stepping over block_m queries
        bm, bn = _blocks(L, block_m, block_n, 16 if q.dtype == torch.float32 else 32, 64)
        _bwd_dkdv_kernel[(B * H, triton.cdiv(L, bn))](
            q, k, v, grad_out, m, lsum, delta, dk, dv,
            scale, H, L, Dk, Dv,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *_stats_strides(m),
            *_stats_strides(delta), *dk.stride(), *dv.stride(),
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=block_dk, BLOCK_DV=block_dv, DOT_PREC=prec,
            num_warps=_num_warps(q.dtype),
        )
        if need_dq:
            # dQ: block_m queries per program, stepping over block_n keys
            bm, bn = _blocks(L, block_m, block_n, 64, 32)
            _bwd_dq_kernel[(B * H, triton.cdiv(L, bm))](
                q, k, v, grad_out, m, lsum, delta, dq,
                scale, H, L, Dk, Dv,
                *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *_stats_strides(m),
                *_stats_strides(delta), *dq.stride(),
                BLOCK_M=bm, BLOCK_N=bn, BLOCK_DK=block_dk, BLOCK_DV=block_dv, DOT_PREC=prec,
                num_warps=_num_warps(q.dtype),
            )
    return dq, dk, dv


class _CausalAttentionTriton(torch.autograd.Function):
    """Forward saves (q, k, v, out, m, l): O(L) extra memory per (batch, head), never L x L."""

    @staticmethod
    def forward(ctx, q, k, v, scale, block_m, block_n):
        out, m, lsum = causal_attention_fwd_triton(q, k, v, scale, block_m=block_m, block_n=block_n)
        ctx.save_for_backward(q, k, v, out, m, lsum)
        ctx.scale = scale
        ctx.blocks = (block_m, block_n)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, out, m, lsum = ctx.saved_tensors
        dq, dk, dv = causal_attention_bwd_triton(
            q, k, v, out, m, lsum, grad_out, ctx.scale, need_dq=ctx.needs_input_grad[0],
            block_m=ctx.blocks[0], block_n=ctx.blocks[1])
        return dq, dk, dv, None, None, None


def causal_attention_triton(q, k, v, scale=None, *, block_m: int | None = None, block_n: int | None = None):
    """The Triton path as a differentiable op (autograd Function; no double backward)."""
    _prepare(q, k, v, scale)
    return _CausalAttentionTriton.apply(q, k, v, scale, block_m, block_n)


# ----------------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------------
def causal_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None) -> torch.Tensor:
    """The same function through PyTorch's fused attention, for the CPU: query i >= 1 attends to keys
    0..i-1, i.e. queries 1..L-1 against keys 0..L-2 with the ordinary (inclusive) causal mask; row 0 is 0.

    Equal to the official formula in float32: the row sum of exp(s - max) is at least 1, so its +1e-10 is
    below half an ulp and rounds away. No L x L tensor (timings: docs/benchmarks.md).
    """
    scale = _default_scale(q.shape[-1]) if scale is None else float(scale)
    out = q.new_zeros(*q.shape[:-1], v.shape[-1])
    if q.shape[-2] > 1:
        rest = torch.nn.functional.scaled_dot_product_attention(
            q[..., 1:, :], k[..., :-1, :], v[..., :-1, :], is_causal=True, scale=scale)
        out = torch.cat([out[..., :1, :], rest], dim=-2)
    return out


def choose_backend(q, k, v, backend: str = "auto", scale=None) -> Choice:
    """The dispatch's :class:`Choice` (backend, reason) for these inputs; ValueError for bad inputs."""
    _check_inputs(q, k, v, scale)
    return choose(backend, BACKENDS, q.device,
                  triton=lambda: _dtype_unsupported_reason(q) or triton_unavailable_reason(q, k, v),
                  cpu="sdpa", cpu_note="PyTorch's fused attention (no L x L tensor)")


def reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> str:
    """Which backend ``causal_attention(q, k, v, backend=backend)`` would run, and why.

    Returns "<backend>: <why>", or "none: <why>" when an explicitly requested backend cannot run.
    """
    return str(choose_backend(q, k, v, backend))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None, *,
                     backend: str = "auto") -> torch.Tensor:
    """Strictly causal multi-head attention: q, k [B, H, L, Dk], v [B, H, L, Dv] -> [B, H, L, Dv].

    scale: None = 1/sqrt(Dk). backend: "auto" (Triton on CUDA, PyTorch's fused attention elsewhere),
    "torch" (the literal reference), "sdpa" or "triton"; an explicit backend that cannot run raises RuntimeError with the reason.
    Differentiable on every backend.
    """
    chosen = choose_backend(q, k, v, backend, scale).require()
    if chosen == "triton":
        return causal_attention_triton(q, k, v, scale)
    if chosen == "sdpa":
        return causal_attention_sdpa(q, k, v, scale)
    return causal_attention_reference(q, k, v, scale)
