"""The per-position sampling op (pyinpaint.kernels.sample.sample_step): the C++ extension against the PyTorch rule
(codes and embeddings bit-identical), its validation and dispatch, and the cached sampler with and without it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from pyinpaint.kernels import _ext
from pyinpaint.kernels import sample as sample_op
from pyinpaint.sampler import draw, gumbel_noise, sample_cached, shape_logits

needs_ext = pytest.mark.skipif(not _ext.available(), reason=f"pyinpaint._C is not available: {_ext.why_unavailable()}")
_cuda_reason = "torch.cuda is not available" if not torch.cuda.is_available() else _ext.why_no_cuda()
needs_cuda = pytest.mark.skipif(_cuda_reason is not None, reason=f"no CUDA for the extension: {_cuda_reason}")

TEMPERATURES = [1.0, 0.8, 1.3, 0.37]


def make_inputs(b: int, k: int, d: int, positions: int, seed: int, device="cpu"):
    """Logits on a coarse grid (many exact ties, also at the top-k threshold and after adding the noise), a few -inf,
    noise as a [B, positions, K] tensor (also coarse on half the rows), a codebook; nothing is zero everywhere."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(-8, 9, (b, k), generator=g).float() * 0.25
    logits[torch.rand(b, k, generator=g) < 0.1] = float("-inf")
    noise = gumbel_noise(seed, b, positions, k)
    noise[: b // 2] = (noise[: b // 2] * 2).round() / 2  # exact ties in logits / T + noise
    codebook = torch.randn(k, d, generator=g)
    return logits.to(device), noise.to(device), codebook.to(device)


def rounding_sensitive_rows(temperature: float, device="cpu", rows: int = 64, k: int = 9, seed: int = 0):
    """Rows whose draw flips when logits / T is off by one ulp: logit x at j1, 0 at j2 with noise exactly x / T
    (as torch rounds it on ``device``), -inf elsewhere. Correct rounding gives an exact tie (the lower of j1, j2
    wins); a scaling rounded otherwise (a product with 1/T instead of a division, say) breaks it one way or the
    other, and with j1 above j2 on half the rows, either way changes the code on some rows."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(rows, generator=g) * 20 - 10).float()
    logits = torch.full((rows, k), float("-inf"))
    noise = torch.randn(rows, k, generator=g)
    j1 = torch.randint(0, k, (rows,), generator=g)
    j2 = (j1 + torch.randint(1, k, (rows,), generator=g)) % k
    r = torch.arange(rows)
    logits[r, j1] = x
    logits[r, j2] = 0.0
    noise[r, j1] = 0.0
    noise[r, j2] = shape_logits(x.to(device), temperature).cpu()
    return logits.to(device), noise.to(device)


def poisoned(b: int, positions: int, d: int, device="cpu"):
    return (torch.full((b, positions), -7, dtype=torch.int64, device=device),
            torch.full((b, d), float("nan"), device=device))


def check_against_reference(logits, noise_col, codebook, temperature, top_k, codes, emb):
    """The op's codes and embeddings equal the rule's, computed by torch on the same device (CUDA rounds logits / T
    its own way: the op must follow the device's torch)."""
    ref = draw(logits, noise_col, temperature, top_k)
    assert codes.dtype == torch.int64
    assert torch.equal(codes, ref), (codes.cpu(), ref.cpu())
    assert torch.equal(emb, codebook[ref])


# ------------------------------------------------------------------------------------------ CPU


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=needs_ext), pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("top_k", [None, 1, 5, "K"])
@pytest.mark.parametrize("b,k", [(1, 5), (2, 7), (7, 64), (10, 512), (3, 1001)])
def test_ext_is_bit_identical_to_the_rule(b, k, top_k, temperature, device):
    top_k = k if top_k == "K" else top_k
    positions, p, d = 4, 2, 6
    logits, noise, codebook = make_inputs(b, k, d, positions, seed=b * 1000 + k, device=device)
    codes, emb = poisoned(b, positions, d, device=device)
    out = _ext.sample_step(logits, noise[:, p], codebook, temperature, top_k, codes_out=codes[:, p], emb_out=emb)
    assert out[1] is emb and out[0].data_ptr() == codes[:, p].data_ptr()
    check_against_reference(logits, noise[:, p], codebook, temperature, top_k, codes[:, p], emb)
    untouched = torch.ones(positions, dtype=torch.bool)
    untouched[p] = False
    assert bool((codes[:, untouched.to(device)] == -7).all()), "wrote outside the column"


@needs_ext
@pytest.mark.parametrize("temperature", [1.0, 0.8])
@pytest.mark.parametrize("top_k", [None, 3])
def test_ext_strided_views(top_k, temperature):
    b, k, d = 6, 40, 5
    logits, noise, codebook = make_inputs(b, k, d, 3, seed=5)
    wide = torch.full((b, k + 7), 123.0)
    wide[:, 2:2 + k] = logits
    views = [
        wide[:, 2:2 + k],  # row stride k + 7, storage offset 2
        logits[0:1].expand(b, k),  # row stride 0
        torch.cat([logits, logits]).view(2 * b, k)[::2],  # row stride 2k
    ]
    for lv in views:
        assert not lv.is_contiguous() and lv.stride(1) == 1
        codes = torch.full((b, 9), -7, dtype=torch.int64)
        c, e = _ext.sample_step(lv, noise[:, 1], codebook, temperature, top_k, codes_out=codes[:, 4])
        check_against_reference(lv.contiguous(), noise[:, 1], codebook, temperature, top_k, codes[:, 4], e)
        assert torch.equal(c, codes[:, 4])
    # a fresh output tensor when codes_out is None; a column of a transposed (column-major) map
    codes_t = torch.full((9, b), -7, dtype=torch.int64).t()
    c, _ = _ext.sample_step(logits, noise[:, 0], codebook, temperature, top_k, codes_out=codes_t[:, 3])
    assert codes_t[:, 3].stride(0) == 1 and torch.equal(codes_t[:, 3], draw(logits, noise[:, 0], temperature, top_k))
    c, e = _ext.sample_step(logits, noise[:, 0], codebook, temperature, top_k)
    assert c.shape == (b,) and e.shape == (b, d) and torch.equal(c, codes_t[:, 3])


@needs_ext
def test_ext_nan_inf_and_all_masked_rows():
    k, d = 14, 3  # not a multiple of the SIMD width: the last two codes go through the scalar tail
    codebook = torch.randn(k, d, generator=torch.Generator().manual_seed(0))
    nan, inf = float("nan"), float("inf")
    rows = torch.randn(11, k, generator=torch.Generator().manual_seed(1))
    rows[0] = -inf  # every logit -inf: argmax of all -inf -> 0
    rows[1, 4] = nan  # one NaN: it wins the argmax (torch.argmax propagates NaN)
    rows[2, [3, 7]] = nan  # two NaNs: the first wins; with top-k the NaNs are the two largest
    rows[3, 5] = inf  # +inf wins
    rows[4, [2, 9]] = inf  # two +inf: the first wins
    rows[5, :] = 2.5  # all equal: the noise decides
    rows[6, :6] = -inf  # half -inf
    rows[7, [1, 2, 3]] = nan  # three NaNs: the k-th largest (k <= 3) is NaN: nothing is masked
    rows[8, 13] = nan  # a NaN in the tail
    rows[9, [12, 13]] = inf  # the maximum in the tail, tied
    rows[9, 0] = nan  # ... and a NaN before it
    rows[10, 12] = inf  # the maximum in the tail alone
    noise = gumbel_noise(3, 11, 1, k)[:, 0]
    for temperature in (1.0, 0.8):
        for top_k in (None, 1, 2, 3, 5, k):
            c, e = _ext.sample_step(rows, noise, codebook, temperature, top_k)
            check_against_reference(rows, noise, codebook, temperature, top_k, c, e)
    # all -inf logits and all -inf noise: -inf everywhere, index 0; +inf logit with -inf noise: NaN, which wins
    c, _ = _ext.sample_step(torch.full((1, k), -inf), torch.full((1, k), -inf), codebook)
    assert c.tolist() == [0]
    lg = torch.zeros(1, k)
    lg[0, 6] = inf
    nz = torch.ones(1, k)
    nz[0, 6] = -inf
    c, _ = _ext.sample_step(lg, nz, codebook)
    assert c.tolist() == draw(lg, nz).tolist() == [6]


@needs_ext
def test_ext_exact_ties_lowest_index():
    k, d = 33, 2
    codebook = torch.randn(k, d)
    logits = torch.zeros(4, k)
    logits[:, [5, 17, 30]] = 3.0  # three equal maxima, noise identical on them
    noise = torch.full((4, k), 0.5)
    c, _ = _ext.sample_step(logits, noise, codebook)
    assert c.tolist() == [5] * 4
    for top_k in (1, 2, 3, 4):  # the threshold ties: all three kept (ties with the k-th are kept)
        c, _ = _ext.sample_step(logits, noise, codebook, 1.0, top_k)
        assert c.tolist() == [5] * 4 == draw(logits, noise, 1.0, top_k).tolist()


@needs_ext
@pytest.mark.parametrize("temperature", [0.8, 1.3, 0.37, 0.7, 1.1])
def test_ext_rounds_the_temperature_as_torch(temperature):
    logits, noise = rounding_sensitive_rows(temperature)
    codebook = torch.randn(logits.shape[1], 2)
    c, e = _ext.sample_step(logits, noise, codebook, temperature)
    check_against_reference(logits, noise, codebook, temperature, None, c, e)
    # the test has teeth: a product with the float32 reciprocal draws other codes on some rows
    inv = torch.tensor(1.0 / temperature, dtype=torch.float32)
    wrong = torch.argmax(torch.where(logits == float("-inf"), logits, logits * inv) + noise, dim=-1)
    assert not torch.equal(wrong, c)


@needs_ext
def test_temperature_scaling_on_the_cpu_is_a_division():
    assert _ext.temperature_scaling(1.0, "cpu") == (_ext._C.SCALE_NONE, 1.0)
    for t in (0.8, 1.3, 0.37, 2.0, 1e-3):
        mode, scale = _ext.temperature_scaling(t, "cpu")
        assert mode == _ext._C.SCALE_DIVIDE and scale == float(torch.tensor(t, dtype=torch.float32))
    # the rule itself: float32 division by float32(T), not a product with 1/T
    x = torch.randn(10000, generator=torch.Generator().manual_seed(0)) * 10
    assert torch.equal(shape_logits(x, 0.37), x / torch.tensor(0.37, dtype=torch.float32))


@needs_ext
def test_ext_empty_batch():
    c, e = _ext.sample_step(torch.empty(0, 5), torch.empty(0, 5), torch.randn(5, 3))
    assert c.shape == (0,) and e.shape == (0, 3) and c.dtype == torch.int64


@needs_ext
def test_ext_inputs_it_cannot_take_and_input_errors():
    """Bad inputs raise ValueError on every backend (the op's checks); inputs the extension cannot take make an
    explicit backend='ext' raise RuntimeError saying why (the wrapper itself is internal and only asserts)."""
    b, k, d = 4, 10, 3
    lg, nz, cb = torch.randn(b, k), torch.randn(b, k), torch.randn(k, d)
    errors = [
        (dict(logits=lg[None]), "logits must be"),
        (dict(noise=nz[:, :-1]), "noise must have the logits' shape"),
        (dict(codebook=cb[:-1]), "codebook must be"),
        (dict(codebook=cb.to("meta")), "one device"),
        (dict(logits=lg.numpy()), "torch tensor"),
        (dict(temperature=0.0), "temperature must be positive"),
        (dict(temperature=-1.0), "temperature must be positive"),
        (dict(temperature="1"), "temperature must be a Python number"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=k + 1), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(codes_out=torch.empty(b, dtype=torch.int32)), "codes_out"),
        (dict(codes_out=torch.empty(b + 1, dtype=torch.int64)), "codes_out"),
        (dict(emb_out=torch.empty(b, d, dtype=torch.float64)), "emb_out"),
    ]
    cannot = [
        (dict(logits=lg.double(), noise=nz.double()), "logits must be float32"),
        (dict(noise=nz.half()), "noise must be float32"),
        (dict(codebook=cb.double()), "codebook must be float32"),
        (dict(codebook=torch.randn(d, k).t()), "codebook must be contiguous"),
        (dict(logits=torch.randn(k, b).t()), "logits's last dimension must be contiguous"),
        (dict(codes_out=torch.empty(1, dtype=torch.int64).expand(b)), "codes_out"),
        (dict(emb_out=torch.empty(d, b).t()), "emb_out"),
    ]
    for backend in ("auto", "torch", "ext"):
        for kw, msg in errors:
            args = dict(logits=lg, noise=nz, codebook=cb)
            args.update(kw)
            with pytest.raises(ValueError, match=msg):
                sample_op.sample_step(**args, backend=backend)
    for kw, msg in cannot:
        args = dict(logits=lg, noise=nz, codebook=cb)
        args.update(kw)
        with pytest.raises(RuntimeError, match=f"backend='ext' was requested but cannot run: {msg}"):
            sample_op.sample_step(**args, backend="ext")
        assert sample_op.reason(args["logits"], args["noise"], args["codebook"]).startswith("torch:") or \
            "codes_out" in kw or "emb_out" in kw  # auto falls back to PyTorch


