"""Causal (down / down-right shifted) convolution: reference, Triton kernels (forward and backward), dispatch.

Run the Triton tests on a machine without a GPU with ``TRITON_INTERPRET=1 pytest tests/test_causal_conv.py``;
without the interpreter (and without CUDA) they skip with the reason.

Correctness rules (see docs/kernel-notes.md):
  - float32: every output is a sum of K products (plus the bias), accumulated in float32 from the same
    input values; its error against the float64 result of those values is within (K + 8) u A, with
    u = 2^-24 and A the same sum taken over absolute values (the classical bound for a length-K dot
    product; the + 8 covers elu's own few-ulp error, the bias and the final rounding). K is C_in fh fw
    for the output, O fh fw for grad_input, N H W for grad_weight and grad_bias.
  - float16 / bfloat16: the kernel's largest error against the float64 result of the same input values
    is at most twice the error of the same-dtype PyTorch formulation (flash-attention's rule).
  - outputs are poisoned (NaN) before the kernel writes them, so an element it never writes is caught.
"""
from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F

from pyinpaint.kernels import _triton
from pyinpaint.kernels import causal_conv as cc
from conftest import skip_unless_triton, run_compile_script

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
U32 = 2.0 ** -24
HALF_DTYPES = [torch.float16, torch.bfloat16]

# every filter size the PixelCNN uses and a few more; "down" needs odd widths
FILTERS = [("down", (2, 3)), ("down", (1, 3)), ("down", (2, 1)), ("down", (3, 3)), ("down", (1, 1)),
           ("down_right", (2, 2)), ("down_right", (2, 1)), ("down_right", (1, 3)), ("down_right", (3, 3))]
FILTER_IDS = [f"{kind}-{fh}x{fw}" for kind, (fh, fw) in FILTERS]
DEFAULT_FILTER = {"down": (2, 3), "down_right": (2, 2)}
# (N, C, O, H, W): batch 1 and 2, odd channel counts, 1 x 1 / single-row / single-column images, and
# one case with more pixels, input channels and output channels than a block (64, 32 and 64)
SHAPES = [(1, 3, 4, 1, 1), (2, 5, 7, 5, 5), (2, 3, 7, 7, 6), (1, 5, 4, 1, 6), (2, 3, 4, 6, 1),
          (2, 37, 70, 7, 6)]
SHAPE_IDS = ["N{}C{}O{}H{}W{}".format(*s) for s in SHAPES]


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
_skip_unless_triton = skip_unless_triton


def _randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)  # on the CPU, so CUDA runs see the same data
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _inputs(N, C, O, H, W, fh, fw, *, concat_elu, bias=True, dtype=torch.float32, seed=0):
    """x, weight, bias; weights scaled like a fan-in initialisation so outputs stay near 1."""
    cin = 2 * C if concat_elu else C
    x = _randn(N, C, H, W, dtype=dtype, seed=seed)
    w = _randn(O, cin, fh, fw, dtype=dtype, seed=seed + 1, scale=(cin * fh * fw) ** -0.5)
    b = _randn(O, dtype=dtype, seed=seed + 2, scale=0.5) if bias else None
    return x, w, b


def _d(t):
    return None if t is None else t.detach().double()


def _conv_input(x, concat_elu):
    """What the convolution reads, in float64: x, or elu(cat([x, -x]))."""
    x = _d(x)
    return F.elu(torch.cat([x, -x], dim=1)) if concat_elu else x


def _elu_grad(v):
    return torch.where(v > 0, torch.ones_like(v), torch.exp(v))


def _exact_forward(x, w, b, kind, concat_elu):
    return cc.causal_conv2d_reference(_d(x), _d(w), _d(b), kind=kind, concat_elu=concat_elu)


def _forward_bound(x, w, b, kind, concat_elu):
    K = w.shape[1] * w.shape[2] * w.shape[3]
    A = cc.causal_conv2d_reference(_conv_input(x, concat_elu).abs(), _d(w).abs(),
                                   None if b is None else _d(b).abs(), kind=kind)
    return (K + 8) * U32 * A


def _exact_grads(x, w, b, g, kind, concat_elu):
    """float64 autograd of the reference from the same values: (grad_x, grad_w, grad_b or None)."""
    xd, wd = _d(x).requires_grad_(), _d(w).requires_grad_()
    bd = None if b is None else _d(b).requires_grad_()
    cc.causal_conv2d_reference(xd, wd, bd, kind=kind, concat_elu=concat_elu).backward(_d(g))
    return xd.grad, wd.grad, None if bd is None else bd.grad


