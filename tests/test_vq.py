"""Nearest-codebook search: Triton kernel vs the PyTorch reference, and the backend dispatch.

Run the Triton tests on a machine without a GPU with ``TRITON_INTERPRET=1 pytest tests/test_vq.py``;
without the interpreter (and without CUDA) they skip with the reason.

Correctness rule (see docs/kernel-notes.md): the kernel and the reference both compute
|z|^2 - 2 z.e + |e|^2 in float32 from the same input values (float16 / bfloat16 inputs are exact in
float32, so their only error is the float32 arithmetic too). For a row, each computed distance is within
B = (D + 3) u (|z| + max|e|)^2 of the exact one (u = 2^-24: a length-D float32 dot product is within
D u |x||y|, plus the two additions), a classical worst-case bound. Where the exact gap between the
nearest and the second-nearest code exceeds 2B both must pick the true nearest, so the index must equal
torch.argmin's; elsewhere the exact distance at the chosen index must be within 2B of the minimum.
"""
from __future__ import annotations

import pytest
import torch

from pyinpaint.kernels import _triton, vq
from conftest import skip_unless_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
U32 = 2.0 ** -24
POISON_IDX = -7  # never a valid index


_skip_unless_triton = skip_unless_triton


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)  # on the CPU, so CUDA runs see the same data
    return (torch.randn(*shape, generator=g) * scale + offset).to(dtype).to(DEVICE)


def _poisoned_out(lead, D, dtype):
    idx = torch.full(lead, POISON_IDX, dtype=torch.int64, device=DEVICE)
    emb = torch.full((*lead, D), float("nan"), dtype=dtype, device=DEVICE)
    return idx, emb


def _run_triton(z, codebook, norms=None, **kw):
    """Kernel into poisoned buffers, so an element it never writes is caught."""
    _skip_unless_triton(z, codebook)
    out = _poisoned_out(z.shape[:-1], codebook.shape[1], codebook.dtype)
    idx, emb = vq.nearest_code_triton(z, codebook, norms, out=out, **kw)
    assert idx.data_ptr() == out[0].data_ptr() and emb.data_ptr() == out[1].data_ptr()
    return idx, emb


def _check(z, codebook, idx, emb, min_clear=0.5):
    """idx/emb from some backend vs the exact distances and the reference (see the module docstring)."""
    K, D = codebook.shape
    assert idx.dtype == torch.int64 and idx.shape == z.shape[:-1]
    assert emb.dtype == codebook.dtype and emb.shape == (*z.shape[:-1], D)
    flat = idx.reshape(-1).cpu()
    assert ((flat >= 0) & (flat < K)).all(), "index out of range (unwritten or wrong)"
    # gathered rows are exact copies of codebook[idx]
    assert torch.equal(emb.reshape(-1, D).cpu(), codebook.cpu()[flat])

    zf = z.reshape(-1, D).double().cpu()
    cb = codebook.double().cpu()
    exact = ((zf[:, None, :] - cb[None, :, :]) ** 2).sum(-1)  # exact distances of the given values
    bound = (D + 3) * U32 * (zf.norm(dim=1) + cb.norm(dim=1).max()) ** 2  # per row
    two = exact.topk(min(2, K), dim=1, largest=False).values
    margin = two[:, 1] - two[:, 0] if K > 1 else torch.full_like(bound, float("inf"))
    clear = margin > 2 * bound

    ref_idx, _ = vq.nearest_code_reference(z.cpu(), codebook.cpu())
    ref_idx = ref_idx.reshape(-1)
    assert torch.equal(flat[clear], ref_idx[clear]), "index differs from torch.argmin on a clear-margin row"
    chosen = exact.gather(1, flat[:, None]).squeeze(1)
    assert (chosen - two[:, 0] <= 2 * bound).all(), "chosen code is farther than rounding allows"
    if min_clear:
        assert clear.float().mean() >= min_clear, "test data too degenerate: too few clear-margin rows"


