"""Decode attention: one query per (sample, head) against a preallocated key cache (the cached sampler's step).

Per sample b and head h, for the query at raster position ``pos`` (``CausalSelfAttention.step``,
``pyinpaint/models/layers.py``; see ``AttentionState`` there)::

    scores[j]    = q[b, h, :] . keys_t[b, h, :, j]        for j < pos   (the scale is already in q)
    mixed[b, h]  = sum_j softmax(scores)[j] * inputs[b, j, :]

q [B, H, dk], keys_t [B, H, dk, L], inputs [B, L, C] (values are not cached: the C-channel inputs are,
shared by every head; the value projection is folded into the output projection), ``pos`` the number of
valid cache positions (1 <= pos <= L; position 0 attends to nothing and is handled by the caller).
Returns mixed [B, H, C] in q's dtype.

This file holds, in order:
  - input checks and the PyTorch reference ``decode_attention_reference`` (slices the cache at ``pos``,
    accumulates in float32; float64 in float64);
  - the Triton kernels (flash-decoding, two stages): ``_decode_split_kernel`` on a grid (B * H, num_splits),
    each program takes a fixed slice of SPLIT_LEN cache positions, reads ``pos`` from a device tensor, masks
    positions >= pos and writes its partial (max score, sum of exp, exp-weighted sum of inputs) in float32;
    a slice entirely past pos writes the neutral partial (max = -inf, sum = 0, acc = 0).
    ``_decode_combine_kernel`` (grid (B * H,)) merges the partials with the log-sum-exp rule. With one split
    the first kernel normalises and writes the output itself (one launch);
  - the launcher ``decode_attention_triton`` and ``decode_plan`` (block sizes and splits);
  - the public dispatch ``decode_attention(..., backend=)`` and ``reason(...)``.

CUDA graphs: the plan (grid, block sizes, number of splits) depends on the shapes only, never on ``pos``,
and ``pos`` reaches the kernel only through a device tensor, so with the same tensors and a device ``pos``
tensor every launch is identical: capture the step once and replay it for every position after writing the
position into that tensor (``pos_t.fill_(p)`` or a copy, on the stream). A Python int ``pos`` is accepted
too (checked, then copied to the device: a host-to-device copy per call, not for graphs). A device ``pos``
is not read back (no sync): its value is clamped to [0, L] in the kernel, and 0 gives an output of zeros.

Precision: every load is cast to float32 right away (the interpreter gets bfloat16 wrong otherwise); dot
products, softmax and the weighted sum are float32 (no tl.dot: one query row, the work is memory-bound).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._dispatch import Choice, check_out, check_pow2, choose, device_ctx, dtype_reason
from ._triton import HAS_TRITON, next_power_of_2, triton_unavailable_reason

if HAS_TRITON:
    import triton
    import triton.language as tl

BACKENDS = ("auto", "torch", "triton")
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FLOAT_DTYPES = (*_KERNEL_DTYPES, torch.float64)
_POS_DTYPES = (torch.int32, torch.int64)

# plan defaults (see decode_plan)
TARGET_PROGRAMS = 512  # about 4 programs per SM of an H100 (132 SMs): enough to hide the latency of the loads
MIN_SPLIT_LEN = 64  # never split the cache finer than this (a split's fixed cost is its partial and the merge)
MAX_TILE = 8192  # BLOCK_N x BLOCK_C elements of the inputs tile (64 x 128 at the paper's C = 128)


# ----------------------------------------------------------------------------------------------------
# Input checks shared by every backend
# ----------------------------------------------------------------------------------------------------
def _check_inputs(q, keys_t, inputs, pos) -> None:
    """Shapes, devices, dtypes and ``pos`` every backend needs; raises ValueError with what is wrong.

    A device ``pos`` tensor is checked for dtype, size and device only (its value is never read here)."""
    for name, t, dims, shape in (("q", q, 3, "[B, H, dk]"), ("keys_t", keys_t, 4, "[B, H, dk, L]"),
                                 ("inputs", inputs, 3, "[B, L, C]")):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must be {dims}-D {shape}, got shape {tuple(t.shape)}")
    B, _, dk = q.shape
    if keys_t.shape[:3] != q.shape:
        raise ValueError(f"keys_t must be [B, H, dk, L] with B, H, dk = {tuple(q.shape)} as q, got "
                         f"{tuple(keys_t.shape)}")
    L = keys_t.shape[3]
    if inputs.shape[0] != B or inputs.shape[1] != L:
        raise ValueError(f"inputs must be [B, L, C] with B = {B} as q and L = {L} as keys_t, got "
                         f"{tuple(inputs.shape)}")
    if dk < 1:
        raise ValueError(f"the key width dk must be >= 1, got q of shape {tuple(q.shape)}")
    if L < 1:
        raise ValueError(f"the cache length L must be >= 1, got keys_t of shape {tuple(keys_t.shape)}")
    if inputs.shape[2] < 1:
        raise ValueError(f"the input width C must be >= 1, got inputs of shape {tuple(inputs.shape)}")
    if not (q.device == keys_t.device == inputs.device):
        raise ValueError(f"q, keys_t, inputs must be on one device, got {q.device}, {keys_t.device}, "
                         f"{inputs.device}")
    if not (q.dtype == keys_t.dtype == inputs.dtype):
        raise ValueError(f"q, keys_t, inputs must have one dtype, got {q.dtype}, {keys_t.dtype}, {inputs.dtype}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q, keys_t, inputs must be float32, float16, bfloat16 or float64, got {q.dtype}")
    if isinstance(pos, torch.Tensor):
        if pos.dtype not in _POS_DTYPES:
            raise ValueError(f"pos must be an int32 or int64 tensor, got {pos.dtype}")
        if pos.numel() != 1 or pos.dim() > 1:
            raise ValueError(f"pos must be a 0-d or 1-element tensor, got shape {tuple(pos.shape)}")
        if pos.device != q.device:
            raise ValueError(f"pos must be on the device of q ({q.device}), got {pos.device}")
    elif isinstance(pos, bool) or not isinstance(pos, int):
        raise ValueError(f"pos must be a Python int or an integer tensor, got {type(pos).__name__}")
    elif not 1 <= pos <= L:
        raise ValueError(f"pos must be in [1, L = {L}] (the number of valid cache positions; position 0 attends "
                         f"to nothing and is the caller's), got {pos}")


def _pos_value(pos, L: int) -> int:
    """pos as a checked Python int (reads a tensor back: a sync on CUDA; the reference only)."""
    value = int(pos.item()) if isinstance(pos, torch.Tensor) else int(pos)
    if not 1 <= value <= L:
        raise ValueError(f"pos must be in [1, L = {L}] (the number of valid cache positions), got {value}")
    return value


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def decode_attention_reference(q: torch.Tensor, keys_t: torch.Tensor, inputs: torch.Tensor, pos) -> torch.Tensor:
    """The definition, in float32 (float64 for float64 inputs): softmax over the first ``pos`` cache
    positions, then the weighted sum of the inputs. q [B, H, dk], keys_t [B, H, dk, L], inputs [B, L, C],
    pos an int or a 0-d / 1-element integer tensor in [1, L] (read back: a sync on CUDA). -> [B, H, C] in
    q's dtype."""
    _check_inputs(q, keys_t, inputs, pos)
    return _reference(q, keys_t, inputs, _pos_value(pos, keys_t.shape[3]))


