"""Sampling only what the hole needs (issue 16): the exact receptive field of the top codes, the known-code context
in both samplers (same seed -> same codes in every mode), early stop, and the option through Inpainter / CLI / eval."""
import numpy as np
import pytest
import torch

from pyinpaint.config import StructureConfig, structure_preset, vqvae_preset
from pyinpaint.inpainter import CONTEXTS, Inpainter
from pyinpaint.modelfile import save_model
from pyinpaint.models.structure import PixelCNN, StructureGenerator
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.sampler import Context, draw, gumbel_noise, sample_cached, sample_naive
from conftest import lively_generator
from test_cached_sampler import liven


# ------------------------------------------------------------------------------------------ receptive field
def holes(size: int, seed: int) -> torch.Tensor:
    """[4, 1, S, S]: a corner box, a centre box, scattered pixels, a thin stroke (1 = hole)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(4, 1, size, size)
    m[0, :, : size // 4, : size // 3] = 1
    m[1, :, size // 3: size // 2, size // 3: 2 * size // 3] = 1
    m[2, 0] = (torch.rand(size, size, generator=g) < 0.002).float()
    m[3, :, size // 2, size // 5: size // 2] = 1
    return m


@pytest.mark.parametrize("preset", ["tiny", "dev"])
def test_top_reach_is_exact(preset):
    """Outside the reach, the top features do not move whatever the hole holds; inside, every one moves (the
    reach is neither too small nor too large)."""
    torch.manual_seed(0)
    cfg = vqvae_preset(preset)
    enc = VQVAE(cfg).eval().encoder
    s = cfg.image_size
    m = holes(s, 1)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, s, s, generator=g) * 2 - 1
    other = torch.where(m > 0, torch.rand(4, 3, s, s, generator=g) * 4 - 2, x)  # only the hole differs
    reach = enc.top_reach(m)
    assert reach.shape == (4, s // 8, s // 8) and reach.dtype == torch.bool
    with torch.no_grad():
        a, b = enc(x, update_codebooks=False), enc(other, update_codebooks=False)
        masked = enc(x * (1 - m), update_codebooks=False)
    diff = (a.enc_t - b.enc_t).abs().amax(1)  # [4, s/8, s/8]
    assert diff[~reach].max() <= 1e-6, "a top feature outside the reach changed with the hole"
    assert (diff[reach] > 1e-6).all(), "the reach holds a top feature the hole cannot change"
    assert torch.equal(masked.idx_t[~reach], a.idx_t[~reach])  # the masked image's known codes are the image's
    assert reach[0].any() and (~reach[0]).any()  # the corner hole leaves some codes known


def test_top_reach_of_no_hole_and_bad_shape():
    enc = VQVAE(vqvae_preset("tiny")).encoder
    assert not enc.top_reach(torch.zeros(2, 1, 64, 64)).any()
    assert enc.top_reach(torch.ones(1, 1, 64, 64)).all()
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        enc.top_reach(torch.zeros(1, 64, 64))


# ------------------------------------------------------------------------------------------ samplers
def odd_config() -> StructureConfig:
    return StructureConfig(image_size=48, embedding_dim=6, num_embeddings=20, cond_channels=2, cond_res_channels=2,
                           channels=16, res_channels=12, resnets=4, out_resnets=2, attention=2, heads=3, dropout=0.0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    cfg = odd_config()
    pixelcnn = liven(PixelCNN(cfg), 9)
    with torch.no_grad():
        pixelcnn.logits.g.mul_(10)  # peaky logits: equal codes mean something
    codebook = torch.randn(cfg.num_embeddings, cfg.embedding_dim)
    h = torch.randn(4, cfg.h_channels, 6, 6, generator=torch.Generator().manual_seed(3))
    return pixelcnn, h, codebook


def contexts():
    """(name, known [6, 6] or [4, 6, 6]) covering a top band, a hole in the middle, nothing, everything, per row."""
    top = torch.zeros(6, 6, dtype=torch.bool)
    top[:2] = True
    top[2, :3] = True  # a run across a row boundary and into the next row
    ring = torch.ones(6, 6, dtype=torch.bool)
    ring[2:4, 1:5] = False  # the drawn positions end at row 3: rows 4-5 are never run
    per_row = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(5)) < 0.5  # mixed positions
    per_row[:, :1] = True
    return [("top", top), ("ring", ring), ("none", torch.zeros(6, 6, dtype=torch.bool)),
            ("all", torch.ones(6, 6, dtype=torch.bool)), ("per-row", per_row)]


@pytest.mark.parametrize("name,known", contexts(), ids=[c[0] for c in contexts()])
@pytest.mark.parametrize("seed,temperature,top_k", [(0, 1.0, None), (1, 0.8, 5)])
def test_known_context_same_codes_naive_and_cached(net, name, known, seed, temperature, top_k):
    pixelcnn, h, codebook = net
    k = codebook.shape[0]
    codes = torch.randint(0, k, (4, 6, 6), generator=torch.Generator().manual_seed(seed + 10))
    ctx = Context(codes, known)
    kw = dict(seed=seed, temperature=temperature, top_k=top_k, entropy=True, context=ctx)
    naive, cached = sample_naive(pixelcnn, h, codebook, **kw), sample_cached(pixelcnn, h, codebook, **kw)
    assert torch.equal(cached.codes, naive.codes)
    assert torch.equal(cached.embeddings, naive.embeddings)
    torch.testing.assert_close(cached.entropy, naive.entropy, rtol=0, atol=1e-4)
    kn = known.expand(4, 6, 6)
    assert torch.equal(cached.codes[kn], codes[kn])  # known positions take the context's codes
    assert (cached.entropy[kn] == 0).all()
    # every drawn code is the rule on the full network's logits, teacher-forced on the result (causality)
    with torch.no_grad():
        logits = pixelcnn(cached.embeddings, h).flatten(2).transpose(1, 2)
    expected = draw(logits, gumbel_noise(seed, 4, 36, k), temperature=temperature, top_k=top_k)
    assert torch.equal(cached.codes.flatten(1)[~kn.flatten(1)], expected[~kn.flatten(1)])
    if name == "none":  # an empty context is the paper's rule
        assert torch.equal(cached.codes, sample_cached(pixelcnn, h, codebook, seed=seed, temperature=temperature,
                                                       top_k=top_k).codes)


def test_early_stop_runs_nothing_after_the_last_draw(net, monkeypatch):
    pixelcnn, h, codebook = net
    _, ring = contexts()[1]
    ctx = Context(torch.zeros(6, 6, dtype=torch.int64), ring)
    steps, calls = [], []
    real_step = PixelCNN.step
    monkeypatch.setattr(PixelCNN, "step", lambda self, st, e, pos, *a, **kw: steps.append(pos) or
                        real_step(self, st, e, pos, *a, **kw))
    seen = []
    sample_cached(pixelcnn, h, codebook, seed=0, context=ctx, progress=seen.append)
    last = 3 * 6 + 4  # the last drawn position: row 3, column 4
    assert max(steps) <= last
    assert seen == list(range(36))  # progress still reports every position
    real_forward = PixelCNN.forward
    monkeypatch.setattr(PixelCNN, "forward", lambda self, *a, **kw: calls.append(1) or real_forward(self, *a, **kw))
    sample_naive(pixelcnn, h, codebook, seed=0, context=ctx)
    assert len(calls) == int((~ring).sum())  # the naive sampler runs the network at drawn positions only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_graph_sampler_with_context(net):
    pixelcnn, h, codebook = net
    pixelcnn, h, codebook = pixelcnn.cuda(), h.cuda(), codebook.cuda()
    for name, known in contexts():
        for seed in (0, 1):  # the first call captures, the second replays with new noise and codes
            ctx = Context(torch.randint(0, codebook.shape[0], (4, 6, 6), generator=torch.Generator().manual_seed(seed)),
                          known)
            eager = sample_cached(pixelcnn, h, codebook, seed=seed, context=ctx)
            graphed = sample_cached(pixelcnn, h, codebook, seed=seed, context=ctx, cuda_graph=True)
            assert torch.equal(eager.codes, graphed.codes), name


def test_context_errors(net):
    pixelcnn, h, codebook = net
    good = torch.zeros(6, 6, dtype=torch.bool)
    for ctx, match in [(Context(torch.zeros(6, 6, dtype=torch.int64), good.float()), "bool"),
                       (Context(torch.zeros(6, 6), good), "integer"),
                       (Context(torch.zeros(5, 6, dtype=torch.int64), good), r"context.codes must be \[4, 6, 6\]"),
                       (Context(torch.full((6, 6), 99), ~good), r"in \[0, 20\)")]:
        for fn in (sample_naive, sample_cached):
            with pytest.raises(ValueError, match=match):
                fn(pixelcnn, h, codebook, context=ctx)


# ------------------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    """A tiny model at 128 px (a 16 x 16 code map), so that a corner hole leaves known codes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("context") / "tiny128"
    structure = StructureGenerator(structure_preset("tiny", image_size=128))
    liven(structure.pixelcnn, 8)
    with torch.no_grad():
        structure.pixelcnn.logits.g.mul_(20)
    from pyinpaint.config import texture_preset
    from pyinpaint.models.texture import TextureGenerator

    save_model(path, VQVAE(vqvae_preset("tiny", image_size=128)), structure,
               TextureGenerator(texture_preset("tiny", image_size=128)))
    return Inpainter.load(path, "cpu")


