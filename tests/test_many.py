"""Several images in one call (`Inpainter.inpaint_many`, `sample` over lists): shared batches, each image's samples
as alone, grouping rules, errors."""
import numpy as np
import pytest
import torch
from skimage import data as skdata

import pyinpaint
from pyinpaint.inpainter import Inpainter, InpaintWarning


@pytest.fixture(scope="module")
def inp(tiny_model_dir):
    return Inpainter.load(tiny_model_dir, "cpu")


def _pairs():
    """Four inputs of other sizes and hole layouts: a small one (resized), a wide one with two separate holes (two
    crop windows), one whose mask is empty, a square one at the model's size."""
    astro, coffee = skdata.astronaut(), skdata.coffee()
    a = np.ascontiguousarray(astro[40:140, 120:270])
    ha = np.zeros(a.shape[:2], bool)
    ha[30:70, 50:110] = True
    b = np.ascontiguousarray(coffee[:200, :400])
    hb = np.zeros(b.shape[:2], bool)
    hb[20:40, 30:60] = True
    hb[150:180, 330:380] = True
    c = np.ascontiguousarray(astro[:80, :80])
    hc = np.zeros(c.shape[:2], bool)
    d = np.ascontiguousarray(coffee[100:164, 200:264])
    hd = np.zeros(d.shape[:2], bool)
    hd[10:30, 5:60] = True
    return [(a, ha), (b, hb), (c, hc), (d, hd)]


def _close(x, y):
    """Images equal up to one grey level (the texture generator's batched convolutions round differently)."""
    x, y = np.asarray(x).astype(int), np.asarray(y).astype(int)
    return x.shape == y.shape and np.abs(x - y).max() <= 1


@pytest.mark.parametrize("context", ["known", "sampled"])
def test_each_image_gets_what_it_gets_alone(inp, context, monkeypatch):
    pairs = _pairs()
    with pytest.warns(InpaintWarning, match="empty"):
        alone = [inp.inpaint(img, hole, n=3, seed=11, context=context) for img, hole in pairs]
    runs = []
    run = Inpainter._run
    monkeypatch.setattr(Inpainter, "_run", lambda self, group, *a, **k: runs.append(len(group)) or run(self, group, *a, **k))
    with pytest.warns(InpaintWarning, match="empty"):
        many = list(inp.inpaint_many(pairs, n=3, seed=11, context=context))
    assert runs == [3]  # the three inputs with a hole, one batch (the empty one needs no model work)
    assert len(many) == len(pairs)
    assert pairs[1][0].shape[:2] == many[1].prepared.size and len(many[1].prepared.windows) == 2
    for one, together, (img, hole) in zip(alone, many, pairs):
        assert one.seed == together.seed == 11
        assert len(together.images) == 3
        if one.codes is None:  # the empty mask: copies of the input
            assert together.codes is None
            assert all(np.array_equal(np.asarray(im), img) for im in together.images)
            continue
        assert torch.equal(one.codes, together.codes)
        for x, y in zip(one.images, together.images):
            assert _close(x, y)
            assert np.array_equal(np.asarray(y)[~hole], img[~hole])  # known pixels are the input's