# ------------------------------------------------------------------------------------------ dispatch


def test_dispatch_and_reasons():
    b, k, d = 3, 8, 2
    lg, nz, cb = torch.randn(b, k), torch.randn(b, k), torch.randn(k, d)
    assert sample_op.reason(lg, nz, cb, backend="torch").startswith("torch: requested")
    if _ext.available():
        assert sample_op.reason(lg, nz, cb).startswith("ext:")
        assert sample_op.reason(lg, nz, cb, 0.7, 3, backend="ext").startswith("ext: requested")
    else:
        assert sample_op.reason(lg, nz, cb).startswith("torch:")
    why = sample_op.reason(lg.double(), nz, cb)
    assert why.startswith("torch:") and ("float32" in why or "not available" in why or "disabled" in why)
    assert sample_op.reason(lg.double(), nz, cb, backend="ext").startswith("none: backend='ext'")
    with pytest.raises(RuntimeError, match="backend='ext' was requested"):
        sample_op.sample_step(lg, nz, cb.double(), backend="ext")
    with pytest.raises(ValueError, match="backend"):
        sample_op.sample_step(lg, nz, cb, backend="triton")
    for kw, msg in [(dict(top_k=0), "top_k"), (dict(temperature=0.0), "temperature"),
                    (dict(noise=nz[:, :3]), "noise"), (dict(codebook=cb[:5]), "codebook")]:
        args = dict(logits=lg, noise=nz, codebook=cb)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            sample_op.sample_step(**args)  # shape / option errors raise on every backend, auto included