# ---------------------------------------------------------------------------------------------------
# kernel vs reference
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [5, 64, 300])
@pytest.mark.parametrize("D", [3, 12, 64])
@pytest.mark.parametrize("N", [1, 7, 130])
def test_kernel_float32_odd_sizes(N, D, K):
    z = _randn(N, D, seed=N * 1000 + D * 10 + K, offset=0.1)
    cb = _randn(K, D, seed=K + 1)
    idx, emb = _run_triton(z, cb, vq.code_norms(cb))
    _check(z, cb, idx, emb)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N,D,K", [(1, 3, 5), (7, 12, 64), (130, 64, 300), (130, 12, 300), (7, 64, 5)])
def test_kernel_half_dtypes(N, D, K, dtype):
    z = _randn(N, D, dtype=dtype, seed=N + D + K, offset=0.1)
    cb = _randn(K, D, dtype=dtype, seed=K + 2)
    idx, emb = _run_triton(z, cb)
    _check(z, cb, idx, emb)


def test_kernel_mixed_dtypes():
    z = _randn(33, 12, dtype=torch.bfloat16, seed=3)
    cb = _randn(40, 12, dtype=torch.float32, seed=4)
    idx, emb = _run_triton(z, cb)
    _check(z, cb, idx, emb)
    z = _randn(33, 12, dtype=torch.float32, seed=5)
    cb = _randn(40, 12, dtype=torch.float16, seed=6)
    idx, emb = _run_triton(z, cb)
    _check(z, cb, idx, emb)


@pytest.mark.parametrize("D,block_d", [(100, None), (200, 16), (12, 4)])
def test_kernel_loops_over_d(D, block_d):
    z = _randn(20, D, seed=D, offset=-0.2)
    cb = _randn(70, D, seed=D + 1)
    idx, emb = _run_triton(z, cb, block_d=block_d)
    _check(z, cb, idx, emb)


@pytest.mark.parametrize("block_n,block_k", [(4, 8), pytest.param(1, 1, marks=pytest.mark.slow), (16, 16), (32, 128)])
def test_kernel_block_sizes(block_n, block_k):
    """Small blocks take the broadcast-multiply path instead of tl.dot; results must not change."""
    z = _randn(37, 12, seed=11, offset=0.3)
    cb = _randn(45, 12, seed=12)
    idx, emb = _run_triton(z, cb, block_n=block_n, block_k=block_k)
    _check(z, cb, idx, emb)


def test_kernel_batch_shaped():
    D = 12
    z = _randn(2, 5, 7, D, seed=21)
    cb = _randn(64, D, seed=22)
    idx, emb = _run_triton(z, cb)
    assert idx.shape == (2, 5, 7) and emb.shape == (2, 5, 7, D)
    _check(z, cb, idx, emb)
    # [..., D] with a single row and a bare [D]
    idx1, emb1 = _run_triton(z[1, 2, 3], cb)
    assert idx1.shape == () and emb1.shape == (D,)
    assert idx1.item() == idx[1, 2, 3].item()


def test_kernel_non_contiguous():
    D, K = 12, 50
    cb = _randn(K, D, seed=31)
    # transposed view: strides (1, N)
    zt = _randn(D, 40, seed=32).t()
    assert not zt.is_contiguous()
    _check(zt, cb, *_run_triton(zt, cb))
    # column slice of a wider tensor: row stride 20, column stride 1
    zs = _randn(40, 20, seed=33)[:, 5:5 + D]
    _check(zs, cb, *_run_triton(zs, cb))
    # every other row and every other feature: strides (4D, 2)
    zstep = _randn(80, 2 * D, seed=34)[::2, ::2]
    _check(zstep, cb, *_run_triton(zstep, cb))
    # [2,5,7,D] whose leading dims cannot be flattened as a view (permuted): copied by the launcher
    zp = _randn(7, 5, 2, D, seed=35).permute(2, 1, 0, 3)
    idx, emb = _run_triton(zp, cb)
    _check(zp, cb, idx, emb)
    # [2,5,7,D] sliced along the batch: flattenable as a strided view
    zb = _randn(4, 5, 7, D, seed=36)[::2]
    _check(zb, cb, *_run_triton(zb, cb))
    # non-contiguous (transposed) codebook
    cbt = _randn(D, K, seed=37).t()
    z = _randn(40, D, seed=38)
    _check(z, cbt, *_run_triton(z, cbt))