def _grad_bounds(x, w, g, kind, concat_elu):
    """(K + 8) u A for grad_x, grad_w and grad_b, A from the same sums over absolute values."""
    N, C, H, W = x.shape
    O, _, fh, fw = w.shape
    xin = _conv_input(x, concat_elu).abs().requires_grad_()
    wa = _d(w).abs().requires_grad_()
    cc.causal_conv2d_reference(xin, wa, kind=kind).backward(_d(g).abs())
    a_in = xin.grad
    if concat_elu:
        xd = _d(x)
        a_in = a_in[:, :C] * _elu_grad(xd) + a_in[:, C:] * _elu_grad(-xd)
    k_in, k_w = O * fh * fw, N * H * W
    return (k_in + 8) * U32 * a_in, (k_w + 8) * U32 * wa.grad, (k_w + 8) * U32 * _d(g).abs().sum(dim=(0, 2, 3))


def _assert_within(got, exact, bound, what):
    assert got.shape == exact.shape, f"{what}: shape {tuple(got.shape)} != {tuple(exact.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten or overflowed)"
    err = (got.double() - exact).abs()
    excess = (err - bound).max().item()
    assert excess <= 0, f"{what}: error {err.max().item():.3e} exceeds the rounding bound (by {excess:.3e})"


def _run_forward(x, w, b, kind, concat_elu, out=None):
    """The forward kernel into a poisoned buffer, so an element it never writes is caught."""
    _skip_unless_triton(x, w)
    if out is None:
        out = torch.full((x.shape[0], w.shape[0], x.shape[2], x.shape[3]), float("nan"), dtype=x.dtype,
                         device=x.device)
    else:
        out.fill_(float("nan"))
    y = cc.causal_conv2d_triton(x, w, b, kind=kind, concat_elu=concat_elu, out=out)
    assert y.data_ptr() == out.data_ptr()
    return y


def _run_backward(g, x, w, kind, concat_elu, *, bias_grad=True, split=None, out=None):
    """The backward kernels into poisoned buffers."""
    _skip_unless_triton(g, x, w)
    if out is None:
        out = (torch.empty_like(x), torch.empty_like(w), torch.empty(w.shape[0], dtype=x.dtype, device=x.device))
    for t in out:
        t.fill_(float("nan"))
    gx, gw, gb = cc.causal_conv2d_backward_triton(g, x, w, kind=kind, concat_elu=concat_elu, bias_grad=bias_grad,
                                                  split=split, out=out)
    assert gx.data_ptr() == out[0].data_ptr() and gw.data_ptr() == out[1].data_ptr()
    return gx, gw, gb


def _check_forward(x, w, b, kind, concat_elu, y):
    assert y.dtype == x.dtype
    _assert_within(y, _exact_forward(x, w, b, kind, concat_elu), _forward_bound(x, w, b, kind, concat_elu), "forward")


def _check_grads(x, w, b, g, kind, concat_elu, gx, gw, gb):
    ex, ew, eb = _exact_grads(x, w, b, g, kind, concat_elu)
    bx, bw, bb = _grad_bounds(x, w, g, kind, concat_elu)
    _assert_within(gx, ex, bx, "grad_input")
    _assert_within(gw, ew, bw, "grad_weight")
    if b is not None:
        _assert_within(gb, eb, bb, "grad_bias")


def _receptive_field(kind, fh, fw, H, W, i, j):
    """The input pixels output (i, j) reads under the official padding, as a [H, W] bool mask."""
    mask = torch.zeros(H, W, dtype=torch.bool)
    rows = slice(max(0, i - fh + 1), i + 1)
    if kind == "down":
        half = (fw - 1) // 2
        cols = slice(max(0, j - half), min(W, j + half + 1))
    else:
        cols = slice(max(0, j - fw + 1), j + 1)
    mask[rows, cols] = True
    return mask


