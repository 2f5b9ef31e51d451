"""Stage 3 modules without fixtures: gated convs, nearest upsampling, spectral norm, structural attention
transfer, losses, shapes, official names."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyinpaint import official
from pyinpaint.config import TextureConfig, texture_preset
from pyinpaint.models.layers import GatedConv2d, GatedDeconv2d, SNConv2d, upsample_nearest2x
from pyinpaint.models.texture import (Discriminator, TextureGenerator, attention_transfer, attention_weights,
                                      feature_loss, hinge_d_loss, hinge_g_loss)


def _inputs(cfg: TextureConfig, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    image = torch.rand(n, 3, s, s, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, s, s)
    mask[:, :, s // 4: s // 2 + s // 4, s // 8: s // 2] = 1
    struct = torch.randn(n, cfg.embedding_dim, s // 8, s // 8, generator=g)
    return image, mask, image * (1 - mask), struct


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("cfg", [texture_preset("tiny"),
                                 # odd sizes everywhere: 9x9 structure map, 3-channel gated outputs, odd D
                                 TextureConfig(image_size=72, embedding_dim=3, channels=6, dis_channels=5)],
                         ids=["tiny", "odd"])
def test_shapes(cfg):
    torch.manual_seed(0)
    gen, dis = TextureGenerator(cfg).eval(), Discriminator(cfg).eval()
    image, mask, masked, s = _inputs(cfg)
    with torch.no_grad():
        out, att = gen(masked, mask, s, return_attention=True)
        logits = dis(image, mask)
    size, c = cfg.image_size, cfg.channels
    assert out.shape == (2, 3, size, size) and out.abs().max() < 1
    assert att["b1"].shape == att["y1"].shape == (2, c, size // 2, size // 2)
    assert att["b2"].shape == att["y2"].shape == (2, 2 * c, size // 4, size // 4)
    side = size
    for _ in range(6):
        side = -(-side // 2)  # TF SAME, stride 2
    assert logits.shape == (2, side * side * 4 * cfg.dis_channels)


def test_discriminator_flattens_in_nhwc_order():
    cfg = TextureConfig(image_size=128, dis_channels=2)
    dis = Discriminator(cfg).eval()
    image, mask, _, _ = _inputs(cfg, n=1)
    with torch.no_grad():
        x = torch.cat([image, mask], 1)
        for conv in dis.convs:
            x = F.leaky_relu(conv(x), 0.2)
        logits = dis(image, mask)
    assert x.shape == (1, 8, 2, 2)
    torch.testing.assert_close(logits, x.permute(0, 2, 3, 1).reshape(1, -1), rtol=0, atol=0)
    torch.testing.assert_close(dis(image.expand(3, -1, -1, -1), mask), logits.expand(3, -1))  # one shared mask


def test_generator_batch_elements_are_independent():
    cfg = texture_preset("tiny")
    torch.manual_seed(1)
    gen = TextureGenerator(cfg).eval()
    _, mask, masked, s = _inputs(cfg, n=3, seed=1)
    with torch.no_grad():
        both = gen(masked, mask, s)
        alone = torch.cat([gen(masked[i:i + 1], mask[i:i + 1], s[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)


def test_generator_gradients_reach_every_parameter():
    cfg = texture_preset("tiny")
    torch.manual_seed(2)
    gen = TextureGenerator(cfg).train()
    image, mask, masked, s = _inputs(cfg, seed=2)
    (image - gen(masked, mask, s)).abs().mean().backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_generator_rejects_bad_inputs():
    cfg = texture_preset("tiny")
    gen = TextureGenerator(cfg)
    _, mask, masked, s = _inputs(cfg)
    with pytest.raises(ValueError, match="s must be"):
        gen(masked, mask, s[:, :, :-1])
    with pytest.raises(ValueError, match="multiples of 8"):
        gen(masked[..., :-4], mask[..., :-4], s)


@pytest.mark.parametrize("bad", [dict(image_size=60), dict(channels=7), dict(channels=0), dict(dis_channels=0),
                                 dict(embedding_dim=0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        TextureConfig(**bad)


def test_presets():
    assert texture_preset("paper") == TextureConfig()
    assert texture_preset("dev") == TextureConfig(image_size=128, embedding_dim=12, channels=16, dis_channels=12)
    assert texture_preset("tiny", channels=4).channels == 4
    with pytest.raises(ValueError, match="paper"):
        texture_preset("huge")


# ------------------------------------------------------------------------------------------ gated convs
def test_gated_conv_halves():
    torch.manual_seed(3)
    layer = GatedConv2d(5, 8, 3, stride=2)
    x = torch.randn(2, 5, 10, 10)
    raw = F.conv2d(F.pad(x, (0, 1, 0, 1)), layer.conv.weight, layer.conv.bias, stride=2)  # TF SAME (0, 1)
    out = layer(x)
    assert out.shape == (2, 4, 5, 5) and layer.out_channels == 4
    torch.testing.assert_close(out, F.elu(raw[:, :4]) * torch.sigmoid(raw[:, 4:]))
    with pytest.raises(ValueError, match="even"):
        GatedConv2d(3, 5)


def test_dilated_gated_conv_pads_rate():
    torch.manual_seed(4)
    layer = GatedConv2d(3, 4, 3, dilation=4)
    x = torch.randn(1, 3, 9, 9)
    raw = F.conv2d(x, layer.conv.weight, layer.conv.bias, padding=4, dilation=4)
    torch.testing.assert_close(layer(x), F.elu(raw[:, :2]) * torch.sigmoid(raw[:, 2:]))


def test_nearest_upsampling_and_gated_deconv():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)
    up = upsample_nearest2x(x)
    assert up.shape == (1, 2, 6, 10)
    for i in range(6):
        for j in range(10):
            assert torch.equal(up[..., i, j], x[..., i // 2, j // 2])
    torch.testing.assert_close(up, F.interpolate(x, scale_factor=2, mode="nearest"), rtol=0, atol=0)
    torch.manual_seed(5)
    layer = GatedDeconv2d(2, 6)
    assert layer.out_channels == 3
    torch.testing.assert_close(layer(x), layer.gated(up))


# -------------------------------------------------------------------------------------- spectral norm
def _sn_reference(weight: torch.Tensor, u: torch.Tensor):
    """The official snconv2d formula, literally, in TF's HWIO layout (gradients through v and u_hat)."""
    out = weight.shape[0]
    w = weight.permute(2, 3, 1, 0).reshape(-1, out)

    def l2n(a):
        return a / (torch.sqrt((a ** 2).sum()) + 1e-12)

    v = l2n(u @ w.t())
    u_hat = l2n(v @ w)
    sigma = (v @ w) @ u_hat.t()
    return (w / sigma).reshape(weight.shape[2], weight.shape[3], weight.shape[1], out).permute(3, 2, 0, 1), u_hat


