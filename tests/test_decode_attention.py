"""Decode attention (the cached sampler's attention step): the reference, the Triton split/combine kernels,
the launch's independence of the position, dispatch and validation.

Run the Triton tests on a machine without a GPU with
``TRITON_INTERPRET=1 pytest tests/test_decode_attention.py -q``; without the interpreter (and without
CUDA) they skip with the reason.

Correctness rules (docs/kernel-notes.md):
  - the reference is checked in float64 against an independent formulation (scores over the whole cache,
    positions >= pos masked to -inf) and against the step's matmul path;
  - float32 kernel vs the float32 reference: atol = rtol = 1e-5 (reductions of length <= 64 over O(1) values);
  - float16 / bfloat16 (flash-attention's rule): against the float32 reference on the same (rounded) inputs,
    the kernel's error is at most 2x the error of the computation done in PyTorch in that dtype plus one ulp;
  - outputs and the split partials go into NaN-poisoned, strided buffers, so an unwritten element is caught.
"""
from __future__ import annotations

import textwrap

import pytest
import torch

from pyinpaint.kernels import _triton
from pyinpaint.kernels import decode_attention as da
from conftest import skip_unless_triton, run_compile_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAN = float("nan")


_skip_unless_triton = skip_unless_triton


def _inputs(B, H, dk, L, C, *, dtype=torch.float32, seed=0, layout="contiguous", mult=1.0):
    """q [B, H, dk], keys_t [B, H, dk, L], inputs [B, L, C] (generated on the CPU, so CUDA sees the same data).

    contiguous: as ``AttentionState`` holds them; strided: q sliced out of a [B, H, 2 dk] projection (as the
    step's q), keys_t stored [B, L, H, dk] and permuted, inputs every other channel of a [B, L, 2C] tensor."""
    g = torch.Generator().manual_seed(seed)

    def dev(t):
        return t.to(dtype).to(DEVICE)

    if layout == "contiguous":
        q = dev(torch.randn(B, H, dk, generator=g) * mult)
        k = dev(torch.randn(B, H, dk, L, generator=g) * mult)
        x = dev(torch.randn(B, L, C, generator=g))
    elif layout == "strided":
        q = dev(torch.randn(B, H, 2 * dk, generator=g) * mult)[:, :, :dk]
        k = dev(torch.randn(B, L, H, dk, generator=g) * mult).permute(0, 2, 3, 1)
        x = dev(torch.randn(B, L, 2 * C, generator=g))[:, :, ::2]
        assert not (q.is_contiguous() or k.is_contiguous() or x.is_contiguous())
    else:
        raise AssertionError(layout)
    return q, k, x


def _poisoned(B, H, C, dtype):
    """NaN [B, H, C] buffer stored as [H, C, B]: strided, so the stores' strides are exercised."""
    return torch.full((H, C, B), NAN, dtype=dtype, device=DEVICE).permute(2, 0, 1)


def _poisoned_workspace(B, H, C, S):
    """NaN partials, m and l as [S, B*H] transposed, acc as [B*H, C, S] permuted."""
    m = torch.full((S, B * H), NAN, device=DEVICE).t()
    lsum = torch.full((S, B * H), NAN, device=DEVICE).t()
    acc = torch.full((B * H, C, S), NAN, device=DEVICE).permute(0, 2, 1)
    return m, lsum, acc


def _pos_t(p, dtype=torch.int32):
    return torch.tensor(p, dtype=dtype, device=DEVICE)


def _masked_formulation(q, k, x, p):
    """Independent formulation, float64: scores over the whole cache, positions >= p masked to -inf."""
    q, k, x = q.double(), k.double(), x.double()
    s = torch.einsum("bhd,bhdl->bhl", q, k)
    s = s.masked_fill(torch.arange(k.shape[3], device=q.device) >= p, float("-inf"))
    return torch.einsum("bhl,blc->bhc", torch.softmax(s, dim=-1), x)


