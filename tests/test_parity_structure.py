"""Parity of the structure generator (condition net + PixelCNN) with the official TensorFlow networks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_parity, nchw, nhwc, rel_err

from pyinpaint import official
from pyinpaint.config import StructureConfig
from pyinpaint.models.structure import StructureGenerator

TOL = 1e-5


@pytest.fixture
def fixture(parity_dir):
    flags, weights, io = load_parity(parity_dir)
    # test.py builds the PixelCNN with dropout 0
    cfg = official.from_official_flags(StructureConfig, flags, dropout=0.0)
    model = StructureGenerator(cfg).eval()
    official.load_official(official.structure_names(model), weights)
    return model, weights, io


def test_every_official_structure_variable_is_mapped(fixture):
    model, weights, _ = fixture
    theirs = {k for k in weights if k.startswith(("structure_condition/", "structure_pixelcnn/"))}
    assert set(official.structure_names(model)) == theirs


def test_condition_net_matches_official(fixture):
    model, _, io = fixture
    with torch.no_grad():
        h = model.condition(nchw(io["masked_image"]), nchw(io["mask"]))
    assert rel_err(nhwc(h), io["sc.h"]) < TOL


@pytest.mark.parametrize("e,out", [("sp.e", "sp.logits"), ("sp.e_partial", "sp.logits_partial")])
def test_pixelcnn_logits_match_official(fixture, e, out):
    model, _, io = fixture
    with torch.no_grad():
        logits = model.pixelcnn(nchw(io[e]), nchw(io["sc.h"]))
    assert rel_err(nhwc(logits), io[out]) < TOL


def test_training_loss_matches_official(fixture):
    model, _, io = fixture
    with torch.no_grad():
        logits = model(nchw(io["masked_image"]), nchw(io["mask"]), nchw(io["sp.e"]))
    ce = F.cross_entropy(logits, torch.from_numpy(io["vq.idx_t"]), reduction="sum")
    assert abs(ce.item() - float(io["sp.ce_sum"])) <= TOL * float(io["sp.ce_sum"])


def test_causality_on_the_official_partial_map(fixture):
    model, _, io = fixture
    p = int(io["sp.partial_first_zero_pos"])
    with torch.no_grad():
        full = model.pixelcnn(nchw(io["sp.e"]), nchw(io["sc.h"])).flatten(2)
        part = model.pixelcnn(nchw(io["sp.e_partial"]), nchw(io["sc.h"])).flatten(2)
    assert torch.equal(full[..., : p + 1], part[..., : p + 1])  # positions <= p see nothing at >= p


def test_export_round_trip(fixture):
    model, weights, _ = fixture
    for k, v in official.export_official(official.structure_names(model)).items():
        np.testing.assert_array_equal(v, weights[k], err_msg=k)