def _reference(q: torch.Tensor, keys_t: torch.Tensor, inputs: torch.Tensor, p: int) -> torch.Tensor:
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scores = torch.matmul(q.to(compute)[:, :, None, :], keys_t[..., :p].to(compute))  # [B, H, 1, p]
    probs = torch.softmax(scores, dim=-1)[:, :, 0]  # [B, H, p]
    return torch.matmul(probs, inputs[:, :p].to(compute)).to(q.dtype)  # [B, H, C]


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _decode_split_kernel(
        Q, Kt, X, Pos, PartM, PartL, PartAcc, Out,
        H, L, DK, C, SPLIT_LEN,
        sqb, sqh, sqd,
        skb, skh, skd, skl,
        sxb, sxl, sxc,
        spb, sps,                  # strides of PartM and PartL ([B * H, S] float32, same layout)
        sab, sas, sac,             # strides of PartAcc ([B * H, S, C] float32)
        sob, soh, soc,             # strides of Out ([B, H, C]; written only when DIRECT)
        BLOCK_N: tl.constexpr,     # cache positions per step (power of two)
        BLOCK_DK: tl.constexpr,    # next power of two >= DK (masked)
        BLOCK_C: tl.constexpr,     # next power of two >= C (masked)
        DIRECT: tl.constexpr,      # one split: normalise and write Out, no partials
    ):
        """One program: cache positions [split * SPLIT_LEN, (split + 1) * SPLIT_LEN) of one (sample, head),
        those < pos only. Online softmax in float32; writes (m, l, acc) = (max score, sum_j exp(s_j - m),
        sum_j exp(s_j - m) x_j), the neutral (-inf, 0, 0) for a slice with no valid position."""
        LOG2E: tl.constexpr = 1.4426950408889634
        bh = tl.program_id(0).to(tl.int64)  # (sample, head) on axis 0: B * H may pass 65535
        split = tl.program_id(1)
        b = bh // H
        h = bh % H
        pos = tl.load(Pos).to(tl.int32)  # the only place the position enters: a device tensor
        pos = tl.minimum(tl.maximum(pos, 0), L)
        start = split * SPLIT_LEN
        end = tl.minimum(start + SPLIT_LEN, pos)

        offs_n = tl.arange(0, BLOCK_N)
        offs_dk = tl.arange(0, BLOCK_DK)
        offs_c = tl.arange(0, BLOCK_C)
        mask_dk = offs_dk < DK
        mask_c = offs_c < C

        q = tl.load(Q + b * sqb + h * sqh + offs_dk * sqd, mask=mask_dk, other=0.0).to(tl.float32)
        k_base = Kt + b * skb + h * skh
        x_base = X + b * sxb
        m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)  # a float32 scalar
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for n0 in range(start, end, BLOCK_N):  # no trip when the slice starts at or past pos
            offs = n0 + offs_n
            valid = offs < end
            kt = tl.load(k_base + offs_dk[:, None] * skd + offs[None, :] * skl,
                         mask=mask_dk[:, None] & valid[None, :], other=0.0).to(tl.float32)  # [BLOCK_DK, BLOCK_N]
            s = tl.sum(q[:, None] * kt, axis=0)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))  # finite: offs[0] = n0 < end is valid
            alpha = tl.exp2((m_i - m_new) * LOG2E)  # first step: exp2(-inf) = 0
            p = tl.exp2((s - m_new) * LOG2E)  # masked: 0
            x = tl.load(x_base + offs[:, None] * sxl + offs_c[None, :] * sxc,
                        mask=valid[:, None] & mask_c[None, :], other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_C]
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * x, axis=0)
            m_i = m_new

        if DIRECT:
            out = acc / tl.where(l_i > 0, l_i, 1.0)  # pos = 0 (a device value): zeros, not NaN
            tl.store(Out + b * sob + h * soh + offs_c * soc, out.to(Out.dtype.element_ty), mask=mask_c)
        else:
            tl.store(PartM + bh * spb + split * sps, m_i)
            tl.store(PartL + bh * spb + split * sps, l_i)
            tl.store(PartAcc + bh * sab + split * sas + offs_c * sac, acc, mask=mask_c)

    @triton.jit
    def _decode_combine_kernel(
        PartM, PartL, PartAcc, Out,
        H, C, S,
        spb, sps,
        sab, sas, sac,
        sob, soh, soc,
        BLOCK_S: tl.constexpr,     # next power of two >= S (masked)
        BLOCK_C: tl.constexpr,
    ):
        """One program per (sample, head): out = sum_s w_s acc_s / sum_s w_s l_s with w_s = exp(m_s - max m)
        (neutral partials get w = 0; no valid position at all gives zeros)."""
        LOG2E: tl.constexpr = 1.4426950408889634
        bh = tl.program_id(0).to(tl.int64)
        b = bh // H
        h = bh % H
        offs_s = tl.arange(0, BLOCK_S)
        offs_c = tl.arange(0, BLOCK_C)
        mask_s = offs_s < S
        mask_c = offs_c < C
        m = tl.load(PartM + bh * spb + offs_s * sps, mask=mask_s, other=float("-inf"))
        lsum = tl.load(PartL + bh * spb + offs_s * sps, mask=mask_s, other=0.0)
        m_max = tl.max(m, axis=0)
        m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # no valid position: no -inf - -inf
        w = tl.exp2((m - m_max) * LOG2E)  # -inf partials: 0
        denom = tl.sum(w * lsum, axis=0)
        acc = tl.load(PartAcc + bh * sab + offs_s[:, None] * sas + offs_c[None, :] * sac,
                      mask=mask_s[:, None] & mask_c[None, :], other=0.0)
        num = tl.sum(w[:, None] * acc, axis=0)
        out = num / tl.where(denom > 0, denom, 1.0)
        tl.store(Out + b * sob + h * soh + offs_c * soc, out.to(Out.dtype.element_ty), mask=mask_c)