# ---------------------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 16, 37])
def test_reference_matches_masked_formulation_float64(p):
    q, k, x = _inputs(2, 3, 5, 37, 7, dtype=torch.float64, seed=p, mult=1.5)
    ref = da.decode_attention_reference(q, k, x, p)
    assert ref.dtype == torch.float64 and ref.shape == (2, 3, 7)
    torch.testing.assert_close(ref, _masked_formulation(q, k, x, p), rtol=1e-12, atol=1e-12)
    # a tensor pos (0-d, 1-element, int64 / int32) is the same
    for pt in (_pos_t(p, torch.int64), _pos_t([p])):
        assert torch.equal(da.decode_attention_reference(q, k, x, pt), ref)
    if p == 1:  # one key: the output is the first input, exactly
        assert torch.equal(ref, x[:, None, 0].expand(-1, 3, -1))


def test_reference_is_the_step_matmul_path():
    """The formula CausalSelfAttention.step computes on the CPU, written as there."""
    q, k, x = _inputs(3, 2, 4, 20, 6, seed=3)
    for p in (1, 9, 20):
        scores = torch.matmul(q[:, :, None], k[:, :, :, :p])
        step = torch.matmul(torch.softmax(scores, dim=-1).view(3, 2, p), x[:, :p])
        torch.testing.assert_close(da.decode_attention_reference(q, k, x, p), step, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# the plan: a function of the shapes only
# ---------------------------------------------------------------------------------------------------
def test_plan():
    paper = da.decode_plan(10, 8, 1024, 128, 16)  # the paper's B = 10, 8 heads, C = 128, dk = 16
    assert paper == da.DecodePlan(num_splits=6, split_len=192, block_n=64, block_dk=16, block_c=128, block_s=8)
    assert da.decode_plan(1, 8, 1024, 128, 16).num_splits == 16  # few (sample, head) pairs: more splits
    assert da.decode_plan(64, 8, 1024, 128, 16).num_splits == 1  # enough programs without splitting
    assert da.decode_plan(2, 3, 37, 7, 5).num_splits == 1  # short caches are not split
    pl = da.decode_plan(2, 3, 37, 7, 5, num_splits=3)
    assert (pl.num_splits, pl.split_len, pl.block_n, pl.block_dk, pl.block_c, pl.block_s) == (3, 16, 16, 8, 8, 4)
    assert da.decode_plan(1, 1, 1024, 2048, 16).block_n == 4  # the inputs tile stays at 8192 elements
    for kw, match in (({"num_splits": 0}, "num_splits must be"), ({"block_n": 24}, "power of two"),
                      ({"block_n": 0}, "power of two")):
        with pytest.raises(ValueError, match=match):
            da.decode_plan(2, 3, 37, 7, 5, **kw)


# ---------------------------------------------------------------------------------------------------
# kernels vs the reference
# ---------------------------------------------------------------------------------------------------
def _run(q, k, x, pos, num_splits=None, block_n=None):
    """The launcher into poisoned buffers; returns (out, workspace or None, plan)."""
    _skip_unless_triton(q, k, x)
    B, H, dk = q.shape
    L, C = x.shape[1:]
    plan = da.decode_plan(B, H, L, C, dk, num_splits=num_splits, block_n=block_n)
    out = _poisoned(B, H, C, q.dtype)
    ws = _poisoned_workspace(B, H, C, plan.num_splits) if plan.num_splits > 1 else None
    o = da.decode_attention_triton(q, k, x, pos, out=out, workspace=ws, num_splits=num_splits, block_n=block_n)
    assert o.data_ptr() == out.data_ptr()
    assert torch.isfinite(o).all(), "NaN/inf in the output: unwritten or unstable"
    return o, ws, plan


# L = 37 with 3 splits of 16 (blocks of 16 or 4): pos 1, 15 / 16 / 17 around the first split boundary,
# 32 / 33 at the second (the last split then has nothing), 36 and L
@pytest.mark.parametrize("num_splits,block_n", [(None, None), (3, None), (3, 4)], ids=["1split", "3splits", "bn4"])
@pytest.mark.parametrize("B,H,dk,C", [(2, 3, 5, 7), (1, 1, 16, 33)])
def test_kernel_float32(B, H, dk, C, num_splits, block_n):
    L = 37
    q, k, x = _inputs(B, H, dk, L, C, seed=B * 100 + dk, mult=1.5)
    for p in (1, 15, 16, 17, 32, 33, 36, 37):
        out, ws, plan = _run(q, k, x, _pos_t(p), num_splits, block_n)
        assert plan.num_splits == (1 if num_splits is None else 3)
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5,
                                   msg=lambda s, p=p: f"pos {p}: {s}")
        if ws is not None:  # splits entirely past pos wrote the neutral partial
            m, lsum, acc = ws
            for s in range(plan.num_splits):
                if s * plan.split_len >= p:
                    assert (m[:, s] == float("-inf")).all() and (lsum[:, s] == 0).all() and (acc[:, s] == 0).all()
                else:
                    assert torch.isfinite(m[:, s]).all() and (lsum[:, s] >= 1).all()


