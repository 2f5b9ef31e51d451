"""The cached (incremental) sampler: step mode of every causal layer and of the whole PixelCNN replayed against
the full forward pass, then the sampler itself against the naive one (same seed -> the same codes).

Replay (fast-pixel-cnn style): a random input goes through forward(); the same input is fed position by position
(or row by row, for the u stream's "down" layers) through init_state / step, and every output must agree. Each
replay runs in float64 (the algorithm: agreement to 1e-10) and in float32 (the sampler's dtype: ~1e-5).
"""
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from pyinpaint.config import StructureConfig, structure_preset, vqvae_preset
from pyinpaint.inpainter import SAMPLERS, Inpainter
from pyinpaint.kernels import causal_conv as cc
from pyinpaint.models.layers import CausalSelfAttention, GatedResBlock, WNConv2d, concat_elu
from pyinpaint.models.structure import PixelCNN, StructureGenerator
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.modelfile import save_model
from conftest import lively_generator
from pyinpaint.sampler import draw, entropy_bits, gumbel_noise, sample_cached, sample_naive

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.fixture(params=[False, True], ids=["rows-by-gemm", "rows-by-conv"])
def rows_by_conv(request, monkeypatch):
    """Whole rows go through addmm on gathered windows or through F.conv2d (chosen by batch x width): test both."""
    monkeypatch.setattr(cc, "ROWS_BY_CONV_MIN", 0 if request.param else 10 ** 9)
    return request.param
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def liven(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weight-norm gains and biases (the official init has zero biases, which would hide bias bugs, such as
    a bias leaking through down_shift / right_shift or the attention's output at position 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(".b") or name == "b":
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith(".g") or name == "g":
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return module.eval()


def assert_close(step: torch.Tensor, full: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert step.shape == full.shape, (step.shape, full.shape)
    err = (step - full).abs().max().item()
    scale = max(1.0, full.abs().max().item())
    assert err <= TOL[dtype] * scale, f"{what}: max |step - full| = {err:.3g} (outputs up to {scale:.3g})"


def rows_of(t: torch.Tensor, y: int) -> torch.Tensor:
    """Row y of an NCHW map as a channels-last step row [B, W, C]."""
    return t[:, :, y].permute(0, 2, 1)


def at(t: torch.Tensor, p: int) -> torch.Tensor:
    """Raster position p of an NCHW map as a step tensor [B, C]."""
    return t.flatten(2)[:, :, p]


# ------------------------------------------------------------------------------------------ the replay test
# Every causal layer and the whole network have the same step protocol (pyinpaint.models.layers, "Step mode"):
# init_state(batch, height, width, ...) then step(state, x_t, pos, ...) with pos the raster index; row layers step
# at each row's first position with a whole row. A case builds a layer and its inputs and says how to feed it.
@dataclass
class Case:
    layer: object  # init_state / step / forward
    x: torch.Tensor  # NCHW input of forward
    full: torch.Tensor  # forward's output
    rows: bool = False  # steps a row at a time
    init: dict = field(default_factory=dict)  # init_state's keyword arguments
    extra: Callable[[int], dict] = lambda p: {}  # step's keyword arguments at raster position p
    x_at: Callable[[int], torch.Tensor] | None = None  # the step's input at p (default: x at p, or its row)


class _ConvOp:
    """The causal-conv op's own step forms (kernels/causal_conv.py) through the layer protocol."""

    def __init__(self, conv: WNConv2d, ce: bool, update):
        self.w, self.b, self.kind, self.ce, self.update = conv.weight().detach(), conv.b.detach(), conv.padding, ce, update

    def init_state(self, batch, height, width):
        return cc.causal_conv2d_init_state(self.w, self.b, batch, width, kind=self.kind, concat_elu=self.ce)

    def step(self, state, x_t, pos):
        return self.update(state, x_t, pos)

    def prefill(self, state, x_run, pos):  # the update takes a run of one row too
        return self.update(state, x_run, pos)


CONVS = [  # (kind, kernel, concat_elu): the PixelCNN's causal convolutions, and the other flag for each
    ("down", (2, 3), True), ("down", (2, 3), False), ("down", (1, 3), False),
    ("down_right", (2, 2), True), ("down_right", (2, 2), False), ("down_right", (2, 1), False),
]


def conv_case(kind, kernel, ce, hw, form, dtype):
    h, w = hw
    conv = liven(WNConv2d(6 if ce else 5, 7, kernel, padding=kind), 1).to(dtype)
    x = torch.randn(2, 3 if ce else 5, h, w, dtype=dtype)
    full = conv(x, concat_elu=ce)
    layer = conv if form == "layer" else _ConvOp(conv, ce, cc.causal_conv2d_update if form == "update"
                                                 else cc.causal_conv2d_update_ref)
    return Case(layer, x, full, rows=kind == "down", init=dict(concat_elu=ce) if form == "layer" else {})


def attention_case(heads, dtype):
    att = liven(CausalSelfAttention(16, heads, 2, 8), 2).to(dtype)
    x = torch.randn(3, 16, 3, 5, dtype=dtype)
    return Case(att, x, att(x))


BLOCKS = [  # (padding, kernel, aux, cond, heads)
    ("down", (2, 3), False, True, 0, "u+h"), ("down", (2, 3), False, False, 0, "u"),
    ("down", (2, 3), True, True, 0, "u+a+h"), ("down_right", (2, 2), True, True, 0, "ul+a+h"),
    ("down_right", (2, 2), False, False, 0, "ul"), ("down_right", (2, 2), True, True, 2, "ul+a+h+att2"),
    ("down_right", (2, 2), True, False, 3, "ul+a+att3"),
]


def block_case(padding, kernel, aux, cond, heads, dtype):
    c, hgt, wid = 16, 4, 5
    blk = liven(GatedResBlock(c, 12, padding=padding, kernel=kernel, aux_channels=c if aux else 0,
                              cond_channels=6 if cond else 0, attention_heads=heads, dropout=0.1), 3).to(dtype)
    x, a = torch.randn(2, c, hgt, wid, dtype=dtype), torch.randn(2, c, hgt, wid, dtype=dtype)
    h = torch.randn(2, 6, hgt, wid, dtype=dtype) if cond else None
    full = blk(x, a=a if aux else None, h=h)
    hp = blk.cond(concat_elu(h)) if cond else None  # the step takes the projection a row at a time

    def extra(p):
        y = p // wid
        return dict(a=rows_of(a, y) if aux else None, h_proj=rows_of(hp, y) if cond else None)

    return Case(blk, x, full, rows=padding == "down", extra=extra)


def odd_config(**kw) -> StructureConfig:
    """A 5 x 5 code map (image 40), 2 attention groups of 2 pairs, 3 heads."""
    base = dict(image_size=40, embedding_dim=6, num_embeddings=20, cond_channels=2, cond_res_channels=2, channels=16,
                res_channels=12, resnets=4, out_resnets=2, attention=2, heads=3, dropout=0.1)
    base.update(kw)
    return StructureConfig(**base)


NETWORKS = [
    (lambda: structure_preset("tiny"), (8, 8), "tiny-8x8"),
    (lambda: odd_config(), (5, 5), "odd-5x5-heads3"),
    (lambda: odd_config(heads=1, attention=1, resnets=3), (5, 5), "odd-5x5-heads1-3pairs"),
    (lambda: odd_config(resnets=2, attention=2, out_resnets=0), (3, 4), "3x4-attention-every-pair"),
    (lambda: odd_config(), (4, 1), "width-1"),
    (lambda: structure_preset("paper", image_size=64, embedding_dim=4, num_embeddings=16, cond_channels=1,
                              channels=8, res_channels=8), (8, 8), "paper-depth-narrow-8x8"),
]


def network_case(cfg, hw, use_h_proj, dtype):
    net = liven(PixelCNN(cfg), 4).to(dtype)
    hgt, wid = hw
    e = torch.randn(3, cfg.embedding_dim, hgt, wid, dtype=dtype)
    h = torch.randn(3, cfg.h_channels, hgt, wid, dtype=dtype)
    init = dict(h_proj=net.condition_projections(h)) if use_h_proj else dict(h=h)
    # the network's step input at p is the embedding drawn at p - 1
    return Case(net, e, net(e, h), init=init, x_at=lambda p: at(e, p - 1) if p else None)


REPLAY = (
    [pytest.param(lambda dt, a=a: conv_case(*a, dt), id=f"conv-{a[0]}-{a[1][0]}x{a[1][1]}-{'ce' if a[2] else 'plain'}-"
                  f"{a[3][0]}x{a[3][1]}-{a[4]}")
     for a in [(k, f, ce, hw, form) for k, f, ce in CONVS for hw in [(4, 5), (3, 1), (2, 7)]
               for form in ("layer", "update", "update_ref")]]
    + [pytest.param(lambda dt, n=n: attention_case(n, dt), id=f"attention-heads{n}") for n in (1, 2, 3)]
    + [pytest.param(lambda dt, b=b: block_case(*b[:5], dt), id=f"block-{b[5]}") for b in BLOCKS]
    + [pytest.param(lambda dt, n=n, hp=hp: network_case(n[0](), n[1], hp, dt), id=f"pixelcnn-{n[2]}-{which}")
       for n in NETWORKS for hp, which in ((False, "h"), (True, "h_proj"))]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", REPLAY)
def test_replay(make, dtype, rows_by_conv):
    """Full forward vs position by position (row by row for row layers), for every causal layer and the network."""
    torch.manual_seed(0)
    with torch.inference_mode():
        case = make(dtype)
        b, _, hgt, wid = case.x.shape
        st = case.layer.init_state(b, hgt, wid, **case.init)
        if case.rows:
            outs = [case.layer.step(st, rows_of(case.x, y), y * wid, **case.extra(y * wid)) for y in range(hgt)]
            step = torch.stack(outs, dim=1).permute(0, 3, 1, 2)
        else:
            x_at = case.x_at or (lambda p: at(case.x, p))
            outs = torch.stack([case.layer.step(st, x_at(p), p, **case.extra(p)) for p in range(hgt * wid)], dim=-1)
            step = outs.view(*outs.shape[:2], hgt, wid)
    assert_close(step, case.full, dtype, "replay")
    if isinstance(case.layer, CausalSelfAttention):  # position 0 attends to nothing: the out projection's bias
        assert_close(at(step, 0), case.layer.out.b.detach()[None].expand(b, -1), dtype, "position 0 = out bias")


def test_step_mode_errors():
    with pytest.raises(ValueError, match="causal"):
        WNConv2d(4, 4, 3).init_state(1, 4, 4)
    with pytest.raises(ValueError, match="causal"):
        GatedResBlock(4, 4).init_state(1, 4, 4)
    blk = GatedResBlock(16, 8, padding="down_right", kernel=(2, 2), cond_channels=2, dropout=0.1)
    with pytest.raises(ValueError, match="eval"):
        blk.init_state(1, 4, 4)
    st = blk.eval().init_state(1, 4, 4)
    with torch.inference_mode(), pytest.raises(ValueError, match="condition"):
        blk.step(st, torch.zeros(1, 16), 0)
    with pytest.raises(ValueError, match="down_right"):
        GatedResBlock(16, 8, padding="down", kernel=(2, 3), attention_heads=2).eval().init_state(1, 4, 4)
    net = PixelCNN(odd_config()).eval()
    with pytest.raises(ValueError, match="condition"):
        net.init_state(1, 5, 5)
    with pytest.raises(ValueError, match="h must be"):
        net.init_state(2, 5, 5, h=torch.zeros(1, odd_config().h_channels, 5, 5))
    with pytest.raises(ValueError, match="one projection per block"):
        net.init_state(1, 5, 5, h_proj=[torch.zeros(1, 32, 5, 5)])


# ------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = structure_preset("tiny", dropout=0.0)
    model = StructureGenerator(cfg).eval()
    liven(model.pixelcnn, 6)
    with torch.no_grad():  # peaky logits: sampling far from uniform, so equal codes mean something
        model.pixelcnn.logits.g.mul_(20)
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim)
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(3, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1
    mask = torch.zeros(3, 1, cfg.image_size, cfg.image_size)
    mask[:, :, 16:48, 8:40] = 1
    with torch.no_grad():
        h = model.condition(imgs * (1 - mask), mask)
    return model.pixelcnn, h, codebook


@pytest.mark.parametrize("seed,temperature,top_k", [(0, 1.0, None), (1, 1.0, None), (2, 0.7, None), (3, 1.0, 5),
                                                    (4, 1.3, 3)])
def test_cached_draws_the_naive_codes(tiny, seed, temperature, top_k):
    pixelcnn, h, codebook = tiny
    kw = dict(seed=seed, temperature=temperature, top_k=top_k, entropy=True)
    naive, cached = sample_naive(pixelcnn, h, codebook, **kw), sample_cached(pixelcnn, h, codebook, **kw)
    assert torch.equal(cached.codes, naive.codes)
    assert torch.equal(cached.embeddings, naive.embeddings)
    assert cached.embeddings.is_contiguous() and cached.codes.dtype == torch.int64
    torch.testing.assert_close(cached.entropy, naive.entropy, rtol=0, atol=1e-4)
    assert len(torch.unique(cached.codes)) > 3  # not a constant map


@pytest.mark.parametrize("cfg", [odd_config(dropout=0.0), odd_config(dropout=0.0, heads=1, attention=1, resnets=2)],
                         ids=["odd-5x5", "odd-5x5-heads1"])
def test_every_cached_code_is_the_naive_rule_on_the_full_network(cfg):
    """Causality makes one teacher-forced pass on the sampled map give, at every position, the logits the naive
    sampler computes there: so each cached code must be the sampling rule applied to them (all positions)."""
    torch.manual_seed(0)
    net = liven(PixelCNN(cfg), 9)
    with torch.no_grad():
        net.logits.g.mul_(10)
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim)
    h = torch.randn(6, cfg.h_channels, 5, 5)
    out = sample_cached(net, h, codebook, seed=7, temperature=0.9, top_k=6)
    with torch.no_grad():
        logits = net(out.embeddings, h).flatten(2).transpose(1, 2)  # [N, L, K]
    expected = draw(logits, gumbel_noise(7, 6, 25, cfg.num_embeddings), temperature=0.9, top_k=6)
    assert torch.equal(out.codes.flatten(1), expected)


def test_cached_sampler_options_change_the_draws(tiny):
    pixelcnn, h, codebook = tiny
    base = sample_cached(pixelcnn, h, codebook, seed=0)
    assert torch.equal(base.codes, sample_cached(pixelcnn, h, codebook, seed=0).codes)
    assert not torch.equal(base.codes, sample_cached(pixelcnn, h, codebook, seed=1).codes)
    top1 = sample_cached(pixelcnn, h, codebook, seed=0, top_k=1)
    assert torch.equal(top1.codes, sample_cached(pixelcnn, h, codebook, seed=5, top_k=1).codes)  # greedy


def test_cached_entropy_is_of_the_unshaped_logits(tiny):
    pixelcnn, h, codebook = tiny
    out = sample_cached(pixelcnn, h, codebook, seed=2, temperature=0.5, top_k=4, entropy=True)
    with torch.no_grad():
        logits = pixelcnn(out.embeddings, h)  # teacher-forced on what was drawn = the logits the sampler saw
    torch.testing.assert_close(out.entropy, entropy_bits(logits.permute(0, 2, 3, 1)), rtol=0, atol=1e-4)
    assert (out.entropy <= math.log2(codebook.shape[0]) + 1e-4).all()


def test_cached_sampler_odd_map_and_restores_mode():
    torch.manual_seed(0)
    cfg = odd_config()
    net = liven(PixelCNN(cfg), 7)
    with torch.no_grad():
        net.logits.g.mul_(10)
    net.train()
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim)
    h = torch.randn(4, cfg.h_channels, 5, 5)
    seen = []
    cached = sample_cached(net, h, codebook, seed=11, progress=seen.append)
    assert net.training and seen == list(range(25))
    assert torch.equal(cached.codes, sample_naive(net, h, codebook, seed=11).codes)
    assert cached.entropy is None and cached.codes.shape == (4, 5, 5)


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cached") / "tiny"
    structure = StructureGenerator(structure_preset("tiny"))
    liven(structure.pixelcnn, 8)
    with torch.no_grad():
        structure.pixelcnn.logits.g.mul_(20)
    save_model(path, VQVAE(vqvae_preset("tiny")), structure, lively_generator())
    return Inpainter.load(path, "cpu")


def test_inpainter_cached_is_the_default_and_equals_naive(inpainter):
    from skimage import data as skdata

    image = np.ascontiguousarray(skdata.astronaut()[40:140, 120:270])
    hole = np.zeros(image.shape[:2], bool)
    hole[30:70, 50:110] = True
    assert SAMPLERS[0] == "cached"
    default = inpainter.inpaint(image, hole, n=3, seed=4)
    naive = inpainter.inpaint(image, hole, n=3, seed=4, sampler="naive")
    cached = inpainter.inpaint(image, hole, n=3, seed=4, sampler="cached")
    assert torch.equal(naive.codes, cached.codes) and torch.equal(default.codes, cached.codes)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(naive.images, cached.images))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(default.images, cached.images))


