"""pyinpaint.io: the one atomic writer (umask, no silent replacing), reading images and masks (EXIF orientation,
pixel limit, dtypes, warnings), pairing inputs and planning outputs."""
import os
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pyinpaint import io
from pyinpaint.io import InpaintWarning, pair_inputs, plan_outputs, read_image, read_mask, read_pair


# ---------------------------------------------------------------------------------------------- writing
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_users_file_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.save_image(tmp_path / "a.png", Image.new("RGB", (2, 2)))
        io.save_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.png", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_never_replaces_without_overwrite(tmp_path):
    target = tmp_path / "README.md"
    target.write_text("the user's own")
    with pytest.raises(FileExistsError, match="README.md already exists"):
        io.atomic_write(target, lambda tmp: open(tmp, "w").write("ours"), overwrite=False)
    assert target.read_text() == "the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary file left behind
    io.atomic_write(target, lambda tmp: open(tmp, "w").write("ours"), overwrite=True)
    assert target.read_text() == "ours"
    io.atomic_write(tmp_path / "new.txt", lambda tmp: open(tmp, "w").write("x"), overwrite=False)
    assert (tmp_path / "new.txt").read_text() == "x"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "x.json"
    io.save_json(target, {"a": 1})

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(target, broken)
    assert io.load_json(target) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_export_never_replaces_a_users_readme(tmp_path, tiny_model_dir):
    from pyinpaint.modelfile import load_model, save_model

    m = load_model(tiny_model_dir)
    out = tmp_path / "model"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="README.md"):
        save_model(out, m.vqvae, m.structure, m.generator, m.discriminator)
    assert (out / "README.md").read_text() == "my notes" and not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------- EXIF orientation
def _rotated_jpeg(path, a: np.ndarray, orientation: int = 6):
    exif = Image.Exif()
    exif[0x0112] = orientation  # 6: the camera was turned; viewers rotate 90 degrees clockwise
    Image.fromarray(a).save(path, format="JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_applied_to_image_and_mask(tmp_path):
    rng = np.random.default_rng(0)
    raw = (rng.random((40, 60, 3)) * 255).astype(np.uint8)  # stored 60 wide, 40 high
    raw[:10, :10] = 255  # a white corner: stored top-left
    _rotated_jpeg(tmp_path / "photo.jpg", raw)
    img = read_image(tmp_path / "photo.jpg")
    assert img.shape == (60, 40, 3)  # displayed upright: 40 wide, 60 high
    assert img[:10, -10:].mean() > 240  # orientation 6: the stored top-left corner is shown top-right
    hole = np.zeros((40, 60), np.uint8)
    hole[:10, :10] = 255
    _rotated_jpeg(tmp_path / "mask.jpg", np.repeat(hole[:, :, None], 3, axis=2))
    with pytest.warns(InpaintWarning, match=r"mask .*mask\.jpg is a JPEG.*PNG"):
        m = read_mask(tmp_path / "mask.jpg")
    assert m.shape == (60, 40) and m[:8, -8:].all() and not m[20:, :20].any()
    with pytest.warns(InpaintWarning):
        image, hole_read = read_pair(tmp_path / "photo.jpg", tmp_path / "mask.jpg")
    assert image.shape[:2] == hole_read.shape
    # the training loader keeps the official behaviour (no orientation) unless asked
    assert np.asarray(io.load_image(tmp_path / "photo.jpg")).shape == (40, 60, 3)
    assert np.asarray(io.load_image(tmp_path / "photo.jpg", orient=True)).shape == (60, 40, 3)
    # a PIL image opened by the user is turned too
    with Image.open(tmp_path / "photo.jpg") as im:
        assert read_image(im).shape == (60, 40, 3)


# ---------------------------------------------------------------------------------------------- limits and dtypes
def test_decompression_bomb_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (13000, 13000)).save(bomb)  # 169 megapixels in a few hundred kilobytes
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"bomb\.png has 13000x13000 = 169\.0 megapixels.*MAX_PIXELS"):
        read_image(bomb)
    with pytest.raises(ValueError, match="megapixels"):
        read_mask(bomb)
    assert time.perf_counter() - t0 < 5  # refused from the header, not decoded


