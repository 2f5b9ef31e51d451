"""Structure sampling at the paper's configuration: the naive sampler (the paper's) vs the cached one.

    pytest benchmarks/bench_sampler.py --benchmark-only -s --benchmark-columns=min,median,rounds

The PixelCNN of ``structure_preset("paper")`` (random weights: the cost does not depend on them), a 32 x 32
code map, K = 512 codes of D = 64, h random; n = 1 and n = 10 samples drawn as one batch, float32, on the CPU
(or CUDA if present). The run prints and stores in ``extra_info``:

- naive: too slow to run in full on a CPU (one full pass per position). It is timed over its first
  ``PYINPAINT_BENCH_NAIVE_POSITIONS`` positions (default 4) and EXTRAPOLATED to the whole map: setup + 1024 x
  the median time per position (its cost per position is constant: the same full pass every time).
- cached: all 1024 positions, measured (``PYINPAINT_BENCH_CACHED_ROUNDS`` rounds, default 2).
- the speed-up cached vs naive (per n, same run), the peak RSS of a fresh process sampling n = 10 with each
  sampler, a profile of where the cached sampler's time goes (manual timers by layer type; aten ops by self time)
  and the per-step overhead floor (the same network depth with tiny widths at n = 1: dispatch and Python alone).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch

from pyinpaint.config import structure_preset
from pyinpaint.kernels import causal_conv
from pyinpaint.models.layers import CausalSelfAttention, GatedResBlock, WNConv2d
from pyinpaint.models.structure import PixelCNN
from pyinpaint.sampler import sample_cached, sample_naive

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAIVE_POSITIONS = int(os.environ.get("PYINPAINT_BENCH_NAIVE_POSITIONS", "4"))
CACHED_ROUNDS = int(os.environ.get("PYINPAINT_BENCH_CACHED_ROUNDS", "2"))
PROFILE_ROWS = int(os.environ.get("PYINPAINT_BENCH_PROFILE_ROWS", "32"))  # rows of the profiled run (n = 10)
RESULTS: dict[tuple[str, int], float] = {}  # (sampler, n) -> seconds for the whole map (naive: extrapolated)


def _build(cfg, seed: int = 0):
    torch.manual_seed(seed)
    net = PixelCNN(cfg).eval().to(DEVICE)
    g = torch.Generator().manual_seed(seed + 1)
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim, generator=g).to(DEVICE)
    return net, codebook


def _h(cfg, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    s = cfg.map_size
    return torch.randn(n, cfg.h_channels, s, s, generator=g).to(DEVICE)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def paper():
    cfg = structure_preset("paper", dropout=0.0)
    net, codebook = _build(cfg)
    return cfg, net, codebook


class _Stop(Exception):
    pass


def _run_until(sampler, net, h, codebook, positions: int, on_position=None) -> None:
    """``sampler(net, h, codebook, seed=0)`` itself, stopped through its progress hook after ``positions``
    positions; ``on_position(p)`` is called after each."""
    def progress(p):
        if on_position is not None:
            on_position(p)
        if p + 1 == positions:
            raise _Stop

    try:
        sampler(net, h, codebook, seed=0, progress=progress)
    except _Stop:
        pass


def _naive_partial(net, h, codebook, positions: int) -> tuple[float, list[float]]:
    """sample_naive stopped after ``positions`` positions: (start, the time each position finished)."""
    stamps: list[float] = []

    def stamp(p):
        _sync()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    _run_until(sample_naive, net, h, codebook, positions, stamp)
    return start, stamps


def _report(benchmark, **info):
    benchmark.extra_info.update(info)
    print("\n  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))


@pytest.mark.parametrize("n", [1, 10])
def test_naive(benchmark, paper, n):
    cfg, net, codebook = paper
    h = _h(cfg, n)
    total = cfg.map_size ** 2
    benchmark.group = f"structure sampling, paper config ({cfg.map_size}x{cfg.map_size}, K={cfg.num_embeddings}), n={n}"
    start, stamps = benchmark.pedantic(_naive_partial, args=(net, h, codebook, NAIVE_POSITIONS), rounds=1,
                                       iterations=1)
    per_position = statistics.median(b - a for a, b in zip(stamps, stamps[1:]))
    setup = stamps[0] - start - per_position
    estimate = setup + total * per_position
    RESULTS[("naive", n)] = estimate
    _report(benchmark, sampler="naive", n=n, device=DEVICE, positions_timed=NAIVE_POSITIONS,
            per_position_s=per_position, setup_s=setup, extrapolated=True,
            whole_map_s_extrapolated=estimate,
            note=f"EXTRAPOLATED: {NAIVE_POSITIONS} positions timed, setup + {total} x median per position")


@pytest.mark.parametrize("graph", [False, pytest.param(True, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="CUDA graphs need a GPU"))], ids=["eager", "cuda_graph"])
@pytest.mark.parametrize("n", [1, 10])
def test_cached(benchmark, paper, n, graph):
    cfg, net, codebook = paper
    h = _h(cfg, n)
    total = cfg.map_size ** 2
    benchmark.group = f"structure sampling, paper config ({cfg.map_size}x{cfg.map_size}, K={cfg.num_embeddings}), n={n}"

    def run():
        out = sample_cached(net, h, codebook, seed=0, cuda_graph=graph)
        _sync()
        return out

    if graph:  # capture outside the timing (first call: eager warm-up + capture), then time the replays
        run()
    benchmark.pedantic(run, rounds=CACHED_ROUNDS, iterations=1)
    seconds = benchmark.stats.stats.median
    name = "cached+graph" if graph else "cached"
    RESULTS[(name, n)] = seconds
    info = dict(sampler=name, n=n, device=DEVICE, positions_timed=total, extrapolated=False,
                whole_map_s=seconds, per_position_ms=1e3 * seconds / total)
    if ("naive", n) in RESULTS:
        info["speedup_vs_naive"] = RESULTS[("naive", n)] / seconds
        info["speedup_note"] = "naive extrapolated from its first positions (see test_naive), cached measured in full"
    _report(benchmark, **info)


# ---------------------------------------------------------------------------------------------- memory
_MEMORY_SCRIPT = r"""
import json, sys, torch
from pyinpaint.config import structure_preset
from pyinpaint.models.structure import PixelCNN
from pyinpaint.sampler import sample_cached, sample_naive
sampler, n, positions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def status(key):  # MiB
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024
cfg = structure_preset("paper", dropout=0.0)
torch.manual_seed(0)
net = PixelCNN(cfg).eval()
codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim)
h = torch.randn(n, cfg.h_channels, cfg.map_size, cfg.map_size)
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
class Stop(Exception): pass
def progress(p):
    if p + 1 == positions: raise Stop