def test_kernel_exact_ties_lowest_index():
    """Integer data: every distance is exact in float32 whatever the summation order, so ties are exact."""
    D, K = 12, 300  # 300 codes = 5 chunks of 64: ties within a chunk and across chunks
    g = torch.Generator().manual_seed(41)
    cb = torch.randint(-4, 5, (K, D), generator=g).float()
    # duplicates of code 3 inside its chunk (10) and in later chunks (75, 200, 299)
    for k in (10, 75, 200, 299):
        cb[k] = cb[3]
    # code 130's duplicates only after it, in its own and later chunks
    for k in (150, 250):
        cb[k] = cb[130]
    z = torch.stack([
        cb[3],                      # exact hit on a duplicated code: distance 0 for 5 codes
        cb[3] + 1.0,                # equal distance to all duplicates of code 3
        cb[130],
        (cb[7] + cb[9]) / 2,        # midpoint of two distinct codes (half-integers, exact)
        cb[200],                    # a later copy: must still report 3
    ])
    cb, z = cb.to(DEVICE), z.to(DEVICE)
    for kw in ({}, {"block_n": 4, "block_k": 8}):
        idx, emb = _run_triton(z, cb, **kw)
        ref_idx, _ = vq.nearest_code_reference(z, cb)
        assert torch.equal(idx.cpu(), ref_idx.cpu())
        assert idx[0].item() == 3 and idx[4].item() == 3 and idx[2].item() == 130
        assert torch.equal(emb, cb[idx])
    # every code identical: index 0 for every row
    same = cb[:1].expand(K, D).contiguous()
    idx, _ = _run_triton(z, same)
    assert (idx == 0).all()


def test_kernel_nan_row_stays_in_range():
    z = _randn(5, 12, seed=51)
    z[2] = float("nan")
    cb = _randn(20, 12, seed=52)
    idx, emb = _run_triton(z, cb)
    assert idx[2].item() == 0  # documented: NaN distances never win in the kernel
    assert torch.equal(emb, cb[idx])
    keep = torch.tensor([0, 1, 3, 4], device=DEVICE)
    _check(z[keep], cb, idx[keep], emb[keep])


def test_kernel_empty_rows():
    cb = _randn(10, 12, seed=61)
    z = _randn(0, 12, seed=62)
    _skip_unless_triton(z, cb)
    idx, emb = vq.nearest_code_triton(z, cb)
    assert idx.shape == (0,) and emb.shape == (0, 12)


def test_launcher_validation():
    z = _randn(4, 12, seed=71)
    cb = _randn(10, 12, seed=72)
    _skip_unless_triton(z, cb)
    with pytest.raises(ValueError, match="must be \\[..., 12\\]"):
        vq.nearest_code_triton(_randn(4, 11, seed=1), cb)
    with pytest.raises(ValueError, match="codebook must be \\[K, D\\]"):
        vq.nearest_code_triton(z, cb[None])
    with pytest.raises(ValueError, match="norms must be \\[K\\]"):
        vq.nearest_code_triton(z, cb, vq.code_norms(cb)[:5])
    with pytest.raises(ValueError, match="empty"):
        vq.nearest_code_triton(z, cb[:0])
    with pytest.raises(ValueError, match="out\\[0\\]"):
        vq.nearest_code_triton(z, cb, out=_poisoned_out((5,), 12, cb.dtype))
    with pytest.raises(ValueError, match="out\\[1\\]"):
        vq.nearest_code_triton(z, cb, out=(torch.empty(4, dtype=torch.int64, device=DEVICE),
                                           torch.empty(4, 12, dtype=torch.float16, device=DEVICE)))
    with pytest.raises(ValueError, match="power of two"):
        vq.nearest_code_triton(z, cb, block_n=24)
    with pytest.raises(RuntimeError, match="dtype torch.int64"):
        vq.nearest_code_triton(z.long(), cb.long())