@pytest.mark.parametrize("num_splits", [1, 4])
def test_kernel_strided_and_int64_pos(num_splits):
    q, k, x = _inputs(2, 3, 5, 40, 9, seed=7, layout="strided", mult=1.5)
    for p in (1, 10, 11, 40):
        out, _, _ = _run(q, k, x, _pos_t([p], torch.int64), num_splits)
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5)


def test_kernel_python_int_pos_and_default_plan():
    """An int pos (copied to the device by the launcher) and the default output and workspace."""
    q, k, x = _inputs(1, 2, 3, 70, 5, seed=9)
    _skip_unless_triton(q, k, x)
    assert da.decode_plan(1, 2, 70, 5, 3).num_splits == 2  # 2 programs: split in 64-position slices
    for p in (1, 64, 65, 70):
        out = da.decode_attention_triton(q, k, x, p)
        assert out.shape == (1, 2, 5) and out.is_contiguous()
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5)


def test_kernel_large_logits_across_splits():
    """Scores ~1e3 apart, the largest in different splits per head: the log-sum-exp merge stays exact.
    Integer q and keys make every score an exact integer whatever the summation order."""
    g = torch.Generator().manual_seed(13)
    B, H, dk, L, C = 2, 2, 4, 48, 6
    q = torch.randint(-30, 31, (B, H, dk), generator=g).float().to(DEVICE)
    k = torch.randint(-30, 31, (B, H, dk, L), generator=g).float()
    k[:, :, :, ::5] -= 40
    k = k.to(DEVICE)
    x = torch.randn(B, L, C, generator=g).to(DEVICE)
    s = torch.einsum("bhd,bhdl->bhl", q, k)
    assert s.abs().max() > 1e3 and s.std() > 1e2
    for p in (5, 17, 48):
        out, _, _ = _run(q, k, x, _pos_t(p), num_splits=3)
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5)


def _same_dtype_formulation(q, k, x, p):
    """The step's matmul path in the inputs' dtype (flash-attention's "pt" baseline)."""
    scores = torch.matmul(q[:, :, None], k[:, :, :, :p])
    return torch.matmul(torch.softmax(scores, dim=-1)[:, :, 0], x[:, :p])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_half_dtypes(dtype):
    q, k, x = _inputs(2, 3, 5, 37, 7, dtype=dtype, seed=17, mult=1.5)
    for p in (1, 16, 37):
        out, _, _ = _run(q, k, x, _pos_t(p), num_splits=3)
        assert out.dtype == dtype
        ref = da.decode_attention_reference(q.float(), k.float(), x.float(), p)
        pt = _same_dtype_formulation(q, k, x, p).float()
        err_kern = (out.float() - ref).abs().max().item()
        err_pt = (pt - ref).abs().max().item()
        ulp = torch.finfo(dtype).eps * ref.abs().max().item()
        assert err_kern <= 2 * err_pt + ulp, f"pos {p}: kernel error {err_kern:.3g} > 2 x {err_pt:.3g} + {ulp:.3g}"


def test_kernel_device_pos_out_of_range_is_clamped():
    """A device pos is never read back: 0 gives zeros (no NaN), a value past L is L."""
    q, k, x = _inputs(2, 3, 5, 37, 7, seed=19)
    for ns in (1, 3):
        out, _, _ = _run(q, k, x, _pos_t(0), ns)
        assert (out == 0).all()
        out, _, _ = _run(q, k, x, _pos_t(1000), ns)
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, 37), rtol=1e-5, atol=1e-5)