@pytest.mark.parametrize("backend", ["auto", "torch", pytest.param("ext", marks=needs_ext)])
def test_public_op_equals_the_rule(backend):
    b, k, d, positions = 5, 64, 4, 3
    logits, noise, codebook = make_inputs(b, k, d, positions, seed=9)
    for temperature, top_k in ((1.0, None), (0.8, 5), (1.3, k)):
        codes = torch.full((b, positions), -7, dtype=torch.int64)
        c, e = sample_op.sample_step(logits, noise[:, 1], codebook, temperature, top_k, codes_out=codes[:, 1],
                                     backend=backend)
        check_against_reference(logits, noise[:, 1], codebook, temperature, top_k, codes[:, 1], e)
    # float64 inputs: the reference rule (shape_logits casts the logits to float32, as before)
    c, e = sample_op.sample_step(logits.double(), noise[:, 0], codebook.double(), 0.8, 5,
                                 backend="torch" if backend == "ext" else backend)
    assert torch.equal(c, draw(logits.double(), noise[:, 0], 0.8, 5)) and e.dtype == torch.float64


# ------------------------------------------------------------------------------------------ the cached sampler

_MODEL_SCRIPT = r"""
import json, sys, torch
from pyinpaint.config import structure_preset
from pyinpaint.models.structure import PixelCNN
from pyinpaint.sampler import sample_cached
def build():
    torch.manual_seed(0)
    cfg = structure_preset("tiny", dropout=0.0)
    net = PixelCNN(cfg).eval()
    with torch.no_grad():
        net.logits.g.mul_(10)  # peaky logits: the draws depend on them
    g = torch.Generator().manual_seed(1)
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim, generator=g)
    h = torch.randn(3, cfg.h_channels, 5, 6, generator=g)
    return net, h, codebook
if __name__ == "__main__":
    from pyinpaint.kernels import _ext
    net, h, codebook = build()
    out = {}
    for t, k in json.loads(sys.argv[1]):
        out[f"{t},{k}"] = sample_cached(net, h, codebook, seed=4, temperature=t, top_k=k).codes.tolist()
    print(json.dumps({"available": _ext.available(), "codes": out}))
"""
CACHED_OPTIONS = [(1.0, None), (0.8, 5), (1.3, 1)]


