"""One position of the cached sampler: the PyTorch rule (draw, code write, codebook gather) vs the fused C++ op.

    pytest benchmarks/bench_sample_op.py --benchmark-only --benchmark-columns=min,median,rounds

B in {1, 10} samples, K = 512 codes of D = 64, float32, at (T = 1, no top-k) and (T = 0.8, top_k = 50); noise is the
column ``noise[:, p]`` of a [B, 1024, K] tensor and the codes go to the column ``codes[:, p]`` of [B, 1024], as in
``sample_cached``. Cases: "torch" (``sample_step_reference``: the ~6 torch ops the sampler ran per position before),
"ext" (``_ext.sample_step``, what the sampler calls once it has chosen the backend: the C++ call alone),
"ext-dispatch" (the public ``sample_step(..., backend="auto")``: the dispatch too). Every backend runs on the same
device ("cuda" if available, else "cpu"); each one's answer is checked against the rule once before it is timed.
"""
from __future__ import annotations

import pytest
import torch

from pyinpaint.kernels import _ext
from pyinpaint.kernels import sample as sample_op
from pyinpaint.sampler import draw, gumbel_noise

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K, D, POSITIONS, P = 512, 64, 1024, 512
OPTIONS = [(1.0, None), (0.8, 50)]


def _inputs(b):
    g = torch.Generator().manual_seed(b)
    logits = (torch.randn(b, K, generator=g) * 2).to(DEVICE)
    noise = gumbel_noise(b, b, POSITIONS, K, DEVICE)
    codebook = torch.randn(K, D, generator=g).to(DEVICE)
    codes = torch.zeros(b, POSITIONS, dtype=torch.int64, device=DEVICE)
    return logits, noise, codebook, codes


def _fn(backend):
    if backend == "torch":
        return sample_op.sample_step_reference
    if backend == "ext":
        return _ext.sample_step
    return lambda *a, **kw: sample_op.sample_step(*a, **kw, backend="auto")


@pytest.mark.parametrize("backend", ["torch", "ext", "ext-dispatch"])
@pytest.mark.parametrize("temperature,top_k", OPTIONS, ids=["T1", "T0.8-top50"])
@pytest.mark.parametrize("b", [1, 10])
def test_sample_step(benchmark, b, temperature, top_k, backend):
    logits, noise, codebook, codes = _inputs(b)
    if backend != "torch":
        choice = sample_op.choose_backend(logits, noise[:, P], codebook, temperature, top_k, "ext")
        if choice.backend is None:
            pytest.skip(f"ext: {choice.reason}")
    benchmark.group = f"sample_step B={b} K={K} D={D} T={temperature} top_k={top_k} on {DEVICE}"
    benchmark.extra_info.update(device=DEVICE, B=b, K=K, D=D, temperature=temperature, top_k=top_k, backend=backend)
    fn = _fn(backend)
    col = codes[:, P]

    def run():
        out = fn(logits, noise[:, P], codebook, temperature, top_k, codes_out=col)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    _, emb = run()
    ref = draw(logits, noise[:, P], temperature, top_k)
    assert torch.equal(codes[:, P], ref) and torch.equal(emb, codebook[ref])
    benchmark(run)
