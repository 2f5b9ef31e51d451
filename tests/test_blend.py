"""Poisson blending (pyinpaint.blend): the harmonic solver against a direct solve, the seam it removes, and the
``blend=`` option of the pipeline and the command line."""
import numpy as np
import pytest
import torch

from pyinpaint.blend import BLENDS, harmonic_fill, hole_box, poisson_fill_
from pyinpaint.crop import Window, paste


def _exact(values: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The harmonic fill by a direct solve: off the hole the values; in it each pixel the mean of its four
    neighbours (a neighbour outside the image counts as the pixel itself)."""
    h, w = hole.shape
    pts = list(zip(*np.nonzero(hole)))
    index = {p: i for i, p in enumerate(pts)}
    a = np.zeros((len(pts), len(pts)))
    b = np.zeros((len(pts), values.shape[0]))
    for i, (y, x) in enumerate(pts):
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            yy, xx = y + dy, x + dx
            if not (0 <= yy < h and 0 <= xx < w):
                yy, xx = y, x
            a[i, i] += 1
            if hole[yy, xx]:
                a[i, index[(yy, xx)]] -= 1
            else:
                b[i] += values[:, yy, xx]
    u = values.copy()
    sol = np.linalg.solve(a, b)
    for i, (y, x) in enumerate(pts):
        u[:, y, x] = sol[i]
    return u


def _holes():
    rng = np.random.default_rng(0)
    box = np.zeros((48, 40), bool)
    box[10:38, 8:30] = True
    box[:3, :6] = True  # a second hole at the corner: the mirror edges
    blobs = rng.random((40, 24)) < 0.5  # scattered pixels, thin strokes' worst case
    edge = np.zeros((32, 32), bool)
    edge[:, 20:] = True  # touching three borders
    return {"box": box, "blobs": blobs, "edge": edge}


@pytest.mark.parametrize("name", ["box", "blobs", "edge"])
def test_harmonic_fill_matches_a_direct_solve(name):
    hole = _holes()[name]
    rng = np.random.default_rng(1)
    values = rng.standard_normal((3, *hole.shape))  # noise on the boundary: the hardest data for the solver
    ref = _exact(values, hole)
    known = torch.from_numpy(~hole).float()[None, None]
    errors = []
    for cycles in (0, 2, 4):
        got = harmonic_fill(torch.from_numpy(values).float()[None], known, cycles)[0].double().numpy()
        assert np.array_equal(got[:, ~hole], values[:, ~hole].astype(np.float32))  # known values kept exactly
        errors.append(np.abs(got - ref).max())
    span = np.ptp(ref[:, hole])
    assert errors[1] < 0.02 * span  # the default (2 V-cycles): within 2 % of the range on noise
    assert errors[2] < errors[1] and errors[2] < 0.005 * span  # and the V-cycles keep converging


def test_harmonic_fill_reproduces_a_plane_and_ignores_unknown_values():
    h, w = 40, 56
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    plane = (0.03 * yy - 0.02 * xx + 0.5)[None, None].float()  # harmonic: the exact answer inside any hole
    known = torch.ones(1, 1, h, w)
    known[..., 8:30, 10:45] = 0
    values = plane.clone()
    values[known == 0] = float("nan")  # never read
    got = harmonic_fill(values, known)
    assert torch.isfinite(got).all()
    assert (got - plane).abs().max() < 1e-3


def test_harmonic_fill_checks_shapes_and_empty_known():
    with pytest.raises(ValueError, match="expected values"):
        harmonic_fill(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    assert torch.equal(harmonic_fill(torch.ones(2, 3, 8, 8), torch.zeros(2, 1, 8, 8)), torch.zeros(2, 3, 8, 8))


def test_poisson_fill_removes_a_colour_shift_and_keeps_texture():
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.uniform(-0.8, 0.8, (3, 64, 64))).float()
    hole = torch.zeros(64, 64, dtype=torch.bool)
    hole[20:44, 16:50] = True
    shift = torch.tensor([0.3, -0.2, 0.1])[:, None, None]
    generated = (image + shift)[None]  # the right texture in the wrong colour
    out = poisson_fill_(generated.clone(), image, hole)
    assert (out[0][:, hole] - image[:, hole]).abs().max() < 1e-4
    ring = torch.zeros_like(hole)
    ring[19:45, 15:51] = True
    ring &= ~hole  # the known pixels of the solved box: the photo; outside the box the output as generated
    assert torch.allclose(out[0][:, ring], image[:, ring], atol=1e-6)
    assert torch.equal(out[0][:, 50:], generated[0][:, 50:]) and torch.equal(out[0][:, :19], generated[0][:, :19])
    # a generated texture keeps its gradients: the correction is smooth
    texture = generated + torch.from_numpy(rng.normal(0, 0.1, (1, 3, 64, 64))).float()
    corr = poisson_fill_(texture.clone(), image, hole) - texture
    inner = corr[0][:, 22:42, 18:48]
    assert inner.diff(dim=-1).abs().mean() < 0.2 * texture[0][:, 22:42, 18:48].diff(dim=-1).abs().mean()
    # no known pixel at all: the output as generated
    assert torch.equal(poisson_fill_(generated.clone(), image, torch.ones(64, 64, dtype=torch.bool)), generated)
    assert hole_box(torch.zeros(5, 5, dtype=torch.bool)) is None
    assert hole_box(hole) == (slice(19, 45), slice(15, 51))


def test_paste_with_poisson_writes_the_hole_only_and_meets_the_border():
    rng = np.random.default_rng(3)
    canvas = np.full((96, 80, 3), 120, np.uint8)
    canvas[..., 1] = rng.integers(100, 140, (96, 80))
    hole = np.zeros((96, 80), bool)
    hole[30:60, 25:50] = True
    window = Window(0, 0, 96, 80)
    raw = torch.full((3, 32, 32), 0.5)  # a generator output far brighter than the photo (120 -> -0.06)
    plain, blended = canvas.copy(), canvas.copy()
    paste(plain, hole, window, raw, "paste")
    paste(blended, hole, window, raw, "poisson")
    assert np.array_equal(blended[~hole], canvas[~hole]) and np.array_equal(plain[~hole], canvas[~hole])
    assert np.abs(plain[hole].astype(int) - 120).mean() > 60
    assert np.abs(blended[hole][:, [0, 2]].astype(int) - 120).max() <= 1  # flat channels: exactly the photo
    with pytest.raises(ValueError, match="unknown blend"):
        paste(canvas.copy(), hole, window, raw, "feather")


@pytest.fixture(scope="module")
def inpainter(tiny_model_dir):
    from pyinpaint.inpainter import Inpainter

    return Inpainter.load(tiny_model_dir)


def _face() -> np.ndarray:
    from PIL import Image
    from skimage import data as skdata

    return np.asarray(Image.fromarray(skdata.astronaut()[20:220, 130:330]).resize((64, 64), Image.BILINEAR))


def test_pipeline_blend_option(inpainter):
    image = _face()
    hole = np.zeros((64, 64), bool)
    hole[20:40, 16:44] = True
    a = inpainter.inpaint(image, hole, 2, seed=5, blend="paste")
    b = inpainter.inpaint(image, hole, 2, seed=5)  # the default
    assert BLENDS[0] == "poisson"
    assert torch.equal(a.codes, b.codes) and torch.equal(a.completed, b.completed)  # same samples, same completions
    for x, y in zip(a.images, b.images):
        x, y = np.asarray(x), np.asarray(y)
        assert np.array_equal(x[~hole], image[~hole]) and np.array_equal(y[~hole], image[~hole])
        assert not np.array_equal(x[hole], y[hole])
    # "paste" is the official composite: the model-size completion resized, its hole pixels written
    canvas = image.copy()
    paste(canvas, hole, a.prepared.windows[0], a.completed[0], "paste")
    assert np.array_equal(canvas, np.asarray(a.images[0]))
    with pytest.raises(ValueError, match="unknown blend"):
        inpainter.sample(image, hole, 1, blend="seamless")
    many = list(inpainter.inpaint_many([(image, hole)], 2, seed=5, blend="paste"))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(many[0].images, a.images))


def test_cli_blend_flag(tmp_path, tiny_model_dir):
    from PIL import Image

    from pyinpaint.cli import main

    Image.fromarray(_face()).save(tmp_path / "face.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 16:44] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    outs = {}
    for blend in BLENDS:
        out = tmp_path / blend
        assert main(["sample", str(tmp_path / "face.png"), str(tmp_path / "mask.png"), "-n", "1", "--seed", "3",
                     "--model", str(tiny_model_dir), "--blend", blend, "-o", str(out), "--quiet"]) == 0
        outs[blend] = [np.asarray(Image.open(f)) for f in sorted(out.glob("*.png"))]
    assert outs["poisson"] and not np.array_equal(outs["poisson"][0], outs["paste"][0])
    grids = {}
    for blend in BLENDS:  # the demo takes it too
        out = tmp_path / f"demo-{blend}.png"
        assert main(["demo", "--model", str(tiny_model_dir), "-o", str(out), "-n", "1", "--blend", blend,
                     "--quiet"]) == 0
        grids[blend] = np.asarray(Image.open(out))
    assert not np.array_equal(grids["poisson"], grids["paste"])
    with pytest.raises(SystemExit):
        main(["sample", str(tmp_path / "face.png"), str(tmp_path / "mask.png"), "--blend", "feather"])
