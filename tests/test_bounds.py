"""Bounded calls (pyinpaint.bounds): the memory estimate, refusal with the largest n that fits, n split into batches
(and said so), progress over all batches, huge images in bounded memory (peak RSS measured in a subprocess)."""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from pyinpaint import bounds
from pyinpaint.inpainter import InpaintWarning

from test_threads import case, inp  # noqa: F401 (fixtures: a tiny model's Inpainter, an image and its hole)


def test_estimate_grows_with_n_and_image(inp):
    m = inp.model
    e1 = bounds.estimate(m, 1, (100, 100))
    assert bounds.estimate(m, 10, (100, 100)) > e1
    assert bounds.estimate(m, 1, (4000, 6000)) > e1 + 24e6 * bounds.IMAGE_BYTES_PER_PIXEL * 0.99
    # the Poisson blend's solve is charged per input pixel; the official paste does without it
    assert (bounds.estimate(m, 1, (4000, 6000)) - bounds.estimate(m, 1, (4000, 6000), blend="paste")
            == 24_000_000 * bounds.BLEND_BYTES_PER_PIXEL)
    # beyond one batch only the kept outputs grow
    b = bounds.default_max_batch(m)
    assert (bounds.estimate(m, 3 * b, (100, 100)) - bounds.estimate(m, 2 * b, (100, 100))
            == b * bounds.kept_bytes(m, (100, 100)))


def test_plan_batches_and_refusal(inp):
    m = inp.model
    p = bounds.plan(m, 10, (100, 100), max_batch=4, available=None)
    assert p.batches == ((0, 4), (4, 4), (8, 2)) and "3 batches of at most 4" in p.describe()
    assert bounds.plan(m, 3, (100, 100), available=None).batches == ((0, 3),)
    avail = bounds.estimate(m, 50, (400, 600), max_batch=8) / bounds.HEADROOM
    with pytest.raises(ValueError, match=r"n=5000 on a 600x400 image needs about .* the largest n that fits is (\d+)") as e:
        bounds.plan(m, 5000, (400, 600), max_batch=8, available=int(avail))
    fits = int(str(e.value).split("the largest n that fits is ")[1].split()[0])
    assert 49 <= fits <= 51  # 50 fit, up to rounding
    bounds.plan(m, fits, (400, 600), max_batch=8, available=int(avail))  # the n it names does fit
    with pytest.raises(ValueError, match="not even one sample fits"):
        bounds.plan(m, 1, (400, 600), available=1000)
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_batch must be"):
            bounds.plan(m, 4, (10, 10), max_batch=bad)


def test_batch_seeds():
    assert bounds.batch_seed(7, 0) == 7
    seeds = {bounds.batch_seed(s, i) for s in range(50) for i in range(1, 20)}
    assert len(seeds) == 50 * 19 and all(0 <= s < 2 ** 63 for s in seeds)


def test_a_call_split_into_batches(inp, case):
    image, hole = case
    one = inp.inpaint(image, hole, 3, seed=4)
    calls = []
    with pytest.warns(InpaintWarning, match="n=7 is drawn in 3 batches of at most 3"):
        split = inp.inpaint(image, hole, 7, seed=4, max_batch=3, progress=lambda d, t: calls.append((d, t)))
    assert len(split.images) == 7 and split.codes.shape[0] == 7 and split.completed.shape[0] == 7
    # the first batch is the unsplit call of its size (same seed); later batches draw other samples
    for a, b in zip(one.images, split.images[:3]):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not all(np.array_equal(np.asarray(split.images[0]), np.asarray(im)) for im in split.images[3:])
    for im in split.images:  # known pixels kept in every batch
        assert np.array_equal(np.asarray(im)[~hole], image[~hole])
    # progress counts over all batches, up to one total
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] and len({t for _, t in calls}) == 1
    with pytest.warns(InpaintWarning, match="3 batches"):
        ranked = inp.inpaint(image, hole, 5, seed=4, max_batch=2, rank=True)
    assert list(ranked.scores) == sorted(ranked.scores, reverse=True) and sorted(ranked.order) == list(range(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a call that fits one batch says nothing
        inp.inpaint(image, hole, 2, seed=4)


def test_too_large_is_refused_before_model_work(inp, case, monkeypatch):
    image, hole = case
    monkeypatch.setattr(bounds, "available_memory", lambda: 200 * 2 ** 20)

    def fail(*a, **k):
        raise AssertionError("sampled before refusing")

    monkeypatch.setattr(inp, "sample_structures", fail)
    with pytest.raises(ValueError, match=r"n=1000000 .* the largest n that fits is \d+"):
        inp.sample(image, hole, 1_000_000)


HUGE = textwrap.dedent("""
    import resource, sys, numpy as np, torch
    from pyinpaint.inpainter import Inpainter
    from pyinpaint import bounds
    torch.set_num_threads(1)
    inp = Inpainter.load(sys.argv[1], "cpu")
    h, w, n, blend = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), bool)
    hole[h // 8: 7 * h // 8, w // 8: 7 * w // 8] = True  # a huge mask: 56 % of the image
    def rss(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) * 1024
    base = rss("VmRSS") + image.nbytes + hole.nbytes  # the caller's own arrays count as the caller's
    res = inp.inpaint(image, hole, n, seed=0, blend=blend)
    assert all(np.array_equal(np.asarray(im)[~hole], image[~hole]) for im in res.images)
    print(rss("VmHWM") - base, bounds.estimate(inp.model, n, (h, w), blend=blend))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("blend", ["poisson", "paste"])
def test_huge_image_and_mask_in_bounded_memory(tiny_model_dir, tmp_path, blend):
    """6000 x 4000 with a hole over 56 % of it, n = 2, both blends: the peak RSS beyond the loaded model and the
    caller's arrays stays within the estimate (and the estimate is honest: not more than 3 times the peak)."""
    script = tmp_path / "huge.py"
    script.write_text(HUGE)
    out = subprocess.run([sys.executable, str(script), str(tiny_model_dir), "4000", "6000", "2", blend],
                         capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                         "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    peak, est = (int(x) for x in out.stdout.split())
    assert peak <= est, f"peak {peak / 2**20:.0f} MiB above the estimate {est / 2**20:.0f} MiB"
    assert est <= 3 * peak, f"estimate {est / 2**20:.0f} MiB far above the peak {peak / 2**20:.0f} MiB"