@pytest.fixture(scope="module")
def photo():
    from skimage import data as skdata

    image = np.ascontiguousarray(skdata.astronaut()[::4, ::4])  # 128 x 128
    hole = np.zeros(image.shape[:2], bool)
    hole[90:120, 80:125] = True  # bottom right: the codes above and left are known
    return image, hole


def test_inpainter_known_context(inpainter, photo):
    image, hole = photo
    assert CONTEXTS[0] in ("sampled", "known") and set(CONTEXTS) == {"sampled", "known"}
    prepared = inpainter.prepare(image, hole)
    ctx = inpainter.known_codes(prepared)
    assert ctx.known.shape == (1, 16, 16) and 0 < int(ctx.known.sum()) < 256
    ctx.known, ctx.codes = ctx.known[0], ctx.codes[0]
    with torch.no_grad():  # the known codes are the whole image's: the hole cannot reach them
        full = inpainter.model.vqvae.encoder(prepared.x, update_codebooks=False).idx_t[0]
    assert torch.equal(ctx.codes[ctx.known], full[ctx.known])
    known = inpainter.inpaint(image, hole, n=2, seed=3, context="known")
    naive = inpainter.inpaint(image, hole, n=2, seed=3, context="known", sampler="naive")
    sampled = inpainter.inpaint(image, hole, n=2, seed=3, context="sampled")
    assert torch.equal(known.codes, naive.codes)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(known.images, naive.images))
    assert torch.equal(known.codes[:, ctx.known], full[ctx.known].expand(2, -1))
    assert not torch.equal(known.codes, sampled.codes)
    # the positions before the first known-dependent draw are drawn the same way in both modes: same seed, same
    # noise, and nothing known before them differs (the first position is drawn in both when it is unknown)
    with pytest.raises(ValueError, match="unknown context 'bogus'"):
        inpainter.sample(image, hole, n=1, context="bogus")


