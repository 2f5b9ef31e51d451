"""`pyinpaint eval inpaint` and `pyinpaint demo`: the metrics, the baselines, the cases, the files written."""
import csv
import math

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from pyinpaint.cli import main
from pyinpaint.evaluate import (BASELINES, NVIDIA_BLOCKS, _cases, baseline_fill, eval_inpaint, format_summary,
                                hole_metrics, nvidia_block, pairwise_l1, summarize)

cv2 = pytest.importorskip("cv2", reason="the baselines need opencv-python-headless (pip install '.[test]')")


def _hole(shape=(32, 40)):
    hole = np.zeros(shape, bool)
    hole[8:20, 10:30] = True
    return hole


def _ramp(shape=(32, 40)):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return np.stack([4 * x, 5 * y, 2 * x + 3 * y], -1).clip(0, 255).astype(np.uint8)


def test_hole_metrics_known_values():
    truth, hole = _ramp(), _hole()
    same = hole_metrics(truth, truth, hole)
    assert same["psnr"] == math.inf and same["l1"] == 0 and same["ssim"] == pytest.approx(1.0)
    off = truth.astype(np.int16)
    off[hole] += 10  # 10 levels off inside the hole only (the ramp stays below 246 there)
    m = hole_metrics(off.astype(np.uint8), truth, hole)
    assert m["psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert m["l1"] == pytest.approx(10 / 255)
    assert m["ssim"] < 1
    # pixels outside the hole do not count
    outside = truth.copy()
    outside[~hole] = 0
    assert hole_metrics(outside, truth, hole)["psnr"] == math.inf


def test_baselines_fill_only_the_hole():
    truth, hole = _ramp(), _hole()
    masked = truth.copy()
    masked[hole] = 0
    for name in BASELINES:
        fill = baseline_fill(name, masked, hole)
        assert fill.shape == truth.shape and fill.dtype == np.uint8
        assert np.array_equal(fill[~hole], truth[~hole]), name
    mean = baseline_fill("mean", masked, hole)
    assert np.array_equal(mean[hole][0], np.round(truth[~hole].mean(0)).astype(np.uint8))
    # diffusion methods continue a smooth ramp far better than a flat fill
    assert hole_metrics(baseline_fill("telea", masked, hole), truth, hole)["psnr"] > \
        hole_metrics(mean, truth, hole)["psnr"] + 5
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_fill("magic", masked, hole)


def test_pairwise_l1_and_summaries():
    truth, hole = _ramp(), _hole()
    brighter = truth.astype(np.int16)
    brighter[hole] += 6
    assert pairwise_l1([truth], hole) == 0
    assert pairwise_l1([truth, brighter.astype(np.uint8)], hole) == pytest.approx(6 / 255)
    three = [truth, brighter.astype(np.uint8), truth]  # pairs: 6, 0, 6 -> mean 4
    assert pairwise_l1(three, hole) == pytest.approx(4 / 255)
    s = summarize([{"psnr": 20.0, "ssim": 0.5, "l1": 0.1}, {"psnr": 10.0, "ssim": 0.7, "l1": 0.3}])
    assert s == {"psnr_best": 20.0, "psnr_mean": 15.0, "ssim_best": 0.7, "ssim_mean": pytest.approx(0.6),
                 "l1_best": 0.1, "l1_mean": pytest.approx(0.2)}


def test_spread():
    from pyinpaint.evaluate import spread

    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread([1, 2], 5) == [1, 2]


def test_nvidia_blocks():
    assert nvidia_block("masks/00000.png") == "01-10%"
    assert nvidia_block("01999.png") == "01-10%"
    assert nvidia_block("02000.png") == "10-20%"
    assert nvidia_block("11999.jpg") == "50-60%"
    assert nvidia_block("12000.png") is None and nvidia_block("mask_7.png") is None and nvidia_block("7.png") is None
    assert len(NVIDIA_BLOCKS) == 6


@pytest.fixture(scope="module")
def eval_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-images")
    for i, img in enumerate([skdata.astronaut(), skdata.chelsea(), skdata.coffee()]):
        Image.fromarray(img[:256, :256]).resize((48, 48), Image.BILINEAR).save(root / f"im{i}.png")
    return root


@pytest.fixture(scope="module")
def nvidia_masks(tmp_path_factory):
    """NVIDIA-numbered files in two blocks (3 in 01-10%, 2 in 20-30%) and nothing else."""
    root = tmp_path_factory.mktemp("nvidia")
    rng = np.random.default_rng(0)
    for number in (5, 17, 1500, 4001, 5999):
        m = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(0, 40, 2)
        m[y:y + 16, x:x + 20] = 255
        Image.fromarray(m).save(root / f"{number:05d}.png")
    return root


def test_cases(eval_images, nvidia_masks):
    from pyinpaint.data import list_images

    images = list_images(eval_images)
    cases = _cases(images, ["center", str(nvidia_masks)], 48, per_block=2, seed=0)
    blocks = [c.block for c in cases]
    assert blocks == ["center"] * 3 + ["01-10%"] * 2 + ["20-30%"] * 2
    assert all(c.hole.shape == (48, 48) and c.hole.any() for c in cases)
    assert [c.image for c in cases[3:5]] == images[:2]  # case j of a block takes image j
    again = _cases(images, [str(nvidia_masks)], 48, per_block=2, seed=0)
    assert [c.mask for c in again] == [c.mask for c in cases[3:]]  # seeded: the same subset every time
    assert len(_cases(images, [str(nvidia_masks)], 48, per_block=10, seed=0)) == 5  # a block has what it has
    with pytest.raises(ValueError, match="folder of masks"):
        _cases(images, ["no/such/dir"], 48, per_block=2, seed=0)


def test_eval_inpaint_end_to_end(tiny_model_dir, eval_images, nvidia_masks, tmp_path):
    out = tmp_path / "eval"
    res = eval_inpaint(tiny_model_dir, eval_images, ["center", str(nvidia_masks)], n=3, size=48, per_block=1,
                       out=out, progress=False)
    assert res["cases"] == 3 + 2
    rows = res["rows"]
    assert len(rows) == 5 * (1 + len(BASELINES))
    ours = [r for r in rows if r["method"] == "pyinpaint"]
    for r in ours:
        assert r["psnr_best"] >= r["psnr_mean"] and r["l1_best"] <= r["l1_mean"] and r["ssim_best"] >= r["ssim_mean"]
        assert r["diversity"] > 0 and r["seconds"] > 0
    assert all(r["diversity"] == 0 for r in rows if r["method"] != "pyinpaint")
    assert set(res["summary"]) == {"center", "01-10%", "20-30%", "all"}
    assert res["summary"]["all"]["pyinpaint"]["cases"] == 5
    with open(out / "results.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) and float(written[0]["psnr_best"]) == pytest.approx(rows[0]["psnr_best"])
    assert (out / "summary.csv").read_text().startswith("block,method,cases,")
    picture = Image.open(out / "best_worst.png")
    assert picture.size[1] == 5 * 48 + 4 * 2  # fewer than 9 cases: every case once
    table = format_summary(res["summary"], 3)
    assert "best-of-3 PSNR minus Telea" in table and "01-10%" in table
    # the same seed gives the same numbers
    again = eval_inpaint(tiny_model_dir, eval_images, ["center"], n=3, size=48, per_block=1, progress=False)
    assert [r["psnr_best"] for r in again["rows"]] == [r["psnr_best"] for r in rows[:3 * (1 + len(BASELINES))]]
    # cases filled one at a time instead of in shared batches: the same numbers
    alone = eval_inpaint(tiny_model_dir, eval_images, ["center"], n=3, size=48, per_block=1, progress=False,
                         batch_images=1)
    assert [r["psnr_best"] for r in alone["rows"]] == pytest.approx([r["psnr_best"] for r in again["rows"]],
                                                                     abs=0.05)


def test_eval_inpaint_errors(tiny_model_dir, eval_images, tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        eval_inpaint(tiny_model_dir, eval_images, ["center"], n=0, progress=False)
    with pytest.raises(ValueError, match="unknown baseline"):
        eval_inpaint(tiny_model_dir, eval_images, ["center"], baselines=("telea", "paint"), progress=False)
    with pytest.raises(ValueError, match="limit"):
        eval_inpaint(tiny_model_dir, eval_images, ["center"], limit=0, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError):
        eval_inpaint(tiny_model_dir, empty, ["center"], progress=False)


def test_eval_inpaint_cli(tiny_model_dir, eval_images, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["eval", "inpaint", "--model", str(tiny_model_dir), "--images", str(eval_images), "--masks", "random",
                 "-n", "2", "--size", "48", "--baselines", "telea", "-o", str(out), "--quiet", "--upscale", "2",
                 "--strategy", "crop"]) == 0
    text = capsys.readouterr().out
    assert "96 px" in text and "strategy crop" in text and "sharp" in text
    assert "random" in text and "telea" in text and "ns " not in text and "minus Telea" in text
    assert (out / "results.csv").exists()
    assert main(["eval", "inpaint", "--model", str(tiny_model_dir), "--images", str(eval_images), "--masks", "center",
                 "--baselines", "photoshop", "--quiet"]) == 1  # runtime error: exit 1 (2 = argparse usage errors)


def test_demo_cli(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo.png"
    assert main(["demo", "--model", str(tiny_model_dir), "-o", str(out), "-n", "3", "--mask", "stroke"]) == 0
    grid = Image.open(out)
    assert grid.size == (5 * 256 + 4 * 2, 256)  # original, masked, 3 completions of the 256 px face
    assert "3 completions" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit code 2
        main(["demo", "--model", str(tiny_model_dir), "-o", str(out), "-n", "0", "--overwrite"])
    assert e.value.code == 2
    assert main(["demo", "--model", str(tiny_model_dir), "-o", str(out)]) == 1  # exists: refused without --overwrite


def test_best_worst_picture_shows_the_extreme_cases(tiny_model_dir, eval_images, nvidia_masks, tmp_path):
    """More than 8 cases: the rows are the 4 cases furthest above Telea's PSNR (best first), then the 4 furthest
    below (worst first); each row starts with the original and the masked image of its case."""
    from pyinpaint.data import list_images
    from pyinpaint.evaluate import _load_eval_image

    out = tmp_path / "eval"
    size, gap = 48, 2
    masks = ["center", "random", "stroke", str(nvidia_masks)]
    res = eval_inpaint(tiny_model_dir, eval_images, masks, n=2, size=size, per_block=2, out=out, progress=False)
    assert res["cases"] == 3 * 3 + 4
    psnr = {(r["case"], r["method"]): r["psnr_best"] for r in res["rows"]}
    cases = sorted({r["case"] for r in res["rows"]})
    margin = sorted(cases, key=lambda c: (psnr[(c, "pyinpaint")] - psnr[(c, "telea")], c))
    expected = margin[-4:][::-1] + margin[:4]
    picture = np.asarray(Image.open(out / "best_worst.png").convert("RGB")).astype(int)
    assert picture.shape[0] == 8 * size + 7 * gap
    by_case = {r["case"]: r for r in res["rows"] if r["method"] == "pyinpaint"}
    all_cases = _cases(list_images(eval_images), masks, size, 2, 0)
    for row, c in enumerate(expected):
        case = all_cases[c]
        assert case.image.name == by_case[c]["image"]
        truth = _load_eval_image(case.image, size).astype(int)
        masked = truth.copy()
        masked[case.hole] = 128
        top = row * (size + gap)
        assert np.abs(picture[top:top + size, :size] - truth).max() <= 1
        assert np.abs(picture[top:top + size, size + gap:2 * size + gap] - masked).max() <= 1


def test_sharpness():
    from pyinpaint.evaluate import sharpness

    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)
    hole = np.zeros((60, 60), bool)
    hole[20:40, 20:40] = True
    assert sharpness(noise, hole) == pytest.approx(1.0, abs=0.15)  # the same texture inside and around
    flat = noise.copy()
    flat[hole] = 128
    assert sharpness(flat, hole) < 0.01  # a flat fill has no detail (the seam itself does not count)
    blurred = noise.copy()
    blurred[hole] = np.asarray(Image.fromarray(noise).resize((15, 15)).resize((60, 60), Image.BILINEAR))[hole]
    assert 0.01 < sharpness(blurred, hole) < 0.6
    thin = np.zeros((60, 60), bool)
    thin[30, 10:50] = True  # no interior
    assert math.isnan(sharpness(noise, thin))


def test_eval_inpaint_upscale_and_strategy(tiny_model_dir, eval_images):
    res = eval_inpaint(tiny_model_dir, eval_images, ["box"], n=2, size=48, limit=2, upscale=3, strategy="crop",
                       baselines=("telea",), progress=False)
    assert res["size"] == 144 and res["strategy"] == "crop"
    rows = res["rows"]
    assert {r["method"] for r in rows} == {"pyinpaint", "telea"}
    assert all(r["sharpness"] >= 0 and r["sharpness_truth"] > 0 for r in rows if not math.isnan(r["sharpness"]))
    assert "sharpness" in res["summary"]["all"]["pyinpaint"]
    with pytest.raises(ValueError, match="unknown strategy"):
        eval_inpaint(tiny_model_dir, eval_images, ["box"], strategy="zoom", progress=False)
    with pytest.raises(ValueError, match="upscale"):
        eval_inpaint(tiny_model_dir, eval_images, ["box"], upscale=0, progress=False)


def test_eval_refuses_to_replace_results_without_overwrite(tiny_model_dir, eval_images, tmp_path):
    """Existing result files in --out are never replaced silently: refused before any work, named in the error."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "summary.csv").write_text("mine\n")
    with pytest.raises(FileExistsError, match="summary.csv"):
        eval_inpaint(tiny_model_dir, eval_images, ["center"], n=2, size=48, limit=1, out=out, progress=False)
    assert (out / "summary.csv").read_text() == "mine\n"
    eval_inpaint(tiny_model_dir, eval_images, ["center"], n=2, size=48, limit=1, out=out, overwrite=True,
                 baselines=(), progress=False)
    assert (out / "summary.csv").read_text() != "mine\n"
