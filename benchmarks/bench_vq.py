"""Nearest-codebook search at the paper's shapes: torch reference vs the C++ extension vs Triton.

    pytest benchmarks/bench_vq.py --benchmark-only

Top level: N = B*32*32 latents, bottom level: N = B*64*64, B in {1, 8}; K = 512 codes of D = 64, float32.
Every backend runs on the same device ("cuda" if available, else "cpu"); Triton is timed on CUDA only
(the interpreter is not a speed), the extension only when it is built for that device. Norms are
precomputed outside the timed call, as the quantiser does. Each backend's answer is checked once
against exact distances before it is timed.
"""
from __future__ import annotations

import pytest
import torch

from pyinpaint.kernels import _triton, vq

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
K, D = 512, 64
SHAPES = [(level, B, B * side * side) for level, side in (("top", 32), ("bottom", 64)) for B in (1, 8)]


def _inputs(N):
    g = torch.Generator().manual_seed(N)
    z = torch.randn(N, D, generator=g).to(DEVICE)
    codebook = torch.randn(K, D, generator=g).to(DEVICE)
    return z, codebook, vq.code_norms(codebook)


def _skip_reason(backend, z, codebook):
    if backend == "triton":
        if DEVICE != "cuda":
            return "Triton is timed on CUDA only (no GPU here; the interpreter is not a speed)"
        return _triton.triton_unavailable_reason(z, codebook)
    if backend == "ext":
        return vq._ext_unavailable_reason(z, codebook)
    return None


def _check_once(z, codebook, idx, emb):
    assert torch.equal(emb, codebook[idx])
    exact = torch.cdist(z.double(), codebook.double()) ** 2
    chosen = exact.gather(1, idx[:, None]).squeeze(1)
    assert (chosen - exact.min(dim=1).values).max().item() < 1e-3  # float32 rounding at |z|,|e| ~ 8


@pytest.mark.parametrize("backend", ["torch", "ext", "triton"])
@pytest.mark.parametrize("level,B,N", SHAPES, ids=[f"{lv}-B{b}" for lv, b, _ in SHAPES])
def test_nearest_code(benchmark, level, B, N, backend):
    z, codebook, norms = _inputs(N)
    why = _skip_reason(backend, z, codebook)
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    benchmark.group = f"vq {level} B={B}: N={N} K={K} D={D} float32 on {DEVICE}"
    benchmark.extra_info.update(device=DEVICE, N=N, K=K, D=D, backend=backend)

    def run():
        out = vq.nearest_code(z, codebook, norms, backend=backend)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    idx, emb = run()  # warm-up (Triton compiles here) and the correctness check
    _check_once(z, codebook, idx, emb)
    benchmark(run)
