"""The crop strategy: window planning, cut and paste (pure functions), and its use by the Inpainter."""
import numpy as np
import pytest
import torch
from skimage import data as skdata

from pyinpaint.crop import Window, cut, hole_boxes, paste, plan, window_for
from pyinpaint.inpainter import Inpainter


def test_hole_boxes_are_8_connected_components():
    hole = np.zeros((20, 30), bool)
    hole[2:5, 3:6] = True  # a square
    hole[5, 6] = True  # touches it diagonally: same component
    hole[10:12, 20:29] = True  # a bar
    hole[15, 0] = True  # one pixel
    hole[2:9, 12] = True  # a U: two arms joined at the bottom
    hole[2:9, 16] = True
    hole[8, 12:17] = True
    assert sorted(hole_boxes(hole)) == sorted([(2, 3, 6, 7), (10, 20, 12, 29), (15, 0, 16, 1), (2, 12, 9, 17)])
    assert hole_boxes(np.zeros((4, 4), bool)) == []
    assert hole_boxes(np.ones((4, 5), bool)) == [(0, 0, 4, 5)]


def test_window_size_margin_and_clipping():
    # a 20 x 40 hole in a 1000 x 800 image, model 64: side 2 x 40 = 80, centred on the box
    assert window_for((100, 200, 120, 240), (1000, 800), 64) == Window(70, 180, 80, 80)
    # a tiny hole: at least the model's size
    assert window_for((500, 500, 502, 502), (1000, 800), 64) == Window(469, 469, 64, 64)
    # at the border: shifted inside the image, never cut short
    assert window_for((0, 790, 10, 800), (1000, 800), 64) == Window(0, 736, 64, 64)
    # larger than the image's height: clipped to it (a rectangle, padded to a square when cut)
    w = window_for((40, 100, 60, 300), (120, 800), 64)
    assert (w.top, w.height, w.width) == (0, 120, 400) and w.left == 0


def test_plan_strategies_and_merging():
    hole = np.zeros((600, 900), bool)
    hole[100:130, 100:130] = True
    hole[400:420, 700:740] = True
    used, windows = plan(hole, 64, "auto")
    assert used == "crop" and len(windows) == 2
    assert all(hole[w.slices].any() for w in windows)
    covered = np.zeros_like(hole)
    for w in windows:
        covered[w.slices] = True
    assert covered[hole].all()  # every hole pixel lies in a window
    # two close holes: their windows overlap, so they merge into one window holding both
    near = np.zeros((600, 900), bool)
    near[100:120, 100:120] = True
    near[100:120, 150:170] = True
    used, windows = plan(near, 64, "crop")
    assert len(windows) == 1 and near[windows[0].slices].sum() == near.sum()
    for a in range(len(windows)):
        for b in range(a + 1, len(windows)):
            assert not windows[a].overlaps(windows[b])
    # resize: the whole image; auto on an image no larger than the model, or when the window is the whole image
    assert plan(hole, 64, "resize") == ("resize", [Window(0, 0, 600, 900)])
    assert plan(hole[:60, :60] | True, 64, "auto")[0] == "resize"
    big = np.zeros((200, 200), bool)
    big[20:180, 20:180] = True
    assert plan(big, 64, "auto") == ("resize", [Window(0, 0, 200, 200)])
    assert plan(big, 64, "crop") == ("crop", [Window(0, 0, 200, 200)])
    with pytest.raises(ValueError, match="unknown strategy 'tile'"):
        plan(hole, 64, "tile")


def test_cut_mirrors_to_a_square_and_paste_writes_only_the_hole():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)
    hole = np.zeros((50, 120), bool)
    hole[20:30, 40:60] = True
    window = Window(0, 10, 50, 100)  # 50 x 100: mirrored by 25 rows above and below
    x, m = cut(image, hole, window, 100)
    assert x.shape == (3, 100, 100) and m.shape == (1, 100, 100)
    got = np.round((x.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(got[25:75], image[:, 10:110])  # same size: no resampling, the window in the middle
    assert np.array_equal(got[24], image[0, 10:110]) and np.array_equal(got[0], image[24, 10:110])  # mirrored
    assert torch.equal(m[0, 25:75] > 0, torch.from_numpy(hole[:, 10:110]))
    # a pasted completion changes the hole only, at its place
    completed = torch.full((3, 100, 100), -1.0)  # black
    canvas = image.copy()
    paste(canvas, hole, window, completed)
    assert np.array_equal(canvas[~hole], image[~hole]) and (canvas[hole] == 0).all()
    # at another model size the mask is max-pooled: a one-pixel line survives the downscale (with its two mirror
    # images in the padding above and below: the hole is mirrored with the image, so no hidden pixel is context)
    thin = np.zeros((50, 120), bool)
    thin[33, :] = True
    _, m = cut(image, thin, Window(0, 0, 50, 120), 16)
    assert m.sum() == 3 * 16 and bool((m[0].amax(1) > 0).sum() == 3)


@pytest.fixture(scope="module")
def inp(tiny_model_dir):
    return Inpainter.load(tiny_model_dir, "cpu")


def test_inpainter_crop_strategy(inp):
    """A 300 x 400 photo with two small holes and a 64 px model: one window per hole, filled as one batch, known
    pixels bit-exact; the result differs from resize; n samples stay one batch per window."""
    image = np.ascontiguousarray(skdata.astronaut()[:300, :400])
    hole = np.zeros((300, 400), bool)
    hole[40:60, 50:80] = True
    hole[200:230, 300:320] = True
    res = inp.inpaint(image, hole, n=3, seed=3)
    assert res.prepared.strategy == "crop" and len(res.prepared.windows) == 2
    assert res.prepared.x.shape == (2, 3, 64, 64) and res.codes.shape[0] == 2 * 3
    for im in res.images:
        a = np.asarray(im)
        assert a.shape == image.shape and np.array_equal(a[~hole], image[~hole]) and (a[hole] != image[hole]).any()
    again = inp.inpaint(image, hole, n=3, seed=3, strategy="crop")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(res.images, again.images))
    resized = inp.inpaint(image, hole, n=3, seed=3, strategy="resize")
    assert resized.prepared.strategy == "resize" and resized.prepared.windows == [Window(0, 0, 300, 400)]
    assert not np.array_equal(np.asarray(resized.images[0]), np.asarray(res.images[0]))
    ranked = inp.inpaint(image, hole, n=3, seed=3, rank=True)
    assert sorted(ranked.order) == [0, 1, 2] and ranked.scores.shape == (3,)
    for i, j in enumerate(ranked.order):
        assert np.array_equal(np.asarray(ranked.images[i]), np.asarray(res.images[j]))
    with pytest.raises(ValueError, match="unknown strategy"):
        inp.sample(image, hole, n=1, strategy="stretch")


def test_crop_keeps_the_fill_at_the_photo_s_resolution(inp):
    """A small hole in a large image: under crop the model sees the hole at about half a window, not a few
    pixels of the whole photo, so much more of its model-size mask is hole."""
    image = np.ascontiguousarray(np.tile(skdata.astronaut(), (2, 2, 1)))  # 1024 x 1024
    hole = np.zeros(image.shape[:2], bool)
    hole[500:532, 600:632] = True
    cropped = inp.prepare(image, hole)
    resized = inp.prepare(image, hole, "resize")
    assert cropped.strategy == "crop" and cropped.windows == [Window(484, 584, 64, 64)]
    assert cropped.m.sum() == 32 * 32 and resized.m.sum() <= 9  # 1:1 against 16:1