# ---------------------------------------------------------------------------------------------------
# the reference
# ---------------------------------------------------------------------------------------------------
def _shifted_sums(x, w, b, kind, concat_elu):
    """An independent formulation: y = b + sum over taps of w[:, :, r, s] applied to x shifted by hand."""
    if concat_elu:
        both = torch.cat([x, -x], dim=1)
        x = torch.where(both > 0, both, torch.exp(both) - 1)
    N, C, H, W = x.shape
    O, _, fh, fw = w.shape
    left = (fw - 1) // 2 if kind == "down" else fw - 1
    y = torch.zeros(N, O, H, W, dtype=x.dtype)
    for r in range(fh):
        for s in range(fw):
            dy, dx = r - (fh - 1), s - left  # output (i, j) reads input (i + dy, j + dx)
            shifted = torch.zeros_like(x)
            for i in range(H):
                for j in range(W):
                    if 0 <= i + dy < H and 0 <= j + dx < W:
                        shifted[:, :, i, j] = x[:, :, i + dy, j + dx]
            y += torch.einsum("oc,nchw->nohw", w[:, :, r, s], shifted)
    return y if b is None else y + b[None, :, None, None]


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", FILTERS, ids=FILTER_IDS)
def test_reference_matches_shifted_sums(kind, filt, concat_elu):
    x, w, b = _inputs(2, 3, 4, 5, 6, *filt, concat_elu=concat_elu, dtype=torch.float64, seed=3)
    x, w, b = x.cpu(), w.cpu(), b.cpu()
    y = cc.causal_conv2d_reference(x, w, b, kind=kind, concat_elu=concat_elu)
    assert y.shape == (2, 4, 5, 6)
    torch.testing.assert_close(y, _shifted_sums(x, w, b, kind, concat_elu), rtol=1e-12, atol=1e-12)
    y0 = cc.causal_conv2d_reference(x, w, None, kind=kind, concat_elu=concat_elu)
    torch.testing.assert_close(y0, _shifted_sums(x, w, None, kind, concat_elu), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", [("down", (2, 3)), ("down", (1, 3)), ("down_right", (2, 2)),
                                       ("down_right", (2, 1))])
def test_reference_gradcheck(kind, filt, concat_elu):
    x, w, b = _inputs(1, 2, 2, 3, 3, *filt, concat_elu=concat_elu, dtype=torch.float64, seed=5)
    x, w, b = (t.cpu().requires_grad_() for t in (x, w, b))
    fn = lambda x, w, b: cc.causal_conv2d_reference(x, w, b, kind=kind, concat_elu=concat_elu)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", FILTERS, ids=FILTER_IDS)
def test_reference_receptive_field_is_the_official_one(kind, filt, concat_elu):
    """d y[:, :, i, j] / d x is nonzero exactly on the pixels the official padding lets (i, j) read."""
    H, W = 5, 6
    x, w, _ = _inputs(1, 3, 2, H, W, *filt, concat_elu=concat_elu, dtype=torch.float64, seed=7)
    x = x.cpu().requires_grad_()
    y = cc.causal_conv2d_reference(x, w.cpu(), kind=kind, concat_elu=concat_elu)
    for i in range(H):
        for j in range(W):
            (grad,) = torch.autograd.grad(y[:, :, i, j].sum(), x, retain_graph=True)
            seen = grad.abs().sum(dim=(0, 1)) != 0
            assert torch.equal(seen, _receptive_field(kind, *filt, H, W, i, j)), (i, j)


def test_official_receptive_fields_spelled_out():
    """The two PixelCNN layers: down [2,3] sees the row above and its own row (j-1..j+1), so it is causal
    only after the network's down_shift; down_right [2,2] sees (i-1, j-1..j) and (i, j-1..j), its own
    pixel included, so it is causal only after right_shift / down_shift."""
    H, W, i, j = 4, 5, 2, 2
    down = _receptive_field("down", 2, 3, H, W, i, j)
    assert down.nonzero().tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    down_right = _receptive_field("down_right", 2, 2, H, W, i, j)
    assert down_right.nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]


def test_reference_input_errors():
    x, w, b = _inputs(1, 3, 4, 5, 6, 2, 3, concat_elu=False)
    ref = cc.causal_conv2d_reference
    with pytest.raises(ValueError, match="kind must be one of"):
        ref(x, w, b, kind="up")
    with pytest.raises(ValueError, match=r"x must be \[N, C, H, W\]"):
        ref(x[0], w, b, kind="down")
    with pytest.raises(ValueError, match=r"weight must be \[O, C_in, fh, fw\]"):
        ref(x, w[0], b, kind="down")
    with pytest.raises(ValueError, match="expected 2C .concat_elu doubles the channels. = 6"):
        ref(x, w, b, kind="down", concat_elu=True)
    with pytest.raises(ValueError, match="expected C .concat_elu=False. = 3"):
        ref(x, torch.cat([w, w], dim=1), b, kind="down")
    with pytest.raises(ValueError, match="needs an odd filter width"):
        ref(x, w[..., :2], b, kind="down")
    with pytest.raises(ValueError, match=r"bias must be \[O\] = \[4\]"):
        ref(x, w, b[:3], kind="down")
    with pytest.raises(ValueError, match="same dtype"):
        ref(x, w.double(), b, kind="down")
    with pytest.raises(ValueError, match="floating dtype"):
        ref(x.long(), w.long(), None, kind="down")
    with pytest.raises(ValueError, match="at least one channel, row and column"):
        ref(x[:, :, :0], w, b, kind="down")
    with pytest.raises(ValueError, match="at least 1 x 1"):
        ref(x, w[:, :, :0], b, kind="down_right")
    with pytest.raises(ValueError, match="is on meta"):
        ref(x.cpu(), w.to("meta"), None, kind="down")


