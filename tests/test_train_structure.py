"""Stage 2 training end to end on tiny presets: CLI train / eval / entropy, exact resume with dropout."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pyinpaint import io
from pyinpaint.cli import main
from pyinpaint.runs import load_structure
from pyinpaint.train.structure import official_lr


def _train(image_dir, vq_run, out, steps, *extra):
    return main(["train", "structure", "--vqvae", str(vq_run), "--data", str(image_dir), "--out", str(out),
                 "--config", "tiny", "--steps", str(steps), "--batch-size", "2", "--warmup", "10",
                 "--device", "cpu", "--quiet", "--log-every", "1", *extra])


def test_official_lr_schedule():
    # warm-up linear in t, then (t+1)^-0.35; the two meet at t+1 = warmup^(1.5/1.35)
    assert official_lr(0) == pytest.approx(0.18 / 128 ** 0.5 * 16000 ** -1.5)
    assert official_lr(99) == pytest.approx(100 * official_lr(0))
    assert official_lr(999_999) == pytest.approx(0.18 / 128 ** 0.5 * 1_000_000 ** -0.35)


def test_cli_train_eval_entropy(stage_images, tiny_vq_run, tmp_path, capsys):
    out = tmp_path / "st"
    assert _train(stage_images, tiny_vq_run, out, 3, "--val-data", str(stage_images), "--val-every", "3", "--val-batches", "1") == 0
    assert (out / "vqvae" / "ema.safetensors").exists()  # the run carries its VQ-VAE
    cfg = io.load_json(out / "config.json")
    assert cfg["stage"] == "structure" and cfg["model"]["structure"]["image_size"] == 64
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    train_bpd = [r["bpd"] for r in log if r["split"] == "train"]
    assert len(train_bpd) == 3 and all(np.isfinite(b) and b > 0 for b in train_bpd)
    assert [r["step"] for r in log if r["split"] == "val"] == [3]
    grid = np.asarray(Image.open(out / "samples" / "step_00000003.png"))
    assert grid.shape == (4 * 64 + 6, 4 * 64 + 6, 3)

    model, vq = load_structure(out)
    assert model.cfg.num_embeddings == vq.cfg.num_embeddings == 32

    capsys.readouterr()
    assert main(["eval", "structure", str(out), "--data", str(stage_images), "--device", "cpu", "--json", "--quiet"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["images"] == 8 and np.isfinite(m["bpd"]) and m["bpd"] > 0

    png = tmp_path / "entropy.png"
    assert main(["entropy", str(out), str(stage_images / "img0.png"), "center", "-o", str(png), "--device", "cpu"]) == 0
    pic = np.asarray(Image.open(png))
    assert pic.shape == (64, 3 * 64 + 4, 3)
    assert "mean entropy" in capsys.readouterr().out


def test_resume_is_exact_with_dropout(stage_images, tiny_vq_run, tmp_path):
    assert _train(stage_images, tiny_vq_run, tmp_path / "a", 5) == 0
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 2) == 0
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 5, "--resume") == 0
    a = io.load_tensors(tmp_path / "a" / "ema.safetensors")
    b = io.load_tensors(tmp_path / "b" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_vqvae_is_refused(stage_images, tiny_vq_run, tmp_path, capsys):
    assert main(["train", "structure", "--vqvae", str(tmp_path / "missing"), "--data", str(stage_images),
                 "--out", str(tmp_path / "x"), "--config", "tiny", "--device", "cpu"]) == 1  # runtime error: exit 1 (2 = argparse usage errors)
    assert "not a training run" in capsys.readouterr().err


def test_keep_best_for_every_stage(stage_images, tiny_vq_run, tmp_path):
    """--keep-best keeps the lowest validation bits/dim (structure) and MSE (VQ-VAE); RUN/best reads as a run."""
    from pyinpaint.runs import load_structure, load_vqvae

    val = ("--val-data", str(stage_images), "--val-every", "1", "--val-batches", "1", "--keep-best")
    assert _train(stage_images, tiny_vq_run, tmp_path / "st", 3, *val) == 0
    log = [json.loads(ln) for ln in (tmp_path / "st" / "log.jsonl").read_text().splitlines()]
    bpd = {r["step"]: r["bpd"] for r in log if r["split"] == "val"}
    best = io.load_json(tmp_path / "st" / "best" / "best.json")
    assert best["metric"] == "bpd" and best["step"] == min(bpd, key=bpd.get)
    load_structure(tmp_path / "st" / "best")
    assert main(["train", "vqvae", "--data", str(stage_images), "--out", str(tmp_path / "vq"), "--config", "tiny",
                 "--steps", "2", "--batch-size", "2", "--device", "cpu", "--quiet", *val]) == 0
    best = io.load_json(tmp_path / "vq" / "best" / "best.json")
    assert best["metric"] == "mse" and best["step"] in (1, 2)
    load_vqvae(tmp_path / "vq" / "best")
