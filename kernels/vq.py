"""Nearest-codebook search: the op behind vector quantisation.

For each row z_i of ``z`` ([..., D]) find argmin_k |z_i - e_k|^2 over the codebook ``codebook`` ([K, D],
row k = code k) and gather e_k. Distances are computed as the official code does,
``|z|^2 - 2 z.e + |e|^2`` in float32, ties go to the lowest index (as torch.argmin and tf.argmax(-d)).

This file holds, in order:
  - the PyTorch reference (``code_norms``, ``nearest_code_reference``): the CPU path and the ground truth;
  - the Triton kernel ``_nearest_code_kernel`` and its launcher ``nearest_code_triton``;
  - the public dispatch ``nearest_code(..., backend=)`` and ``reason(...)``, which says which backend
    would run and why.

Backends: "torch" (the reference), "triton" (CUDA, or the CPU under TRITON_INTERPRET=1 when asked for
explicitly), "ext" (the C++/CUDA extension, ``kernels/_ext.py``). None of them is differentiable: the
indices are not, and the quantiser does the straight-through estimator itself.

NaN inputs: the reference follows torch.argmin (a NaN distance wins); the kernel ignores NaN distances
(a row whose distances are all NaN gets index 0). Finite inputs give the same answer on every backend.
"""
from __future__ import annotations

import torch

from . import _ext
from ._dispatch import Choice, check_out, check_pow2, choose, device_ctx, dtype_reason
from ._triton import HAS_TRITON, next_power_of_2, triton_unavailable_reason

if HAS_TRITON:
    import triton
    import triton.language as tl

BACKENDS = ("auto", "torch", "triton", "ext")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------------------------------
# PyTorch reference
# ----------------------------------------------------------------------------------------------------
def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """|e_k|^2 per code, float32: precompute once per codebook version."""
    cb = codebook.detach().float()
    return (cb * cb).sum(dim=1)


