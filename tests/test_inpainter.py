"""The inference API on a tiny random model: the path of one call, every input type, errors, ranking."""
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import pyinpaint.inpainter as inpainter_module
from pyinpaint.config import structure_preset, vqvae_preset
from pyinpaint.inpainter import Inpainter, InpaintWarning, read_image, read_mask, sample
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.modelfile import save_model

from conftest import lively_generator

H, W = 100, 150  # not square, not the model's 64


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def inp(model_dir):
    return Inpainter.load(model_dir, "cpu")


@pytest.fixture(scope="module")
def no_dis(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inpainter") / "nodis"
    save_model(path, VQVAE(vqvae_preset("tiny")), StructureGenerator(structure_preset("tiny")), lively_generator())
    return Inpainter.load(path, "cpu")


@pytest.fixture(scope="module")
def image():
    return np.ascontiguousarray(skdata.astronaut()[40:40 + H, 120:120 + W])


@pytest.fixture(scope="module")
def hole():
    m = np.zeros((H, W), bool)
    m[30:70, 50:110] = True
    return m


def _arrays(images):
    return [np.asarray(im) for im in images]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b)))


def test_sample_keeps_known_pixels_and_input_size(inp, image, hole):
    images = inp.sample(image, hole, n=3, seed=1)
    assert len(images) == 3
    for im in images:
        a = np.asarray(im)
        assert im.mode == "RGB" and im.size == (W, H) and a.shape == (H, W, 3)
        assert np.array_equal(a[~hole], image[~hole])  # bit-exact outside the hole
        assert (a[hole] != image[hole]).any()  # something was generated
        assert im.info["seed"] == 1


def test_seeds(inp, image, hole):
    a = inp.sample(image, hole, n=3, seed=7)
    assert _same(a, inp.sample(image, hole, n=3, seed=7))
    b = inp.sample(image, hole, n=3, seed=8)
    assert not any(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b)))
    # the samples of one call differ from each other
    codes = inp.inpaint(image, hole, n=3, seed=7).codes
    assert not torch.equal(codes[0], codes[1])
    # seed=None draws a fresh seed, reported with the images, which reproduces them
    fresh = inp.sample(image, hole, n=2)
    assert isinstance(fresh[0].info["seed"], int)
    assert _same(fresh, inp.sample(image, hole, n=2, seed=fresh[0].info["seed"]))