def test_spectral_norm_matches_the_official_formula_and_its_gradient():
    torch.manual_seed(6)
    conv = SNConv2d(3, 4, 5, 2).double().train()
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    u0 = conv.u.clone()
    y = conv(x)
    (g_ours,) = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), conv.weight)
    w = conv.weight.detach().clone().requires_grad_(True)
    w_sn, u_hat = _sn_reference(w, u0)
    y_ref = F.conv2d(F.pad(x, (2, 2, 2, 2)), w_sn, conv.bias, stride=2)  # 11 px, 5x5/s2: SAME pads (2, 2)
    (g_ref,) = torch.autograd.grad((y_ref * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), w)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(conv.u, u_hat.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    # the gradient through the power iteration matters (torch.nn.utils.spectral_norm would drop it)
    wd = w.detach().clone().requires_grad_(True)
    sigma = (wd / _sn_reference(wd, u0)[0]).detach().flatten()[0]  # the same sigma, as a constant
    y_det = F.conv2d(F.pad(x, (2, 2, 2, 2)), wd / sigma, conv.bias, stride=2)
    (g_det,) = torch.autograd.grad((y_det * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), wd)
    assert (g_det - g_ours).abs().max() > 1e-3 * g_ours.abs().max()


def test_spectral_norm_pads_like_tf_same():
    torch.manual_seed(7)
    conv = SNConv2d(2, 3, 5, 2).eval()
    x = torch.randn(1, 2, 8, 8)
    w = conv.normalized_weight(update_u=False)
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (1, 2, 1, 2)), w, conv.bias, stride=2))  # (1, 2)


