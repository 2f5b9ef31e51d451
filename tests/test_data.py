"""Tests of pyinpaint.data (image listing/loading, preprocessing recipes) and pyinpaint.masks (mask generators,
mask files).

Images come from scikit-image's bundled samples, written into tmp_path; nothing reads /work/shared.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pyinpaint import data as D
from pyinpaint import masks as M

skdata = pytest.importorskip("skimage.data")


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
def _small(a: np.ndarray, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(a).resize(size, Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    astro = _small(skdata.astronaut(), (128, 128))
    astro.save(root / "a_astronaut.jpg", quality=90)
    _small(skdata.camera(), (128, 128)).save(root / "b_camera_grey.png")  # mode L
    _small(skdata.coffee(), (150, 100)).save(root / "c_coffee_wide.webp")  # 100 x 150, non-square
    (root / "sub" / "deeper").mkdir(parents=True)
    rgba = astro.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "sub" / "deeper" / "d_astro_rgba.PNG")  # upper-case extension, RGBA
    astro.quantize(64).save(root / "sub" / "e_astro_palette.png")  # mode P
    _small(skdata.astronaut(), (40, 30)).save(root / "f_tiny.png")  # smaller than every crop
    (root / "notes.txt").write_text("not an image")
    astro.save(root / ".hidden.jpg")  # skipped: hidden
    return root


EXPECTED = [
    "a_astronaut.jpg",
    "b_camera_grey.png",
    "c_coffee_wide.webp",
    "f_tiny.png",
    "sub/deeper/d_astro_rgba.PNG",
    "sub/e_astro_palette.png",
]


# ------------------------------------------------------------------------------------------------
# Listing and loading
# ------------------------------------------------------------------------------------------------
def test_list_images_recursive_sorted_case_insensitive(image_dir):
    found = [p.relative_to(image_dir).as_posix() for p in D.list_images(image_dir)]
    assert found == EXPECTED


def test_list_images_missing_and_empty_folders_name_the_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        D.list_images(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty_dir"):
        D.list_images(empty)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="empty_dir"):
        D.list_images(empty)
    with pytest.raises(ValueError, match="empty_dir"):
        D.ImageFolder(empty)


def test_list_images_accepts_official_file_list(image_dir, tmp_path):
    flist = tmp_path / "train.flist"
    flist.write_text(f"{image_dir / 'b_camera_grey.png'}\n{image_dir / 'a_astronaut.jpg'}\n")
    assert [p.name for p in D.list_images(flist)] == ["b_camera_grey.png", "a_astronaut.jpg"]
    bad = tmp_path / "bad.txt"
    bad.write_text("does_not_exist.png\n")
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        D.list_images(bad)


def test_load_image_converts_every_mode_to_rgb(image_dir):
    for p in D.list_images(image_dir):
        im = D.load_image(p)
        assert im.mode == "RGB", p
    grey = np.asarray(D.load_image(image_dir / "b_camera_grey.png"))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 0], grey[..., 2])
    # RGBA: alpha dropped, colours kept (as tf decode_png(channels=3))
    rgba = Image.open(image_dir / "sub" / "deeper" / "d_astro_rgba.PNG")
    assert np.array_equal(np.asarray(D.load_image(rgba.filename)), np.asarray(rgba)[..., :3])


def test_load_image_16bit_grey_keeps_high_byte(tmp_path):
    a = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    rgb = np.asarray(D.load_image(tmp_path / "g16.png"))
    assert np.array_equal(rgb[..., 0], (a >> 8).astype(np.uint8))


def test_corrupt_and_truncated_files_raise_value_error_naming_the_file(image_dir, tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"this is not a png at all")
    good = (image_dir / "a_astronaut.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    for name in ("garbage.png", "truncated.jpg"):
        with pytest.raises(ValueError, match=name):
            D.load_image(tmp_path / name)
    ds = D.ImageFolder(tmp_path, size=64, recipe="resize")
    with pytest.raises(ValueError, match="garbage.png"):
        ds[0]


# ------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", D.RECIPES)
@pytest.mark.parametrize("size", [64, 96])
def test_recipe_shape_range_dtype_and_determinism(image_dir, recipe, size):
    ds = D.ImageFolder(image_dir, size=size, recipe=recipe, seed=3)
    assert len(ds) == len(EXPECTED)
    again = D.ImageFolder(image_dir, size=size, recipe=recipe, seed=3)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, size, size) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.01
        assert torch.equal(x, ds[i]) and torch.equal(x, again[i])
    r = repr(ds)
    assert recipe in r and f"images={len(EXPECTED)}" in r and f"size={size}" in r


@pytest.mark.parametrize("recipe", ["faces", "scenes"])
def test_random_recipes_depend_only_on_seed_epoch_index(image_dir, recipe):
    ds = D.ImageFolder(image_dir, size=64, recipe=recipe, seed=7)
    i = 0  # 128x128 astronaut: many possible crops
    by_epoch = []
    for e in range(6):
        ds.set_epoch(e)
        by_epoch.append(ds[i])
    # resumable: a fresh dataset jumping straight to epoch 4, in any order, gives the same crop
    fresh = D.ImageFolder(image_dir, size=64, recipe=recipe, seed=7)
    _ = fresh[3]
    fresh.set_epoch(4)
    assert torch.equal(fresh[i], by_epoch[4])
    assert torch.equal(fresh[(2, i)], by_epoch[2])  # explicit (epoch, index)
    assert torch.equal(fresh.get(i, epoch=5), by_epoch[5])
    # crops vary over epochs and with the seed
    assert len({tuple(x.flatten()[:50].tolist()) for x in by_epoch}) > 1
    other = D.ImageFolder(image_dir, size=64, recipe=recipe, seed=8)
    assert any(not torch.equal(other.get(i, e), by_epoch[e]) for e in range(6))
    # no global RNG involved
    np.random.seed(0)
    torch.manual_seed(0)
    a = ds.get(i, 1)
    np.random.seed(1)
    torch.manual_seed(1)
    assert torch.equal(a, ds.get(i, 1))


@pytest.mark.parametrize("recipe", ["resize", "center-crop"])
def test_evaluation_recipes_ignore_epoch(image_dir, recipe):
    ds = D.ImageFolder(image_dir, size=64, recipe=recipe)
    x = ds[2]
    ds.set_epoch(5)
    assert torch.equal(x, ds[2])


def test_tf1_legacy_bilinear_matches_hand_values():
    # TF 1.x resize_bilinear(align_corners=False, half_pixel_centers=False): src = dst * in / out
    a = np.array([[0, 1], [2, 3]], np.float32)[:, :, None]
    out = D._tf1_resize_bilinear(a, 4, 4)[..., 0]
    expected = np.array([[0, 0.5, 1, 1], [1, 1.5, 2, 2], [2, 2.5, 3, 3], [2, 2.5, 3, 3]], np.float32)
    assert np.array_equal(out, expected)


def test_faces_recipe_is_tf_resize_then_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3)).astype(np.uint8)
    x = D.preprocess(img, 256, "faces", np.random.default_rng(5))
    big = D._tf1_resize_bilinear(img.astype(np.float32), 266, 266) / 127.5 - 1
    r = np.random.default_rng(5)
    top, left = int(r.integers(0, 11)), int(r.integers(0, 11))
    assert np.allclose(x.numpy().transpose(1, 2, 0), big[top : top + 256, left : left + 256], atol=1e-6)
    # other sizes keep the 266/256 ratio: 128 -> 133, 64 -> 67 (half rounded up)
    assert D.preprocess(img, 64, "faces", 0).shape == (3, 64, 64)


def test_resize_identity_and_scaling_exact():
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    x = D.preprocess(img, 64, "resize")
    assert torch.equal(x, torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1))
    assert x.min() >= -1 and x.max() <= 1


def test_center_crop_of_wide_image_is_the_centre():
    img = np.random.default_rng(2).integers(0, 256, (64, 128, 3)).astype(np.uint8)
    x = D.preprocess(img, 64, "center-crop").numpy().transpose(1, 2, 0)
    assert np.allclose(x, img[:, 32:96] / 127.5 - 1, atol=1e-6)
    tall = D.preprocess(np.ascontiguousarray(img.transpose(1, 0, 2)), 32, "center-crop")
    assert tall.shape == (3, 32, 32)


def test_scenes_crop_is_a_window_of_the_original():
    img = np.random.default_rng(3).integers(0, 256, (80, 96, 3)).astype(np.uint8)
    x = D.preprocess(img, 64, "scenes", 11).numpy().transpose(1, 2, 0)
    ref = img.astype(np.float32) / 127.5 - 1
    windows = [(t, l) for t in range(17) for l in range(33)]
    hits = [(t, l) for t, l in windows if np.allclose(ref[t : t + 64, l : l + 64], x, atol=1e-6)]
    assert len(hits) == 1


def test_tiny_image_is_scaled_up_for_random_crops(image_dir):
    for recipe in D.RECIPES:
        ds = D.ImageFolder(image_dir, size=96, recipe=recipe)
        assert ds[EXPECTED.index("f_tiny.png")].shape == (3, 96, 96)


def test_bad_recipe_and_size(image_dir):
    with pytest.raises(ValueError, match="center-crop"):
        D.ImageFolder(image_dir, recipe="crop")
    with pytest.raises(ValueError):
        D.ImageFolder(image_dir, size=0)
    ds = D.ImageFolder(image_dir, size=64)
    with pytest.raises(IndexError):
        ds[len(ds)]


# ------------------------------------------------------------------------------------------------
# Generated masks
# ------------------------------------------------------------------------------------------------
def _check_mask(m: torch.Tensor, h: int, w: int):
    assert m.shape == (1, h, w) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}


SEEDED = {
    "center_box": lambda s, seed: M.center_box_mask(s, seed),
    "box": lambda s, seed: M.box_mask(s, seed),
    "stroke": lambda s, seed: M.stroke_mask(s, seed),
    "random": lambda s, seed: M.random_mask(s, seed),
}


@pytest.mark.parametrize("kind", list(SEEDED))
@pytest.mark.parametrize("size", [256, 64, (48, 80)])
def test_generated_masks_shape_binary_reproducible(kind, size):
    h, w = (size, size) if isinstance(size, int) else size
    make = SEEDED[kind]
    masks = [make(size, seed) for seed in range(12)]
    for m in masks:
        _check_mask(m, h, w)
        assert 0 < m.mean() < 1
    assert torch.equal(make(size, 5), masks[5])
    assert torch.equal(make(size, np.random.default_rng(5)), masks[5])  # seed == Generator(seed)
    assert len({m.numpy().tobytes() for m in masks}) >= 6  # seeds give different masks (few boxes at 64)


@pytest.mark.parametrize("size", [256, 128, 64, (96, 160)])
def test_center_mask_is_exactly_a_quarter(size):
    h, w = (size, size) if isinstance(size, int) else size
    m = M.center_mask(size)
    _check_mask(m, h, w)
    assert m.sum().item() == h * w / 4
    rows, cols = torch.nonzero(m[0], as_tuple=True)
    assert (rows.min().item(), cols.min().item()) == (h // 4, w // 4)
    if size == 256:
        assert m[0, 64:192, 64:192].all() and m.sum() == 128 * 128


def test_box_masks_within_official_bounds():
    fr = np.array([M.box_mask(256, s).mean().item() for s in range(300)])
    assert fr.min() >= 96 * 96 / 256**2 and fr.max() <= 0.25  # 96..128 px a side
    assert fr.min() < 0.17 and fr.max() > 0.23  # the whole range is used
    for s in range(50):
        m = M.box_mask(256, s, max_delta=0)[0]
        assert m.sum() == 128 * 128 and not m[:, -1].any() and not m[-1].any()  # t, l in [0, 128)
    centre = [M.center_box_mask(256, s)[0] for s in range(50)]
    for m in centre:
        assert m[96:160, 96:160].all() and not m[:64].any() and not m[:, 192:].any()
    assert torch.equal(M.center_box_mask(256, 3, max_delta=0), M.center_mask(256))
    small = np.array([M.box_mask(64, s).mean().item() for s in range(100)])
    assert small.min() >= 24 * 24 / 64**2 and small.max() <= 0.25  # scaled: 32 px box, delta 8


def test_stroke_mask_hole_fraction_and_width_scaling():
    fr = np.array([M.stroke_mask(256, s).mean().item() for s in range(300)])
    assert fr.min() > 0.003 and fr.max() < 0.6 and 0.08 < fr.mean() < 0.25
    fr64 = np.array([M.stroke_mask(64, s).mean().item() for s in range(300)])
    assert abs(fr64.mean() - fr.mean()) < 0.04  # sizes scaled together: similar coverage


def _official_brush_stroke_mask(H, W, r):
    """Transcription of the official net/nn.py brush_stroke_mask's generate_mask (MIT licence,
    USTC-JialunPeng/Diverse-Structure-Inpainting), with `np.random` replaced by a RandomState `r`."""
    min_num_vertex, max_num_vertex = 4, 12
    mean_angle, angle_range = 2 * math.pi / 5, 2 * math.pi / 15
    min_width, max_width = 12, 40
    average_radius = math.sqrt(H * H + W * W) / 8
    mask = Image.new("L", (W, H), 0)
    for _ in range(r.randint(1, 4)):
        num_vertex = r.randint(min_num_vertex, max_num_vertex)
        angle_min = mean_angle - r.uniform(0, angle_range)
        angle_max = mean_angle + r.uniform(0, angle_range)
        angles, vertex = [], []
        for i in range(num_vertex):
            if i % 2 == 0:
                angles.append(2 * math.pi - r.uniform(angle_min, angle_max))
            else:
                angles.append(r.uniform(angle_min, angle_max))
        h, w = mask.size
        vertex.append((int(r.randint(0, w)), int(r.randint(0, h))))
        for i in range(num_vertex):
            rad = np.clip(r.normal(loc=average_radius, scale=average_radius // 2), 0, 2 * average_radius)
            new_x = np.clip(vertex[-1][0] + rad * math.cos(angles[i]), 0, w)
            new_y = np.clip(vertex[-1][1] + rad * math.sin(angles[i]), 0, h)
            vertex.append((int(new_x), int(new_y)))
        draw = ImageDraw.Draw(mask)
        width = int(r.uniform(min_width, max_width))
        draw.line(vertex, fill=1, width=width)
        for v in vertex:
            draw.ellipse(
                (v[0] - width // 2, v[1] - width // 2, v[0] + width // 2, v[1] + width // 2), fill=1
            )
    if r.normal() > 0:
        mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # result discarded, as in the official code
    if r.normal() > 0:
        mask.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return np.asarray(mask, np.float32)


def test_stroke_mask_reproduces_official_draws_with_randomstate():
    for seed in range(5):
        ours, theirs = np.random.RandomState(seed), np.random.RandomState(seed)
        for _ in range(3):  # consecutive masks: the RNG stream stays aligned (flip draws included)
            official = _official_brush_stroke_mask(256, 256, theirs)
            assert np.array_equal(M.stroke_mask(256, ours)[0].numpy(), official)


def test_stroke_flip_option():
    # flip=True applies the official (no-op there) flips; same draws, so the same strokes mirrored
    for s in range(20):
        plain, flipped = M.stroke_mask(256, s)[0], M.stroke_mask(256, s, flip=True)[0]
        assert plain.sum() == flipped.sum()
        variants = [plain, plain.flip(1), plain.flip(0), plain.flip(0).flip(1)]
        assert any(torch.equal(flipped, v) for v in variants)


def test_random_mask_mixes_boxes_and_strokes():
    def is_box(m):
        rows = m[0].any(1).nonzero()
        cols = m[0].any(0).nonzero()
        return m.sum().item() == (len(rows) * len(cols))

    kinds = [is_box(M.random_mask(256, s)) for s in range(200)]
    assert 60 < sum(kinds) < 140


def _bands(m: torch.Tensor) -> int:
    """Number of distinct row patterns plus distinct column patterns."""
    a = m[0].numpy().astype(np.uint8)
    return len({r.tobytes() for r in a}) + len({c.tobytes() for c in a.T})


def test_protocol_alternates_boxes_and_strokes():
    for i in range(12):
        m = M.protocol_mask(256, i, seed=0)
        _check_mask(m, 256, 256)
        assert torch.equal(m, M.protocol_mask(256, i, seed=0))
        if i % 2 == 0:
            assert _bands(m) <= 14  # a union of 3 rectangles: at most 7 row and 7 column bands
            assert 64 * 64 / 256**2 <= m.mean() <= 3 * 0.25
        else:
            assert _bands(m) > 30  # strokes
    assert any(not torch.equal(M.protocol_mask(256, i, 0), M.protocol_mask(256, i, 1)) for i in range(4))
    _check_mask(M.protocol_mask((64, 96), 3), 64, 96)


# ------------------------------------------------------------------------------------------------
# Masks from files
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def mask_dir(tmp_path):
    root = tmp_path / "masks"
    root.mkdir()
    hole = np.zeros((40, 60), bool)
    hole[10:30, 5:25] = True
    Image.fromarray(hole).save(root / "m0_mode1.png")  # mode "1"
    Image.fromarray(hole.astype(np.uint8) * 255).save(root / "m1_L255.png")
    Image.fromarray(hole.astype(np.uint8)).save(root / "m2_L1.png")  # 1 = hole
    rgb = np.repeat(hole[..., None].astype(np.uint8) * 255, 3, axis=2)
    Image.fromarray(rgb).save(root / "m3_rgb_equal.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 255, np.uint8)])).save(root / "m4_rgba_equal.png")
    Image.fromarray(hole.astype(np.uint16) * 65535).save(root / "m5_I16.png")
    return root, hole


def test_mask_folder_accepts_single_channel_and_grey_rgb(mask_dir):
    root, hole = mask_dir
    mf = M.MaskFolder(root)
    assert len(mf) == 6 and "masks=6" in repr(mf)
    expected = torch.from_numpy(hole.astype(np.float32))[None]
    for i in range(len(mf)):
        assert mf[i].dtype == torch.float32
        assert torch.equal(mf[i], expected), mf.paths[i]
    inv = M.MaskFolder(root, invert=True)
    assert torch.equal(inv[0], 1 - expected)
    with pytest.raises(IndexError):
        mf[6]


def test_mask_folder_rejects_colour_masks(mask_dir):
    root, hole = mask_dir
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[hole] = (255, 0, 0)
    Image.fromarray(rgb).save(root / "z_red.png")
    mf = M.MaskFolder(root)
    with pytest.raises(ValueError) as err:
        mf[len(mf) - 1]
    assert "z_red.png" in str(err.value) and "single-channel" in str(err.value)


def test_mask_folder_resize_nearest_stays_binary(mask_dir):
    root, _ = mask_dir
    for size, hw in ((32, (32, 32)), ((80, 120), (80, 120)), (256, (256, 256))):
        mf = M.MaskFolder(root, size=size)
        for i in range(len(mf)):
            m = mf[i]
            _check_mask(m, *hw)
            assert 0.1 < m.mean() < 0.25  # 400 / 2400 = 1/6 of the image
    up = M.MaskFolder(root, size=(80, 120))[1]
    assert up.sum() == 4 * 400  # exact 2x nearest upscale


def test_mask_folder_empty_or_missing(tmp_path):
    (tmp_path / "no_masks_here").mkdir()
    with pytest.raises(ValueError, match="no_masks_here"):
        M.MaskFolder(tmp_path / "no_masks_here")
    with pytest.raises(FileNotFoundError, match="missing_masks"):
        M.MaskFolder(tmp_path / "missing_masks")


# ------------------------------------------------------------------------------------------------
# make_mask_source
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", M.MASK_SPECS)
def test_mask_source_specs(spec):
    src = M.make_mask_source(spec, 64, seed=1)
    m = src.sample(3, epoch=2)
    _check_mask(m, 64, 64)
    assert torch.equal(m, M.make_mask_source(spec, 64, seed=1).sample(3, epoch=2))
    assert spec in repr(src)
    if spec == "center":
        assert torch.equal(m, M.center_mask(64)) and torch.equal(src.sample(9, 4), m)
    elif spec == "protocol":
        assert torch.equal(m, M.protocol_mask(64, 3, seed=1)) and torch.equal(src.sample(3, 0), m)
    else:  # random kinds vary with index, epoch and seed
        others = [src.sample(i, e) for i in range(4) for e in range(3)]
        assert len({x.numpy().tobytes() for x in others}) >= 8
        other_seed = M.make_mask_source(spec, 64, seed=2)
        assert any(not torch.equal(other_seed.sample(i, 0), src.sample(i, 0)) for i in range(5))


def test_mask_source_folder_and_file(mask_dir, tmp_path):
    root, _ = mask_dir
    src = M.make_mask_source(str(root), 32, seed=0)
    m = src.sample(0, 0)
    _check_mask(m, 32, 32)
    assert torch.equal(m, M.make_mask_source(root, 32, seed=0).sample(0, 0))
    # each epoch is a permutation of the files: one pass over len(folder) indices sees every file
    picks = [src._file_index(i, 1) for i in range(6)]
    assert sorted(picks) == list(range(6))
    assert [src._file_index(i, 1) for i in range(6)] == picks
    flist = tmp_path / "masks.flist"  # official-style list of mask files
    flist.write_text("masks/m1_L255.png\nmasks/m0_mode1.png\n")
    listed = M.make_mask_source(flist, 40)
    assert listed.kind == "folder" and len(listed.folder) == 2
    one = M.make_mask_source(root / "m1_L255.png", 64, invert=True)
    assert torch.equal(one.sample(0), one.sample(5, 3)) and one.sample(0).mean() > 0.5


def test_mask_source_bad_spec_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError) as err:
        M.make_mask_source("circles", 256)
    for name in M.MASK_SPECS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="center-box"):
        M.make_mask_source(tmp_path / "no_such_folder", 256)
