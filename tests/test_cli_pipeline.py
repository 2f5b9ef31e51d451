"""The whole pipeline from the command line: three tiny runs -> export -> sample; convert-official."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import pyinpaint
from pyinpaint.cli import main


@pytest.fixture(scope="module")
def model_dir(stage_images, tiny_vq_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    common = ["--data", str(stage_images), "--config", "tiny", "--steps", "2", "--batch-size", "2",
              "--device", "cpu", "--quiet"]
    assert main(["train", "structure", "--vqvae", str(tiny_vq_run), "--out", str(root / "st"), *common]) == 0
    assert main(["train", "texture", "--vqvae", str(tiny_vq_run), "--out", str(root / "tx"), *common]) == 0
    out = root / "model"
    assert main(["export", "--vqvae", str(tiny_vq_run), "--structure", str(root / "st"), "--texture",
                 str(root / "tx"), "--out", str(out)]) == 0
    return out


@pytest.fixture
def photo_and_mask(tmp_path):
    img = skdata.astronaut()[60:160, 150:270]  # 100 x 120, not the model's size or aspect
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[30:70, 40:90] = 255
    Image.fromarray(img).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png", img, mask > 0


def test_export_writes_one_model_directory(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["format"] == "pyinpaint-model"
    assert (model_dir / "model.safetensors").exists()


def test_cli_sample(model_dir, photo_and_mask, tmp_path, capsys):
    photo, mask_file, img, hole = photo_and_mask
    out = tmp_path / "out"
    assert main(["sample", str(photo), str(mask_file), "-n", "3", "-o", str(out), "--model", str(model_dir),
                 "--seed", "4", "--device", "cpu", "--quiet"]) == 0
    results = sorted(out.glob("photo_0*.png"))
    assert len(results) == 3
    for r in results:
        a = np.asarray(Image.open(r))
        assert a.shape == img.shape
        assert np.array_equal(a[~hole], img[~hole])  # known pixels untouched
    grid = Image.open(out / "photo_grid.png")
    assert grid.size == (5 * 120 + 4 * 2, 100)
    assert "seed 4" in capsys.readouterr().out
    again = tmp_path / "again"
    assert main(["sample", str(photo), str(mask_file), "-n", "3", "-o", str(again), "--model", str(model_dir),
                 "--seed", "4", "--device", "cpu", "--quiet"]) == 0
    for a, b in zip(results, sorted(again.glob("photo_0*.png"))):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_python_api_matches_cli(model_dir, photo_and_mask, tmp_path):
    photo, mask_file, img, hole = photo_and_mask
    images = pyinpaint.sample(img, hole, n=2, seed=4, model=model_dir, device="cpu")
    assert [im.size for im in images] == [(120, 100)] * 2
    out = tmp_path / "cli"
    assert main(["sample", str(photo), str(mask_file), "-n", "2", "-o", str(out), "--model", str(model_dir),
                 "--seed", "4", "--device", "cpu", "--quiet"]) == 0
    for im, f in zip(images, sorted(out.glob("photo_0*.png"))):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(f)))


def test_cli_sample_errors(model_dir, photo_and_mask, tmp_path, capsys):
    photo, _, img, _ = photo_and_mask
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(tmp_path / "small_mask.png")
    assert main(["sample", str(photo), str(tmp_path / "small_mask.png"), "-o", str(tmp_path / "o"),
                 "--model", str(model_dir), "--device", "cpu", "--quiet"]) == 1
    assert "size" in capsys.readouterr().err
    assert main(["sample", str(photo), str(tmp_path / "small_mask.png"), "-o", str(tmp_path / "o"),
                 "--model", str(tmp_path / "nope"), "--device", "cpu", "--quiet"]) == 1


def test_cli_convert_official(parity_dir, tmp_path, capsys):
    out = tmp_path / "official"
    assert main(["convert-official", str(parity_dir / "model.ckpt"), "--out", str(out),
                 "--config", str(parity_dir / "config.json")]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vqvae"]["image_size"] == 128 and config["structure"]["heads"] == 4
    capsys.readouterr()
    assert main(["convert-official", str(parity_dir / "model.ckpt"), "--out", str(tmp_path / "o2")]) == 1
    assert "image_size" in capsys.readouterr().err


def test_help_is_complete(capsys):
    for cmd in (["--help"], ["train", "--help"], ["train", "vqvae", "--help"], ["train", "structure", "--help"],
                ["train", "texture", "--help"], ["eval", "vqvae", "--help"], ["eval", "structure", "--help"],
                ["sample", "--help"], ["export", "--help"], ["convert-official", "--help"], ["entropy", "--help"],
                ["models", "--help"], ["masks", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0
        assert "usage: pyinpaint" in capsys.readouterr().out