def test_spectral_norm_converges_to_the_largest_singular_value():
    torch.manual_seed(8)
    conv = SNConv2d(6, 10, 5, 2).double()
    w = conv.weight.detach().permute(2, 3, 1, 0).reshape(-1, 10)
    for _ in range(300):
        sigma, u_hat = conv.power_iteration()
        conv.u.copy_(u_hat.detach())
    exact = torch.linalg.matrix_norm(w, ord=2)
    torch.testing.assert_close(sigma.detach().squeeze(), exact, rtol=1e-8, atol=0)
    w_sn = conv.normalized_weight(update_u=False).detach().permute(2, 3, 1, 0).reshape(-1, 10)
    torch.testing.assert_close(torch.linalg.matrix_norm(w_sn, ord=2), torch.ones((), dtype=torch.float64),
                               rtol=1e-8, atol=0)


def test_u_is_updated_only_when_asked():
    torch.manual_seed(9)
    dis = Discriminator(TextureConfig(image_size=64, dis_channels=3))
    image, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 1, 64, 64)
    u0 = [c.u.clone() for c in dis.convs]

    def unchanged():
        return all(torch.equal(c.u, u) for c, u in zip(dis.convs, u0))

    dis.eval()
    ref = dis(image, mask)
    assert unchanged()
    dis.train()
    torch.testing.assert_close(dis(image, mask, update_u=False), ref, rtol=0, atol=0)
    assert unchanged()
    out = dis(image, mask)  # train mode default: update
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the output of a call uses its own iteration either way
    assert not any(torch.equal(c.u, u) for c, u in zip(dis.convs, u0))
    after = [c.u.clone() for c in dis.convs]
    dis.eval()(image, mask, update_u=True)  # eval mode, asked explicitly (the official behaviour)
    assert not any(torch.equal(c.u, u) for c, u in zip(dis.convs, after))
    assert all(not c.u.requires_grad for c in dis.convs)


def test_discriminator_backward_with_updates_in_the_graph():
    """A G step and a D step each evaluate D in training (the official loop updates u in both)."""
    torch.manual_seed(10)
    dis = Discriminator(TextureConfig(image_size=64, dis_channels=3)).train()
    real = torch.randn(2, 3, 64, 64)
    fake = torch.randn(2, 3, 64, 64, requires_grad=True)
    mask = torch.ones(1, 1, 64, 64)
    logits = dis(torch.cat([real, fake]), mask)
    hinge_g_loss(logits[2:]).backward(retain_graph=True)
    hinge_d_loss(logits[:2], logits[2:]).backward()
    assert fake.grad is not None and all(c.weight.grad is not None for c in dis.convs)