# ---------------------------------------------------------------------------------------------------
# the forward kernel
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", FILTERS, ids=FILTER_IDS)
def test_kernel_forward_filters(kind, filt, concat_elu, bias):
    x, w, b = _inputs(2, 5, 7, 7, 6, *filt, concat_elu=concat_elu, bias=bias, seed=11)
    _check_forward(x, w, b, kind, concat_elu, _run_forward(x, w, b, kind, concat_elu))


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind", ["down", "down_right"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_kernel_forward_shapes(shape, kind, concat_elu):
    N, C, O, H, W = shape
    x, w, b = _inputs(N, C, O, H, W, *DEFAULT_FILTER[kind], concat_elu=concat_elu, seed=sum(shape))
    _check_forward(x, w, b, kind, concat_elu, _run_forward(x, w, b, kind, concat_elu))


def test_kernel_forward_non_contiguous():
    N, C, O, H, W = 2, 5, 7, 7, 6
    for kind, concat_elu in (("down", True), ("down_right", False)):
        fh, fw = DEFAULT_FILTER[kind]
        cin = 2 * C if concat_elu else C
        _, w, b = _inputs(N, C, O, H, W, fh, fw, concat_elu=concat_elu, seed=21)
        xs = [
            _randn(N, C + 4, H, W, seed=22)[:, 2:2 + C],                   # channel slice
            _randn(N, H, W, C, seed=23).permute(0, 3, 1, 2),               # channels-last memory
            _randn(N, C, H, 2 * W, seed=24)[..., ::2],                      # every other column
            _randn(C, N, W, H, seed=25).permute(1, 0, 3, 2),                # everything transposed
        ]
        for x in xs:
            assert not x.is_contiguous()
            _check_forward(x, w, b, kind, concat_elu, _run_forward(x, w, b, kind, concat_elu))
        # a permuted weight, a strided bias and a channels-last output buffer
        wp = _randn(O, fh, fw, cin, seed=26, scale=cin ** -0.5).permute(0, 3, 1, 2)
        bs = _randn(2 * O, seed=27)[::2]
        out = torch.empty(N, H, W, O, device=DEVICE).permute(0, 3, 1, 2)
        x = xs[0]
        y = _run_forward(x, wp, bs, kind, concat_elu, out=out)
        _check_forward(x, wp, bs, kind, concat_elu, y)


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind", ["down", "down_right"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["fp16", "bf16"])
def test_kernel_forward_half_dtypes(dtype, kind, concat_elu):
    """Flash-attention's rule: max error vs float64 at most 2x that of the same-dtype PyTorch formulation."""
    x, w, b = _inputs(2, 37, 70, 7, 6, *DEFAULT_FILTER[kind], concat_elu=concat_elu, dtype=dtype, seed=31)
    exact = _exact_forward(x, w, b, kind, concat_elu)
    y = _run_forward(x, w, b, kind, concat_elu)
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch_same = cc.causal_conv2d_reference(x, w, b, kind=kind, concat_elu=concat_elu)
    err_kernel = (y.double() - exact).abs().max().item()
    err_torch = (torch_same.double() - exact).abs().max().item()
    assert err_kernel <= 2 * err_torch, f"{dtype}: kernel error {err_kernel:.3e} vs PyTorch {err_torch:.3e}"


def test_kernel_forward_empty_batch():
    x, w, b = _inputs(1, 3, 4, 5, 6, 2, 3, concat_elu=True)
    _skip_unless_triton(x, w)
    y = cc.causal_conv2d_triton(x[:0], w, b, kind="down", concat_elu=True)
    assert y.shape == (0, 4, 5, 6)


# ---------------------------------------------------------------------------------------------------
# the backward kernels
# ---------------------------------------------------------------------------------------------------
BACKWARD_FILTERS = [("down", (2, 3)), ("down", (1, 3)), ("down", (3, 3)), ("down_right", (2, 2)),
                    ("down_right", (2, 1))]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", BACKWARD_FILTERS, ids=[f"{k}-{a}x{b}" for k, (a, b) in BACKWARD_FILTERS])