# ---------------------------------------------------------------------------------------------------
# dispatch and reasons
# ---------------------------------------------------------------------------------------------------
def test_dispatch_torch_and_auto():
    z = _randn(3, 4, 12, seed=81).requires_grad_()
    cb = _randn(30, 12, seed=82).requires_grad_()
    ref_idx, ref_emb = vq.nearest_code_reference(z, cb)
    for backend in ("torch", "auto"):
        idx, emb = vq.nearest_code(z, cb, backend=backend)
        assert not idx.requires_grad and not emb.requires_grad
        if backend == "torch" or DEVICE == "cpu":  # auto on the CPU is the reference itself
            assert torch.equal(idx, ref_idx) and torch.equal(emb, ref_emb)
        else:
            _check(z.detach(), cb.detach(), idx, emb)
    idx2, _ = vq.nearest_code(z, cb, vq.code_norms(cb), backend="torch")
    assert torch.equal(idx2, ref_idx)


def test_dispatch_explicit_triton():
    z = _randn(2, 5, 7, 12, seed=91)
    cb = _randn(64, 12, seed=92)
    _skip_unless_triton(z, cb)
    assert vq.reason(z, cb, "triton").startswith("triton: requested explicitly")
    idx, emb = vq.nearest_code(z, cb, backend="triton")
    _check(z, cb, idx, emb)


def test_reason_auto():
    z, cb = _randn(5, 12, seed=1), _randn(9, 12, seed=2)
    text = vq.reason(z, cb)
    if DEVICE == "cpu":
        if vq._ext_unavailable_reason(z, cb) is None:
            assert text == "ext: tensors are on cpu and the C++ extension's op takes them"
        else:
            assert text.startswith("torch: tensors are on cpu and the C++ op cannot run")
            assert "never routes CPU tensors to the Triton interpreter" in text
    elif _triton.triton_unavailable_reason(z, cb) is None:
        assert text == "triton: tensors are on CUDA and triton is available"
    else:
        assert text.startswith("torch: tensors are on CUDA but the Triton kernel cannot run")


def test_reason_auto_cpu_even_with_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRET", True)
    z, cb = torch.randn(5, 12), torch.randn(9, 12)
    assert not vq.reason(z, cb).startswith("triton")
    monkeypatch.setattr(vq, "_ext_unavailable_reason", lambda z, cb: "pretend it is missing")
    assert vq.reason(z, cb).startswith("torch: tensors are on cpu and the C++ op cannot run (pretend")