# --------------------------------------------------------------------------------- attention transfer
def _attention_reference(f, b1, b2, scale=50.0, fuse=True):
    """numpy float64, one image, literally the README's description (3x3 zero-padded patches, direct distances)."""
    c, h, w = f.shape
    length = h * w
    fp = np.pad(f, ((0, 0), (1, 1), (1, 1)))
    patches = np.stack([fp[:, y:y + 3, x:x + 3].ravel() for y in range(h) for x in range(w)])
    d = ((patches[:, None, :] - patches[None, :, :]) ** 2).sum(-1)
    y = -np.tanh((d - d.mean(1, keepdims=True)) / d.std(1, keepdims=True))
    if fuse:
        def diag(a, order):
            ao = a[np.ix_(order, order)]
            out = ao.copy()
            out[1:, 1:] += ao[:-1, :-1]
            out[:-1, :-1] += ao[1:, 1:]
            inv = np.argsort(order)
            return out[np.ix_(inv, inv)]

        y = diag(y, np.arange(length))
        y = diag(y, np.array([iy * w + ix for ix in range(w) for iy in range(h)]))  # column-major traversal
    p = np.exp(scale * y - (scale * y).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    outs = []
    for b, k in ((b1, 4), (b2, 2)):
        out = np.zeros_like(b)
        for i in range(length):
            iy, ix = divmod(i, w)
            for j in range(length):
                jy, jx = divmod(j, w)
                out[:, k * iy:k * iy + k, k * ix:k * ix + k] += p[i, j] * b[:, k * jy:k * jy + k, k * jx:k * jx + k]
        outs.append(out)
    return p, outs


@pytest.mark.parametrize("fuse,scale", [(True, 1.0), (False, 1.0), (True, 50.0)])
def test_attention_transfer_matches_a_direct_float64_reference(fuse, scale):
    """(At scale 50 the weights are nearly one-hot on the self-match; scale 1 exposes the scores.)"""
    g = torch.Generator().manual_seed(11)
    h, w = 3, 4  # non-square: the column-major fusion must transpose the right axes
    f = torch.randn(2, 2, h, w, generator=g, dtype=torch.float64) * 0.3
    b1 = torch.randn(2, 3, 4 * h, 4 * w, generator=g, dtype=torch.float64)
    b2 = torch.randn(2, 5, 2 * h, 2 * w, generator=g, dtype=torch.float64)
    p = attention_weights(f, fuse=fuse, softmax_scale=scale)
    y1, y2 = attention_transfer(f, b1, b2, fuse=fuse, softmax_scale=scale)
    for n in range(2):
        p_ref, (y1_ref, y2_ref) = _attention_reference(f[n].numpy(), b1[n].numpy(), b2[n].numpy(), scale, fuse)
        np.testing.assert_allclose(p[n].numpy(), p_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(y1[n].numpy(), y1_ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(y2[n].numpy(), y2_ref, rtol=1e-9, atol=1e-12)


def test_identical_patches_get_identical_weights():
    """A constant structure map: all interior (not border-touching) 3x3 patches are identical, so every query
    spreads the same weight over them (no fuse: fusing mixes in the neighbours' rows)."""
    h = w = 5
    f = torch.full((1, 3, h, w), 0.7, dtype=torch.float64)
    p = attention_weights(f, fuse=False)[0]
    interior = [y * w + x for y in range(1, h - 1) for x in range(1, w - 1)]
    torch.testing.assert_close(p[:, interior], p[:, interior[:1]].expand(-1, len(interior)), rtol=1e-12, atol=0)
    # the interior queries' best matches are the interior patches: they average the blocks there
    b1 = torch.randn(1, 2, 4 * h, 4 * w, dtype=torch.float64)
    y1, _ = attention_transfer(f, b1, torch.zeros(1, 1, 2 * h, 2 * w, dtype=torch.float64), fuse=False)
    blocks = F.unfold(b1, 4, stride=4)[0]  # [C*16, L]
    q = interior[0]
    torch.testing.assert_close(F.unfold(y1, 4, stride=4)[0][:, q], blocks @ p[q])


def test_zero_scale_gives_the_uniform_average_of_all_blocks():
    g = torch.Generator().manual_seed(12)
    f = torch.randn(2, 4, 4, 4, generator=g)
    b1, b2 = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    y1, y2 = attention_transfer(f, b1, b2, softmax_scale=0.0)
    mean1 = F.unfold(b1, 4, stride=4).mean(2, keepdim=True)  # [N, C*16, 1]
    mean2 = F.unfold(b2, 2, stride=2).mean(2, keepdim=True)
    torch.testing.assert_close(F.unfold(y1, 4, stride=4), mean1.expand(-1, -1, 16))
    torch.testing.assert_close(F.unfold(y2, 2, stride=2), mean2.expand(-1, -1, 16))


def test_all_zero_structure_map_gives_nan_like_the_official_code():
    """Every patch identical (f == 0): zero distance variance, z = 0/0 (the official z-score has no epsilon)."""
    p = attention_weights(torch.zeros(1, 2, 3, 3))
    assert torch.isnan(p).all()


def test_attention_rejects_mismatched_maps():
    with pytest.raises(ValueError, match="16x16"):
        attention_transfer(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 12, 12), torch.randn(1, 3, 8, 8))


# --------------------------------------------------------------------------------------------- losses
def test_feature_loss_matches_a_direct_float64_computation():
    g = torch.Generator().manual_seed(13)
    f = torch.randn(2, 5, 3, 4, generator=g)
    codebook = torch.randn(7, 5, generator=g)
    idx = torch.randint(0, 7, (2, 3, 4), generator=g)
    fn, cn = f.permute(0, 2, 3, 1).reshape(-1, 5).double().numpy(), codebook.double().numpy()
    d = ((fn[:, None, :] - cn[None, :, :]) ** 2).sum(-1)
    s = -np.tanh((d - d.mean(1, keepdims=True)) / d.std(1, keepdims=True))
    logits = 10 * s
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    ref = -logp[np.arange(len(logp)), idx.reshape(-1).numpy()].mean()
    assert abs(feature_loss(f, idx, codebook).item() - ref) < 1e-5 * ref
    with pytest.raises(ValueError, match="features"):
        feature_loss(f[:, :4], idx, codebook)


def test_hinge_losses():
    real, fake = torch.tensor([[2.0, 0.5], [-1.0, 1.0]]), torch.tensor([[-2.0, 0.0], [1.0, -0.5]])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0 + 0.5 + 2 + 0) / 4 + 0.5 * (0 + 1 + 2 + 0.5) / 4)
    assert hinge_g_loss(fake).item() == pytest.approx(0.375)


