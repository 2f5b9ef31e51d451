"""The command line as a tool: exit codes, fail fast, folders of images, output folders, masks, models, help."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import pyinpaint
from pyinpaint.cli import build_parser, main


@pytest.fixture
def folders(tmp_path):
    """Two photos and their masks in two folders (paired by name), of different sizes."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    photo = skdata.astronaut()
    for name, (h, w) in {"face": (60, 80), "wide": (40, 100)}.items():
        Image.fromarray(np.ascontiguousarray(photo[:h, 100:100 + w])).save(images / f"{name}.png")
        m = np.zeros((h, w), np.uint8)
        m[10:30, 20:50] = 255
        Image.fromarray(m).save(masks / f"{name}.png")
    return images, masks


def _run(tiny_model_dir, *args):
    return main(["sample", *map(str, args), "--model", str(tiny_model_dir), "--device", "cpu", "--seed", "3"])


def test_folder_run_writes_name_nn_and_keeps_known_pixels(tiny_model_dir, folders, tmp_path, capsys):
    images, masks = folders
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", out) == 0
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["face_00.png", "face_01.png", "face_grid.png", "wide_00.png",
                                                      "wide_01.png", "wide_grid.png"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())  # the user's umask, not 0600
    err = capsys.readouterr().err
    assert "[1/2]" in err and "[2/2]" in err and "\r" not in err  # not a terminal: one line per image, no bar
    for name in ("face", "wide"):
        img = np.asarray(Image.open(images / f"{name}.png"))
        hole = np.asarray(Image.open(masks / f"{name}.png")) > 0
        res = np.asarray(Image.open(out / f"{name}_00.png"))
        assert res.shape == img.shape and np.array_equal(res[~hole], img[~hole])
    # the same images as the Python API with the same seed
    api = pyinpaint.sample(images / "wide.png", masks / "wide.png", n=2, seed=3, model=tiny_model_dir, device="cpu")
    assert np.array_equal(np.asarray(api[1]), np.asarray(Image.open(out / "wide_01.png")))


def test_folder_images_share_batches(tiny_model_dir, folders, tmp_path, monkeypatch):
    from pyinpaint.inpainter import Inpainter

    images, masks = folders
    groups = []
    run = Inpainter._run
    monkeypatch.setattr(Inpainter, "_run", lambda self, group, *a, **k: groups.append(len(group)) or run(self, group, *a, **k))
    assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", tmp_path / "together", "-q") == 0
    assert groups == [2]
    groups.clear()
    assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", tmp_path / "apart", "-q", "--batch-images", "1") == 0
    assert groups == [1, 1]
    names = sorted(p.name for p in (tmp_path / "together").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "apart").iterdir()) and len(names) == 6
    for name in names:  # the same samples either way
        a = np.asarray(Image.open(tmp_path / "together" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "apart" / name)).astype(int)
        assert np.abs(a - b).max() <= 1


def test_output_folder_rules(tiny_model_dir, folders, tmp_path, capsys):
    images, masks = folders
    out = tmp_path / "out"
    assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", out, "-q") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    # again: refused before any work, nothing touched
    assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", out, "-q") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --skip-existing: nothing to do
    assert _run(tiny_model_dir, images, masks, "-n", "2", "-o", out, "-q", "--skip-existing") == 0
    assert "skipped 2" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # fewer results than last time: no mix of old and new, refused or removed with --overwrite (and said so)
    assert _run(tiny_model_dir, images, masks, "-n", "1", "-o", out) == 1
    assert "older results" in capsys.readouterr().err
    assert _run(tiny_model_dir, images, masks, "-n", "1", "-o", out, "--overwrite") == 0
    assert "removing 2 older result(s)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["face_00.png", "face_grid.png", "wide_00.png", "wide_grid.png"]


def test_an_input_inside_the_output_folder_is_not_replaced(tiny_model_dir, folders, tmp_path, capsys):
    images, masks = folders
    users = images / "face_00.png"  # the user's own file, named like a result of face.png
    users.write_bytes((images / "wide.png").read_bytes())
    before = users.read_bytes()
    assert _run(tiny_model_dir, images / "face.png", masks / "face.png", "-n", "1", "-o", images, "-q") == 1
    assert "face_00.png" in capsys.readouterr().err and users.read_bytes() == before
    assert not (images / "face_grid.png").exists()
    assert _run(tiny_model_dir, images / "face.png", masks / "face.png", "-n", "1", "-o", images, "-q",
                "--overwrite") == 0
    assert users.read_bytes() != before  # replaced, as asked


