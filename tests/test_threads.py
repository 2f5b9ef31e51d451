"""Threads chosen per call (pyinpaint.threads): the rule, the load reading, the caller's setting restored (also on
errors and with several Python threads), ``threads=`` / ``--threads``, one Inpainter shared by threads."""
import math
import threading

import numpy as np
import pytest
import torch
from skimage import data as skdata

import pyinpaint.threads as th
from pyinpaint import cli
from pyinpaint.inpainter import Inpainter


@pytest.fixture(scope="module")
def inp(tiny_model_dir):
    return Inpainter.load(tiny_model_dir, "cpu")


@pytest.fixture(scope="module")
def case():
    image = np.ascontiguousarray(skdata.astronaut()[40:120, 120:220])
    hole = np.zeros(image.shape[:2], bool)
    hole[20:60, 30:70] = True
    return image, hole


@pytest.fixture
def caller_threads():
    """The test runs with 3 threads set by the 'caller'; the original count is put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


def _arrays(images):
    return [np.asarray(im) for im in images]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_threads_are_one_line_errors(bad):
    with pytest.raises(ValueError, match="threads must be None"):
        th.check_threads(bad)


def test_the_work_rule():
    assert th.threads_for(0, cores=8) == 1
    assert th.threads_for(th.MACS_PER_THREAD - 1, cores=8) == 1  # small steps: one thread
    assert th.threads_for(2 * th.MACS_PER_THREAD, cores=8) == 2
    assert th.threads_for(100 * th.MACS_PER_THREAD, cores=8) == 8  # never more than the cores
    assert th.threads_for(math.inf, cores=4) == 4  # whole-image work
    # the shipped model's step is small at n = 10; the paper's PixelCNN pays a second thread at n = 10, not at 1
    from pyinpaint.config import structure_preset
    from pyinpaint.models.structure import PixelCNN

    paper = PixelCNN(structure_preset("paper"))
    assert th.threads_for(th.sampling_work(paper, 1), cores=2) == 1
    assert th.threads_for(th.sampling_work(paper, 10), cores=2) == 2


def test_restored_after_the_call_and_after_an_error(caller_threads):
    with th.use_threads(1) as t:
        assert torch.get_num_threads() == 1 and t.count == 1
    assert torch.get_num_threads() == caller_threads
    with pytest.raises(RuntimeError, match="boom"):
        with th.use_threads(2):
            assert torch.get_num_threads() == 2
            raise RuntimeError("boom")
    assert torch.get_num_threads() == caller_threads
    with th.use_threads(None, work=0.0) as t:  # small work: one thread, whatever the machine
        assert torch.get_num_threads() == 1 and t.cap == 1
    assert torch.get_num_threads() == caller_threads


def _fake_clock(monkeypatch, others_per_second: float):
    """Replace the clock and the /proc/stat reading: each look at the clock is a second later, and other processes
    use ``others_per_second`` cores."""
    now = [0.0]

    def clock():
        now[0] += 1.0
        return now[0]

    def fake():
        t = clock()
        return t, others_per_second * t, 0.0

    monkeypatch.setattr(th, "_cpu_times", fake)
    monkeypatch.setattr(th.time, "monotonic", clock)


@pytest.mark.parametrize("others, expected", [(0.0, 4), (1.0, 3), (3.9, 1), (8.0, 1), (1.5, 2)])
def test_the_load_lowers_the_count(monkeypatch, caller_threads, others, expected):
    _fake_clock(monkeypatch, others)
    monkeypatch.setattr(th, "available_cores", lambda: 4)
    with th.use_threads(None) as t:  # whole-image work: the cap is every core
        assert t.count == 1  # until the first reading
        t.tick()
        assert t.others == pytest.approx(others)
        assert t.count == expected == torch.get_num_threads()
        t.phase(0.0)  # a phase of small steps: one thread
        assert t.count == 1
        t.phase(math.inf)
        assert t.count == expected
    assert torch.get_num_threads() == caller_threads


def test_fixed_threads_ignore_the_load(monkeypatch):
    _fake_clock(monkeypatch, 8.0)
    with th.use_threads(2) as t:
        t.tick()
        t.phase(0.0)
        assert t.count == 2 == torch.get_num_threads() and t.history == [2]


def test_calls_in_several_threads_restore_the_first_callers_count(caller_threads):
    inside, leave = threading.Barrier(3), threading.Event()
    seen = []

    def worker(k):
        with th.use_threads(k):
            inside.wait()
            seen.append(torch.get_num_threads())
            leave.wait()

    workers = [threading.Thread(target=worker, args=(k,)) for k in (1, 2)]
    for w in workers:
        w.start()
    inside.wait()
    leave.set()
    for w in workers:
        w.join()
    assert sorted(seen) == [1, 2]  # each thread ran with its own count
    assert torch.get_num_threads() == caller_threads
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert fresh == [caller_threads]  # the default new threads pick up is the caller's again


def test_threads_option_of_the_api(inp, case, caller_threads):
    image, hole = case
    one = inp.sample(image, hole, n=1, seed=3, threads=1)
    assert torch.get_num_threads() == caller_threads
    two = inp.sample(image, hole, n=1, seed=3, threads=2)  # slow on a busy machine: the collapse this module avoids
    auto = inp.sample(image, hole, n=1, seed=3)
    assert torch.get_num_threads() == caller_threads
    for a, b, c in zip(_arrays(one), _arrays(two), _arrays(auto)):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    with pytest.raises(ValueError, match="threads must be"):
        inp.sample(image, hole, n=1, threads=0)
    calls = []
    inp.sample(image, hole, n=1, seed=0, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]  # the threads' progress hook passes every report on


def test_one_inpainter_shared_by_two_threads(inp, case, caller_threads):
    image, hole = case
    expected = {s: _arrays(inp.sample(image, hole, n=2, seed=s)) for s in (5, 6)}
    got, errors = {}, []
    start = threading.Barrier(2)

    def work(seed):
        try:
            start.wait()
            for _ in range(2):
                got.setdefault(seed, []).append(_arrays(inp.sample(image, hole, n=2, seed=seed)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(s,)) for s in (5, 6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    for s in (5, 6):
        for run in got[s]:
            assert all(np.array_equal(a, b) for a, b in zip(run, expected[s]))
    assert torch.get_num_threads() == caller_threads


def test_cli_threads_option(tiny_model_dir, tmp_path, capsys, caller_threads):
    from PIL import Image

    image = np.ascontiguousarray(skdata.astronaut()[40:120, 120:220])
    hole = np.zeros(image.shape[:2], np.uint8)
    hole[20:60, 30:70] = 255
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(hole).save(tmp_path / "mask.png")
    args = ["sample", str(tmp_path / "img.png"), str(tmp_path / "mask.png"), "--model", str(tiny_model_dir),
            "-n", "2", "--seed", "1", "--quiet", "--device", "cpu"]
    assert cli.main(args + ["--out", str(tmp_path / "a"), "--threads", "1"]) == 0
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    for name in ("img_00.png", "img_01.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / name)),
                              np.asarray(Image.open(tmp_path / "b" / name)))
    with pytest.raises(SystemExit) as e:  # a usage error
        cli.main(args + ["--out", str(tmp_path / "c"), "--threads", "0"])
    assert e.value.code == 2 and "positive integer" in capsys.readouterr().err
    assert torch.get_num_threads() == caller_threads


def test_a_call_inside_a_call_restores_the_outer_calls_count(caller_threads):
    with th.use_threads(2):
        with th.use_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == caller_threads