# ----------------------------------------------------------------------------------------- official names
def test_official_names_and_shapes_of_the_paper_networks():
    cfg = texture_preset("paper")
    gen, dis = TextureGenerator(cfg), Discriminator(cfg)
    g = {k: tuple(e.to_tf(e.target.detach().numpy()).shape) for k, e in official.texture_names(gen).items()}
    d = {k: tuple(e.to_tf(e.target.detach().numpy()).shape) for k, e in official.discriminator_names(dis).items()}
    assert len(g) == 2 * (17 + 3 + 1) and len(d) == 3 * 6
    assert g["texture_generator/gated_conv2d_0/W"] == (5, 5, 5, 64)
    assert g["texture_generator/gated_conv2d_4/W"] == (3, 3, 64, 256)  # on the structure map (D = 64)
    assert g["texture_generator/gated_deconv2d_0/W"] == (3, 3, 128, 256)
    assert g["texture_generator/gated_conv2d_14/W"] == (3, 3, 256, 256)
    assert g["texture_generator/gated_deconv2d_2/W"] == (3, 3, 64, 64)
    assert g["texture_generator/gated_conv2d_16/W"] == (3, 3, 32, 64)
    assert g["texture_generator/conv2d_0/W"] == (3, 3, 32, 3)
    assert d["texture_discriminator/snconv2d_0/W"] == (5, 5, 4, 64)
    assert d["texture_discriminator/snconv2d_5/W"] == (5, 5, 256, 256)
    assert d["texture_discriminator/snconv2d_5/u"] == (1, 256)