try:
    (sample_cached if sampler == "cached" else sample_naive)(net, h, codebook, seed=0, progress=progress)
except Stop:
    pass
print(json.dumps({"before_mib": before, "peak_mib": status("VmHWM")}))
"""


def _peak_rss(sampler: str, n: int, positions: int) -> dict:
    """VmRSS after building the model and h, and the peak (VmHWM, reset then) while sampling, in a fresh process.
    (ru_maxrss would not do: Linux keeps it across fork/exec, so a child starts with its parent's peak.)"""
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, sampler, str(n), str(positions)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory(benchmark, paper):
    """Peak RSS while sampling n = 10 in a fresh process (model and h built first); naive over 2 positions only
    (its memory does not grow with the position)."""
    cfg = paper[0]
    total = cfg.map_size ** 2
    benchmark.group = "peak memory (RSS), paper config, n=10, fresh process"
    cached = benchmark.pedantic(_peak_rss, args=("cached", 10, total), rounds=1, iterations=1)
    naive = _peak_rss("naive", 10, 2)
    _report(benchmark, model_and_h_mib=cached["before_mib"], cached_peak_mib=cached["peak_mib"],
            cached_extra_mib=cached["peak_mib"] - cached["before_mib"], naive_peak_mib=naive["peak_mib"],
            naive_extra_mib=naive["peak_mib"] - naive["before_mib"],
            note="VmRSS after building the PixelCNN and h; peak = VmHWM reset then, read after sampling")


# ---------------------------------------------------------------------------------------------- profile
def _timer_key(cls, name, self):
    if cls is causal_conv:  # _whole_rows(state): the whole-row products of a causal conv's step
        return "u convs (per row)" if self.kind == "down" else "ul convs: rows above (per row)"
    if cls is WNConv2d:
        if self.padding == "down":
            return "u convs, writes (per row)"
        return "ul input conv (per pixel)" if self.kernel == (2, 1) else "ul convs (per pixel)"
    if cls is GatedResBlock:
        return "u blocks (per row)" if self.conv1.padding == "down" else "ul blocks (per pixel)"
    if cls is CausalSelfAttention:
        return "attention (per pixel)"
    return {"_start_row": "row start (per row)", "step": "network step"}[name]


@contextmanager
def layer_timers():
    """Wall time spent inside the step methods, by layer type (inclusive: callers include their callees)."""
    acc: dict[str, float] = defaultdict(float)
    targets = [(WNConv2d, "step"), (causal_conv, "_whole_rows"), (GatedResBlock, "step"),
               (CausalSelfAttention, "step"), (PixelCNN, "_start_row"), (PixelCNN, "step")]
    originals = {t: getattr(*t) for t in targets}

    def wrap(cls, name, orig):
        def timed(self, *args, **kw):
            t = time.perf_counter()
            try:
                return orig(self, *args, **kw)
            finally:
                acc[_timer_key(cls, name, self)] += time.perf_counter() - t
        return timed

    for (cls, name), orig in originals.items():
        setattr(cls, name, wrap(cls, name, orig))
    try:
        yield acc
    finally:
        for (cls, name), orig in originals.items():
            setattr(cls, name, orig)


def _cached_rows(net, h, codebook, rows: int) -> float:
    t = time.perf_counter()
    _run_until(sample_cached, net, h, codebook, rows * h.shape[-1])
    return time.perf_counter() - t


def profile_parts(acc: dict[str, float], total: float) -> dict[str, float]:
    """Exclusive parts from the inclusive timers of :func:`layer_timers`."""
    u_rows = acc["u convs (per row)"]
    ul_convs, ul_rows = acc["ul convs (per pixel)"], acc["ul convs: rows above (per row)"]
    ul_blocks, att = acc["ul blocks (per pixel)"], acc["attention (per pixel)"]
    step, start = acc["network step"], acc["row start (per row)"]
    return {
        "u stream: conv GEMMs (per row)": u_rows,
        "u stream: concat_elu writes, gates, h, residuals (per row)": start - u_rows,
        "ul convs: rows above (per row)": ul_rows,
        "ul convs: current row GEMM + concat_elu write (per pixel)": ul_convs - ul_rows,
        "ul attention (per pixel)": att,
        "ul blocks: aux nin (per row), gates, residuals (per pixel)": ul_blocks - ul_convs - att,
        "ul input conv, out resnets, logits (per pixel)": step - start - ul_blocks,
        "sampling rule, codebook gather, setup (h projections)": total - step,
    }


def test_cached_profile(benchmark, paper):
    """Where the cached sampler's time goes at n = 10 (the first PROFILE_ROWS rows: all 32 by default)."""
    cfg, net, codebook = paper
    h = _h(cfg, 10)
    w = cfg.map_size
    benchmark.group = f"cached sampler profile, n=10, first {PROFILE_ROWS} rows"
    with layer_timers() as acc:
        total = benchmark.pedantic(_cached_rows, args=(net, h, codebook, PROFILE_ROWS), rounds=1, iterations=1)
    pixels = PROFILE_ROWS * w
    parts = profile_parts(acc, total)
    print(f"\n  cached sampler, paper config, n=10, first {PROFILE_ROWS} of {w} rows: {total:.3f} s "
          f"({1e3 * total / pixels:.2f} ms per position)")
    for name, sec in parts.items():
        print(f"    {name:<62} {sec:7.3f} s  {100 * sec / total:5.1f} %  {1e3 * sec / pixels:6.3f} ms/position")
    benchmark.extra_info.update(rows=PROFILE_ROWS, n=10, total_s=total,
                                breakdown_s={k: round(v, 4) for k, v in parts.items()})

    # aten ops by self time over one row in the middle of the map (row start included), through the step API
    # (torch.profiler adds its own overhead: read the shares, not the times)
    from torch.profiler import ProfilerActivity, profile
    e = torch.randn(10, cfg.embedding_dim, w, w, generator=torch.Generator().manual_seed(0)).to(DEVICE).flatten(2)
    with torch.inference_mode():
        st = net.init_state(10, w, w, h=h)
        for p in range(w * w // 2):
            net.step(st, e[:, :, p - 1] if p else None, p)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for p in range(w * w // 2, w * w // 2 + w):
                net.step(st, e[:, :, p - 1], p)
    print(f"  aten ops over row {w // 2} (n=10):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


@pytest.mark.parametrize("draw_backend", ["auto", "torch"])
def test_cached_overhead_floor(benchmark, draw_backend):
    """The per-step overhead: the paper's depth (20 + 20 gated blocks, 4 attention layers, 20 out resnets) with
    tiny widths at n = 1, so that the arithmetic is negligible and what remains is dispatch and Python. With the
    per-position sampling op on "auto" (the C++ extension when built) and forced to "torch" (the PyTorch rule)."""
    from pyinpaint.kernels import sample as sample_op

    cfg = structure_preset("paper", dropout=0.0, embedding_dim=8, num_embeddings=16, channels=8, res_channels=8)
    net, codebook = _build(cfg)
    h = _h(cfg, 1)
    total = cfg.map_size ** 2
    benchmark.group = "cached sampler overhead floor (paper depth, widths 8, n=1)"
    k = cfg.num_embeddings
    picked = sample_op.reason(torch.zeros(1, k, device=DEVICE), torch.zeros(1, k, device=DEVICE), codebook,
                              backend=draw_backend)
    benchmark.pedantic(lambda: sample_cached(net, h, codebook, seed=0, draw_backend=draw_backend),
                       rounds=CACHED_ROUNDS, iterations=1)
    seconds = benchmark.stats.stats.median
    _report(benchmark, draw_backend=draw_backend, draw_op=picked.split(":")[0], whole_map_s=seconds,
            per_position_ms=1e3 * seconds / total)