def test_graph_sampler_needs_cuda(tiny, inpainter):
    pixelcnn, h, codebook = tiny
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        sample_cached(pixelcnn, h, codebook, seed=0, cuda_graph=True)
    image = np.zeros((32, 32, 3), np.uint8)
    hole = np.ones((32, 32), bool)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        inpainter.sample(image, hole, n=1, seed=0, sampler="graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_sampler_replays_the_eager_codes(tiny):
    from pyinpaint import sampler as sampling

    pixelcnn, h, codebook = tiny
    pixelcnn, h, codebook = pixelcnn.cuda(), h.cuda(), codebook.cuda()
    for seed in (0, 1, 2):  # the first call captures, the others replay the same graph with new noise
        eager = sample_cached(pixelcnn, h, codebook, seed=seed, top_k=5, entropy=True)
        graphed = sample_cached(pixelcnn, h, codebook, seed=seed, top_k=5, entropy=True, cuda_graph=True)
        assert torch.equal(eager.codes, graphed.codes) and torch.equal(eager.embeddings, graphed.embeddings)
        torch.testing.assert_close(eager.entropy, graphed.entropy)
    assert len(sampling._GRAPHS[pixelcnn]) == 1
    other_h = h.flip(0)  # new inputs into the same graph
    assert torch.equal(sample_cached(pixelcnn, other_h, codebook, seed=5, top_k=5, cuda_graph=True).codes,
                       sample_cached(pixelcnn, other_h, codebook, seed=5, top_k=5).codes)


# ------------------------------------------------------------------------------------------ prefill
# Every layer that steps a position at a time, and the network, also take R consecutive positions in one call
# (prefill(state, x_run, pos, ...): the inputs at pos .. pos+R-1; a layer returns the R outputs, the network
# nothing). The replay: runs prefilled between single steps reproduce the full forward pass.
def run_schedule(length: int, width: int, seed: int, in_rows: bool) -> list[tuple[int, int]]:
    """(start, R) pieces covering 0 .. length-1: single steps (R = 0) and runs of 1 to 2.5 rows (``in_rows``: cut at
    each row's end), some starting at a row's first position; the last position is a step."""
    g = torch.Generator().manual_seed(seed)
    out, p = [], 0
    while p < length:
        if torch.rand(1, generator=g).item() < 0.5 or p == length - 1:
            out.append((p, 0))
            p += 1
            continue
        r = min(length - p - 1, int(torch.randint(1, max(2, 5 * width // 2), (1,), generator=g)))
        if in_rows:
            r = min(r, width - p % width)
        out.append((p, r))
        p += r
    return out


PREFILL = (
    [pytest.param(lambda dt, a=a: conv_case(*a, dt), id=f"conv-{a[1][0]}x{a[1][1]}-{'ce' if a[2] else 'plain'}-{a[4]}")
     for a in [(k, f, ce, (4, 5), form) for k, f, ce in CONVS if k == "down_right"
               for form in ("layer", "update", "update_ref")]]
    + [pytest.param(lambda dt, n=n: attention_case(n, dt), id=f"attention-heads{n}") for n in (1, 3)]
    + [pytest.param(lambda dt, b=b: block_case(*b[:5], dt), id=f"block-{b[5]}") for b in BLOCKS
       if b[0] == "down_right"]
    + [pytest.param(lambda dt, n=n: network_case(n[0](), n[1], False, dt), id=f"pixelcnn-{n[2]}") for n in NETWORKS]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", PREFILL)
def test_prefill_replay(make, dtype, rows_by_conv):
    """Runs prefilled between single steps: every output (the network's: every stepped position's logits) equals
    the full forward pass's, so a prefilled state is the stepped one."""
    torch.manual_seed(0)
    got, want = [], []
    with torch.inference_mode():
        case = make(dtype)
        b, _, hgt, wid = case.x.shape
        network = isinstance(case.layer, PixelCNN)
        full = case.full.flatten(2)
        x_at = case.x_at or (lambda p: at(case.x, p))
        for seed in range(3 if network else 2):
            st = case.layer.init_state(b, hgt, wid, **case.init)
            for p, r in run_schedule(hgt * wid, wid, seed, in_rows=not network):
                if r == 0:
                    got.append(case.layer.step(st, x_at(p), p, **case.extra(p)))
                    want.append(full[:, :, p])
                    continue
                # the network's input at 0 (no code before it) is None in step, and not read by prefill
                x_run = torch.stack([torch.zeros_like(x_at(1)) if network and q == 0 else x_at(q)
                                     for q in range(p, p + r)], dim=1)
                out = case.layer.prefill(st, x_run, p, **case.extra(p))
                if network:
                    assert out is None
                else:
                    got += list(out.unbind(1))
                    want += list(full[:, :, p:p + r].unbind(2))
    assert len(got) >= (6 if network else hgt * wid)
    err = max((a - b).abs().max().item() for a, b in zip(got, want))
    scale = max(1.0, full.abs().max().item())  # as the replay: relative to the whole map's outputs
    assert err <= TOL[dtype] * scale, f"prefill replay: max |prefill/step - full| = {err:.3g} (outputs up to {scale:.3g})"


def test_prefill_errors():
    conv = WNConv2d(4, 4, (2, 2), padding="down_right").eval()
    st = conv.init_state(1, 3, 4)
    with torch.inference_mode(), pytest.raises(ValueError, match="one row"):
        conv.prefill(st, torch.zeros(1, 3, 4), 2)
    with torch.inference_mode(), pytest.raises(ValueError, match="'down_right'"):
        WNConv2d(4, 4, (2, 3), padding="down").prefill(st, torch.zeros(1, 3, 4), 0)
    blk = GatedResBlock(4, 4, padding="down", kernel=(2, 3)).eval()
    with torch.inference_mode(), pytest.raises(ValueError, match="'down_right'"):
        blk.prefill(blk.init_state(1, 3, 4), torch.zeros(1, 3, 4), 0)
    net = PixelCNN(odd_config()).eval()
    st = net.init_state(1, 5, 5, h=torch.zeros(1, odd_config().h_channels, 5, 5))
    with torch.inference_mode(), pytest.raises(ValueError, match="outside"):
        net.prefill(st, torch.zeros(1, 6, odd_config().embedding_dim), 20)
