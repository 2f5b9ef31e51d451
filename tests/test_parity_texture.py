"""Parity of stage 3 (texture generator, attention transfer, SN-PatchGAN discriminator, losses) with the
official TensorFlow networks (fixtures in ../shared/parity)."""
import numpy as np
import pytest
import torch
from conftest import load_parity, nchw, nhwc, rel_err

from pyinpaint import official
from pyinpaint.config import TextureConfig, VQVAEConfig
from pyinpaint.models.texture import (Discriminator, TextureGenerator, attention_transfer, complete, feature_loss,
                                      hinge_d_loss, hinge_g_loss)
from pyinpaint.models.vqvae import VQVAE

TOL = 1e-5  # max |ours - official| / max |official| (the fixtures' README)
TOL_TG = 5e-4  # texture generator and attention outputs: softmax scale 50 amplifies float32 rounding


@pytest.fixture
def fixture(parity_dir):
    flags, weights, io = load_parity(parity_dir)
    cfg = official.from_official_flags(TextureConfig, flags)
    gen, dis = TextureGenerator(cfg).eval(), Discriminator(cfg).eval()
    official.load_official(official.texture_names(gen), weights)
    official.load_official(official.discriminator_names(dis), weights)
    return gen, dis, weights, io


def _completed(io) -> np.ndarray:
    return io["tg.out"] * io["mask"] + io["masked_image"] * (1 - io["mask"])


def _d_in(io):
    """Reals first, then the completions of the same samples, each with its mask (the README's d_in)."""
    image = torch.cat([nchw(io["image"]), nchw(_completed(io))])
    return image, torch.cat([nchw(io["mask"])] * 2)


def test_every_official_texture_variable_is_mapped(fixture):
    gen, dis, weights, _ = fixture
    assert set(official.texture_names(gen)) == {k for k in weights if k.startswith("texture_generator/")}
    assert set(official.discriminator_names(dis)) == {k for k in weights if k.startswith("texture_discriminator/")}


@pytest.mark.parametrize("run", ["tg", "tg2"])
def test_generator_matches_official(fixture, run):
    gen, _, _, io = fixture
    with torch.no_grad():
        out, att = gen(nchw(io["masked_image"]), nchw(io["mask"]), nchw(io[f"{run}.s"]), return_attention=True)
    assert rel_err(nhwc(att["b1"]), io["tg.att_b1"]) < TOL  # pl1 does not depend on s
    assert rel_err(nhwc(att["b2"]), io[f"{run}.att_b2"]) < TOL
    assert rel_err(nhwc(att["y1"]), io[f"{run}.att_y1"]) < TOL_TG
    assert rel_err(nhwc(att["y2"]), io[f"{run}.att_y2"]) < TOL_TG
    assert rel_err(nhwc(out), io[f"{run}.out"]) < TOL_TG


@pytest.mark.parametrize("run", ["tg", "tg2"])
def test_attention_transfer_matches_official(fixture, run):
    _, _, _, io = fixture
    y1, y2 = attention_transfer(nchw(io[f"{run}.s"]), nchw(io["tg.att_b1"]), nchw(io[f"{run}.att_b2"]),
                                ksize=3, fuse_k=3, softmax_scale=50.0, fuse=True)
    assert rel_err(nhwc(y1), io[f"{run}.att_y1"]) < TOL_TG
    assert rel_err(nhwc(y2), io[f"{run}.att_y2"]) < TOL_TG


def test_ae_loss_matches_official(fixture):
    gen, _, _, io = fixture
    with torch.no_grad():
        out = gen(nchw(io["masked_image"]), nchw(io["mask"]), nchw(io["tg.s"]))
    ae = (nchw(io["image"]) - out).abs().mean().item()
    assert abs(ae - float(io["tg.ae_loss"])) <= TOL * float(io["tg.ae_loss"])


def test_completion_is_bit_exact(fixture):
    _, _, _, io = fixture
    ours = complete(nchw(io["tg.out"]), nchw(io["masked_image"]), nchw(io["mask"]))
    np.testing.assert_array_equal(nhwc(ours), _completed(io))