def test_grouping_rules(inp, monkeypatch):
    pairs = [p for p in _pairs() if p[1].any()]
    runs = []
    run = Inpainter._run
    monkeypatch.setattr(Inpainter, "_run", lambda self, group, size, *a, **k:
                        runs.append((len(group), size)) or run(self, group, size, *a, **k))
    together = list(inp.inpaint_many(pairs, n=2, seed=3))
    assert runs == [(3, 2)]
    runs.clear()
    one_by_one = list(inp.inpaint_many(pairs, n=2, seed=3, batch_images=1))
    assert runs == [(1, 2)] * 3
    runs.clear()
    # max_batch counts samples (n per input): 4 hold the first two inputs, not the third too
    rows = list(inp.inpaint_many(pairs, n=2, seed=3, max_batch=4))
    assert runs == [(2, 2), (1, 2)]
    runs.clear()
    # an input that alone needs several batches runs alone, as inpaint() would
    with pytest.warns(InpaintWarning, match="batches"):
        split = list(inp.inpaint_many(pairs, n=2, seed=3, max_batch=1))
    assert runs == [(1, 1)] * 6
    with pytest.warns(InpaintWarning, match="batches"):
        alone = inp.inpaint(*pairs[1], n=2, seed=3, max_batch=1)
    assert torch.equal(split[1].codes, alone.codes)
    runs.clear()
    # default budget: sample rows (n x windows) within what BATCH_BYTES holds for this model
    monkeypatch.setattr(pyinpaint.bounds, "default_max_batch", lambda model, windows=1: 5 // windows)
    list(inp.inpaint_many(pairs, n=2, seed=3))
    assert runs == [(1, 2), (1, 2), (1, 2)]  # 2 + 4 rows > 5: each alone (the second's 2 samples fit 5 // 2)
    for results in (one_by_one, rows):
        for a, b in zip(together, results):
            assert torch.equal(a.codes, b.codes)


def test_results_come_as_their_batch_ends_and_progress_counts_images(inp):
    pairs = [p for p in _pairs() if p[1].any()]
    calls = []
    it = inp.inpaint_many(pairs, n=1, seed=0, batch_images=2, progress=lambda d, t: calls.append((d, t)))
    first = next(it)  # the first batch (two images) is done, the second not started
    assert calls[-1] == (2.0, 3) and first.images
    rest = list(it)
    assert len(rest) == 2 and calls[-1] == (3.0, 3)
    done = [d for d, _ in calls]
    assert done == sorted(done) and all(t == 3 for _, t in calls)


def test_rank_per_image(inp):
    pairs = [p for p in _pairs() if p[1].any()]
    many = list(inp.inpaint_many(pairs, n=3, seed=5, rank=True))
    for (img, hole), res in zip(pairs, many):
        alone = inp.inpaint(img, hole, n=3, seed=5, rank=True)
        assert res.order == alone.order
        assert torch.allclose(res.scores, alone.scores, rtol=1e-4, atol=1e-5)


def test_sample_over_lists(inp, tiny_model_dir):
    pairs = [p for p in _pairs() if p[1].any()]
    images, holes = [p[0] for p in pairs], [p[1] for p in pairs]
    out = inp.sample(images, holes, n=2, seed=1)
    assert [len(o) for o in out] == [2, 2, 2]
    assert [o[0].size for o in out] == [(im.shape[1], im.shape[0]) for im in images]
    again = pyinpaint.sample(images, holes, n=2, seed=1, model=tiny_model_dir, device="cpu")
    assert all(_close(a, b) for x, y in zip(out, again) for a, b in zip(x, y))
    single = inp.sample(images[0], holes[0], n=2, seed=1)
    assert all(_close(a, b) for a, b in zip(single, out[0]))


def test_bad_input(inp):
    img, hole = _pairs()[0]
    with pytest.raises(ValueError, match="as many masks"):
        inp.sample([img, img], [hole], n=1)
    with pytest.raises(ValueError, match="as many masks"):
        inp.sample([img], hole, n=1)
    with pytest.raises(ValueError, match=r"\(image, mask\) pairs; item 1"):
        inp.inpaint_many([(img, hole), img], n=1)
    with pytest.raises(ValueError, match="batch_images"):
        inp.inpaint_many([(img, hole)], n=1, batch_images=0)
    with pytest.raises(ValueError, match="n must be"):
        inp.inpaint_many([(img, hole)], n=0)  # options are checked at the call, before any input is read
    with pytest.raises(ValueError, match="strategy"):
        inp.inpaint_many([(img, hole)], n=1, strategy="zoom")
    # a bad input is reported when it is reached, after the inputs waiting for its batch have been filled
    it = inp.inpaint_many([(img, hole), (img, np.zeros((3, 3), bool))], n=1)
    assert next(it).images
    with pytest.raises(ValueError, match="size"):
        next(it)
    assert list(inp.inpaint_many([], n=1)) == []


def test_a_seed_per_input(inp):
    pairs = [p for p in _pairs() if p[1].any()]
    many = list(inp.inpaint_many(pairs, n=2, seed=[4, 5, 6]))
    assert [r.seed for r in many] == [4, 5, 6]
    for (img, hole), res, seed in zip(pairs, many, (4, 5, 6)):
        assert torch.equal(res.codes, inp.inpaint(img, hole, n=2, seed=seed).codes)
    with pytest.raises(ValueError, match="one seed per input: 2 seeds for 3"):
        inp.inpaint_many(pairs, n=2, seed=[1, 2])
    with pytest.raises(ValueError, match="seed must be"):
        inp.inpaint_many(pairs, n=2, seed=[1, 2, -1])
