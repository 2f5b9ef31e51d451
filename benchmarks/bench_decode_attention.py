"""Decode attention (the cached sampler's attention step) at the paper's shapes.

    pytest benchmarks/bench_decode_attention.py --benchmark-only

B = 10 samples, heads and C from ``structure_preset("paper")`` (8 heads, C = 128, dk = C // 8 = 16), a cache of
L = 32 x 32 = 1024 positions, the query at pos in {64, 512, 1023} valid positions, float32. Backends, all on
the same device ("cuda" if available, else "cpu"):
  - reference: ``decode_attention_reference`` (slices the cache at pos; a Python int pos);
  - matmul: what ``CausalSelfAttention.step`` runs on the CPU (matmul, softmax, matmul on the sliced cache);
  - triton: ``decode_attention_triton`` with a device pos tensor and preallocated output and partials (the
    step's launch), CUDA only (the interpreter is not a speed);
  - triton_graph: the same launch captured once in a CUDA graph and replayed (how a captured sampler step runs
    it; the position lives in the device tensor), CUDA only.
Each backend's output is checked once against the reference before it is timed.
"""
from __future__ import annotations

import pytest
import torch

from pyinpaint.config import structure_preset
from pyinpaint.kernels import _triton
from pyinpaint.kernels import decode_attention as da

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_CFG = structure_preset("paper")
B, H, C, L = 10, _CFG.heads, _CFG.channels, _CFG.map_size ** 2
DK = C // 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, DK, generator=g) * DK ** -0.5  # the scale is folded into q
    keys_t = torch.randn(B, H, DK, L, generator=g)
    inputs = torch.randn(B, L, C, generator=g)
    return tuple(t.to(DEVICE) for t in (q, keys_t, inputs))


def _matmul_step(q, keys_t, inputs, pos):
    """CausalSelfAttention.step's CPU path, literally."""
    scores = torch.matmul(q[:, :, None], keys_t[:, :, :, :pos])  # [B, heads, 1, pos]
    return torch.matmul(torch.softmax(scores, dim=-1).view(B, H, pos), inputs[:, :pos])


def _op(backend, q, keys_t, inputs, pos):
    if backend == "reference":
        return lambda: da.decode_attention_reference(q, keys_t, inputs, pos)
    if backend == "matmul":
        return lambda: _matmul_step(q, keys_t, inputs, pos)
    plan = da.decode_plan(B, H, L, C, DK)
    pos_t = torch.full((1,), pos, dtype=torch.int32, device=DEVICE)
    out = torch.empty(B, H, C, device=DEVICE)
    ws = (torch.empty(B * H, plan.num_splits, device=DEVICE), torch.empty(B * H, plan.num_splits, device=DEVICE),
          torch.empty(B * H, plan.num_splits, C, device=DEVICE))

    def launch():
        return da.decode_attention_triton(q, keys_t, inputs, pos_t, out=out, workspace=ws)

    if backend == "triton":
        return launch
    launch()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()

    def replay():
        graph.replay()
        return out

    return replay


def _skip_reason(backend, q):
    if backend.startswith("triton"):
        if DEVICE != "cuda":
            return "Triton is timed on CUDA only (no GPU here; the interpreter is not a speed)"
        return _triton.triton_unavailable_reason(q)
    return None


@pytest.mark.parametrize("backend", ["reference", "matmul", "triton", "triton_graph"])
@pytest.mark.parametrize("pos", [64, 512, 1023])
def test_decode_attention(benchmark, pos, backend):
    q, keys_t, inputs = _inputs()
    why = _skip_reason(backend, q)
    if why is not None:
        pytest.skip(f"{backend}: {why}")
    op = _op(backend, q, keys_t, inputs, pos)
    benchmark.group = f"decode attention pos={pos}: B={B} H={H} dk={DK} C={C} L={L} float32 on {DEVICE}"
    benchmark.extra_info.update(device=DEVICE, B=B, H=H, dk=DK, C=C, L=L, pos=pos, backend=backend)
    if backend.startswith("triton"):
        benchmark.extra_info["num_splits"] = da.decode_plan(B, H, L, C, DK).num_splits

    def run():
        with torch.no_grad():
            out = op()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return out

    got = run()  # warm-up (Triton compiles here) and the correctness check
    torch.testing.assert_close(got, da.decode_attention_reference(q, keys_t, inputs, pos), rtol=1e-5, atol=1e-5)
    del got
    benchmark(run)