def test_fail_fast_before_any_model_work(tiny_model_dir, folders, tmp_path, capsys):
    images, masks = folders
    Image.new("L", (5, 5)).save(masks / "wide.png")  # the second image's mask has the wrong size
    out = tmp_path / "out"
    assert _run(tiny_model_dir, images, masks, "-o", out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wide.png is 5x5" in err[0] and err[0].startswith("pyinpaint: error: ")
    assert not out.exists()  # nothing written, not even face's results
    (masks / "wide.png").unlink()
    (masks / "other.png").write_bytes(b"")
    assert _run(tiny_model_dir, images, masks, "-o", out) == 1
    err = capsys.readouterr().err
    assert "images without a mask" in err and "wide.png" in err and "other.png" in err
    assert _run(tiny_model_dir, images / "face.png", masks / "face.png", "-o", out, "--temperature", "1e-37") == 1
    assert "temperature" in capsys.readouterr().err and not out.exists()


def test_exit_codes_version_and_debug(tiny_model_dir, folders, tmp_path, capsys):
    images, masks = folders
    with pytest.raises(SystemExit) as e:
        main(["sample", str(images / "face.png"), str(masks / "face.png"), "-n", "0", "-o", str(tmp_path)])
    assert e.value.code == 2  # usage: argparse
    with pytest.raises(SystemExit) as e:
        main(["sample", str(images / "face.png"), str(masks / "face.png"), "-o", str(tmp_path), "--seed",
              str(2 ** 64)])
    assert e.value.code == 2 and "2**64" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pyinpaint {pyinpaint.__version__}"
    assert main(["sample", str(tmp_path / "nope.png"), str(masks / "face.png"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.png" in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "sample", str(tmp_path / "nope.png"), str(masks / "face.png"), "-o", str(tmp_path / "o")])
    assert main(["sample", str(images / "face.png"), str(masks / "face.png"), "-o", str(tmp_path / "o"),
                 "--device", "cuda:7" if not __import__("torch").cuda.is_available() else "nonsense"]) == 1
    assert "device" in capsys.readouterr().err


def test_max_pixels_option(tiny_model_dir, folders, tmp_path, capsys):
    from pyinpaint import io

    images, masks = folders
    limit = io.MAX_PIXELS
    assert _run(tiny_model_dir, images, masks, "-o", tmp_path / "o", "--max-pixels", "1000") == 1
    assert "megapixels" in capsys.readouterr().err and io.MAX_PIXELS == limit  # the setting does not leak


def test_the_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pyinpaint", "sample", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                        "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, p in action.choices.items():
                yield name, p
                for sub_name, sp in _subparsers(p):
                    yield f"{name} {sub_name}", sp


def test_every_option_has_help_and_out_quiet_mean_the_same():
    commands = dict(_subparsers(build_parser()))
    assert {"sample", "models", "masks", "entropy", "export", "convert-official", "eval inpaint"} <= set(commands)
    for name, p in commands.items():
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings} has no help"
            if "--out" in action.option_strings:
                assert action.option_strings == ["-o", "--out"], name
            if "--quiet" in action.option_strings:
                assert action.option_strings == ["-q", "--quiet"], name
            if "--device" in action.option_strings:
                assert "cpu" in action.help and "auto" in action.help
        if name not in ("models", "eval", "train", "serve"):  # serve prints only its address
            assert any("--quiet" in a.option_strings for a in p._actions), f"{name} has no -q/--quiet"


def test_masks_command(tmp_path, capsys):
    out = tmp_path / "masks"
    assert main(["masks", "stroke", "-n", "3", "--size", "80x50", "-o", str(out), "--seed", "5"]) == 0
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["stroke_00.png", "stroke_01.png", "stroke_02.png"]
    arrays = [np.asarray(Image.open(f)) for f in files]
    assert all(a.shape == (50, 80) and set(np.unique(a)) <= {0, 255} and a.any() for a in arrays)
    assert not np.array_equal(arrays[0], arrays[1])
    assert main(["masks", "stroke", "-n", "3", "--size", "80x50", "-o", str(out), "--seed", "5"]) == 1
    assert main(["masks", "stroke", "-n", "3", "--size", "80x50", "-o", str(out), "--seed", "5", "--overwrite"]) == 0
    assert all(np.array_equal(a, np.asarray(Image.open(f))) for a, f in zip(arrays, files))  # seeded
    Image.new("RGB", (33, 21)).save(tmp_path / "photo.png")
    assert main(["masks", "box", "-n", "1", "--like", str(tmp_path / "photo.png"), "-o", str(tmp_path / "b")]) == 0
    assert Image.open(tmp_path / "b" / "box_00.png").size == (33, 21)
    assert main(["masks", "box", "--size", "ten", "-o", str(tmp_path / "c")]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_models_command(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("faces ") and "128 px" in out and "default" in out and "All-Age-Faces" in out
    assert main(["models", "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "faces" and listed[0]["image_size"] == 128


def test_entropy_takes_a_shipped_model_by_name(tmp_path, capsys):
    face = skdata.astronaut()[20:220, 130:330]
    Image.fromarray(face).save(tmp_path / "face.png")
    out = tmp_path / "entropy.png"
    assert main(["entropy", "faces", str(tmp_path / "face.png"), "center", "-o", str(out), "--device", "cpu"]) == 0
    assert Image.open(out).size == (3 * 128 + 2 * 2, 128) and "mean entropy" in capsys.readouterr().out
    assert main(["entropy", "faces", str(tmp_path / "face.png"), "center", "-o", str(out), "--device", "cpu"]) == 1
    assert "--overwrite" in capsys.readouterr().err
