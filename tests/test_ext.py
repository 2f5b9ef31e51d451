"""Tests of the native extension (pyinpaint._C through pyinpaint.kernels._ext): nearest-code search
against the PyTorch reference, on the CPU (every SIMD variant this machine runs) and on CUDA."""
from __future__ import annotations

import os
import subprocess
import tempfile
import sys

import pytest
import torch

from pyinpaint.kernels import _ext, vq
from pyinpaint.kernels.vq import code_norms, nearest_code_reference

if not _ext.available():
    pytest.skip(f"pyinpaint._C is not available: {_ext.why_unavailable()}", allow_module_level=True)

ISAS = _ext.cpu_isas()
NS = [1, 7, 1000]
DS = [3, 12, 64]
KS = [5, 64, 512]

_cuda_reason = (
    "torch.cuda is not available"
    if not torch.cuda.is_available()
    else _ext.why_no_cuda()
)
needs_cuda = pytest.mark.skipif(_cuda_reason is not None, reason=f"no CUDA for the extension: {_cuda_reason}")


def poisoned_out(n: int, d: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.full((n,), -7, dtype=torch.int64, device=device)
    emb = torch.full((n, d), float("nan"), dtype=dtype, device=device)
    return idx, emb


def assert_nearest(z: torch.Tensor, cb: torch.Tensor, idx: torch.Tensor, emb: torch.Tensor) -> None:
    """idx/emb must be what nearest_code_reference gives; where float rounding (a different
    summation order) flips a near-tie, the two codes must be equally near to float32 precision."""
    ref_idx, _ = nearest_code_reference(z, cb, code_norms(cb))
    n, k = z.shape[0], cb.shape[0]
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert emb.dtype == cb.dtype and emb.shape == (n, cb.shape[1])
    assert bool(((idx >= 0) & (idx < k)).all()), idx
    assert torch.equal(emb, cb[idx]), "emb is not the gathered codebook rows"
    diff = (idx != ref_idx.to(idx.device)).nonzero().flatten().cpu()
    if diff.numel():
        z64, cb64 = z.detach().double().cpu(), cb.detach().double().cpu()
        rows = z64[diff]
        d_ext = ((rows - cb64[idx.cpu()[diff]]) ** 2).sum(1)
        d_ref = ((rows - cb64[ref_idx.cpu()[diff]]) ** 2).sum(1)
        scale = (rows * rows).sum(1) + (cb64 * cb64).sum(1).max()
        tol = 1e-5 * scale
        assert bool(((d_ext - d_ref).abs() <= tol).all()), (
            f"{diff.numel()} rows pick a different code than the reference that is not a near-tie: "
            f"rows {diff[:10].tolist()}, ext dist {d_ext[:5].tolist()}, ref dist {d_ref[:5].tolist()}"
        )
        assert diff.numel() <= max(1, n // 100), f"{diff.numel()} near-tie flips out of {n} rows"


@pytest.fixture
def num_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


# ------------------------------------------------------------------------------------------ CPU


def test_module_info():
    assert _ext.why_unavailable().startswith("nothing: pyinpaint._C is loaded and used")
    assert ISAS and ISAS[0] == _ext.cpu_isa() and ISAS[-1] == "baseline"
    assert isinstance(_ext.has_cuda(), bool)
    _ext.warn_once()  # available: must not warn (pytest -W error would turn it into a failure)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_cpu_matches_reference(n, d, k, isa):
    g = torch.Generator().manual_seed(1000 * n + 10 * d + k)
    z = torch.randn(n, d, generator=g) * 1.5 + 0.25
    cb = torch.randn(k, d, generator=g)
    out = poisoned_out(n, d, torch.float32, "cpu")
    idx, emb = _ext.nearest_code(z, cb, code_norms(cb), out=out, _cpu_isa=isa)
    assert idx is out[0] and emb is out[1]
    assert_nearest(z, cb, idx, emb)


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_default_outputs(isa):
    g = torch.Generator().manual_seed(3)
    z, cb = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    idx, emb = _ext.nearest_code(z, cb, code_norms(cb), _cpu_isa=isa)
    assert_nearest(z, cb, idx, emb)


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_row_strided_z(isa):
    g = torch.Generator().manual_seed(5)
    n, d, k = 333, 12, 70
    cb = torch.randn(k, d, generator=g)
    norms = code_norms(cb)
    wide = torch.randn(n, d + 5, generator=g)
    views = [
        wide[:, 2 : 2 + d],  # row stride d + 5, storage offset 2
        torch.randn(2 * n, d, generator=g)[::2],  # row stride 2 d
        torch.randn(1, d, generator=g).expand(n, d),  # row stride 0
    ]
    for z in views:
        assert not z.is_contiguous() and z.stride(1) == 1
        idx, emb = _ext.nearest_code(z, cb, norms, out=poisoned_out(n, d, torch.float32, "cpu"), _cpu_isa=isa)
        assert_nearest(z.contiguous(), cb, idx, emb)
        ref_idx, _ = _ext.nearest_code(z.contiguous(), cb, norms, _cpu_isa=isa)
        assert torch.equal(idx, ref_idx)


def _int_data(g, n, d, k_unique):
    """Small integers: every float32 product and sum is exact, so ext and reference agree exactly."""
    z = torch.randint(-3, 4, (n, d), generator=g).float()
    cb = torch.randint(-3, 4, (k_unique, d), generator=g).float()
    return z, cb


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_exact_ties_lowest_index(isa):
    g = torch.Generator().manual_seed(7)
    n, d = 500, 6
    z, base = _int_data(g, n, d, 37)
    # Duplicates spread over lanes and code blocks: row i of base reappears at 37 + perm[i] and
    # again at 74 + i, always after its first occurrence.
    perm = torch.randperm(37, generator=g)
    cb = torch.cat([base, base[torch.argsort(perm)], base])
    z[: 37] = base  # some rows sit exactly on a (triplicated) code
    out = poisoned_out(n, d, torch.float32, "cpu")
    idx, emb = _ext.nearest_code(z, cb, code_norms(cb), out=out, _cpu_isa=isa)
    ref_idx, _ = nearest_code_reference(z, cb)
    assert torch.equal(idx, ref_idx)
    assert bool((idx < 37).all()), "a duplicate code won over its first occurrence"
    assert torch.equal(idx[:37], torch.arange(37))
    assert torch.equal(emb, cb[idx])
    # Exact ground truth in int64: the lowest index among the minimal distances.
    dist = ((z.long()[:, None, :] - cb.long()[None]) ** 2).sum(-1)
    assert torch.equal(idx, torch.argmin(dist, dim=1))


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_equidistant_codes(isa):
    d = 9
    p = torch.arange(1, d + 1, dtype=torch.float32)
    eye = torch.eye(d)
    cb = torch.cat([p + eye, p - eye, p + eye])  # 27 codes, all at distance 1 from p
    z = p.repeat(5, 1)
    idx, _ = _ext.nearest_code(z, cb, code_norms(cb), out=poisoned_out(5, d, torch.float32, "cpu"), _cpu_isa=isa)
    assert idx.tolist() == [0] * 5
    same = torch.full((40, d), 2.5)  # all codes equal
    idx, _ = _ext.nearest_code(z, same, code_norms(same), _cpu_isa=isa)
    assert idx.tolist() == [0] * 5


@pytest.mark.parametrize("isa", ISAS)
def test_cpu_nan_and_inf_follow_torch_argmin(isa):
    g = torch.Generator().manual_seed(11)
    d, k = 8, 5  # k smaller than every code block: padding lanes exist
    cb = -torch.rand(k, d, generator=g) - 0.5  # every component negative
    z = torch.randn(6, d, generator=g)
    z[1, 3] = float("nan")  # all distances NaN -> index 0
    z[2, 0] = float("inf")  # every dot -inf -> every distance +inf -> index 0 (never a padding lane)
    z[3, 0] = -float("inf")  # every dot +inf -> inf - inf: NaN everywhere -> index 0
    norms = code_norms(cb)
    idx, emb = _ext.nearest_code(z, cb, norms, out=poisoned_out(6, d, torch.float32, "cpu"), _cpu_isa=isa)
    ref_idx, _ = nearest_code_reference(z, cb, norms)
    assert torch.equal(idx, ref_idx), (idx, ref_idx)
    assert torch.equal(emb, cb[idx])
    cb2 = cb.clone()
    cb2[3, 2] = float("nan")  # code 3 is NaN-distant from every row: torch.argmin picks it
    idx2, _ = _ext.nearest_code(z, cb2, code_norms(cb2), _cpu_isa=isa)
    ref2, _ = nearest_code_reference(z, cb2, code_norms(cb2))
    assert torch.equal(idx2, ref2), (idx2, ref2)


def test_cpu_thread_counts_agree(num_threads):
    g = torch.Generator().manual_seed(13)
    z, cb = torch.randn(2000, 64, generator=g), torch.randn(512, 64, generator=g)
    norms = code_norms(cb)
    results = []
    for t in (1, 2, 3):
        torch.set_num_threads(t)
        results.append(_ext.nearest_code(z, cb, norms, out=poisoned_out(2000, 64, torch.float32, "cpu")))
    for idx, emb in results[1:]:
        assert torch.equal(idx, results[0][0]) and torch.equal(emb, results[0][1])
    assert_nearest(z, cb, *results[0])


def test_cpu_empty_rows():
    cb = torch.randn(4, 3)
    idx, emb = _ext.nearest_code(torch.empty(0, 3), cb, code_norms(cb))
    assert idx.shape == (0,) and emb.shape == (0, 3) and idx.dtype == torch.int64


def test_what_a_user_can_get_wrong_reaches_them_through_the_op():
    """The wrapper is internal (it asserts its preconditions); the op checks what a caller can get wrong and says
    which inputs the extension cannot take."""
    z, cb = torch.randn(10, 8), torch.randn(6, 8)
    norms = code_norms(cb)
    for args, msg in [((torch.randn(10, 7), cb), "z must be"), ((z, cb[:0]), "empty"),
                      ((z, cb, norms[:5]), "norms must be"), ((z, cb.reshape(6, 2, 4)), "codebook must be")]:
        with pytest.raises(ValueError, match=msg):
            vq.nearest_code(*args, backend="ext")
    for args, msg in [((z.double(), cb.double()), "float32 only on the CPU"), ((z.half(), cb.half()), "float32")]:
        with pytest.raises(RuntimeError, match=f"backend='ext' was requested but cannot run: .*{msg}"):
            vq.nearest_code(*args, backend="ext")
    # what the op hands over: strided codebooks and norms made contiguous, float64 norms cast
    idx, emb = vq.nearest_code(torch.randn(8, 10).t(), torch.randn(8, 6).t(), backend="ext")
    assert idx.shape == (10,) and emb.shape == (10, 8)
    with pytest.raises(ValueError, match="SIMD variant"):  # std::invalid_argument -> ValueError
        _ext.nearest_code(z, cb, norms, _cpu_isa="sse9")


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    # Run outside the checkout: from its root, `import pyinpaint` would find the source tree (no compiled
    # extension) before the installed package.
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


def test_disable_env_in_subprocess():
    code = (
        "import warnings\n"
        "from pyinpaint.kernels import _ext\n"
        "print(_ext.available())\n"
        "print(_ext.why_unavailable())\n"
        "print(_ext.has_cuda())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    _ext.warn_once(); _ext.warn_once()\n"
        "print(len(w))\n"
        "print(w[0].message if w else '')\n"
    )
    res = _run_python(code, PYINPAINT_DISABLE_EXT="1")
    assert res.returncode == 0, res.stderr
    available, reason, cuda, n_warnings, message = res.stdout.strip().splitlines()
    assert available == "False"
    assert "PYINPAINT_DISABLE_EXT" in reason and "disabled" in reason
    assert cuda == "False"
    assert n_warnings == "1"
    assert "PYINPAINT_DISABLE_EXT" in message
    res = _run_python("from pyinpaint.kernels import _ext; print(_ext.available())", PYINPAINT_DISABLE_EXT="0")
    assert res.returncode == 0 and res.stdout.strip() == "True", res.stderr


def test_unavailable_raises_clearly():
    code = (
        "import torch\n"
        "from pyinpaint.kernels import _ext\n"
        "try:\n"
        "    _ext.nearest_code(torch.randn(2, 3), torch.randn(4, 3), torch.ones(4))\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError', e)\n"
    )
    res = _run_python(code, PYINPAINT_DISABLE_EXT="1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("RuntimeError") and "disabled" in res.stdout


# ----------------------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("n", NS)
def test_cuda_matches_reference(n, d, k, dtype):
    g = torch.Generator().manual_seed(1000 * n + 10 * d + k)
    z = (torch.randn(n, d, generator=g) * 1.5 + 0.25).to("cuda", dtype)
    cb = torch.randn(k, d, generator=g).to("cuda", dtype)
    out = poisoned_out(n, d, dtype, "cuda")
    idx, emb = _ext.nearest_code(z, cb, code_norms(cb), out=out)
    torch.cuda.synchronize()
    assert_nearest(z, cb, idx, emb)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_strided_ties_and_stream(dtype):
    g = torch.Generator().manual_seed(17)
    n, d = 700, 6
    z, base = _int_data(g, n, d, 37)
    cb = torch.cat([base, base.flip(0), base])
    z[:37] = base
    wide = torch.full((n, d + 3), 99.0)
    wide[:, 1 : 1 + d] = z
    zc, cbc = wide.to("cuda", dtype)[:, 1 : 1 + d], cb.to("cuda", dtype)
    assert zc.stride(0) == d + 3
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # zc, cbc were written on the default stream
    with torch.cuda.stream(stream):
        out = poisoned_out(n, d, dtype, "cuda")
        idx, emb = _ext.nearest_code(zc, cbc, code_norms(cbc), out=out)
    stream.synchronize()
    dist = ((z.long()[:, None, :] - cb.long()[None]) ** 2).sum(-1)
    assert torch.equal(idx.cpu(), torch.argmin(dist, dim=1))
    assert bool((idx < 37).all())
    assert torch.equal(emb, cbc[idx])


@needs_cuda
def test_cuda_nan_inf_and_empty():
    g = torch.Generator().manual_seed(19)
    d, k = 8, 5
    cb = -torch.rand(k, d, generator=g) - 0.5
    z = torch.randn(6, d, generator=g)
    z[1, 3], z[2, 0], z[3, 0] = float("nan"), float("inf"), -float("inf")
    idx, _ = _ext.nearest_code(z.cuda(), cb.cuda(), code_norms(cb).cuda())
    assert torch.equal(idx.cpu(), nearest_code_reference(z, cb)[0])
    idx, emb = _ext.nearest_code(torch.empty(0, d, device="cuda"), cb.cuda(), code_norms(cb).cuda())
    assert idx.shape == (0,) and emb.shape == (0, d)


@needs_cuda
def test_cuda_inputs_the_extension_cannot_take():
    z, cb = torch.randn(10, 8, device="cuda"), torch.randn(6, 8, device="cuda")
    with pytest.raises(RuntimeError, match="float32 or float16"):
        vq.nearest_code(z.double(), cb.double(), backend="ext")
    with pytest.raises(RuntimeError, match="float32 or float16"):
        vq.nearest_code(z.half(), cb, backend="ext")
    with pytest.raises(ValueError, match="on cuda"):
        vq.nearest_code(z, cb.cpu(), backend="ext")


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_second_device():
    g = torch.Generator().manual_seed(23)
    z, cb = torch.randn(100, 16, generator=g), torch.randn(30, 16, generator=g)
    idx, emb = _ext.nearest_code(z.to("cuda:1"), cb.to("cuda:1"), code_norms(cb).to("cuda:1"))
    assert idx.device == torch.device("cuda:1")
    assert_nearest(z, cb, idx.cpu(), emb.cpu())
