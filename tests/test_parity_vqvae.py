"""Parity of the VQ-VAE with the official TensorFlow networks (fixtures in ../shared/parity)."""
import numpy as np
import pytest
import torch
from conftest import load_parity, nhwc, rel_err

from pyinpaint import official
from pyinpaint.config import VQVAEConfig
from pyinpaint.models.vqvae import VQVAE

TOL = 1e-5  # max |ours - official| / max |official|, float32 (the fixtures' README)


@pytest.fixture
def fixture(parity_dir):
    flags, weights, io = load_parity(parity_dir)
    cfg = official.from_official_flags(VQVAEConfig, flags)
    model = VQVAE(cfg).eval()
    official.load_official(official.vqvae_names(model), weights)
    return cfg, model, weights, io


def test_config_inferred_from_weights(fixture):
    cfg, _, weights, _ = fixture
    assert official.infer_vqvae_config(weights, image_size=cfg.image_size) == cfg


def test_every_official_vqvae_variable_is_mapped(fixture):
    _, model, weights, _ = fixture
    theirs = {k for k in weights if k.startswith(("vq_encoder/", "vq_decoder/"))}
    assert set(official.vqvae_names(model)) == theirs


def test_encoder_matches_official(fixture):
    _, model, _, io = fixture
    with torch.no_grad():
        enc = model.encode(torch.from_numpy(io["image"]).permute(0, 3, 1, 2), update_codebooks=False)
    for name, ours in [("vq.enc_t", enc.enc_t), ("vq.enc_b", enc.enc_b), ("vq.quant_t", enc.quant_t),
                       ("vq.quant_b", enc.quant_b)]:
        assert rel_err(nhwc(ours), io[name]) < TOL, name
    np.testing.assert_array_equal(enc.idx_t.numpy(), io["vq.idx_t"])
    np.testing.assert_array_equal(enc.idx_b.numpy(), io["vq.idx_b"])
    assert abs(enc.loss.item() - float(io["vq.commit_loss"])) <= TOL * abs(float(io["vq.commit_loss"]))


def test_codebooks_match_official(fixture):
    _, model, _, io = fixture
    np.testing.assert_array_equal(model.encoder.vq_t.embedding.numpy().T, io["vq.embed_t"])
    np.testing.assert_array_equal(model.encoder.vq_b.embedding.numpy().T, io["vq.embed_b"])


def test_decoder_matches_official(fixture):
    _, model, _, io = fixture
    qt = torch.from_numpy(io["vq.quant_t"]).permute(0, 3, 1, 2)
    qb = torch.from_numpy(io["vq.quant_b"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        rec = model.decode(qt, qb)
    assert rel_err(nhwc(rec), io["vq.recon"]) < TOL
    mse = float(((torch.from_numpy(io["image"]) - rec.permute(0, 2, 3, 1)) ** 2).mean())
    assert abs(mse - float(io["vq.recon_mse"])) <= 1e-5 * float(io["vq.recon_mse"])


def test_full_forward_matches_official(fixture):
    _, model, _, io = fixture
    with torch.no_grad():
        rec, _ = model(torch.from_numpy(io["image"]).permute(0, 3, 1, 2), update_codebooks=False)
    assert rel_err(nhwc(rec), io["vq.recon"]) < TOL


def test_export_round_trip(fixture):
    _, model, weights, _ = fixture
    exported = official.export_official(official.vqvae_names(model))
    for k, v in exported.items():
        np.testing.assert_array_equal(v, weights[k], err_msg=k)