def test_every_input_type_gives_the_same_images(inp, image, hole, tmp_path):
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(hole.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    ref = inp.sample(image, hole, n=2, seed=3)
    images = [str(tmp_path / "img.png"), tmp_path / "img.png", Image.fromarray(image), image,
              torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(image).permute(2, 0, 1),
              image.astype(np.float32) / 255]
    masks = [tmp_path / "mask.png", Image.fromarray(hole.astype(np.uint8) * 255), Image.fromarray(hole), hole,
             hole.astype(np.uint8) * 255, hole.astype(np.float32), torch.from_numpy(hole),
             torch.from_numpy(hole).float()[None], torch.from_numpy(hole)[None, None].to(torch.uint8)]
    for img in images:
        assert _same(inp.sample(img, hole, n=2, seed=3), ref), type(img)
    for m in masks:
        assert _same(inp.sample(image, m, n=2, seed=3), ref), type(m)


def test_greyscale_and_rgba_inputs_warn_and_work(inp, image, hole, tmp_path):
    grey = np.asarray(Image.fromarray(image).convert("L"))
    with pytest.warns(InpaintWarning, match="greyscale"):
        out = inp.sample(Image.fromarray(grey), hole, n=1, seed=0)[0]
    a = np.asarray(out)
    assert out.mode == "RGB" and np.array_equal(a[~hole], np.repeat(grey[:, :, None], 3, 2)[~hole])
    with pytest.warns(InpaintWarning, match="greyscale"):
        inp.sample(grey, hole, n=1, seed=0)
    rgba = np.concatenate([image, np.full((H, W, 1), 17, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for src in (Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png", rgba):
        with pytest.warns(InpaintWarning, match="alpha"):
            out = inp.sample(src, hole, n=1, seed=0)[0]
        assert np.array_equal(np.asarray(out)[~hole], image[~hole])
    with pytest.warns(InpaintWarning, match="palette"):
        inp.sample(Image.fromarray(image).convert("P"), hole, n=1, seed=0)


@pytest.mark.parametrize("img,mask,n,match", [
    ("image", np.zeros((H, W + 1), bool), 1, r"sizes differ: image is 150x100, mask is 151x100"),
    (torch.full((3, H, W), float("nan")), "hole", 1, "NaN"),
    (torch.full((3, H, W), 1.5), "hole", 1, r"must be in \[0, 1\]"),
    (-np.ones((H, W, 3), np.float32), "hole", 1, r"must be in \[0, 1\]"),
    (torch.zeros(H, W, 3), "hole", 1, "channels first"),
    ([[1, 2, 3]], "hole", 1, "several images need as many masks"),  # a list is several images
    ("image", "hole", 0, "n must be a positive integer"),
    ("image", "hole", 2.5, "n must be a positive integer"),
    ("image", np.ones((H, W), bool), 1, "covers every pixel.*nothing to condition on"),
    ("image", np.full((H, W), np.nan), 1, "mask contains NaN"),
    ("image", -np.ones((H, W)), 1, ">= 0"),
    ("image", np.zeros((H, W, 3)), 1, "single channel"),
    ("image", Image.fromarray(np.dstack([np.zeros((H, W), np.uint8), np.ones((H, W), np.uint8),
                                         np.zeros((H, W), np.uint8)])), 1, "single-channel"),
    ("image", 3, 1, "unsupported mask type int"),
])
def test_input_errors(inp, image, hole, img, mask, n, match):
    img = image if isinstance(img, str) and img == "image" else img
    mask = hole if isinstance(mask, str) and mask == "hole" else mask
    with pytest.raises(ValueError, match=match):
        inp.sample(img, mask, n=n, seed=0)


def test_option_errors(inp, no_dis, image, hole, tmp_path):
    with pytest.raises(ValueError, match="unknown sampler 'fancy': available cached, naive"):
        inp.sample(image, hole, n=1, sampler="fancy")
    with pytest.raises(ValueError, match="top_k"):
        inp.sample(image, hole, n=1, top_k=33)
    with pytest.raises(ValueError, match="temperature"):
        inp.sample(image, hole, n=1, temperature=0)
    with pytest.raises(ValueError, match="seed"):
        inp.sample(image, hole, n=1, seed="x")
    with pytest.raises(ValueError, match="rank=True needs a discriminator"):
        no_dis.sample(image, hole, n=2, rank=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inp.sample(tmp_path / "missing.png", hole)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        inp.sample(tmp_path / "broken.png", hole)


def test_empty_mask_returns_copies(inp, image):
    with pytest.warns(InpaintWarning, match="mask is empty"):
        images = inp.sample(image, np.zeros((H, W), bool), n=3)
    assert len(images) == 3 and all(np.array_equal(a, image) for a in _arrays(images))


def test_thin_holes_survive_the_downscale(inp, image):
    hole = np.zeros((H, W), bool)
    hole[37, 10:140] = True  # a 1-pixel horizontal line
    hole[10:90, 101] = True  # and a vertical one
    prepared = inp.prepare(image, hole)
    m = prepared.m[0, 0]
    s = inp.image_size
    assert prepared.strategy == "resize"  # the lines span the image: the window is the whole image
    top = (W - H) // 2  # mirrored to a W x W square, never stretched
    row, col = int((37 + top) * s / W), int(101 * s / W)
    assert m[row, int(10 * s / W) + 1:int(140 * s / W) - 1].min() == 1  # the line is a hole at model size
    assert m[int((10 + top) * s / W) + 1:int((90 + top) * s / W) - 1, col].min() == 1
    assert m.sum() < 2 * (s + s)  # and stays thin (a line of one or two model pixels)
    out = np.asarray(inp.sample(image, hole, n=1, seed=0)[0])
    changed = (out != image).any(axis=2)
    assert changed[hole].mean() > 0.5 and not changed[~hole].any()


def test_smaller_input_than_the_model(inp, image):
    small, hole = image[:40, :30], np.zeros((40, 30), bool)
    hole[10:20, 5:15] = True
    out = np.asarray(inp.sample(small, hole, n=1, seed=0)[0])
    assert out.shape == (40, 30, 3) and np.array_equal(out[~hole], small[~hole])


def test_rank_reorders_by_discriminator_score(inp, image, hole):
    plain = inp.inpaint(image, hole, n=4, seed=5)
    ranked = inp.inpaint(image, hole, n=4, seed=5, rank=True)
    assert sorted(ranked.order) == [0, 1, 2, 3]
    assert torch.all(ranked.scores[:-1] >= ranked.scores[1:])
    assert _same(ranked.images, [plain.images[i] for i in ranked.order])
    scores = inp.score(plain.prepared, plain.completed)
    torch.testing.assert_close(scores[ranked.order], ranked.scores)
    assert [im.info["sample"] for im in ranked.images] == ranked.order


def test_progress_and_lower_level_pieces(inp, image, hole):
    calls = []
    result = inp.inpaint(image, hole, n=2, seed=0, progress=lambda done, total: calls.append((done, total)))
    s = inp.image_size // 8
    assert calls == [(i + 1, s * s) for i in range(s * s)]
    assert result.codes.shape == (2, s, s) and result.completed.shape == (2, 3, 64, 64)
    pictures = inp.decode_structures(result.codes)
    assert pictures.shape == (2, 3, 64, 64) and pictures.abs().max() <= 1
    # the completion keeps the resized input outside the model-size hole
    known = result.prepared.m.expand(2, 3, -1, -1) == 0
    assert torch.equal(result.completed[known], result.prepared.x.expand(2, -1, -1, -1)[known])


def test_module_sample(model_dir, image, hole, tmp_path, monkeypatch):
    monkeypatch.setattr(inpainter_module, "WEIGHTS", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="shipped model 'faces' is missing from this installation"):
        sample(image, hole, n=1)
    inpainter_module.clear_cache()
    a = sample(image, hole, n=2, seed=4, model=model_dir, device="cpu")
    assert inpainter_module.get_inpainter(model_dir, "cpu") is inpainter_module.get_inpainter(str(model_dir), "cpu")
    assert _same(a, Inpainter.load(model_dir, "cpu").sample(image, hole, n=2, seed=4))


def test_read_helpers():
    assert read_image(np.zeros((2, 3, 3), np.uint8)).shape == (2, 3, 3)
    assert read_image(torch.ones(1, 3, 2, 3)).max() == 255
    assert read_mask(np.array([[0, 1], [255, 0]], np.uint8)).tolist() == [[False, True], [True, False]]
    assert read_mask(np.array([[0.0, 0.2]])).tolist() == [[False, True]]


def test_invert_flips_the_mask_convention(inp, model_dir, image, hole):
    ref = inp.sample(image, hole, n=2, seed=5)
    assert _same(inp.sample(image, ~hole, n=2, seed=5, invert=True), ref)
    assert _same(sample(image, (~hole).astype(np.uint8) * 255, n=2, seed=5, model=model_dir, device="cpu",
                        invert=True), ref)


def test_shipped_models_by_name(monkeypatch):
    paths = {inpainter_module.model_path(name) for name in ("faces", "faces-128", None)}
    assert paths == {inpainter_module.DEFAULT_MODEL}
    assert inpainter_module.model_path("./faces") == inpainter_module.Path("faces")  # a path, not the name
    listed = inpainter_module.shipped_models()
    assert [m["name"] for m in listed] == list(inpainter_module.SHIPPED)
    assert listed[0]["default"] and listed[0]["image_size"] == 128 and "All-Age-Faces" in listed[0]["trained_on"]
    # shipping another model = a folder + a name
    monkeypatch.setitem(inpainter_module.SHIPPED, "scenes", "faces-128")
    assert inpainter_module.model_path("scenes") == inpainter_module.DEFAULT_MODEL
    assert [m["name"] for m in inpainter_module.shipped_models()] == ["faces", "scenes"]
    assert Inpainter.load("faces", "cpu").image_size == 128


def test_resolve_device():
    assert inpainter_module.resolve_device("cpu") == torch.device("cpu")
    assert inpainter_module.resolve_device("auto") == inpainter_module.resolve_device(None)
    with pytest.raises(ValueError, match="unknown device"):
        inpainter_module.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            inpainter_module.resolve_device("cuda")