def test_known_context_per_window(inpainter):
    """Crop strategy, two holes far apart: two windows, each with its own known codes, in one sampler batch (positions
    known in one window and not the other are drawn, then overridden there); naive and cached still agree."""
    from skimage import data as skdata

    image = np.ascontiguousarray(skdata.astronaut()[:400, :400])
    hole = np.zeros(image.shape[:2], bool)
    hole[20:40, 20:50] = True
    hole[330:360, 300:340] = True
    prepared = inpainter.prepare(image, hole, "crop")
    assert len(prepared.windows) == 2
    ctx = inpainter.known_codes(prepared, n=2)
    assert ctx.known.shape == (4, 16, 16) and not torch.equal(ctx.known[0], ctx.known[2])
    assert torch.equal(ctx.known[0], ctx.known[1]) and torch.equal(ctx.codes[2], ctx.codes[3])
    cached = inpainter.inpaint(image, hole, n=2, seed=1, strategy="crop")
    naive = inpainter.inpaint(image, hole, n=2, seed=1, strategy="crop", sampler="naive")
    assert torch.equal(cached.codes, naive.codes)
    assert torch.equal(cached.codes[ctx.known], ctx.codes[ctx.known])


def test_cli_and_eval_take_context(inpainter, photo, tmp_path, capsys):
    from PIL import Image

    from pyinpaint.cli import main
    from pyinpaint.evaluate import eval_inpaint

    image, hole = photo
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    model = str(inpainter.model.path)
    assert main(["sample", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "-n", "2", "-o",
                 str(tmp_path / "out"), "--model", model, "--seed", "3", "--context", "known", "--quiet"]) == 0
    expected = inpainter.sample(image, hole, n=2, seed=3, context="known")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "in_00.png")), np.asarray(expected[0]))
    assert main(["sample", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), "-o", str(tmp_path / "o2"),
                 "--model", model, "--context", "nope", "--quiet"]) != 0
    assert "unknown context 'nope'" in capsys.readouterr().err
    images = tmp_path / "eval"
    images.mkdir()
    Image.fromarray(image).save(images / "a.png")
    res = eval_inpaint(model, images, ["center"], n=2, size=64, limit=1, baselines=(), progress=False,
                       context="known")
    assert res["cases"] == 1
    with pytest.raises(ValueError, match="unknown context"):
        eval_inpaint(model, images, ["center"], n=2, size=64, limit=1, progress=False, context="nope")