def test_kernel_backward_autograd(kind, filt, concat_elu, bias):
    """causal_conv2d(backend="triton") under autograd: grads vs the float64 reference's autograd."""
    x, w, b = _inputs(2, 5, 7, 7, 6, *filt, concat_elu=concat_elu, bias=bias, seed=41)
    _skip_unless_triton(x, w)
    g = _randn(2, 7, 7, 6, seed=42)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = None if b is None else b.clone().requires_grad_()
    y = cc.causal_conv2d(xr, wr, br, kind=kind, concat_elu=concat_elu, backend="triton")
    assert y.grad_fn is not None and "CausalConv2dTriton" in type(y.grad_fn).__name__
    _check_forward(x, w, b, kind, concat_elu, y.detach())
    y.backward(g)
    _check_grads(x, w, b, g, kind, concat_elu, xr.grad, wr.grad, None if br is None else br.grad)


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind", ["down", "down_right"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_kernel_backward_shapes(shape, kind, concat_elu):
    N, C, O, H, W = shape
    x, w, b = _inputs(N, C, O, H, W, *DEFAULT_FILTER[kind], concat_elu=concat_elu, seed=sum(shape) + 1)
    g = _randn(N, O, H, W, seed=sum(shape) + 2)
    _check_grads(x, w, b, g, kind, concat_elu, *_run_backward(g, x, w, kind, concat_elu))


@pytest.mark.parametrize("split", [1, 2, 3, 100])
def test_kernel_backward_weight_split(split):
    """The grad_weight pixel reduction split in chunks (partials summed afterwards) gives the same sums."""
    N, C, O, H, W = 2, 5, 7, 9, 8  # 144 pixels: 9 chunks of 16 (float32) to split
    x, w, b = _inputs(N, C, O, H, W, 2, 3, concat_elu=True, seed=51)
    g = _randn(N, O, H, W, seed=52)
    _check_grads(x, w, b, g, "down", True, *_run_backward(g, x, w, "down", True, split=split))


def test_kernel_backward_non_contiguous():
    N, C, O, H, W = 2, 5, 7, 7, 6
    for kind, concat_elu in (("down", True), ("down_right", False), ("down_right", True)):
        fh, fw = DEFAULT_FILTER[kind]
        cin = 2 * C if concat_elu else C
        x = _randn(N, H, W, C, seed=61).permute(0, 3, 1, 2)
        w = _randn(O, fh, fw, cin, seed=62, scale=cin ** -0.5).permute(0, 3, 1, 2)
        g = _randn(N, H, W, O, seed=63).permute(0, 3, 1, 2)
        out = (torch.empty(N, H, W, C, device=DEVICE).permute(0, 3, 1, 2),
               torch.empty(O, fh, fw, cin, device=DEVICE).permute(0, 3, 1, 2),
               torch.empty(2 * O, device=DEVICE)[::2])
        b = torch.zeros(O, device=DEVICE)  # only there so that grad_bias is checked
        _check_grads(x, w, b, g, kind, concat_elu, *_run_backward(g, x, w, kind, concat_elu, out=out))
        gs = _randn(N, O, H, 2 * W, seed=64)[..., ::2]  # grad_out with a column stride
        _check_grads(x, w, b, gs, kind, concat_elu, *_run_backward(gs, x, w, kind, concat_elu))
        ge = _randn(1, O, 1, 1, seed=65).expand(N, O, H, W)  # stride 0, as autograd hands out for y.sum()
        _check_grads(x, w, b, ge, kind, concat_elu, *_run_backward(ge, x, w, kind, concat_elu))


def test_kernel_backward_only_what_is_needed():
    x, w, b = _inputs(1, 3, 4, 5, 6, 2, 2, concat_elu=True, seed=71)
    _skip_unless_triton(x, w)
    g = _randn(1, 4, 5, 6, seed=72)
    ex, ew, eb = _exact_grads(x, w, b, g, "down_right", True)
    # weight and bias only (x is data, as the PixelCNN's input embedding)
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    cc.causal_conv2d(x, wr, br, kind="down_right", concat_elu=True, backend="triton").backward(g)
    torch.testing.assert_close(wr.grad.double(), ew, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(br.grad.double(), eb, rtol=1e-5, atol=1e-5)
    # x only
    xr = x.clone().requires_grad_()
    cc.causal_conv2d(xr, w, b, kind="down_right", concat_elu=True, backend="triton").backward(g)
    torch.testing.assert_close(xr.grad.double(), ex, rtol=1e-5, atol=1e-5)
    gx, gw, gb = cc.causal_conv2d_backward_triton(g, x, w, kind="down_right", concat_elu=True, weight_grad=False)
    assert gw is None and gb is None and gx.shape == x.shape


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind", ["down", "down_right"])
@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=["fp16", "bf16"])
def test_kernel_backward_half_dtypes(dtype, kind, concat_elu):
    """Flash-attention's rule on each gradient, against the same-dtype PyTorch autograd."""
    N, C, O, H, W = 2, 37, 70, 7, 6
    x, w, b = _inputs(N, C, O, H, W, *DEFAULT_FILTER[kind], concat_elu=concat_elu, dtype=dtype, seed=81)
    g = _randn(N, O, H, W, dtype=dtype, seed=82)
    got = _run_backward(g, x, w, kind, concat_elu)
    exact = _exact_grads(x, w, b, g, kind, concat_elu)
    xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
    cc.causal_conv2d_reference(xr, wr, br, kind=kind, concat_elu=concat_elu).backward(g)
    for name, k, t, e in zip(("grad_input", "grad_weight", "grad_bias"), got, (xr.grad, wr.grad, br.grad), exact):
        assert k.dtype == dtype and torch.isfinite(k).all(), name
        err_kernel = (k.double() - e).abs().max().item()
        err_torch = (t.double() - e).abs().max().item()
        assert err_kernel <= 2 * err_torch, f"{name} {dtype}: kernel {err_kernel:.3e} vs PyTorch {err_torch:.3e}"


