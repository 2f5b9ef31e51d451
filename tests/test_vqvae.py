"""Stage 1 modules: TF padding, quantiser semantics (EMA codebook, straight-through), shapes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyinpaint.config import VQVAEConfig, vqvae_preset
from pyinpaint.models.layers import Conv2d, ConvTranspose2d, same_padding
from pyinpaint.models.vqvae import VQVAE, VectorQuantizer


@pytest.mark.parametrize("n,k,s,d,expect", [(8, 3, 2, 1, (0, 1)), (7, 3, 2, 1, (1, 1)), (8, 4, 2, 1, (1, 1)),
                                            (8, 5, 2, 1, (1, 2)), (8, 3, 1, 4, (4, 4)), (8, 5, 1, 1, (2, 2)),
                                            (8, 1, 1, 1, (0, 0))])
def test_tf_same_padding(n, k, s, d, expect):
    assert same_padding(n, k, s, d) == expect


def test_conv_same_asymmetric_matches_explicit_pad():
    torch.manual_seed(0)
    conv = Conv2d(3, 5, 3, stride=2)
    x = torch.randn(2, 3, 10, 10)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    assert conv(x).shape == (2, 5, 5, 5)
    torch.testing.assert_close(conv(x), ref)


def test_deconv_doubles_size():
    up = ConvTranspose2d(4, 6, 4, 2)
    assert up(torch.randn(1, 4, 7, 9)).shape == (1, 6, 14, 18)


def _tf_ema_reference(batches, codebook0, decay, eps, zero_debias):
    """numpy re-implementation of nn.vector_quantize's training update (TF assign_moving_average)."""
    k, d = codebook0.shape
    w = codebook0.astype(np.float64).copy()
    cs, dw = np.zeros(k), w.copy()
    cs_b, dw_b, t = np.zeros(k), np.zeros((k, d)), 0
    for z in batches:
        dist = (z ** 2).sum(1, keepdims=True) - 2 * z @ w.T + (w ** 2).sum(1)[None]
        idx = dist.argmin(1)
        onehot = np.eye(k)[idx]
        counts, sums = onehot.sum(0), onehot.T @ z
        if zero_debias:
            t += 1
            cs_b -= (cs_b - counts) * (1 - decay)
            dw_b -= (dw_b - sums) * (1 - decay)
            cs, dw = cs_b / (1 - decay ** t), dw_b / (1 - decay ** t)
        else:
            cs -= (cs - counts) * (1 - decay)
            dw -= (dw - sums) * (1 - decay)
        n = cs.sum()
        smoothed = (cs + eps) / (n + k * eps) * n
        w = dw / smoothed[:, None]
    return w


@pytest.mark.parametrize("zero_debias", [True, False])
def test_codebook_ema_matches_tf_semantics(zero_debias):
    torch.manual_seed(1)
    vq = VectorQuantizer(16, 4, decay=0.9, zero_debias=zero_debias).train()
    start = vq.embedding.clone().numpy()
    zs = [torch.randn(3, 4, 5, 6) for _ in range(4)]
    for z in zs:
        vq(z)
    flat = [z.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy() for z in zs]
    ref = _tf_ema_reference(flat, start, 0.9, 1e-5, zero_debias)
    np.testing.assert_allclose(vq.embedding.double().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_first_zero_debiased_update_sets_used_codes_to_their_means():
    torch.manual_seed(2)
    vq = VectorQuantizer(8, 3).train()
    z = torch.randn(2, 3, 4, 4)
    q = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    n = flat.shape[0]
    for k in q.indices.unique():
        members = flat[q.indices.reshape(-1) == k]
        c = len(members)
        scale = c / ((c + 1e-5) / (n + 8 * 1e-5) * n)  # Laplace smoothing of the cluster size
        torch.testing.assert_close(vq.embedding[k], members.mean(0) * scale, rtol=1e-5, atol=1e-6)


def test_eval_mode_and_update_false_leave_codebook_alone():
    vq = VectorQuantizer(8, 3)
    before = vq.embedding.clone()
    vq.eval()(torch.randn(1, 3, 4, 4))
    vq.train()(torch.randn(1, 3, 4, 4), update=False)
    assert torch.equal(vq.embedding, before)


def test_straight_through_and_commitment_gradients():
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 3, commitment_cost=0.25).eval()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    q = vq(z)
    emb = vq.embedding[q.indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(q.quantized, emb, rtol=0, atol=1e-6)  # forward value = the code
    (g,) = torch.autograd.grad(q.quantized.sum(), z)
    assert torch.equal(g, torch.ones_like(z))  # straight-through: identity gradient
    (g,) = torch.autograd.grad(q.loss, z)
    torch.testing.assert_close(g, 0.25 * 2 * (z - emb).detach() / z.numel())
    assert vq.embedding.grad is None and not vq.embedding.requires_grad


def test_vqvae_shapes_and_codes_in_range():
    cfg = vqvae_preset("tiny")
    model = VQVAE(cfg).eval()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    rec, enc = model(x)
    assert rec.shape == x.shape
    assert enc.idx_t.shape == (2, cfg.top_size, cfg.top_size)
    assert enc.idx_b.shape == (2, cfg.bottom_size, cfg.bottom_size)
    assert int(enc.idx_t.max()) < cfg.num_embeddings and int(enc.idx_t.min()) >= 0
    torch.testing.assert_close(model.decode_codes(enc.idx_t, enc.idx_b), rec, rtol=1e-5, atol=1e-5)


def test_vqvae_rejects_bad_input():
    model = VQVAE(vqvae_preset("tiny"))
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("bad", [dict(image_size=60), dict(channels=7), dict(num_embeddings=0), dict(decay=1.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        VQVAEConfig(**bad)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="paper"):
        vqvae_preset("huge")
