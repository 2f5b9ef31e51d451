"""The training loop with the VQ-VAE task: exact resume, atomic checkpoints, the CLI end to end."""
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from pyinpaint import io
from pyinpaint.cli import main
from pyinpaint.config import vqvae_preset
from pyinpaint.data import ImageFolder
from pyinpaint.runs import load_vqvae
from pyinpaint.train.loop import Run, TrainArgs, train
from pyinpaint.train.vqvae import VQVAETask


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """12 real photo crops (scikit-image's astronaut and coffee), saved as JPEG and PNG."""
    root = tmp_path_factory.mktemp("images")
    photos = [skdata.astronaut(), skdata.coffee()]
    for i in range(12):
        img = photos[i % 2]
        y, x = 20 * i, 15 * i
        crop = Image.fromarray(img[y:y + 200, x:x + 200]).resize((80, 80), Image.BILINEAR)
        crop.save(root / f"img{i:02d}.{'jpg' if i % 3 else 'png'}")
    return root


def _task(seed=0):
    torch.manual_seed(seed)
    return VQVAETask(vqvae_preset("tiny"), lr=1e-3)


def _run(image_dir, out, steps, resume=False, **kw):
    args = TrainArgs(out=str(out), steps=steps, batch_size=2, lr=1e-3, seed=0, device="cpu", log_every=1,
                     val_every=100, ckpt_every=kw.pop("ckpt_every", 100), **kw)
    ds = ImageFolder(image_dir, size=64, recipe="faces", seed=0)
    task = _task()
    train(task, ds, None, args, resume=resume, progress=False)
    return task


def _weights(out):
    return io.load_tensors(out / "ema.safetensors"), io.load_tensors(next(out.glob("ckpt-*")) / "model.safetensors")


def test_resume_is_exact(image_dir, tmp_path):
    _run(image_dir, tmp_path / "straight", steps=8)
    _run(image_dir, tmp_path / "split", steps=3)  # 12 images / batch 2: the resume crosses an epoch boundary
    _run(image_dir, tmp_path / "split", steps=8, resume=True)
    for a, b in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "split")):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # The codebooks (EMA-learnt buffers) and their statistics resume too.
    ema, _ = _weights(tmp_path / "split")
    assert "encoder.vq_t.ema_steps" in ema and int(ema["encoder.vq_t.ema_steps"]) == 8
    log = [json.loads(ln) for ln in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))


def test_signal_stops_at_a_step_boundary_and_resume_is_exact(image_dir, tmp_path, monkeypatch):
    original = VQVAETask.train_step

    def step_then_interrupt(self, ctx):
        out = original(self, ctx)
        if ctx.step_index == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-run, like Ctrl-C
        return out

    monkeypatch.setattr(VQVAETask, "train_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _run(image_dir, tmp_path / "killed", steps=6)
    assert Run(tmp_path / "killed").latest()[0] == 3
    monkeypatch.setattr(VQVAETask, "train_step", original)
    _run(image_dir, tmp_path / "killed", steps=6, resume=True)
    _run(image_dir, tmp_path / "straight", steps=6)
    for a, b in zip(_weights(tmp_path / "straight"), _weights(tmp_path / "killed")):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_half_written_checkpoint_is_ignored(image_dir, tmp_path):
    out = tmp_path / "run"
    _run(image_dir, out, steps=2)
    (out / ".ckpt-00000004.tmp").mkdir()  # what a kill during a checkpoint write leaves behind
    (out / ".ckpt-00000004.tmp" / "model.safetensors").write_bytes(b"garbage")
    assert Run(out).latest()[0] == 2
    _run(image_dir, out, steps=4, resume=True)
    assert Run(out).latest()[0] == 4


def test_refuses_to_overwrite_or_resume_inconsistently(image_dir, tmp_path):
    out = tmp_path / "run"
    _run(image_dir, out, steps=1)
    with pytest.raises(FileExistsError, match="--resume"):
        _run(image_dir, out, steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        args = TrainArgs(out=str(out), steps=2, batch_size=4, lr=1e-3, device="cpu")
        train(_task(), ImageFolder(image_dir, size=64), None, args, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        _run(image_dir, tmp_path / "nothing", steps=2, resume=True)


def test_too_few_images_for_a_batch(tmp_path):
    Image.fromarray(skdata.astronaut()[:80, :80]).save(tmp_path / "one.png")
    args = TrainArgs(out=str(tmp_path / "run"), steps=1, batch_size=2, device="cpu")
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_task(), ImageFolder(tmp_path, size=64), None, args, progress=False)


def test_cli_train_then_eval(image_dir, tmp_path, capsys):
    out = tmp_path / "vq"
    rc = main(["train", "vqvae", "--data", str(image_dir), "--val-data", str(image_dir), "--out", str(out),
               "--config", "tiny", "--steps", "4", "--batch-size", "2", "--val-every", "2", "--val-batches", "1",
               "--log-every", "2", "--device", "cpu", "--quiet"])
    assert rc == 0
    for name in ("config.json", "ema.safetensors", "latest.json", "log.jsonl"):
        assert (out / name).exists(), name
    grids = sorted((out / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_00000002.png", "step_00000004.png"]
    grid = np.asarray(Image.open(grids[-1]))
    assert grid.shape == (4 * 64 + 3 * 2, 2 * 64 + 2, 3)  # 4 rows of (original, reconstruction)
    config = io.load_json(out / "config.json")
    assert config["stage"] == "vqvae" and config["model"]["image_size"] == 64
    val = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if '"val"' in ln]
    assert [v["step"] for v in val] == [2, 4] and all(np.isfinite(v["mse"]) for v in val)

    capsys.readouterr()
    assert main(["eval", "vqvae", str(out), "--data", str(image_dir), "--device", "cpu", "--json", "--quiet"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 12 and 0 < metrics["mse"] < 4 and 0 < metrics["use_t"] <= 1
    model = load_vqvae(out)
    assert model.cfg == vqvae_preset("tiny")

    assert main(["train", "vqvae", "--data", str(image_dir), "--out", str(out), "--config", "tiny",
                 "--steps", "4", "--device", "cpu", "--quiet"]) == 1  # runtime error: exit 1 (2 = argparse usage errors)
    assert "already holds a run" in capsys.readouterr().err


def test_cli_reports_bad_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "vqvae", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"),
                 "--config", "tiny", "--device", "cpu"]) == 1
    assert str(tmp_path / "empty") in capsys.readouterr().err
    assert main(["eval", "vqvae", str(tmp_path / "nope"), "--data", str(tmp_path), "--device", "cpu"]) == 1
    assert "not a training run" in capsys.readouterr().err


def test_ema_decay_and_warmup():
    from torch import nn

    from pyinpaint.train.loop import EMA

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    plain, warm, none = EMA(model, 0.9), EMA(model, 0.9, warmup=True), EMA(model, 0.0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for ema in (plain, warm, none):
        ema.update(model, step=0)
    assert plain.model.weight.item() == pytest.approx(0.1)  # shadow -= (1 - decay) * (shadow - w)
    assert warm.model.weight.item() == pytest.approx(0.9)  # decay min(0.9, 1/10) = 0.1 at step 0
    assert none.model.weight.item() == 1.0  # decay 0: a copy
    warm.update(model, step=1000)  # (1 + t) / (10 + t) > 0.9: the configured decay again
    assert warm.model.weight.item() == pytest.approx(0.9 + 0.1 * 0.1)