@pytest.mark.parametrize("concat_elu", [False, True], ids=["plain", "concat_elu"])
@pytest.mark.parametrize("kind,filt", [("down", (2, 3)), ("down", (3, 3)), ("down_right", (2, 2)),
                                       ("down_right", (2, 1))])
def test_kernel_receptive_field(kind, filt, concat_elu):
    """Causality of the kernels: the gradient of one output pixel (by the backward kernel) is nonzero
    exactly on the pixels the official padding lets it read; and the forward output at (i, j) does not
    move when every pixel outside that field changes."""
    H, W = 5, 6
    x, w, _ = _inputs(2, 3, 4, H, W, *filt, concat_elu=concat_elu, seed=91)
    _skip_unless_triton(x, w)
    y = _run_forward(x, w, None, kind, concat_elu)
    for i, j in ((0, 0), (0, W - 1), (2, 3), (H - 1, 0), (H - 1, W - 1)):
        field = _receptive_field(kind, *filt, H, W, i, j).to(DEVICE)
        g = torch.zeros(2, 4, H, W, device=DEVICE)
        g[:, :, i, j] = 1.0
        gx, _, _ = cc.causal_conv2d_backward_triton(g, x, w, kind=kind, concat_elu=concat_elu, weight_grad=False)
        assert torch.equal(gx.abs().sum(dim=(0, 1)) != 0, field), (i, j)
        x2 = torch.where(field, x, _randn(2, 3, H, W, seed=92))  # change everything outside the field
        y2 = _run_forward(x2, w, None, kind, concat_elu)
        assert torch.equal(y2[:, :, i, j], y[:, :, i, j]), (i, j)