class _Recorder:
    """Stands in for a Triton kernel: records every launch (grid, arguments, options), then launches."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            key = tuple(("tensor", a.data_ptr(), a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor)
                        else a for a in args)
            self.log.append((self.name, tuple(grid), key, tuple(sorted(kwargs.items()))))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("num_splits", [1, 3])
def test_one_launch_for_every_position(monkeypatch, num_splits):
    """With a device pos and fixed buffers, every launch (grid, each argument, each constexpr) is identical
    whatever the position (what a CUDA graph replays), and each answer is right for the position written
    into the tensor."""
    q, k, x = _inputs(2, 3, 5, 37, 7, seed=23, mult=1.5)
    _skip_unless_triton(q, k, x)
    log: list = []
    monkeypatch.setattr(da, "_decode_split_kernel", _Recorder(da._decode_split_kernel, "split", log))
    monkeypatch.setattr(da, "_decode_combine_kernel", _Recorder(da._decode_combine_kernel, "combine", log))
    out = _poisoned(2, 3, 7, torch.float32)
    ws = _poisoned_workspace(2, 3, 7, 3) if num_splits > 1 else None
    pos_t = _pos_t([1])
    launches = []
    for p in (1, 16, 17, 30, 37, 2):
        pos_t.fill_(p)
        log.clear()
        da.decode_attention_triton(q, k, x, pos_t, out=out, workspace=ws, num_splits=num_splits)
        launches.append(list(log))
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5,
                                   msg=lambda s, p=p: f"pos {p}: {s}")
    assert len(launches[0]) == (1 if num_splits == 1 else 2)
    assert all(launch == launches[0] for launch in launches), "a launch depends on the position"
    assert launches[0][0][1] == (6, num_splits)  # grid (B * H, num_splits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay():
    q, k, x = _inputs(10, 8, 16, 1024, 128, seed=29)
    _skip_unless_triton(q, k, x)
    pos_t = _pos_t([1])
    out = torch.empty(10, 8, 128, device=DEVICE)
    da.decode_attention_triton(q, k, x, pos_t, out=out)  # compiles outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        da.decode_attention_triton(q, k, x, pos_t, out=out)
    for p in (1, 64, 191, 192, 193, 512, 1023, 1024):
        out.fill_(NAN)
        pos_t.fill_(p)
        graph.replay()
        torch.testing.assert_close(out, da.decode_attention_reference(q, k, x, p), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    """The interpreter never runs the GPU code path (scalar loop carries, half loads, register budget):
    compile both kernels for sm_90 (no GPU needed) in a subprocess without TRITON_INTERPRET."""
    script = textwrap.dedent("""
        import sys
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        target = GPUTarget("cuda", 90, 32)

        def compile_(fn, ptrs, consts, num_warps):
            sig = {n: ("constexpr" if n in consts else ptrs.get(n, "i32")) for n in fn.arg_names}
            cx = {(k,): consts[n] for k, n in enumerate(fn.arg_names) if n in consts}
            return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=target,
                                  options={"num_warps": num_warps})

        import triton.language as tl
        @triton.jit
        def _probe(p):
            tl.store(p, 1.0)
        try:
            compile_(_probe, {"p": "*fp32"}, {}, 4)
        except Exception as exc:
            print(f"cannot compile for sm_90 here: {type(exc).__name__}: {exc}"[:400])
            sys.exit(3)

        from pyinpaint.kernels import decode_attention as da
        for dt in ("fp32", "bf16", "fp16"):
            t = "*" + dt
            for direct, pos in ((True, "*i32"), (False, "*i64")):
                part = t if direct else "*fp32"
                compile_(da._decode_split_kernel,
                         dict(Q=t, Kt=t, X=t, Pos=pos, PartM=part, PartL=part, PartAcc=part, Out=t),
                         dict(BLOCK_N=64, BLOCK_DK=16, BLOCK_C=128, DIRECT=direct), 8)
            compile_(da._decode_combine_kernel, dict(PartM="*fp32", PartL="*fp32", PartAcc="*fp32", Out=t),
                     dict(BLOCK_S=8, BLOCK_C=128), 4)
        print("ok")
    """)
    run_compile_script(script, tmp_path)


def test_launcher_validation():
    q, k, x = _inputs(1, 2, 4, 8, 6, seed=31)
    _skip_unless_triton(q, k, x)
    with pytest.raises(ValueError, match="out must be"):
        da.decode_attention_triton(q, k, x, 3, out=torch.empty(1, 2, 5, device=DEVICE))
    with pytest.raises(ValueError, match="out must be"):
        da.decode_attention_triton(q, k, x, 3, out=torch.empty(1, 2, 6, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"workspace\[2\] must be"):
        bad = (torch.empty(2, 2, device=DEVICE), torch.empty(2, 2, device=DEVICE), torch.empty(2, 2, 5, device=DEVICE))
        da.decode_attention_triton(q, k, x, 3, workspace=bad, num_splits=2, block_n=4)
    with pytest.raises(ValueError, match="power of two"):
        da.decode_attention_triton(q, k, x, 3, block_n=3)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="float64"):
            da.decode_attention_triton(q.double(), k.double(), x.double(), 3)


def test_empty_batch():
    q, k, x = _inputs(0, 2, 4, 8, 6, seed=1)
    assert da.decode_attention_reference(q, k, x, 3).shape == (0, 2, 6)
    _skip_unless_triton(q, k, x)
    assert da.decode_attention_triton(q, k, x, 3).shape == (0, 2, 6)


# ---------------------------------------------------------------------------------------------------
# the op inside CausalSelfAttention.step
# ---------------------------------------------------------------------------------------------------
def test_attention_step_on_the_kernel():
    """The step with its decode backend set to the kernel (what auto picks on CUDA; here the interpreter) gives the
    full forward pass and the matmul path, at every position (C = 24 and dk = 3: not powers of two; 3 heads)."""
    from pyinpaint.models.layers import CausalSelfAttention

    torch.manual_seed(0)
    att = CausalSelfAttention(24, 3, 3, 12).eval().to(DEVICE)
    with torch.no_grad():
        for prm in att.parameters():
            prm.add_(0.3 * torch.randn_like(prm))  # non-zero biases
    x = torch.randn(2, 24, 3, 5, device=DEVICE)
    with torch.inference_mode():
        full = att(x).flatten(2)
        st_mm, st_kern = att.init_state(2, 3, 5), att.init_state(2, 3, 5)
        _skip_unless_triton(st_kern.keys_t)
        st_mm.backend, st_mm.pos_t = "torch", None
        st_kern.backend, st_kern.pos_t = "triton", torch.empty(1, dtype=torch.int32, device=DEVICE)
        for p in range(15):
            a = att.step(st_mm, x.flatten(2)[:, :, p], p)
            b = att.step(st_kern, x.flatten(2)[:, :, p], p)
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=lambda s, p=p: f"pos {p}: {s}")
            torch.testing.assert_close(b, full[:, :, p], rtol=1e-4, atol=1e-4, msg=lambda s, p=p: f"pos {p}: {s}")
    assert st_kern.pos_t.dtype == torch.int32 and int(st_kern.pos_t) == 14


def test_attention_step_backend_choice():
    from pyinpaint.models.layers import CausalSelfAttention

    att = CausalSelfAttention(16, 2, 2, 8).eval().to(DEVICE)
    st = att.init_state(1, 2, 2)  # chosen once, with the caches
    if DEVICE == "cuda" and _triton.HAS_TRITON:
        assert st.backend == "triton" and st.pos_t.dtype == torch.int32
    else:  # auto's choice: never the interpreter for CPU tensors
        assert st.backend == "torch" and st.pos_t is None
    with torch.inference_mode():
        for p in range(4):
            att.step(st, torch.randn(1, 16, device=DEVICE), p)


# ---------------------------------------------------------------------------------------------------
# dispatch and validation
# ---------------------------------------------------------------------------------------------------
def test_dispatch_and_reasons():
    q, k, x = _inputs(2, 3, 5, 20, 7, seed=41)
    ref = da.decode_attention_reference(q, k, x, 9)
    assert torch.equal(da.decode_attention(q, k, x, 9, backend="torch"), ref)
    assert da.reason(q, k, x, 9, "torch") == "torch: requested explicitly"
    auto = da.reason(q, k, x)
    if DEVICE == "cpu":
        assert auto.startswith("torch: tensors are on cpu")
        assert "never routes CPU tensors to the Triton interpreter" in auto
        assert torch.equal(da.decode_attention(q, k, x, 9), ref)
    elif _triton.HAS_TRITON:
        assert auto == "triton: tensors are on CUDA and triton is available"
    why = _triton.triton_unavailable_reason(q, k, x)
    if why is not None:
        assert da.reason(q, k, x, 9, "triton").startswith("none: backend='triton' was requested but cannot run")
        with pytest.raises(RuntimeError, match="cannot run"):
            da.decode_attention(q, k, x, 9, backend="triton")
    else:
        where = "in the Triton interpreter" if DEVICE == "cpu" else "on cuda"
        assert da.reason(q, k, x, 9, "triton").startswith(f"triton: requested explicitly; runs {where}")
        torch.testing.assert_close(da.decode_attention(q, k, x, _pos_t(9), backend="triton"), ref,
                                   rtol=1e-5, atol=1e-5)
    # float64: the reference only
    q64, k64, x64 = q.double(), k.double(), x.double()
    assert da.reason(q64, k64, x64, 9, "triton").startswith("none:") and "float64" in da.reason(q64, k64, x64, 9,
                                                                                                 "triton")
    with pytest.raises(RuntimeError, match="float64"):
        da.decode_attention(q64, k64, x64, 9, backend="triton")
    assert da.reason(q64, k64, x64).startswith("torch:")
    torch.testing.assert_close(da.decode_attention(q64, k64, x64, 9), _masked_formulation(q, k, x, 9),
                               rtol=1e-12, atol=1e-12)


def test_input_validation():
    q, k, x = _inputs(1, 2, 4, 8, 6, seed=61)
    cases = [
        ((q[0], k, x, 3), "q must be 3-D"),
        ((q, k[0], x, 3), "keys_t must be 4-D"),
        ((q, k[:, :, :3], x, 3), r"keys_t must be \[B, H, dk, L\]"),
        ((q, k, x[:, :7], 3), r"inputs must be \[B, L, C\]"),
        ((q[..., :0], k[:, :, :0], x, 3), "dk must be >= 1"),
        ((q, k[..., :0], x[:, :0], 3), "L must be >= 1"),
        ((q, k, x[..., :0], 3), "C must be >= 1"),
        ((q, k, x.double(), 3), "one dtype"),
        ((q.long(), k.long(), x.long(), 3), "float32, float16, bfloat16 or float64"),
        ((q, k, x, 0), r"pos must be in \[1, L = 8\]"),
        ((q, k, x, 9), r"pos must be in \[1, L = 8\]"),
        ((q, k, x, 2.0), "pos must be a Python int or an integer tensor"),
        ((q, k, x, True), "pos must be a Python int or an integer tensor"),
        ((q, k, x, torch.tensor(2.0, device=DEVICE)), "int32 or int64 tensor"),
        ((q, k, x, torch.tensor([2, 3], device=DEVICE)), "0-d or 1-element"),
        ((q, k, x, torch.tensor([[2]], device=DEVICE)), "0-d or 1-element"),
    ]
    if DEVICE == "cuda":
        cases.append(((q, k, x, torch.tensor(2)), "pos must be on the device of q"))
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            da.decode_attention(*args)
        with pytest.raises(ValueError, match=match):
            da.decode_attention_reference(*args)
    with pytest.raises(ValueError, match=r"pos must be in \[1, L = 8\]"):  # the reference reads a tensor back
        da.decode_attention_reference(q, k, x, _pos_t(0))
    with pytest.raises(ValueError, match="backend must be one of"):
        da.decode_attention(q, k, x, 3, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        da.reason(q, k, x, 3, backend="sdpa")