def nearest_code_reference(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor | None = None):
    """Plain PyTorch reference. Returns (indices int64 [...], embeddings [..., D] in codebook's dtype)."""
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"z has {z.shape[-1]} channels but the codebook has codes of size {codebook.shape[-1]}")
    flat = z.detach().reshape(-1, z.shape[-1]).float()
    cb = codebook.detach().float()
    if norms is None:
        norms = code_norms(codebook)
    d = (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ cb.t() + norms.float().unsqueeze(0)
    idx = torch.argmin(d, dim=1)
    emb = codebook.detach()[idx]
    return idx.reshape(z.shape[:-1]), emb.reshape(*z.shape[:-1], codebook.shape[-1])


# ----------------------------------------------------------------------------------------------------
# Input checks shared by every backend
# ----------------------------------------------------------------------------------------------------
def _check_inputs(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor | None) -> None:
    """Shapes and devices every backend needs; raises ValueError with what is wrong."""
    if not isinstance(z, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise ValueError("z and codebook must be torch tensors")
    if codebook.dim() != 2:
        raise ValueError(f"codebook must be [K, D], got shape {tuple(codebook.shape)}")
    K, D = codebook.shape
    if K == 0:
        raise ValueError("the codebook is empty (K = 0)")
    if D == 0:
        raise ValueError("codes have size 0 (D = 0)")
    if z.dim() == 0 or z.shape[-1] != D:
        raise ValueError(f"z must be [..., {D}] to match the codebook [{K}, {D}], got shape {tuple(z.shape)}")
    if z.device != codebook.device:
        raise ValueError(f"z is on {z.device} but the codebook is on {codebook.device}")
    if norms is not None:
        if norms.shape != (K,):
            raise ValueError(f"norms must be [K] = [{K}], got shape {tuple(norms.shape)}")
        if norms.device != codebook.device:
            raise ValueError(f"norms are on {norms.device} but the codebook is on {codebook.device}")
        if not norms.is_floating_point():
            raise ValueError(f"norms must be floating point (float32 preferred), got {norms.dtype}")


def _dtype_unsupported_reason(z: torch.Tensor, codebook: torch.Tensor) -> str | None:
    return dtype_reason(z, _FLOAT_DTYPES, "z") or dtype_reason(codebook, _FLOAT_DTYPES, "codebook")


# ----------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _nearest_code_kernel(
        z_ptr, cb_ptr, norms_ptr, idx_ptr, emb_ptr,
        N, K, D,
        stride_zn, stride_zd,      # z [N, D], any strides
        stride_ck, stride_cd,      # codebook [K, D], any strides
        stride_in,                 # idx out [N]
        stride_en, stride_ed,      # emb out [N, D]
        BLOCK_N: tl.constexpr,     # rows of z per program
        BLOCK_K: tl.constexpr,     # codes per step of the running argmin
        BLOCK_D: tl.constexpr,     # channels per step (power of two; D is masked up to it)
        USE_DOT: tl.constexpr,     # tl.dot needs every block >= 16; otherwise a broadcast-multiply-sum
    ):
        """One program: BLOCK_N rows of z against the whole codebook, BLOCK_K codes at a time.

        dist[n, k] = |z_n|^2 - 2 z_n.e_k + |e_k|^2, all in float32 (loads are cast right away: the
        interpreter gets bfloat16 arithmetic wrong otherwise). A chunk replaces the running best only
        when its minimum is strictly smaller, and within a chunk the lowest index among equal minima
        wins, so ties go to the lowest index overall, as torch.argmin.
        """
        pid = tl.program_id(0)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        rows = offs_n.to(tl.int64)  # 64-bit offsets: N * stride may pass 2^31
        arange_d = tl.arange(0, BLOCK_D)

        # |z_n|^2, same float32 arithmetic as the reference
        z_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + arange_d
            mask = mask_n[:, None] & (offs_d < D)[None, :]
            zt = tl.load(z_ptr + rows[:, None] * stride_zn + offs_d[None, :] * stride_zd, mask=mask, other=0.0)
            zt = zt.to(tl.float32)
            z_sq += tl.sum(zt * zt, axis=1)

        best_dist = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int64)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            codes = offs_k.to(tl.int64)

            # z . e_k for this chunk of codes, accumulated over D in float32
            zdote = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + arange_d
                mask_d = offs_d < D
                zt = tl.load(z_ptr + rows[:, None] * stride_zn + offs_d[None, :] * stride_zd,
                             mask=mask_n[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                et = tl.load(cb_ptr + codes[:, None] * stride_ck + offs_d[None, :] * stride_cd,
                             mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
                if USE_DOT:
                    zdote = tl.dot(zt, tl.trans(et), acc=zdote, input_precision="ieee")
                else:
                    zdote += tl.sum(zt[:, None, :] * et[None, :, :], axis=2)

            e_sq = tl.load(norms_ptr + offs_k, mask=mask_k, other=0.0)
            dist = z_sq[:, None] - 2.0 * zdote + e_sq[None, :]
            dist = tl.where(mask_k[None, :], dist, float("inf"))  # padding codes never win

            chunk_min = tl.min(dist, axis=1)
            # lowest index among this chunk's minima (explicit, not relying on tl.argmin's tie rule)
            chunk_idx = tl.min(tl.where(dist == chunk_min[:, None], offs_k[None, :], K), axis=1)
            better = chunk_min < best_dist  # strictly: an equal later chunk keeps the earlier index
            best_dist = tl.where(better, chunk_min, best_dist)
            best_idx = tl.where(better, chunk_idx.to(tl.int64), best_idx)

        tl.store(idx_ptr + rows * stride_in, best_idx, mask=mask_n)

        # gather e_best in the codebook's own dtype (a plain copy, no rounding)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + arange_d
            mask = mask_n[:, None] & (offs_d < D)[None, :]
            et = tl.load(cb_ptr + best_idx[:, None] * stride_ck + offs_d[None, :] * stride_cd, mask=mask)
            tl.store(emb_ptr + rows[:, None] * stride_en + offs_d[None, :] * stride_ed, et, mask=mask)


def nearest_code_triton(
    z: torch.Tensor,
    codebook: torch.Tensor,
    norms: torch.Tensor | None = None,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    block_d: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the Triton kernel. Returns (indices int64 [...], embeddings [..., D] in codebook's dtype).

    z: [..., D], float32/float16/bfloat16/float64, any strides (a 2-D z is read through its strides; more
    leading dims are flattened as a view when their strides allow it, else copied once, deliberately).
    codebook: [K, D], any strides. norms: [K] |e_k|^2 (computed when None; cast to float32).
    out: optional preallocated (idx [...] int64, emb [..., D] codebook dtype) to write into (static
    buffers for CUDA graphs; tests poison them). block_*: tuning knobs, powers of two.
    """
    _check_inputs(z, codebook, norms)
    why = _dtype_unsupported_reason(z, codebook) or triton_unavailable_reason(
        z, codebook, *(() if norms is None else (norms,)))
    if why is not None:
        raise RuntimeError(f"the Triton nearest-code kernel cannot run: {why}")

    z = z.detach()
    codebook = codebook.detach()
    K, D = codebook.shape
    lead = z.shape[:-1]
    z2 = z.reshape(-1, D)  # a view whenever the leading dims can be flattened; otherwise a copy
    N = z2.shape[0]
    if norms is None:
        norms = code_norms(codebook)
    norms = norms.detach().to(torch.float32).contiguous()

    if out is None:
        idx = torch.empty(lead, dtype=torch.int64, device=z.device)
        emb = torch.empty(*lead, D, dtype=codebook.dtype, device=z.device)
    else:
        idx = check_out("out[0]", out[0], lead, torch.int64, z.device)
        emb = check_out("out[1]", out[1], (*lead, D), codebook.dtype, z.device)
    try:  # the kernel writes through these 1-D / 2-D views, so they must be views, not copies
        idx1 = idx.view(-1)
        emb2 = emb.view(-1, D)
    except RuntimeError as exc:
        raise ValueError(f"out buffers must be flattenable to [N] and [N, D] without a copy: {exc}") from None
    if N == 0:
        return idx, emb

    block_n = check_pow2("block_n", block_n if block_n is not None else min(64, max(16, next_power_of_2(N))))
    block_k = check_pow2("block_k", block_k if block_k is not None else min(64, max(16, next_power_of_2(K))))
    use_dot = block_n >= 16 and block_k >= 16
    if block_d is None:
        # <= 32: with 64 x 64 tiles and 8 warps the sm_90 build then needs 170 registers and no spills
        # (64-wide D chunks spill; checked by compiling for sm_90 without a GPU, not timed)
        block_d = min(32, next_power_of_2(D))
        if use_dot:
            block_d = max(16, block_d)  # pad small D up to what tl.dot takes (masked loads read zeros)
    block_d = check_pow2("block_d", block_d)
    use_dot = use_dot and block_d >= 16

    grid = (triton.cdiv(N, block_n),)  # depends on shapes only, never on data
    with device_ctx(z):
        _nearest_code_kernel[grid](
            z2, codebook, norms, idx1, emb2,
            N, K, D,
            z2.stride(0), z2.stride(1),
            codebook.stride(0), codebook.stride(1),
            idx1.stride(0),
            emb2.stride(0), emb2.stride(1),
            BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d, USE_DOT=use_dot,
            num_warps=8 if block_n * block_k >= 64 * 64 else 4,
        )
    return idx, emb


# ----------------------------------------------------------------------------------------------------
# C++ extension (kernels/_ext.py, optional)
# ----------------------------------------------------------------------------------------------------
def _ext_unavailable_reason(z: torch.Tensor, codebook: torch.Tensor) -> str | None:
    """None when the extension's op takes these inputs, else why not (in words)."""
    if not _ext.available():
        return _ext.why_unavailable()
    if z.device.type == "cpu":
        if z.dtype != torch.float32 or codebook.dtype != torch.float32:
            return f"the C++ extension takes float32 only on the CPU (z is {z.dtype}, codebook is {codebook.dtype})"
    elif z.device.type == "cuda":
        why = _ext.why_no_cuda()
        if why is not None:
            return why
        if z.dtype not in (torch.float32, torch.float16) or codebook.dtype != z.dtype:
            return (f"the C++ extension takes float32 or float16 (z and codebook alike) on CUDA "
                    f"(z is {z.dtype}, codebook is {codebook.dtype})")
    else:
        return f"the C++ extension runs on the CPU and CUDA only, tensors are on {z.device.type}"
    return None


def _nearest_code_ext(z, codebook, norms):
    D = codebook.shape[1]
    lead = z.shape[:-1]
    z2 = z.reshape(-1, D).contiguous()
    if norms is None:
        norms = code_norms(codebook)
    idx, emb = _ext.nearest_code(z2, codebook.contiguous(), norms.to(torch.float32).contiguous())
    return idx.reshape(lead), emb.reshape(*lead, D)


# ----------------------------------------------------------------------------------------------------
# Public dispatch
# ----------------------------------------------------------------------------------------------------
def choose_backend(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor | None = None,
                   backend: str = "auto") -> Choice:
    """The dispatch's :class:`Choice` (backend, reason) for these inputs; ValueError for bad inputs."""
    _check_inputs(z, codebook, norms)
    tensors = (z, codebook) if norms is None else (z, codebook, norms)
    # auto: Triton on CUDA; on the CPU the C++ op (the fastest there, docs/benchmarks.md), else the reference
    return choose(backend, BACKENDS, z.device,
                  triton=lambda: _dtype_unsupported_reason(z, codebook) or triton_unavailable_reason(*tensors),
                  ext=lambda: _ext_unavailable_reason(z, codebook), on_ext_missing=_ext.warn_once)


def reason(z: torch.Tensor, codebook: torch.Tensor, backend: str = "auto") -> str:
    """Which backend ``nearest_code(z, codebook, backend=backend)`` would run, and why.

    Returns "<backend>: <why>", or "none: <why>" when an explicitly requested backend cannot run.
    """
    return str(choose_backend(z, codebook, None, backend))


def nearest_code(
    z: torch.Tensor,
    codebook: torch.Tensor,
    norms: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code per row of z [..., D]: (indices int64 [...], embeddings [..., D] in codebook's dtype).

    norms: precomputed ``code_norms(codebook)`` (computed when None). backend: "auto" (Triton on CUDA, the C++
    extension on the CPU when built, else PyTorch), "torch", "triton" or "ext"; an explicit backend that cannot
    run raises RuntimeError with the reason. Outputs carry no autograd history.
    """
    chosen = choose_backend(z, codebook, norms, backend).require()
    with torch.no_grad():
        z, codebook = z.detach(), codebook.detach()
        norms = None if norms is None else norms.detach()
        if chosen == "triton":
            return nearest_code_triton(z, codebook, norms)
        if chosen == "ext":
            return _nearest_code_ext(z, codebook, norms)
        return nearest_code_reference(z, codebook, norms)