# ---------------------------------------------------------------------------------------------------
# launcher checks
# ---------------------------------------------------------------------------------------------------
def test_launcher_validation():
    x, w, b = _inputs(1, 3, 4, 5, 6, 2, 3, concat_elu=False, seed=101)
    _skip_unless_triton(x, w)
    with pytest.raises(ValueError, match="needs an odd filter width"):
        cc.causal_conv2d_triton(x, w[..., :2], b, kind="down")
    with pytest.raises(ValueError, match="out must be torch.float32"):
        cc.causal_conv2d_triton(x, w, b, kind="down", out=torch.empty(1, 4, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="out must be torch.float32"):
        cc.causal_conv2d_triton(x, w, b, kind="down", out=torch.empty(1, 4, 5, 6, device=DEVICE).half())
    with pytest.raises(RuntimeError, match="dtype torch.float64"):
        cc.causal_conv2d_triton(x.double(), w.double(), None, kind="down")
    g = _randn(1, 4, 5, 6, seed=102)
    with pytest.raises(ValueError, match=r"grad_out must be \[N, O, H, W\]"):
        cc.causal_conv2d_backward_triton(g[:, :3], x, w, kind="down")
    with pytest.raises(ValueError, match="grad_out must be torch.float32"):
        cc.causal_conv2d_backward_triton(g.half(), x, w, kind="down")
    with pytest.raises(ValueError, match="split must be a positive int"):
        cc.causal_conv2d_backward_triton(g, x, w, kind="down", split=0)
    with pytest.raises(ValueError, match=r"out\[1\] \(grad_weight\)"):
        cc.causal_conv2d_backward_triton(g, x, w, kind="down", out=(None, torch.empty(4, 3, 2, 2), None))


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    """The interpreter never runs the GPU code path (string constexprs, half dots, register budget):
    compile every kernel for sm_90 (no GPU needed) in a subprocess without TRITON_INTERPRET."""
    script = textwrap.dedent("""
        import sys
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        target = GPUTarget("cuda", 90, 32)

        def compile_(fn, ptrs, consts):
            sig = {n: ("constexpr" if n in consts else ptrs.get(n, "i32")) for n in fn.arg_names}
            cx = {(k,): consts[n] for k, n in enumerate(fn.arg_names) if n in consts}
            return triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx), target=target,
                                  options={"num_warps": 8})

        import triton.language as tl
        @triton.jit
        def _probe(p):
            tl.store(p, 1.0)
        try:
            compile_(_probe, {"p": "*fp32"}, {})
        except Exception as exc:
            print(f"cannot compile for sm_90 here: {type(exc).__name__}: {exc}"[:400])
            sys.exit(3)

        from pyinpaint.kernels import causal_conv as cc
        for dot in ("fp32", "bf16", "fp16"):
            t = "*" + dot
            flags = dict(FH=2, FW=3, PAD_L=1, CONCAT_ELU=True, DOT=dot, EMULATE=False)
            red = 16 if dot == "fp32" else 32
            compile_(cc._causal_conv_fwd_kernel, dict(x_ptr=t, w_ptr=t, b_ptr=t, y_ptr=t),
                     dict(flags, HAS_BIAS=True, BLOCK_M=64, BLOCK_O=64, BLOCK_C=32))
            compile_(cc._causal_conv_bwd_input_kernel, dict(gy_ptr=t, x_ptr=t, w_ptr=t, gx_ptr=t),
                     dict(flags, BLOCK_M=64, BLOCK_C=64, BLOCK_O=red))
            compile_(cc._causal_conv_bwd_weight_kernel, dict(gy_ptr=t, x_ptr=t, part_ptr="*fp32"),
                     dict(flags, BLOCK_O=64, BLOCK_C=64, BLOCK_M=red))
        print("ok")
    """)
    run_compile_script(script, tmp_path)


# ---------------------------------------------------------------------------------------------------
# dispatch and reasons
# ---------------------------------------------------------------------------------------------------
def test_dispatch_torch_and_auto():
    x, w, b = _inputs(2, 3, 4, 5, 6, 2, 3, concat_elu=True, seed=111)
    ref = cc.causal_conv2d_reference(x, w, b, kind="down", concat_elu=True)
    for backend in ("torch", "auto"):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = cc.causal_conv2d(xr, wr, b, kind="down", concat_elu=True, backend=backend)
        if backend == "torch" or DEVICE == "cpu":  # auto on the CPU is the reference itself
            assert torch.equal(y, ref)
        else:
            _check_forward(x, w, b, "down", True, y.detach())
        y.sum().backward()
        assert xr.grad is not None and wr.grad is not None


def test_dispatch_explicit_triton():
    x, w, b = _inputs(2, 3, 4, 5, 6, 2, 2, concat_elu=False, seed=121)
    _skip_unless_triton(x, w)
    assert cc.reason(x, w, kind="down_right", backend="triton").startswith("triton: requested explicitly")
    with torch.no_grad():
        y = cc.causal_conv2d(x, w, b, kind="down_right", backend="triton")
    _check_forward(x, w, b, "down_right", False, y)


def test_reason_auto():
    x, w, _ = _inputs(1, 3, 4, 5, 6, 2, 3, concat_elu=False)
    text = cc.reason(x, w, kind="down")
    if DEVICE == "cpu":
        assert text.startswith("torch: tensors are on cpu; auto never routes CPU tensors to the Triton interpreter")
    elif _triton.triton_unavailable_reason(x, w) is None:
        assert text == "triton: tensors are on CUDA and triton is available"
    else:
        assert text.startswith("torch: tensors are on CUDA but the Triton kernel cannot run")
    assert cc.reason(x, w, kind="down", backend="torch") == "torch: requested explicitly"


def test_reason_auto_cpu_even_with_interpreter(monkeypatch):
    monkeypatch.setattr(_triton, "INTERPRET", True)
    x, w = torch.randn(1, 3, 5, 6), torch.randn(4, 6, 2, 2)
    assert cc.reason(x, w, kind="down_right", concat_elu=True).startswith("torch: tensors are on cpu")


@pytest.mark.parametrize("setting,message", [
    ({"HAS_TRITON": False, "_IMPORT_ERROR": "ModuleNotFoundError: No module named 'triton'"},
     "triton is not installed"),
    ({"HAS_TRITON": True, "INTERPRET": False}, "TRITON_INTERPRET is not set"),  # also without triton installed
])
def test_explicit_triton_unavailable_raises(monkeypatch, setting, message):
    for name, value in setting.items():
        monkeypatch.setattr(_triton, name, value)
    x, w = torch.randn(1, 3, 5, 6), torch.randn(4, 3, 2, 3)  # CPU on purpose
    text = cc.reason(x, w, kind="down", backend="triton")
    assert text.startswith("none: backend='triton' was requested but cannot run: ") and message in text
    with pytest.raises(RuntimeError, match=message):
        cc.causal_conv2d(x, w, kind="down", backend="triton")
    assert cc.causal_conv2d(x, w, kind="down").shape == (1, 4, 5, 6)  # auto still works


def test_explicit_triton_bad_dtype_raises():
    x, w = torch.randn(1, 3, 5, 6, dtype=torch.float64), torch.randn(4, 3, 2, 3, dtype=torch.float64)
    assert "dtype torch.float64" in cc.reason(x, w, kind="down", backend="triton")
    with pytest.raises(RuntimeError, match="dtype torch.float64"):
        cc.causal_conv2d(x, w, kind="down", backend="triton")


def test_dispatch_input_errors():
    x, w = torch.randn(1, 3, 5, 6), torch.randn(4, 3, 2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        cc.causal_conv2d(x, w, kind="down", backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        cc.reason(x, w, kind="down", backend="numpy")
    with pytest.raises(ValueError, match="kind must be one of"):
        cc.reason(x, w, kind="left")
    with pytest.raises(ValueError, match="expected 2C"):
        cc.causal_conv2d(x, w, kind="down", concat_elu=True)


# ---------------------------------------------------------------------------------------------------
# step form (the replay against the full form, for every kind, is tests/test_cached_sampler.py::test_replay)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("by_conv", [False, True], ids=["rows-by-gemm", "rows-by-conv"])
@pytest.mark.parametrize("kind,filt,concat_elu", [("down_right", (2, 2), True), ("down_right", (1, 2), False),
                                                  ("down", (2, 3), True)])
def test_update_equals_update_ref_with_row_extra(kind, filt, concat_elu, by_conv, monkeypatch):
    """The fast step and its plain reference, on their own states, with a per-row addend (down_right reads it
    when a row starts), in float64: equal to rounding."""
    monkeypatch.setattr(cc, "ROWS_BY_CONV_MIN", 0 if by_conv else 10 ** 9)
    g = torch.Generator().manual_seed(5)
    B, C, O, H, W = 2, 3, 4, 3, 5
    w = torch.randn(O, 2 * C if concat_elu else C, *filt, generator=g, dtype=torch.float64)
    b = torch.randn(O, generator=g, dtype=torch.float64)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    extra = torch.randn(B, H, W, O, generator=g, dtype=torch.float64)
    fast = cc.causal_conv2d_init_state(w, b, B, W, kind=kind, concat_elu=concat_elu)
    ref = cc.causal_conv2d_init_state(w, b, B, W, kind=kind, concat_elu=concat_elu)
    with torch.inference_mode():
        if kind == "down":
            for y in range(H):
                row = x[:, :, y].transpose(1, 2)
                torch.testing.assert_close(cc.causal_conv2d_update(fast, row, y * W),
                                           cc.causal_conv2d_update_ref(ref, row, y * W), rtol=0, atol=1e-12)
        else:
            for p in range(H * W):
                y, xx = divmod(p, W)
                e = extra[:, y] if xx == 0 else None  # read at a row start only
                torch.testing.assert_close(cc.causal_conv2d_update(fast, x[:, :, y, xx], p, e),
                                           cc.causal_conv2d_update_ref(ref, x[:, :, y, xx], p, e),
                                           rtol=0, atol=1e-12)
            # the addend is there: without it the outputs differ
            again = cc.causal_conv2d_init_state(w, b, B, W, kind=kind, concat_elu=concat_elu)
            out = cc.causal_conv2d_update_ref(again, x[:, :, 0, 0], 0)
            assert not torch.allclose(out, cc.causal_conv2d_update_ref(
                cc.causal_conv2d_init_state(w, b, B, W, kind=kind, concat_elu=concat_elu), x[:, :, 0, 0], 0,
                extra[:, 0]))


def test_init_state_errors():
    w, b = torch.randn(4, 3, 2, 2), torch.zeros(4)
    with pytest.raises(ValueError, match="kind must be one of"):
        cc.causal_conv2d_init_state(w, b, 1, 5, kind="left")
    with pytest.raises(ValueError, match="odd filter width"):
        cc.causal_conv2d_init_state(w, b, 1, 5, kind="down")
    with pytest.raises(ValueError, match="concat_elu doubles"):
        cc.causal_conv2d_init_state(w, b, 1, 5, kind="down_right", concat_elu=True)