# ----------------------------------------------------------------------------------------------------
# Plan and launcher
# ----------------------------------------------------------------------------------------------------
class DecodePlan(NamedTuple):
    """Launch parameters of ``decode_attention_triton``: a function of the shapes only (never of pos)."""

    num_splits: int  # grid (B * H, num_splits) for the split kernel
    split_len: int  # cache positions per split (a multiple of block_n)
    block_n: int
    block_dk: int
    block_c: int
    block_s: int  # next power of two >= num_splits (the combine kernel)


def decode_plan(B: int, H: int, L: int, C: int, dk: int, *, num_splits: int | None = None,
                block_n: int | None = None) -> DecodePlan:
    """Block sizes and splits for B samples, H heads, a cache of L positions, inputs of C channels, keys of dk.

    num_splits: default enough (sample, head, split) programs to fill the GPU, ``ceil(512 / (B * H))``, at most
    one split per 64 positions; a requested number is a maximum: the split length ceil(L / num_splits) is rounded
    up to a multiple of block_n, so the actual number is ceil(L / split_len). block_n: positions per step, default
    min(64, max(4, 8192 // next_pow2(C))) (an inputs tile of at most 64 x 128) clipped to the next power of two
    of ceil(L / num_splits).
    """
    block_c = next_power_of_2(C)
    if num_splits is None:
        bh = max(1, B * H)
        num_splits = max(1, min(-(-TARGET_PROGRAMS // bh), -(-L // MIN_SPLIT_LEN)))
    elif isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    wanted_len = -(-L // num_splits)
    if block_n is None:
        block_n = min(64, max(4, MAX_TILE // block_c), next_power_of_2(wanted_len))
    check_pow2("block_n", block_n)
    split_len = -(-wanted_len // block_n) * block_n
    splits = -(-L // split_len)
    return DecodePlan(splits, split_len, block_n, next_power_of_2(dk), block_c, next_power_of_2(splits))


def _dtype_unsupported_reason(q: torch.Tensor) -> str | None:
    return dtype_reason(q, _KERNEL_DTYPES, "q")


def decode_attention_triton(
    q: torch.Tensor,
    keys_t: torch.Tensor,
    inputs: torch.Tensor,
    pos,
    *,
    out: torch.Tensor | None = None,
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """The Triton path (no autograd): mixed [B, H, C] in q's dtype.

    q, keys_t, inputs may have any strides. pos: a device int32 / int64 tensor (0-d or 1 element, never read
    back: clamped to [0, L] in the kernel, 0 gives zeros) or a Python int in [1, L] (copied to the device).
    out: optional [B, H, C] buffer in q's dtype (any strides). workspace: optional float32 partials
    (m [B*H, S], l [B*H, S], acc [B*H, S, C]) with S = ``decode_plan(...).num_splits`` (tests poison them;
    unused with one split). num_splits / block_n: see ``decode_plan``. Every launch argument depends on the
    shapes, strides and buffers only, so with a device ``pos`` the launches can be captured in a CUDA graph.
    """
    _check_inputs(q, keys_t, inputs, pos)
    why = _dtype_unsupported_reason(q) or triton_unavailable_reason(q, keys_t, inputs)
    if why is not None:
        raise RuntimeError(f"the Triton decode-attention kernel cannot run: {why}")
    B, H, dk = q.shape
    L, C = inputs.shape[1], inputs.shape[2]
    plan = decode_plan(B, H, L, C, dk, num_splits=num_splits, block_n=block_n)
    if out is None:
        out = torch.empty(B, H, C, dtype=q.dtype, device=q.device)
    check_out("out", out, (B, H, C), q.dtype, q.device)
    if not isinstance(pos, torch.Tensor):
        pos = torch.tensor([pos], dtype=torch.int32, device=q.device)
    if B * H == 0:
        return out
    S = plan.num_splits
    if S == 1:
        part_m = part_l = part_acc = out  # unused (DIRECT): any pointer will do
        pm_strides, pa_strides = (0, 0), (0, 0, 0)
    else:
        if workspace is None:
            workspace = (torch.empty(B * H, S, dtype=torch.float32, device=q.device),
                         torch.empty(B * H, S, dtype=torch.float32, device=q.device),
                         torch.empty(B * H, S, C, dtype=torch.float32, device=q.device))
        part_m, part_l, part_acc = workspace
        check_out("workspace[0]", part_m, (B * H, S), torch.float32, q.device)
        check_out("workspace[1]", part_l, (B * H, S), torch.float32, q.device)
        check_out("workspace[2]", part_acc, (B * H, S, C), torch.float32, q.device)
        if part_m.stride() != part_l.stride():
            raise ValueError("workspace[0] and workspace[1] must have the same strides")
        pm_strides, pa_strides = part_m.stride(), part_acc.stride()
    with device_ctx(q):
        _decode_split_kernel[(B * H, S)](
            q, keys_t, inputs, pos, part_m, part_l, part_acc, out,
            H, L, dk, C, plan.split_len,
            *q.stride(), *keys_t.stride(), *inputs.stride(), *pm_strides, *pa_strides, *out.stride(),
            BLOCK_N=plan.block_n, BLOCK_DK=plan.block_dk, BLOCK_C=plan.block_c, DIRECT=S == 1,
            # sm_90 build (ptxas -v, compiled without a GPU; not timed): at 64 x 128 (the paper's C) 4 warps need
            # 254 registers (fp32), 8 warps 97, no spills; a 16 x 1024 tile 128 at 8 warps
            num_warps=8,
        )
        if S > 1:
            _decode_combine_kernel[(B * H,)](
                part_m, part_l, part_acc, out,
                H, C, S, *pm_strides, *pa_strides, *out.stride(),
                BLOCK_S=plan.block_s, BLOCK_C=plan.block_c,
                num_warps=4,
            )
    return out


# ----------------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------------
def choose_backend(q, keys_t, inputs, pos=1, backend: str = "auto") -> Choice:
    """The dispatch's :class:`Choice` for these inputs (a decode loop decides once, then passes
    ``backend=choice.backend`` at every step). Does not depend on the value of pos."""
    _check_inputs(q, keys_t, inputs, pos)
    tensors = (q, keys_t, inputs, pos) if isinstance(pos, torch.Tensor) else (q, keys_t, inputs)
    return choose(backend, BACKENDS, q.device,
                  triton=lambda: _dtype_unsupported_reason(q) or triton_unavailable_reason(*tensors),
                  cpu_note="the PyTorch reference")


def reason(q: torch.Tensor, keys_t: torch.Tensor, inputs: torch.Tensor, pos=1, backend: str = "auto") -> str:
    """Which backend ``decode_attention(q, keys_t, inputs, pos, backend=backend)`` would run, and why.

    Returns "<backend>: <why>", or "none: <why>" when an explicitly requested backend cannot run. The choice
    does not depend on the value of pos (the default 1 is only there to make it optional).
    """
    return str(choose_backend(q, keys_t, inputs, pos, backend))


def decode_attention(q: torch.Tensor, keys_t: torch.Tensor, inputs: torch.Tensor, pos, *,
                     backend: str = "auto") -> torch.Tensor:
    """One query per (sample, head) against the first ``pos`` positions of a key cache: q [B, H, dk] (scale
    included), keys_t [B, H, dk, L], inputs [B, L, C] -> softmax(q . keys) weighted sum of the inputs [B, H, C].

    pos: int in [1, L] or an int32 / int64 device tensor (graph-friendly on the Triton path; the reference
    reads it back). backend: "auto" (Triton on CUDA, the reference elsewhere), "torch" or "triton"; an
    explicit backend that cannot run raises RuntimeError with the reason. No autograd.
    """
    chosen = choose_backend(q, keys_t, inputs, pos, backend).require()  # (checks the inputs)
    with torch.no_grad():
        if chosen == "triton":
            return decode_attention_triton(q, keys_t, inputs, pos)
        return _reference(q, keys_t, inputs, _pos_value(pos, keys_t.shape[3]))