def test_triton_unavailable_reasons(monkeypatch):
    installed = _triton.HAS_TRITON
    monkeypatch.setattr(_triton, "HAS_TRITON", True)  # the checks after the import one (also without triton)
    cpu = torch.randn(3)
    meta = torch.empty(3, device="meta")
    assert "different devices (cpu, meta)" in _triton.triton_unavailable_reason(cpu, meta)
    assert _triton.triton_unavailable_reason(meta).startswith("tensors are on meta")
    monkeypatch.setattr(_triton, "INTERPRET", False)
    assert _triton.triton_unavailable_reason(cpu).startswith(
        "tensors are on the CPU and TRITON_INTERPRET is not set")
    monkeypatch.setattr(_triton, "INTERPRET", True)
    if installed:
        assert _triton.triton_unavailable_reason(cpu) is None
    monkeypatch.setattr(_triton, "HAS_TRITON", False)
    monkeypatch.setattr(_triton, "_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    assert _triton.triton_unavailable_reason(cpu) == "triton is not installed"


@pytest.mark.parametrize("setting,message", [
    ({"HAS_TRITON": False, "_IMPORT_ERROR": "ModuleNotFoundError: No module named 'triton'"},
     "triton is not installed"),
    ({"HAS_TRITON": True, "INTERPRET": False}, "TRITON_INTERPRET is not set"),  # also without triton installed
])
def test_explicit_triton_unavailable_raises(monkeypatch, setting, message):
    for name, value in setting.items():
        monkeypatch.setattr(_triton, name, value)
    z, cb = torch.randn(5, 12), torch.randn(9, 12)  # CPU on purpose
    text = vq.reason(z, cb, "triton")
    assert text.startswith("none: backend='triton' was requested but cannot run: ") and message in text
    with pytest.raises(RuntimeError, match=message):
        vq.nearest_code(z, cb, backend="triton")
    if "HAS_TRITON" in setting:  # auto still works without triton
        assert vq.nearest_code(z, cb)[0].shape == (5,)


def test_explicit_triton_bad_dtype_raises():
    z, cb = torch.randint(0, 3, (5, 12)), torch.randint(0, 3, (9, 12))
    with pytest.raises(RuntimeError, match="dtype torch.int64"):
        vq.nearest_code(z, cb, backend="triton")


class _FakeExt:
    def __init__(self, ok=True, why=None, cuda=False):
        self.ok, self.why, self.cuda, self.calls = ok, why, cuda, []

    def available(self):
        return self.ok

    def why_unavailable(self):
        return None if self.ok else self.why

    def has_cuda(self):
        return self.cuda

    def why_no_cuda(self):
        return None if self.cuda else "pyinpaint._C was built without CUDA"

    def warn_once(self):
        pass

    def nearest_code(self, z2d, codebook, norms):
        assert z2d.dim() == 2 and z2d.is_contiguous() and z2d.dtype == torch.float32
        assert codebook.is_contiguous() and norms.dtype == torch.float32 and norms.is_contiguous()
        self.calls.append(z2d.shape)
        return vq.nearest_code_reference(z2d, codebook, norms)


def test_ext_dispatch_contract(monkeypatch):
    fake = _FakeExt()
    monkeypatch.setattr(vq, "_ext", fake)
    z = torch.randn(7, 5, 2, 12).permute(2, 1, 0, 3)  # non-contiguous, [2, 5, 7, 12]
    cb = torch.randn(9, 12)
    assert vq.reason(z, cb, "ext") == "ext: requested explicitly; runs on cpu"
    idx, emb = vq.nearest_code(z, cb, backend="ext")
    assert fake.calls == [(70, 12)]
    ref_idx, ref_emb = vq.nearest_code_reference(z, cb)
    assert torch.equal(idx, ref_idx) and torch.equal(emb, ref_emb)
    # the extension takes float32 only
    with pytest.raises(RuntimeError, match="float32 only on the CPU"):
        vq.nearest_code(z.half(), cb.half(), backend="ext")


@pytest.mark.parametrize("fake,dtype,message", [
    (_FakeExt(ok=False, why="pyinpaint._C was not built"), torch.float32, "pyinpaint._C was not built"),
    (_FakeExt(), torch.float64, "float32 only on the CPU"),  # there, but it does not take these inputs
])
def test_explicit_ext_unavailable_raises(monkeypatch, fake, dtype, message):
    monkeypatch.setattr(vq, "_ext", fake)
    z, cb = torch.randn(5, 12, dtype=dtype), torch.randn(9, 12, dtype=dtype)
    text = vq.reason(z, cb, "ext")
    assert text.startswith("none: backend='ext' was requested but cannot run: ") and message in text
    with pytest.raises(RuntimeError, match=message):
        vq.nearest_code(z, cb, backend="ext")
    assert not fake.calls


def test_ext_real_if_available():
    z = _randn(130, 64, seed=101).cpu()
    cb = _randn(300, 64, seed=102).cpu()
    why = vq._ext_unavailable_reason(z, cb)
    if why is not None:
        pytest.skip(f"C++ extension cannot run: {why}")
    idx, emb = vq.nearest_code(z, cb, backend="ext")
    _check(z, cb, idx, emb)
    zp = _randn(7, 5, 2, 64, seed=103).cpu().permute(2, 1, 0, 3)  # [2, 5, 7, 64], not flattenable
    _check(zp, cb, *vq.nearest_code(zp, cb, backend="ext"))


def test_dispatch_input_errors():
    z, cb = torch.randn(5, 12), torch.randn(9, 12)
    with pytest.raises(ValueError, match="backend must be one of"):
        vq.nearest_code(z, cb, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        vq.reason(z, cb, "numpy")
    with pytest.raises(ValueError, match="must be \\[..., 12\\]"):
        vq.nearest_code(torch.randn(5, 13), cb)
    with pytest.raises(ValueError, match="is on meta but the codebook is on cpu"):
        vq.nearest_code(torch.empty(5, 12, device="meta"), cb)
    with pytest.raises(ValueError, match="norms must be \\[K\\]"):
        vq.nearest_code(z, cb, torch.randn(8))