def _build_tiny():
    """The script's build(), in this process (one definition of the model for both processes)."""
    namespace: dict = {}
    exec(compile(_MODEL_SCRIPT, "<model script>", "exec"), namespace)  # noqa: S102
    return namespace["build"]()


@needs_ext
def test_cached_sampler_same_codes_with_and_without_the_extension(monkeypatch):
    net, h, codebook = _build_tiny()
    calls = []
    real = _ext.sample_step

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(_ext, "sample_step", counting)
    results = {}
    for t, k in CACHED_OPTIONS:
        auto = sample_cached(net, h, codebook, seed=4, temperature=t, top_k=k)
        assert len(calls) == 5 * 6, "auto did not run the extension at every position"
        calls.clear()
        ext = sample_cached(net, h, codebook, seed=4, temperature=t, top_k=k, draw_backend="ext")
        ref = sample_cached(net, h, codebook, seed=4, temperature=t, top_k=k, draw_backend="torch")
        assert len(calls) == 5 * 6
        calls.clear()
        for out in (auto, ext):
            assert torch.equal(out.codes, ref.codes)
            assert torch.equal(out.embeddings, ref.embeddings)
        assert len(torch.unique(ref.codes)) > 3
        results[f"{t},{k}"] = ref.codes.tolist()

    # PYINPAINT_DISABLE_EXT=1 in a fresh process: the torch path, the same codes
    env = {**os.environ, "PYINPAINT_DISABLE_EXT": "1"}
    # Run outside the checkout (from its root, `import pyinpaint` would find the source tree without the extension).
    res = subprocess.run([sys.executable, "-c", _MODEL_SCRIPT, json.dumps(CACHED_OPTIONS)], env=env,
                         capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["available"] is False
    assert out["codes"] == results


def test_cached_sampler_torch_path_when_the_extension_is_missing(monkeypatch):
    """In-process version of PYINPAINT_DISABLE_EXT: the extension reported missing, auto takes the rule."""
    net, h, codebook = _build_tiny()
    ref = sample_cached(net, h, codebook, seed=2, temperature=0.8, top_k=5, draw_backend="torch")
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_reason", "disabled by the test")
    monkeypatch.setattr(_ext, "_warned", True)  # no warning from this test
    assert sample_op.reason(torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(4, 2)).startswith("torch:")
    out = sample_cached(net, h, codebook, seed=2, temperature=0.8, top_k=5)
    assert torch.equal(out.codes, ref.codes) and torch.equal(out.embeddings, ref.embeddings)
    with pytest.raises(RuntimeError, match="disabled by the test"):
        sample_cached(net, h, codebook, seed=2, draw_backend="ext")


# ----------------------------------------------------------------------------------------- CUDA


@needs_cuda
@pytest.mark.parametrize("temperature", [0.8, 1.3, 0.37, 0.7, 1.1])
def test_cuda_rounds_the_temperature_as_torch_on_cuda(temperature):
    logits, noise = rounding_sensitive_rows(temperature, "cuda")
    codebook = torch.randn(logits.shape[1], 2, device="cuda")
    c, e = _ext.sample_step(logits, noise, codebook, temperature)
    ref = draw(logits, noise, temperature)  # torch's CUDA arithmetic (a product with 1/T in recent versions)
    assert torch.equal(c, ref) and torch.equal(e, codebook[ref])


@needs_cuda
def test_cuda_nan_inf_and_stream():
    k, d = 12, 3
    rows = torch.randn(4, k, generator=torch.Generator().manual_seed(1))
    rows[0] = -float("inf")
    rows[1, [3, 7]] = float("nan")
    rows[2, [2, 9]] = float("inf")
    rows = rows.cuda()
    noise = gumbel_noise(3, 4, 1, k, "cuda")[:, 0]
    codebook = torch.randn(k, d, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for top_k in (None, 1, 2, 5):
            c, e = _ext.sample_step(rows, noise, codebook, 0.8, top_k)
            ref = draw(rows, noise, 0.8, top_k)
            assert torch.equal(c, ref) and torch.equal(e, codebook[ref])
    stream.synchronize()