def test_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    monkeypatch.setattr(io, "MAX_PIXELS", 10_000)
    with pytest.raises(ValueError, match="limit of 0.01"):
        read_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="megapixels"):
        read_image(np.zeros((200, 100, 3), np.uint8))
    monkeypatch.setattr(io, "MAX_PIXELS", 20_000)
    assert read_image(tmp_path / "a.png").shape == (100, 200, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_tensors(dtype):
    x = torch.linspace(0, 1, 3 * 4 * 5).reshape(3, 4, 5)
    ref = read_image(x.to(torch.float32))
    got = read_image(x.to(dtype))
    assert got.shape == (4, 5, 3) and np.abs(got.astype(int) - ref).max() <= 2  # bfloat16 keeps 8 bits
    assert read_mask(torch.tensor([[0.0, 0.5]], dtype=dtype)).tolist() == [[False, True]]


def test_bad_tensors_get_one_line_errors():
    with pytest.raises(ValueError, match=r"must be float in \[0, 1\] or uint8, got dtype torch.complex64"):
        read_image(torch.zeros(3, 4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match="NaN"):
        read_image(torch.full((3, 4, 4), float("nan"), dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="NaN"):
        read_mask(torch.full((4, 4), float("nan"), dtype=torch.bfloat16))


# ---------------------------------------------------------------------------------------------- mask warnings
def _warnings_of(fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fn()
    return [str(x.message) for x in w if issubclass(x.category, InpaintWarning)]


def test_inverted_looking_mask_warns_with_the_fix(tmp_path):
    keep = np.full((50, 80), 255, np.uint8)
    keep[15:35, 20:60] = 0  # white = keep: the "hole" is everything but a box
    Image.fromarray(keep).save(tmp_path / "keep.png")
    msgs = _warnings_of(lambda: read_mask(tmp_path / "keep.png"))
    assert len(msgs) == 1 and "keep.png looks inverted" in msgs[0] and "--invert-mask" in msgs[0]
    assert _warnings_of(lambda: read_mask(tmp_path / "keep.png", invert=True)) == []
    assert read_mask(tmp_path / "keep.png", invert=True).sum() == 20 * 40
    # a large hole that leaves the border alone is not suspicious
    big = np.zeros((50, 80), np.uint8)
    big[2:48, 2:78] = 255
    assert _warnings_of(lambda: read_mask(big)) == []


def test_grey_mask_warns(tmp_path):
    m = np.zeros((40, 40), np.uint8)
    m[10:30, 10:30] = 255
    m[9, 10:30] = 100  # a soft edge
    m[30, 10:30] = 30
    Image.fromarray(m).save(tmp_path / "soft.png")
    msgs = _warnings_of(lambda: read_mask(tmp_path / "soft.png"))
    assert len(msgs) == 1 and "soft.png has grey values" in msgs[0] and "PNG" in msgs[0]
    Image.fromarray((m == 255).astype(np.uint8) * 255).save(tmp_path / "hard.png")
    assert _warnings_of(lambda: read_mask(tmp_path / "hard.png")) == []


def test_pair_errors_name_the_files(tmp_path):
    Image.new("RGB", (30, 20)).save(tmp_path / "photo.png")
    Image.new("L", (20, 30)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match=r"photo\.png is 30x20, mask .*mask\.png is 20x30"):
        read_pair(tmp_path / "photo.png", tmp_path / "mask.png")
    Image.new("L", (30, 20), 255).save(tmp_path / "full.png")
    with pytest.raises(ValueError, match=r"full\.png covers every pixel.*invert"):
        read_pair(tmp_path / "photo.png", tmp_path / "full.png")
    with pytest.raises(FileNotFoundError, match=r"image .*nope\.png does not exist"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        read_image(tmp_path / "broken.png")


# ---------------------------------------------------------------------------------------------- many inputs
def _touch_images(folder, names, size=(8, 6)):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB" if folder.name == "images" else "L", size).save(folder / n)


def test_pair_inputs_by_folder_and_by_pairs(tmp_path):
    _touch_images(tmp_path / "images", ["b.jpg", "a.png", "c.webp"])
    _touch_images(tmp_path / "masks", ["a.png", "b.png", "c.png"])
    pairs = pair_inputs([tmp_path / "images", tmp_path / "masks"])
    assert [(p.name, p.image.name, p.mask.name) for p in pairs] == [("a", "a.png", "a.png"), ("b", "b.jpg", "b.png"),
                                                                      ("c", "c.webp", "c.png")]
    pairs = pair_inputs([tmp_path / "images" / "a.png", tmp_path / "masks" / "b.png",
                         tmp_path / "images" / "c.webp", tmp_path / "masks" / "c.png"])
    assert [p.name for p in pairs] == ["a", "c"] and pairs[0].mask.name == "b.png"


def test_pair_inputs_errors(tmp_path):
    _touch_images(tmp_path / "images", ["a.png", "b.png", "d.png"])
    _touch_images(tmp_path / "masks", ["a.png", "c.png"])
    with pytest.raises(ValueError, match=r"images without a mask.*b\.png, d\.png.*masks without an image.*c\.png"):
        pair_inputs([tmp_path / "images", tmp_path / "masks"])
    with pytest.raises(ValueError, match="come in pairs"):
        pair_inputs([tmp_path / "images" / "a.png"])
    with pytest.raises(ValueError, match="give the folder of their masks"):
        pair_inputs([tmp_path / "images"])
    with pytest.raises(ValueError, match="not a mix"):
        pair_inputs([tmp_path / "images", tmp_path / "masks" / "a.png"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        pair_inputs([tmp_path / "images" / "a.png", tmp_path / "nope.png"])
    with pytest.raises(ValueError, match="several images named a"):
        pair_inputs([tmp_path / "images" / "a.png", tmp_path / "masks" / "a.png"] * 2)


def test_plan_outputs(tmp_path):
    out = tmp_path / "out"
    plan = plan_outputs(out, ["a", "b"], 2)
    assert [p.name for p in plan.files["a"]] == ["a_00.png", "a_01.png", "a_grid.png"] and not out.exists()
    out.mkdir()
    for f in ("a_00.png", "a_01.png", "a_grid.png", "b_00.png"):
        (out / f).write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"a_00\.png, a_01\.png, a_grid\.png and 1 more.*--overwrite"):
        plan_outputs(out, ["a", "b"], 2)
    plan = plan_outputs(out, ["a", "b"], 2, skip_existing=True)
    assert plan.skip == ["a"] and plan.replace == [out / "b_00.png"]
    plan = plan_outputs(out, ["a", "b"], 2, overwrite=True)
    assert len(plan.replace) == 4 and not plan.skip
    # n smaller than last time: older results would mix with the new ones
    with pytest.raises(FileExistsError, match=r"older results of a beyond this run's 1 \(a_01\.png\)"):
        plan_outputs(out, ["a"], 1)
    plan = plan_outputs(out, ["a"], 1, overwrite=True)
    assert plan.remove == {"a": [out / "a_01.png"]} and "removing 1 older" in plan.summary()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        plan_outputs(tmp_path / "file", ["a"], 1)
    assert [p.name for p in plan_outputs(out, ["m"], 120, grid=False).files["m"]][::119] == ["m_000.png", "m_119.png"]
