"""The sampling rule and the naive (reference) sampler."""
import math

import pytest
import torch

from pyinpaint.config import structure_preset
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.sampler import draw, entropy_bits, gumbel_noise, sample_naive, shape_logits


def test_gumbel_noise_is_seeded():
    a, b, c = gumbel_noise(1, 2, 3, 5), gumbel_noise(1, 2, 3, 5), gumbel_noise(2, 2, 3, 5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_gumbel_max_draws_from_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 40000
    idx = draw(logits.expand(n, 5), gumbel_noise(7, 1, n, 5)[0])
    freq = torch.bincount(idx, minlength=5).float() / n
    p = torch.softmax(logits, 0)
    # 5 standard errors of a binomial proportion
    assert ((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()).all(), (freq, p)


def test_temperature_and_top_k():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    noise = gumbel_noise(3, 1, 2000, 4)[0]
    assert (draw(logits.expand(2000, 4), noise, top_k=1) == 0).all()
    top2 = draw(logits.expand(2000, 4), noise, top_k=2)
    assert set(top2.tolist()) <= {0, 1} and (top2 == 1).any()
    cold = draw(logits.expand(2000, 4), noise, temperature=0.05)
    assert (cold == 0).float().mean() > 0.99
    shaped = shape_logits(logits, temperature=2.0, top_k=3)
    assert torch.equal(shaped[0, :3], logits[0, :3] / 2) and shaped[0, 3] == float("-inf")
    with pytest.raises(ValueError):
        shape_logits(logits, temperature=0)
    with pytest.raises(ValueError):
        shape_logits(logits, top_k=5)


def test_entropy_bits():
    assert entropy_bits(torch.zeros(8)).item() == pytest.approx(3.0)
    assert entropy_bits(torch.tensor([100.0, 0, 0, 0])).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = structure_preset("tiny", dropout=0.0)
    model = StructureGenerator(cfg).eval()
    with torch.no_grad():  # make the logits depend strongly on the input so sampling is not uniform
        model.pixelcnn.logits.g.mul_(20)
    return cfg, model


def test_naive_sampler(tiny):
    cfg, model = tiny
    s, k = cfg.map_size, cfg.num_embeddings
    codebook = torch.randn(k, cfg.embedding_dim)
    h = model.condition(torch.randn(2, 3, cfg.image_size, cfg.image_size), torch.zeros(2, 1, cfg.image_size, cfg.image_size))
    out = sample_naive(model.pixelcnn, h, codebook, seed=5, entropy=True)
    assert out.codes.shape == (2, s, s) and out.codes.dtype == torch.int64
    assert torch.equal(out.embeddings, codebook[out.codes].permute(0, 3, 1, 2))
    assert (out.entropy >= 0).all() and (out.entropy <= math.log2(k) + 1e-5).all()
    again = sample_naive(model.pixelcnn, h, codebook, seed=5)
    assert torch.equal(out.codes, again.codes)
    other = sample_naive(model.pixelcnn, h, codebook, seed=6)
    assert not torch.equal(out.codes, other.codes)
    # Each code is the rule applied to the full network's logits on what was drawn before it.
    noise = gumbel_noise(5, 2, s * s, k)
    with torch.no_grad():
        for p in (0, 1, s, s * s - 1):
            y, x = divmod(p, s)
            e = out.embeddings.clone().flatten(2)
            e[:, :, p:] = 0
            logits = model.pixelcnn(e.view_as(out.embeddings), h)[:, :, y, x]
            assert torch.equal(draw(logits, noise[:, p]), out.codes[:, y, x])
