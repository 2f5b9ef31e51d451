"""torchrun DDP on the CPU (gloo, 2 processes): each stage equals one process at the same global batch, a run
killed by its process id resumes exactly under torchrun, and only rank 0 writes (issue 15)."""
import json
import os
import signal
import subprocess
import tempfile
import sys
import time

import pytest
import torch

from pyinpaint import io

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                 reason="torch.distributed with gloo is needed")]


@pytest.fixture(scope="module")
def images(stage_images):
    return stage_images  # 8 photo crops of 72 x 72 (tests/conftest.py)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# `python -m pyinpaint` run from the checkout would import its pyinpaint/ (without the compiled extension and the
# kernels, which only the installed package has): the workers start in a neutral folder, as a user's would.
_CWD = tempfile.gettempdir()


def _cmd(nproc, *args):
    if nproc == 1:
        return [sys.executable, "-m", "pyinpaint", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "pyinpaint", *args]


def _train(nproc, stage, out, images, *extra, vq=None, check=True):
    args = ["train", stage, "--data", str(images), "--out", str(out), "--config", "tiny", "--device", "cpu",
            "--quiet", "--log-every", "1", *(["--vqvae", str(vq)] if vq else []),
            *(["--dropout", "0"] if stage == "structure" else []), *extra]
    res = subprocess.run(_cmd(nproc, *args), env=_env(), capture_output=True, text=True, timeout=300,
                         cwd=_CWD)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _log(out):
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
            for ln in (out / "log.jsonl").read_text().splitlines()]


def _same_losses(a, b):
    """The logged losses agree to float32 reduction tolerance. Codebook usage and perplexity (use_*, ppl_*) are
    means of each rank's figures on its share of the batch, so they are not compared."""
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for k, v in ra.items():
            if isinstance(v, float) and not k.startswith(("use_", "ppl_")):
                assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (k, ra, rb)


def _files(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


@pytest.fixture(scope="module")
def vq_run(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "vq"
    _train(1, "vqvae", out, images, "--steps", "2", "--batch-size", "4")
    return out


@pytest.mark.parametrize("stage", ["vqvae", "structure", "texture"])
def test_two_processes_equal_one_at_the_same_global_batch(stage, images, vq_run, tmp_path):
    vq = None if stage == "vqvae" else vq_run
    common = ("--steps", "3", "--batch-size", "4", "--ckpt-every", "3")
    one = _train(1, stage, tmp_path / "one", images, *common, vq=vq)
    two = _train(2, stage, tmp_path / "two", images, *common, vq=vq)
    a, b = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in b] == [1, 2, 3]  # one line per step: only rank 0 writes the log
    _same_losses(a, b)
    lr_sum = sum(r.get("lr", 0.0) for r in a)
    for name in ("ckpt-00000003/model.safetensors", "ema.safetensors"):
        wa, wb = io.load_tensors(tmp_path / "one" / name), io.load_tensors(tmp_path / "two" / name)
        for k in wa:
            # The key part of the attention's qkv bias has a zero gradient (softmax ignores a constant per query):
            # Adam normalises its rounding noise into steps of up to lr, so there only lr-sized agreement holds.
            atol = 2 * lr_sum if k.endswith("attention.qkv.b") else 2e-5
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=atol, msg=f"{name}: {k}")
    assert _files(tmp_path / "one") == _files(tmp_path / "two")  # rank 1 wrote nothing of its own
    assert one.stdout.count("final:") == two.stdout.count("final:") == 1  # and printed nothing twice
    rng = io.load_tensors(tmp_path / "two" / "ckpt-00000003" / "rng.safetensors")
    assert set(rng) == {"rank0.cpu", "rank1.cpu"}  # every rank's random state


def _children(pid):
    """Process ids whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers in /proc")
def test_killed_run_resumes_exactly_under_torchrun(images, tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    args = ["train", "vqvae", "--data", str(images), "--out", str(killed), "--config", "tiny", "--device", "cpu",
            "--quiet", "--log-every", "1", "--batch-size", "4", "--ckpt-every", "2", "--steps", "400"]
    proc = subprocess.Popen(_cmd(2, *args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=_CWD)
    workers = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            log = killed / "log.jsonl"
            if log.exists() and log.read_text().count("\n") >= 5:
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        workers = _children(proc.pid)  # torchrun starts each worker in a session of its own
        assert len(workers) == 2, workers
        for pid in (*workers, proc.pid):  # the whole run at once, as a crash of the machine would
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    deadline = time.time() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.time() < deadline:
        time.sleep(0.05)
    reached = json.loads((killed / "latest.json").read_text())["step"]
    assert 2 <= reached < 400
    steps = str(reached + 4)
    _train(2, "vqvae", killed, images, "--batch-size", "4", "--ckpt-every", "2", "--steps", steps, "--resume")
    _train(2, "vqvae", straight, images, "--batch-size", "4", "--ckpt-every", "2", "--steps", steps)
    assert _log(killed) == _log(straight)
    a, b = io.load_tensors(killed / "ema.safetensors"), io.load_tensors(straight / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_another_number_of_processes_continues_the_data(images, tmp_path):
    two, mixed = tmp_path / "two", tmp_path / "mixed"
    _train(2, "vqvae", two, images, "--steps", "4", "--batch-size", "4")
    _train(2, "vqvae", mixed, images, "--steps", "2", "--batch-size", "4")
    res = _train(1, "vqvae", mixed, images, "--steps", "4", "--batch-size", "4", "--resume")
    assert "data order and masks continue exactly" in res.stderr
    _same_losses(_log(two), _log(mixed))