def test_discriminator_matches_official(fixture):
    _, dis, weights, io = fixture
    image, mask = _d_in(io)
    with torch.no_grad():
        logits = dis(image, mask, update_u=True)
    assert logits.shape == io["d.logits"].shape
    assert rel_err(logits.numpy(), io["d.logits"]) < TOL
    for i, conv in enumerate(dis.convs):
        key = f"texture_discriminator/snconv2d_{i}/u"
        assert rel_err(conv.u.numpy(), io[f"d.u_after/{key}"]) < TOL, key
        assert not np.array_equal(conv.u.numpy(), weights[key])  # it really moved
    n = io["image"].shape[0]
    d_loss, g_loss = hinge_d_loss(logits[:n], logits[n:]).item(), hinge_g_loss(logits[n:]).item()
    assert abs(d_loss - float(io["d.dis_loss"])) <= TOL * abs(float(io["d.dis_loss"]))
    assert abs(g_loss - float(io["d.gen_gan_loss"])) <= TOL * abs(float(io["d.gen_gan_loss"]))


def test_discriminator_eval_mode_keeps_u(fixture):
    _, dis, weights, io = fixture
    image, mask = _d_in(io)
    with torch.no_grad():
        logits = dis(image, mask)  # eval mode: update_u defaults to False, the output is the same
    assert rel_err(logits.numpy(), io["d.logits"]) < TOL
    for i, conv in enumerate(dis.convs):
        np.testing.assert_array_equal(conv.u.numpy(), weights[f"texture_discriminator/snconv2d_{i}/u"])


@pytest.mark.parametrize("level", ["t", "b"])
def test_feature_loss_matches_official(fixture, level):
    _, _, _, io = fixture
    f, idx = nchw(io[f"fl.enc_{level}_completed"]), torch.from_numpy(io[f"vq.idx_{level}"])
    codebook = torch.from_numpy(io[f"vq.embed_{level}"]).t()  # [D, K] -> ours [K, D]
    ref = float(io[f"fl.feature_loss_{level}"])
    assert abs(feature_loss(f, idx, codebook).item() - ref) <= TOL * abs(ref)
    for i, ref_i in enumerate(io[f"fl.feature_loss_{level}_per_sample"]):
        ours = feature_loss(f[i:i + 1], idx[i:i + 1], codebook).item()
        assert abs(ours - float(ref_i)) <= TOL * abs(float(ref_i)), i


def test_weighted_feature_loss_from_our_vq_encoder(parity_dir, fixture):
    """The whole fea_loss path: our VQ-VAE encodes the official completion, then our feature loss."""
    flags, weights, _ = load_parity(parity_dir)
    _, _, _, io = fixture
    vq = VQVAE(official.from_official_flags(VQVAEConfig, flags)).eval()
    official.load_official(official.vqvae_names(vq), weights)
    with torch.no_grad():
        enc = vq.encode(nchw(_completed(io)), update_codebooks=False)
    assert rel_err(nhwc(enc.enc_t), io["fl.enc_t_completed"]) < TOL
    assert rel_err(nhwc(enc.enc_b), io["fl.enc_b_completed"]) < TOL
    w = float(flags["fea_loss_weight"])
    loss = (w * feature_loss(enc.enc_t, torch.from_numpy(io["vq.idx_t"]), vq.encoder.vq_t.embedding)
            + w * feature_loss(enc.enc_b, torch.from_numpy(io["vq.idx_b"]), vq.encoder.vq_b.embedding))
    ref = float(io["fl.feature_loss_weighted"])
    assert abs(loss.item() - ref) <= TOL * abs(ref)


def test_export_round_trip(fixture):
    gen, dis, weights, _ = fixture
    names = {**official.texture_names(gen), **official.discriminator_names(dis)}
    assert len(names) == sum(k.startswith("texture_") for k in weights)
    for k, v in official.export_official(names).items():
        np.testing.assert_array_equal(v, weights[k], err_msg=k)
