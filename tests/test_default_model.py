"""The model shipped inside the package: present in the installation, used by default, offline, and sane."""
import numpy as np
import pytest
from PIL import Image

import pyinpaint
from pyinpaint.cli import demo_image, main
from pyinpaint.inpainter import DEFAULT_MODEL, Inpainter, default_model, get_inpainter
from pyinpaint.modelfile import read_config


def test_the_default_model_ships_with_the_package():
    path = default_model()  # raises when the installation lacks it: a packaging error must fail here
    assert path == DEFAULT_MODEL and (path / "model.safetensors").stat().st_size > 10e6
    card = (path / "README.md").read_text()
    for needed in ("All-Age-Faces", "research", "steps", "PSNR", "bits/dim", "mask"):
        assert needed in card, f"the model card does not mention {needed!r}"
    cfg = read_config(path)
    assert cfg["vqvae"]["image_size"] == 128


@pytest.fixture(scope="module")
def face():
    image = np.asarray(demo_image())
    hole = np.zeros(image.shape[:2], bool)
    hole[96:176, 72:184] = True  # nose and mouth
    return image, hole


def test_sample_uses_the_default_model(face):
    image, hole = face
    a = pyinpaint.sample(image, hole, n=3, seed=0)
    b = pyinpaint.sample(image, hole, n=3, seed=0)
    assert get_inpainter(None).model.path == DEFAULT_MODEL
    arrays = [np.asarray(im) for im in a]
    assert all(x.shape == image.shape for x in arrays)
    assert all(np.array_equal(x[~hole], image[~hole]) for x in arrays)  # known pixels exactly the input's
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(arrays, b))  # same seed, same images
    assert not np.array_equal(arrays[0][hole], arrays[1][hole])  # diverse
    # the fills are a face's colours, not noise or a flat grey: closer to the truth than the grey of the masked input
    truth = image[hole].astype(np.float64)
    for x in arrays:
        assert x[hole].std() > 5
        assert np.abs(x[hole] - truth).mean() < np.abs(128 - truth).mean()


def test_default_model_on_an_odd_photo():
    """Any size and aspect: the model works at 128 px and the result comes back at the input's size."""
    from skimage import data

    image = data.coffee()[:300, :450]
    hole = np.zeros(image.shape[:2], bool)
    hole[100:180, 200:260] = True
    out = Inpainter.load(default_model(), "cpu").sample(image, hole, n=1, seed=1)[0]
    assert out.size == (450, 300) and np.array_equal(np.asarray(out)[~hole], image[~hole])


def test_demo_command(tmp_path, capsys, monkeypatch):
    """`pyinpaint demo` after a plain `pip install .`: its photo ships in the package, no scikit-image or SciPy."""
    import sys

    from pyinpaint.cli import DEMO_IMAGE

    monkeypatch.setitem(sys.modules, "skimage", None)  # any import of them now fails
    monkeypatch.setitem(sys.modules, "scipy", None)
    assert DEMO_IMAGE.is_file() and DEMO_IMAGE.parent.parent == DEFAULT_MODEL.parent.parent  # inside the package
    assert "public domain" in (DEMO_IMAGE.parent / "README.md").read_text()
    out = tmp_path / "demo.png"
    assert main(["demo", "-o", str(out), "-n", "2"]) == 0
    assert Image.open(out).size == (4 * 256 + 3 * 2, 256)
    assert "2 completions" in capsys.readouterr().out
    assert demo_image().size == (256, 256)
