"""Causal (down-shifted / down-right-shifted) convolution of the PixelCNN, optionally fused with concat_elu.

Semantics are the official ones (``net/nn.py`` of the DSI code; tensors here are NCHW, weights OIHW):
  - kind="down" (``down_shifted_conv2d``): pad top fh-1, left and right (fw-1)//2, bottom 0, then a
    VALID, stride-1 convolution. Output (i, j) sees rows i-fh+1..i and columns j-(fw-1)//2..j+(fw-1)//2.
  - kind="down_right" (``down_right_shifted_conv2d``): pad top fh-1, left fw-1, then a VALID convolution.
    Output (i, j) sees rows i-fh+1..i and columns j-fw+1..j: its own pixel included; the PixelCNN's
    down_shift / right_shift around these layers make the whole network strictly causal.
  - concat_elu=True: the convolution reads ``elu(cat([x, -x], channel))`` (2C channels) instead of x, as
    the gated residual block does. The fused kernels compute it on the loaded tile and never
    materialise the 2C-channel tensor (weight is then [O, 2C, fh, fw]; channel c < C reads elu(x_c),
    channel C + c reads elu(-x_c)).
  - output [N, O, H, W] in x's dtype. "down" needs an odd fw: the official padding of an even width
    would give a W - 1 wide output, which no official layer uses, so it is refused (ValueError).

This file holds, in order:
  - the PyTorch reference ``causal_conv2d_reference`` (F.elu / cat, F.pad, F.conv2d; differentiable by
    autograd): the CPU path and the ground truth;
  - the Triton kernels (forward, grad_input, grad_weight), their launchers ``causal_conv2d_triton`` and
    ``causal_conv2d_backward_triton``, and the autograd function tying them together;
  - the public dispatch ``causal_conv2d(..., backend=)``, ``choose_backend(...)`` and ``reason(...)``;
  - the step form for the cached sampler, in causal-conv1d's style: ``causal_conv2d_init_state`` (the input
    history and the weights laid out once), ``causal_conv2d_update`` (one position, or one row for "down")
    and its plain reference ``causal_conv2d_update_ref``.

Backends: "torch" (the reference), "triton" (CUDA, or the CPU under TRITON_INTERPRET=1 when asked for
explicitly). "auto" takes Triton for CUDA tensors only and never sends CPU tensors to the interpreter.
The Triton path is differentiable once (first-order gradients; no double backward).

Numerics of the kernels: loads are cast to float32 at once (the interpreter gets bfloat16 arithmetic
wrong otherwise), elu is evaluated in float32, and every tl.dot accumulates in float32. Float32 inputs
use IEEE dots (no TF32). Float16 / bfloat16 inputs: the dot operands are rounded to the input dtype
first (exact for loaded values; for elu(x) it is the rounding that the same-dtype PyTorch formulation
does too), then half-precision tensor-core dots with a float32 accumulator. In the interpreter, numpy
cannot multiply bfloat16 and truncates fp32 -> bf16 casts, so there the operands are rounded to
nearest-even by hand and multiplied in float32: the same products, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._dispatch import Choice, check_out, choose, device_ctx, dtype_reason
from ._triton import HAS_TRITON, next_power_of_2, triton_unavailable_reason

if HAS_TRITON:
    import triton
    import triton.language as tl

BACKENDS = ("auto", "torch", "triton")
KINDS = ("down", "down_right")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ----------------------------------------------------------------------------------------------------
# Input checks shared by every backend
# ----------------------------------------------------------------------------------------------------
def _check_inputs(x, weight, bias, kind: str, concat_elu: bool) -> None:
    """Shapes, dtypes and devices every backend needs; raises ValueError with what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(x, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise ValueError("x and weight must be torch tensors")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise ValueError(f"bias must be a tensor or None, got {type(bias).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [O, C_in, fh, fw], got shape {tuple(weight.shape)}")
    N, C, H, W = x.shape
    O, cin, fh, fw = weight.shape
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"x must have at least one channel, row and column, got shape {tuple(x.shape)}")
    expected = 2 * C if concat_elu else C
    if cin != expected:
        how = "2C (concat_elu doubles the channels)" if concat_elu else "C (concat_elu=False)"
        raise ValueError(f"weight has {cin} input channels but x has C = {C}: expected {how} = {expected}")
    if fh < 1 or fw < 1:
        raise ValueError(f"the filter must be at least 1 x 1, got {fh} x {fw}")
    if kind == "down" and fw % 2 == 0:
        raise ValueError(f"kind='down' needs an odd filter width (got fw = {fw}): the official padding "
                         f"(fw-1)//2 on both sides would give a W-1 wide output")
    if bias is not None and tuple(bias.shape) != (O,):
        raise ValueError(f"bias must be [O] = [{O}], got shape {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"x is on {x.device} but {name} is on {t.device}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x has dtype {x.dtype}; expected a floating dtype")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"x is {x.dtype} but {name} is {t.dtype}: they must have the same dtype")


def _padding(kind: str, fh: int, fw: int) -> tuple[int, int]:
    """(top, left) zero padding of the official layers (right is (fw-1)//2 for "down", 0 for "down_right")."""
    return fh - 1, ((fw - 1) // 2 if kind == "down" else fw - 1)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def causal_conv2d_reference(x, weight, bias=None, *, kind: str, concat_elu: bool = False) -> torch.Tensor:
    """Plain PyTorch: [concat_elu,] F.pad with the official padding, VALID F.conv2d. Differentiable."""
    _check_inputs(x, weight, bias, kind, concat_elu)
    if concat_elu:
        x = F.elu(torch.cat([x, -x], dim=1))
    fh, fw = weight.shape[2], weight.shape[3]
    top, left = _padding(kind, fh, fw)
    right = left if kind == "down" else 0
    return F.conv2d(F.pad(x, (left, right, top, 0)), weight, bias)


def _dtype_unsupported_reason(x: torch.Tensor) -> str | None:
    return dtype_reason(x, _TRITON_DTYPES, "x")


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _elu(v):
        """elu with alpha 1 in float32; expm1 near 0 by its Taylor series (exp(v) - 1 would cancel there)."""
        neg = tl.minimum(v, 0.0)  # also keeps exp from overflowing on the positive side
        series = neg * (1.0 + neg * (0.5 + neg * (1.0 / 6.0 + neg * (1.0 / 24.0))))
        em1 = tl.where(neg > -0.01, series, tl.exp(neg) - 1.0)
        return tl.where(v > 0.0, v, em1)

    @triton.jit
    def _elu_grad(v):
        """d elu(v) / dv = 1 for v > 0, exp(v) otherwise (1 at 0, as PyTorch's elu backward)."""
        return tl.where(v > 0.0, 1.0, tl.exp(tl.minimum(v, 0.0)))

    @triton.jit
    def _round_bf16(v):
        """float32 -> nearest-even bfloat16 value, kept in float32 (interpreter only; NaN payloads aside)."""
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        bits = (bits >> 16) << 16
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _mma(a, b, acc, DOT: tl.constexpr, EMULATE: tl.constexpr):
        """acc + a @ b for float32 tiles a, b: operands rounded to the input dtype DOT, float32 accumulator."""
        if DOT == "fp32":
            out = tl.dot(a, b, acc, input_precision="ieee")
        elif EMULATE:  # interpreter: round by hand, multiply in float32 (products of halves are exact)
            if DOT == "fp16":
                a = a.to(tl.float16).to(tl.float32)  # numpy's cast rounds to nearest even
                b = b.to(tl.float16).to(tl.float32)
            else:
                a = _round_bf16(a)
                b = _round_bf16(b)
            out = tl.dot(a, b, acc, input_precision="ieee")
        elif DOT == "fp16":
            out = tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
        else:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
        return out

    @triton.jit
    def _to_out(v, out_ptr, DOT: tl.constexpr, EMULATE: tl.constexpr):
        """float32 -> the output dtype, rounding to nearest even (the interpreter's bf16 cast truncates)."""
        if EMULATE:
            if DOT == "bf16":
                v = _round_bf16(v)  # exact in bfloat16 now, so the truncating cast below changes nothing
        return v.to(out_ptr.dtype.element_ty)

    @triton.jit
    def _causal_conv_fwd_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        NPIX, C, H, W, O,
        stride_xn, stride_xc, stride_xh, stride_xw,    # x [N, C, H, W], any strides
        stride_wo, stride_wc, stride_wh, stride_ww,    # weight [O, C_in, FH, FW], any strides
        stride_yn, stride_yc, stride_yh, stride_yw,    # y [N, O, H, W], any strides
        stride_b,                                      # bias [O]
        FH: tl.constexpr, FW: tl.constexpr, PAD_L: tl.constexpr,
        CONCAT_ELU: tl.constexpr, HAS_BIAS: tl.constexpr,
        DOT: tl.constexpr, EMULATE: tl.constexpr,
        BLOCK_M: tl.constexpr,  # output pixels per program (rows of the implicit GEMM)
        BLOCK_O: tl.constexpr,  # output channels per program
        BLOCK_C: tl.constexpr,  # input channels per step of the reduction
    ):
        """y[n, o, i, j] = b[o] + sum_{c, r, s} w[o, c, r, s] * in[n, c, i + r - (FH-1), j + s - PAD_L].

        Implicit GEMM: a program owns BLOCK_M output pixels (flattened n, i, j) x BLOCK_O output channels
        and loops over the FH x FW taps and the input channels; out-of-image reads are masked to zero
        (the padding; elu(0) = 0, so padding before or after concat_elu is the same). With CONCAT_ELU
        one load of x feeds two dots: elu(x) against w[:, c] and elu(-x) against w[:, C + c].
        """
        pid_m = tl.program_id(0)
        pid_o = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < NPIX
        n = (offs_m // (H * W)).to(tl.int64)  # 64-bit offsets: N * stride may pass 2^31
        i = (offs_m % (H * W)) // W
        j = offs_m % W
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_o = offs_o < O
        arange_c = tl.arange(0, BLOCK_C)

        acc = tl.zeros([BLOCK_M, BLOCK_O], dtype=tl.float32)
        for tap in range(FH * FW):  # a runtime loop: unrolling the taps costs registers (spills on sm_90)
            r = tap // FW
            s = tap % FW
            ii = i + (r - (FH - 1))
            jj = j + (s - PAD_L)
            ok = mask_m & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
            x_pix = x_ptr + n * stride_xn + ii.to(tl.int64) * stride_xh + jj.to(tl.int64) * stride_xw
            w_tap = w_ptr + r * stride_wh + s * stride_ww + offs_o[None, :].to(tl.int64) * stride_wo
            for c0 in range(0, C, BLOCK_C):
                offs_c = c0 + arange_c
                mask_c = offs_c < C
                xt = tl.load(x_pix[:, None] + offs_c[None, :].to(tl.int64) * stride_xc,
                             mask=ok[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
                w_ptrs = w_tap + offs_c[:, None].to(tl.int64) * stride_wc  # [BLOCK_C, BLOCK_O]
                w_mask = mask_c[:, None] & mask_o[None, :]
                wt = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
                if CONCAT_ELU:
                    wn = tl.load(w_ptrs + C * stride_wc, mask=w_mask, other=0.0).to(tl.float32)
                    acc = _mma(_elu(xt), wt, acc, DOT, EMULATE)
                    acc = _mma(_elu(-xt), wn, acc, DOT, EMULATE)
                else:
                    acc = _mma(xt, wt, acc, DOT, EMULATE)

        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_o * stride_b, mask=mask_o, other=0.0).to(tl.float32)[None, :]
        y_ptrs = (y_ptr + n[:, None] * stride_yn + offs_o[None, :].to(tl.int64) * stride_yc
                  + i[:, None].to(tl.int64) * stride_yh + j[:, None].to(tl.int64) * stride_yw)
        tl.store(y_ptrs, _to_out(acc, y_ptr, DOT, EMULATE), mask=mask_m[:, None] & mask_o[None, :])

    @triton.jit
    def _causal_conv_bwd_input_kernel(
        gy_ptr, x_ptr, w_ptr, gx_ptr,
        NPIX, C, H, W, O,
        stride_gn, stride_gc, stride_gh, stride_gw,    # grad_out [N, O, H, W]
        stride_xn, stride_xc, stride_xh, stride_xw,    # x [N, C, H, W] (read for the elu derivative)
        stride_wo, stride_wc, stride_wh, stride_ww,    # weight [O, C_in, FH, FW]
        stride_dn, stride_dc, stride_dh, stride_dw,    # grad_x [N, C, H, W]
        FH: tl.constexpr, FW: tl.constexpr, PAD_L: tl.constexpr,
        CONCAT_ELU: tl.constexpr, DOT: tl.constexpr, EMULATE: tl.constexpr,
        BLOCK_M: tl.constexpr,  # input pixels per program
        BLOCK_C: tl.constexpr,  # channels of x per program
        BLOCK_O: tl.constexpr,  # output channels per step of the reduction
    ):
        """grad_in[n, c, p, q] = sum_{o, r, s} w[o, c, r, s] * gy[n, o, p + (FH-1) - r, q + PAD_L - s].

        The transposed implicit GEMM: a program owns BLOCK_M input pixels x BLOCK_C channels of x and
        loops over taps and output channels; outputs outside the image are masked. With CONCAT_ELU
        two accumulators take grad_in of the elu(x) and elu(-x) halves, and the chain rule gives
        grad_x = g_pos * elu'(x) - g_neg * elu'(-x).
        """
        pid_m = tl.program_id(0)
        pid_c = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < NPIX
        n = (offs_m // (H * W)).to(tl.int64)
        p = (offs_m % (H * W)) // W
        q = offs_m % W
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        arange_o = tl.arange(0, BLOCK_O)

        acc_pos = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        acc_neg = tl.zeros([BLOCK_M, BLOCK_C], dtype=tl.float32)
        for tap in range(FH * FW):  # runtime loop, as in the forward kernel
            r = tap // FW
            s = tap % FW
            i = p + ((FH - 1) - r)  # the output pixel whose tap (r, s) reads input pixel (p, q)
            j = q + (PAD_L - s)
            ok = mask_m & (i >= 0) & (i < H) & (j >= 0) & (j < W)
            g_pix = gy_ptr + n * stride_gn + i.to(tl.int64) * stride_gh + j.to(tl.int64) * stride_gw
            w_tap = w_ptr + r * stride_wh + s * stride_ww + offs_c[None, :].to(tl.int64) * stride_wc
            for o0 in range(0, O, BLOCK_O):
                offs_o = o0 + arange_o
                mask_o = offs_o < O
                gt = tl.load(g_pix[:, None] + offs_o[None, :].to(tl.int64) * stride_gc,
                             mask=ok[:, None] & mask_o[None, :], other=0.0).to(tl.float32)
                w_ptrs = w_tap + offs_o[:, None].to(tl.int64) * stride_wo  # [BLOCK_O, BLOCK_C]
                w_mask = mask_o[:, None] & mask_c[None, :]
                wt = tl.load(w_ptrs, mask=w_mask, other=0.0).to(tl.float32)
                acc_pos = _mma(gt, wt, acc_pos, DOT, EMULATE)
                if CONCAT_ELU:
                    wn = tl.load(w_ptrs + C * stride_wc, mask=w_mask, other=0.0).to(tl.float32)
                    acc_neg = _mma(gt, wn, acc_neg, DOT, EMULATE)

        mask = mask_m[:, None] & mask_c[None, :]
        if CONCAT_ELU:
            x_ptrs = (x_ptr + n[:, None] * stride_xn + offs_c[None, :].to(tl.int64) * stride_xc
                      + p[:, None].to(tl.int64) * stride_xh + q[:, None].to(tl.int64) * stride_xw)
            xt = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
            acc_pos = acc_pos * _elu_grad(xt) - acc_neg * _elu_grad(-xt)
        gx_ptrs = (gx_ptr + n[:, None] * stride_dn + offs_c[None, :].to(tl.int64) * stride_dc
                   + p[:, None].to(tl.int64) * stride_dh + q[:, None].to(tl.int64) * stride_dw)
        tl.store(gx_ptrs, _to_out(acc_pos, gx_ptr, DOT, EMULATE), mask=mask)

    @triton.jit
    def _causal_conv_bwd_weight_kernel(
        gy_ptr, x_ptr, part_ptr,
        NPIX, C, H, W, O, PIX_PER_SPLIT,
        stride_gn, stride_gc, stride_gh, stride_gw,    # grad_out [N, O, H, W]
        stride_xn, stride_xc, stride_xh, stride_xw,    # x [N, C, H, W]
        stride_ps, stride_po, stride_pc, stride_ph, stride_pw,  # partial sums [SPLIT, O, C_in, FH, FW] fp32
        FH: tl.constexpr, FW: tl.constexpr, PAD_L: tl.constexpr,
        CONCAT_ELU: tl.constexpr, DOT: tl.constexpr, EMULATE: tl.constexpr,
        BLOCK_O: tl.constexpr,  # output channels per program
        BLOCK_C: tl.constexpr,  # channels of x per program
        BLOCK_M: tl.constexpr,  # pixels per step of the reduction
    ):
        """partial[split, o, c, r, s] = sum over this split's pixels m = (n, i, j) of
        gy[n, o, i, j] * in[n, c, i + r - (FH-1), j + s - PAD_L].

        Grid: (O tiles, C tiles, taps x splits). The pixel reduction is split in chunks of
        PIX_PER_SPLIT (a multiple of BLOCK_M) so that enough programs run; the launcher sums the
        float32 partials over the splits (deterministic: no atomics).
        """
        pid_o = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_t = tl.program_id(2)
        tap = pid_t % (FH * FW)
        split = pid_t // (FH * FW)
        r = tap // FW
        s = tap % FW
        offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        mask_o = offs_o < O
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        arange_m = tl.arange(0, BLOCK_M)

        acc_pos = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)
        acc_neg = tl.zeros([BLOCK_O, BLOCK_C], dtype=tl.float32)
        m_start = split * PIX_PER_SPLIT
        for m0 in range(m_start, m_start + PIX_PER_SPLIT, BLOCK_M):
            offs_m = m0 + arange_m
            mask_m = offs_m < NPIX
            n = (offs_m // (H * W)).to(tl.int64)
            i = (offs_m % (H * W)) // W
            j = offs_m % W
            g_ptrs = (gy_ptr + offs_o[:, None].to(tl.int64) * stride_gc + n[None, :] * stride_gn
                      + i[None, :].to(tl.int64) * stride_gh + j[None, :].to(tl.int64) * stride_gw)
            gt = tl.load(g_ptrs, mask=mask_o[:, None] & mask_m[None, :], other=0.0).to(tl.float32)  # [O, M]
            ii = i + r - (FH - 1)
            jj = j + s - PAD_L
            ok = mask_m & (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
            x_ptrs = (x_ptr + n[:, None] * stride_xn + offs_c[None, :].to(tl.int64) * stride_xc
                      + ii[:, None].to(tl.int64) * stride_xh + jj[:, None].to(tl.int64) * stride_xw)
            xt = tl.load(x_ptrs, mask=ok[:, None] & mask_c[None, :], other=0.0).to(tl.float32)  # [M, C]
            if CONCAT_ELU:
                acc_pos = _mma(gt, _elu(xt), acc_pos, DOT, EMULATE)
                acc_neg = _mma(gt, _elu(-xt), acc_neg, DOT, EMULATE)
            else:
                acc_pos = _mma(gt, xt, acc_pos, DOT, EMULATE)

        p_ptrs = (part_ptr + split.to(tl.int64) * stride_ps + offs_o[:, None].to(tl.int64) * stride_po
                  + offs_c[None, :].to(tl.int64) * stride_pc + r * stride_ph + s * stride_pw)
        mask = mask_o[:, None] & mask_c[None, :]
        tl.store(p_ptrs, acc_pos, mask=mask)
        if CONCAT_ELU:
            tl.store(p_ptrs + C * stride_pc, acc_neg, mask=mask)


# ----------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------
def _triton_check(what: str, *tensors: torch.Tensor) -> None:
    why = _dtype_unsupported_reason(tensors[0]) or triton_unavailable_reason(*tensors)
    if why is not None:
        raise RuntimeError(f"the Triton causal-conv {what} kernel cannot run: {why}")


def _dot_mode(t: torch.Tensor) -> tuple[str, bool]:
    """(DOT, EMULATE) for the kernels: the operand dtype and whether the interpreter must emulate it."""
    return _TRITON_DTYPES[t.dtype], t.device.type == "cpu"


def causal_conv2d_triton(x, weight, bias=None, *, kind: str, concat_elu: bool = False,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """Forward kernel only (no autograd): y [N, O, H, W] in x's dtype.

    x, weight, bias: any strides. out: optional preallocated y to write into (any strides; tests
    poison it). Runs on CUDA, or on the CPU under TRITON_INTERPRET=1.
    """
    _check_inputs(x, weight, bias, kind, concat_elu)
    _triton_check("forward", x, weight, *(() if bias is None else (bias,)))
    x, weight = x.detach(), weight.detach()
    bias = None if bias is None else bias.detach()
    N, C, H, W = x.shape
    O, _, fh, fw = weight.shape
    if out is None:
        out = torch.empty(N, O, H, W, dtype=x.dtype, device=x.device)
    else:
        check_out("out", out, (N, O, H, W), x.dtype, x.device)
    npix = N * H * W
    if npix == 0 or O == 0:
        return out

    block_m = 64
    block_o = min(64, max(16, next_power_of_2(O)))
    block_c = min(32, max(16, next_power_of_2(C)))
    dot, emulate = _dot_mode(x)
    _, pad_l = _padding(kind, fh, fw)
    grid = (triton.cdiv(npix, block_m), triton.cdiv(O, block_o))
    with device_ctx(x):
        _causal_conv_fwd_kernel[grid](
            x, weight, bias if bias is not None else out, out,
            npix, C, H, W, O,
            *x.stride(), *weight.stride(), *out.stride(), bias.stride(0) if bias is not None else 0,
            FH=fh, FW=fw, PAD_L=pad_l, CONCAT_ELU=bool(concat_elu), HAS_BIAS=bias is not None,
            DOT=dot, EMULATE=emulate,
            BLOCK_M=block_m, BLOCK_O=block_o, BLOCK_C=block_c,
            num_warps=8,  # 4 warps spill on sm_90 (ptxas -v, compiled without a GPU)
        )
    return out


def _default_split(weight_grid: int, n_m_blocks: int, device: torch.device) -> int:
    """How many chunks the grad_weight pixel reduction is split into: about two programs per SM on CUDA,
    one chunk in the interpreter (it runs programs one at a time)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_m_blocks, triton.cdiv(2 * sms, weight_grid)))


def causal_conv2d_backward_triton(grad_out, x, weight, *, kind: str, concat_elu: bool = False,
                                  input_grad: bool = True, weight_grad: bool = True, bias_grad: bool = False,
                                  out: tuple | None = None, split: int | None = None):
    """Backward kernels: (grad_x or None, grad_weight or None, grad_bias or None).

    grad_out [N, O, H, W], x, weight: any strides, x's dtype. Each gradient is in its input's dtype
    and accumulated in float32; grad_bias is grad_out summed over (N, H, W) in float32 by PyTorch.
    out: optional (grad_x, grad_weight, grad_bias) buffers to write into (entries may be None).
    split: how many chunks the grad_weight pixel reduction is split into (default: by SM count).
    """
    _check_inputs(x, weight, None, kind, concat_elu)
    N, C, H, W = x.shape
    O, cin, fh, fw = weight.shape
    if not isinstance(grad_out, torch.Tensor) or tuple(grad_out.shape) != (N, O, H, W):
        got = tuple(grad_out.shape) if isinstance(grad_out, torch.Tensor) else type(grad_out).__name__
        raise ValueError(f"grad_out must be [N, O, H, W] = {(N, O, H, W)}, got {got}")
    if grad_out.dtype != x.dtype or grad_out.device != x.device:
        raise ValueError(f"grad_out must be {x.dtype} on {x.device}, got {grad_out.dtype} on {grad_out.device}")
    if split is not None and (not isinstance(split, int) or split < 1):
        raise ValueError(f"split must be a positive int, got {split!r}")
    _triton_check("backward", grad_out, x, weight)
    grad_out, x, weight = grad_out.detach(), x.detach(), weight.detach()
    out_x, out_w, out_b = out if out is not None else (None, None, None)

    npix = N * H * W
    dot, emulate = _dot_mode(x)
    _, pad_l = _padding(kind, fh, fw)
    flags = dict(FH=fh, FW=fw, PAD_L=pad_l, CONCAT_ELU=bool(concat_elu), DOT=dot, EMULATE=emulate)
    # reduction step of the two kernels: float32 IEEE dots run on FMA units and keep whole operand tiles
    # in registers; 16 is what compiles for sm_90 without spills at 8 warps (ptxas -v, no GPU here)
    red_block = 16 if dot == "fp32" else 32
    gx = gw = gb = None

    if input_grad:
        if out_x is None:
            gx = torch.empty(N, C, H, W, dtype=x.dtype, device=x.device)
        else:
            check_out("out[0] (grad_x)", out_x, (N, C, H, W), x.dtype, x.device)
            gx = out_x
        if O == 0:
            gx.zero_()
        elif npix:
            block_m = 64
            block_c = min(64, max(16, next_power_of_2(C)))
            block_o = min(red_block, max(16, next_power_of_2(O)))
            grid = (triton.cdiv(npix, block_m), triton.cdiv(C, block_c))
            with device_ctx(x):
                _causal_conv_bwd_input_kernel[grid](
                    grad_out, x, weight, gx,
                    npix, C, H, W, O,
                    *grad_out.stride(), *x.stride(), *weight.stride(), *gx.stride(),
                    **flags, BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_O=block_o,
                    num_warps=8,
                )

    if weight_grad:
        if out_w is None:
            gw = torch.empty(O, cin, fh, fw, dtype=weight.dtype, device=x.device)
        else:
            check_out("out[1] (grad_weight)", out_w, (O, cin, fh, fw), weight.dtype, x.device)
            gw = out_w
        if npix == 0:
            gw.zero_()
        elif O:
            block_o = min(64, max(16, next_power_of_2(O)))
            block_c = min(64, max(16, next_power_of_2(C)))
            block_m = red_block
            n_m_blocks = triton.cdiv(npix, block_m)
            tiles = triton.cdiv(O, block_o) * triton.cdiv(C, block_c) * fh * fw
            n_split = min(split or _default_split(tiles, n_m_blocks, x.device), n_m_blocks)
            pix_per_split = triton.cdiv(n_m_blocks, n_split) * block_m
            n_split = triton.cdiv(npix, pix_per_split)  # no empty chunks
            part = torch.empty(n_split, O, cin, fh, fw, dtype=torch.float32, device=x.device)
            grid = (triton.cdiv(O, block_o), triton.cdiv(C, block_c), fh * fw * n_split)
            with device_ctx(x):
                _causal_conv_bwd_weight_kernel[grid](
                    grad_out, x, part,
                    npix, C, H, W, O, pix_per_split,
                    *grad_out.stride(), *x.stride(), *part.stride(),
                    **flags, BLOCK_O=block_o, BLOCK_C=block_c, BLOCK_M=block_m,
                    num_warps=8,
                )
            gw.copy_(part.sum(dim=0) if n_split > 1 else part[0])

    if bias_grad:
        sums = grad_out.sum(dim=(0, 2, 3), dtype=torch.float32)
        if out_b is None:
            gb = sums.to(x.dtype)
        else:
            check_out("out[2] (grad_bias)", out_b, (O,), x.dtype, x.device)
            gb = out_b.copy_(sums)
    return gx, gw, gb


class _CausalConv2dTriton(torch.autograd.Function):
    """The Triton forward with the Triton backward. Saves x (C channels), never the 2C concat_elu input."""

    @staticmethod
    def forward(ctx, x, weight, bias, kind, concat_elu):
        y = causal_conv2d_triton(x, weight, bias, kind=kind, concat_elu=concat_elu)
        ctx.save_for_backward(x, weight)
        ctx.kind, ctx.concat_elu, ctx.has_bias = kind, concat_elu, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = causal_conv2d_backward_triton(
            grad_out, x, weight, kind=ctx.kind, concat_elu=ctx.concat_elu,
            input_grad=need_x, weight_grad=need_w, bias_grad=need_b and ctx.has_bias)
        return gx, gw, gb, None, None


# ----------------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------------
def choose_backend(x, weight, bias=None, *, kind: str, concat_elu: bool = False, backend: str = "auto") -> Choice:
    """The dispatch's :class:`Choice` (backend, reason) for these inputs; ValueError for bad inputs."""
    _check_inputs(x, weight, bias, kind, concat_elu)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return choose(backend, BACKENDS, x.device,
                  triton=lambda: _dtype_unsupported_reason(x) or triton_unavailable_reason(*tensors))


def reason(x, weight, *, kind, concat_elu=False, backend="auto") -> str:
    """Which backend ``causal_conv2d(x, weight, kind=kind, concat_elu=concat_elu, backend=backend)``
    would run, and why: "<backend>: <why>", or "none: <why>" when an explicit backend cannot run."""
    return str(choose_backend(x, weight, kind=kind, concat_elu=concat_elu, backend=backend))


def causal_conv2d(x, weight, bias=None, *, kind: str, concat_elu: bool = False,
                  backend: str = "auto") -> torch.Tensor:
    """Causal convolution of the PixelCNN (see the module docstring): y [N, O, H, W] in x's dtype.

    x [N, C, H, W]; weight [O, C, fh, fw], or [O, 2C, fh, fw] with concat_elu; bias [O] or None.
    kind: "down" (down_shifted_conv2d, odd fw) or "down_right" (down_right_shifted_conv2d).
    backend: "auto" (Triton for CUDA tensors, PyTorch elsewhere), "torch" or "triton"; an explicit
    backend that cannot run raises RuntimeError with the reason. Differentiable on every backend.
    """
    if choose_backend(x, weight, bias, kind=kind, concat_elu=concat_elu, backend=backend).require() == "triton":
        return _CausalConv2dTriton.apply(x, weight, bias, kind, bool(concat_elu))
    return causal_conv2d_reference(x, weight, bias, kind=kind, concat_elu=concat_elu)


# ----------------------------------------------------------------------------------------------------
# Step form: one position (or one row) at a time, for the cached sampler
# ----------------------------------------------------------------------------------------------------
# The full op's output at raster position p = y * W + x, computed from the inputs seen so far. Step tensors are
# channels-last: a position is [B, C], a row [B, W, C]. "down" layers see only the rows above and their own row,
# whole: they step a row at a time (x_t = input row y, pos = y * W, output row y [B, W, O]); "down_right" layers
# step a position at a time (x_t = input at pos [B, C], output there [B, O]). Steps come in raster order.
# ``causal_conv2d_update`` is the fast form (weights laid out once, whole-row products shared by a row's
# pixels); ``causal_conv2d_update_ref`` the plain one (the filter applied to the window of the input history).
# A state is advanced by one of the two only.

# Whole rows at once (the u stream, and the rows above in the ul stream) go through oneDNN's convolution when
# batch x width reaches this many outputs, else through one GEMM on the gathered windows (docs/benchmarks.md).
# Both give the same numbers up to float32 rounding.
ROWS_BY_CONV_MIN = 128


@dataclass
class CausalConvState:
    """Step state of a causal convolution on a map ``width`` wide (see :func:`causal_conv2d_init_state`).

    ``rows`` [B, kh, left + width + right, C']: the last kh rows of the input (concat_elu applied when the op fuses
    it: C' = 2C), zero in the padding columns; the rows above row 0 are zeros, as the padding. ``weight`` [O, C', kh,
    kw] and ``bias`` as given (the reference reads these). The fast form applies the filter rows that see whole rows
    (all kh in row mode, "down"; the kh - 1 above in pixel mode, "down_right") as ``row_w`` [O, C', n, kw]
    (convolution) or ``row_wt`` [n*kw*C', O] on ``row_windows`` [B, W, n, kw, C']. Pixel mode applies them once
    per row into ``row_base`` [B, W, O] (with the bias and the caller's row_extra), and the current row's filter
    ``weight_t`` [kw*C', O] at each pixel. ``slots`` (where an input goes), ``windows`` (what the current-row filter
    sees) and ``bases`` are views made once, so that a step indexes Python lists, not tensors. ``extra`` [B, W, O]:
    the reference's copy of the row's row_extra.
    """

    kind: str
    concat_elu: bool
    width: int
    rows: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    sign: torch.Tensor  # [[1], [-1]]: writes [x, -x] in one multiplication
    by_conv: bool  # whole rows through F.conv2d with row_w (else addmm with row_wt on row_windows)
    row_w: torch.Tensor | None
    row_wt: torch.Tensor | None
    row_windows: torch.Tensor | None  # None when no filter row applies to whole rows (pixel mode, kh = 1)
    weight_t: torch.Tensor | None
    row_base: torch.Tensor | None
    extra: torch.Tensor | None
    slots: list[torch.Tensor]  # down: [the current row [B, W, (2,) C]]; down_right: per column [B, (2,) C]
    windows: list[torch.Tensor]  # down_right: per column [B, kw*C']
    bases: list[torch.Tensor]  # down_right: row_base[:, x] per column


def causal_conv2d_init_state(weight: torch.Tensor, bias: torch.Tensor, batch: int, width: int, *, kind: str,
                             concat_elu: bool = False) -> CausalConvState:
    """Step state of ``causal_conv2d(x, weight, bias, kind=kind, concat_elu=concat_elu)`` for ``batch`` maps
    ``width`` wide: the input history (zeros) and the weights in the layouts the fast step needs. Tracks no
    gradients; runs inside a CUDA-graph capture too (no host-to-device copy)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    w = weight.detach()
    o, cin, kh, kw = w.shape
    if concat_elu and cin % 2:
        raise ValueError(f"concat_elu doubles the channels: {cin} input channels cannot take it")
    if kind == "down" and kw % 2 == 0:
        raise ValueError(f"a 'down' convolution needs an odd filter width (got {kw})")
    pixel = kind == "down_right"
    left, right = (kw - 1, 0) if pixel else ((kw - 1) // 2, (kw - 1) // 2)
    rows = w.new_zeros(batch, kh, left + width + right, cin)
    wp = rows.shape[2]
    n = kh - 1 if pixel else kh  # filter rows applied to whole rows

    def slot(t):  # [..., C'] -> [..., 2, C] for the [x, -x] write
        return t.unflatten(-1, (2, cin // 2)) if concat_elu else t

    def transposed(m):  # [O, C', rows, kw] -> [rows*kw*C', O] (a transposed view of a contiguous [O, I])
        return m.permute(0, 2, 3, 1).reshape(o, -1).contiguous().t()

    by_conv = batch * width >= ROWS_BY_CONV_MIN  # one of the two layouts of the whole-row filter rows is kept
    sign = w.new_ones(2, 1)
    sign[1] = -1.0  # a fill, not a host-to-device copy
    state = CausalConvState(
        kind, bool(concat_elu), width, rows, w, bias.detach().clone(), sign, by_conv,
        w[:, :, :n].contiguous() if n and by_conv else None, transposed(w[:, :, :n]) if n and not by_conv else None,
        rows.as_strided((batch, width, n, kw, cin), (kh * wp * cin, cin, wp * cin, cin, 1)) if n else None,
        None, None, None, [slot(rows[:, -1, left:left + width])], [], [])
    if pixel:
        state.weight_t = transposed(w[:, :, -1:])
        state.row_base = w.new_zeros(batch, width, o)
        state.extra = w.new_zeros(batch, width, o)
        state.slots = [slot(rows[:, -1, x + kw - 1]) for x in range(width)]
        state.windows = [rows[:, -1, x:x + kw].view(batch, -1) for x in range(width)]
        state.bases = [state.row_base[:, x] for x in range(width)]
    return state


def _shift_rows(st: CausalConvState) -> None:
    for i in range(st.rows.shape[1] - 1):  # the window moves down one row
        st.rows[:, i].copy_(st.rows[:, i + 1])


def _put(st: CausalConvState, slot: torch.Tensor, x: torch.Tensor) -> None:
    """slot <- concat_elu(x) (slot viewed [..., 2, C]) or x."""
    if st.concat_elu:
        torch.mul(x.unsqueeze(-2), st.sign, out=slot)
        F.elu(slot, inplace=True)
    else:
        slot.copy_(x)


def _whole_rows(st: CausalConvState) -> torch.Tensor:
    """The whole-row filter rows over every column: [B, W, O]."""
    b, w = st.rows.shape[0], st.width
    if st.by_conv:  # rows is NHWC: as NCHW it is a channels-last tensor, and so is the output
        y = F.conv2d(st.rows[:, :st.row_windows.shape[2]].permute(0, 3, 1, 2), st.row_w, st.bias)
        return y.permute(0, 2, 3, 1).reshape(b, w, -1)
    return torch.addmm(st.bias, st.row_windows.reshape(b * w, -1), st.row_wt).view(b, w, -1)


def causal_conv2d_update(state: CausalConvState, x_t: torch.Tensor, pos: int,
                         row_extra: torch.Tensor | None = None) -> torch.Tensor:
    """One step of the fast form (see above): "down": input row x_t [B, W, C] at pos = y * W -> output row
    [B, W, O]; "down_right": input x_t [B, C] at raster position pos -> output there [B, O], or a run x_t
    [B, R, C] at positions pos .. pos+R-1 of one row -> [B, R, O] (the R steps in one product: a prefill).
    ``row_extra`` [B, W, O] ("down_right", read when a row starts, x = 0) is added to every output of that row."""
    st = state
    if st.kind == "down":
        _shift_rows(st)
        _put(st, st.slots[0], x_t)
        return _whole_rows(st)
    x = pos % st.width
    run = x_t.dim() == 3
    if run and x + x_t.shape[1] > st.width:
        raise ValueError(f"a run stays in one row: positions {pos}..{pos + x_t.shape[1] - 1} cross a row end")
    if x == 0:  # a new row: move the window down, apply the (complete) rows above to the whole row at once
        _shift_rows(st)
        if st.row_windows is None:  # no rows above (kh = 1)
            st.row_base.copy_(st.bias.expand_as(st.row_base))
        else:
            st.row_base.copy_(_whole_rows(st))
        if row_extra is not None:
            st.row_base += row_extra
    if not run:
        _put(st, st.slots[x], x_t)
        return torch.addmm(st.bases[x], st.windows[x], st.weight_t)
    b, r = x_t.shape[:2]
    kw, cin = st.weight.shape[3], st.rows.shape[3]
    slot = st.rows[:, -1, x + kw - 1:x + kw - 1 + r]
    _put(st, slot.unflatten(-1, (2, cin // 2)) if st.concat_elu else slot, x_t)
    row = st.rows[:, -1]  # the R windows overlap: kw*C' numbers each, C' apart
    windows = row.as_strided((b, r, kw * cin), (row.stride(0), cin, 1), row.storage_offset() + x * cin)
    return torch.baddbmm(st.row_base[:, x:x + r], windows, st.weight_t.expand(b, -1, -1))


def causal_conv2d_update_ref(state: CausalConvState, x_t: torch.Tensor, pos: int,
                             row_extra: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`causal_conv2d_update`, plainly: the input history takes x_t (concat_elu applied), and the output is the
    filter applied to its window (F.conv2d over the kh rows for a row, a sum over the kh x kw window for a pixel)."""
    st = state
    if st.kind == "down_right" and x_t.dim() == 3:  # a run: its steps one by one
        return torch.stack([causal_conv2d_update_ref(st, x_t[:, i], pos + i, row_extra)
                            for i in range(x_t.shape[1])], dim=1)
    xin = F.elu(torch.cat([x_t, -x_t], dim=-1)) if st.concat_elu else x_t
    kh, kw = st.weight.shape[2:]
    if st.kind == "down":
        _shift_rows(st)
        left = (kw - 1) // 2
        st.rows[:, -1, left:left + st.width] = xin
        y = F.conv2d(st.rows.permute(0, 3, 1, 2), st.weight, st.bias)  # [B, O, 1, W]
        return y[:, :, 0].transpose(1, 2)
    x = pos % st.width
    if x == 0:
        _shift_rows(st)
        st.extra.zero_()
        if row_extra is not None:
            st.extra.copy_(row_extra)
    st.rows[:, -1, x + kw - 1] = xin
    window = st.rows[:, :, x:x + kw]  # [B, kh, kw, C']
    return torch.einsum("bhwc,ochw->bo", window, st.weight) + st.bias + st.extra[:, x]
