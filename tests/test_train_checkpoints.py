"""Run folders keep the user's files (issue 21 items 1 and 4): checkpoints as atomic units with a manifest,
only our own checkpoints deleted, tolerant log resume, nothing created by a failed start, today's runs resume."""
import json

import pytest
import torch

from pyinpaint import io
from pyinpaint.cli import main
from pyinpaint.config import structure_preset, vqvae_preset
from pyinpaint.data import ImageFolder
from pyinpaint.runs import load_vqvae
from pyinpaint.train.loop import Run, TrainArgs, train
from pyinpaint.train.stages import train_structure
from pyinpaint.train.vqvae import VQVAETask


@pytest.fixture(scope="module")
def images(stage_images):
    return stage_images  # 8 photo crops of 72 x 72 (tests/conftest.py)


def _run(images, out, steps, resume=False, **kw):
    args = TrainArgs(out=str(out), steps=steps, batch_size=2, lr=1e-3, device="cpu", log_every=1, val_every=100,
                     ckpt_every=kw.pop("ckpt_every", 100), **kw)
    torch.manual_seed(0)
    task = VQVAETask(vqvae_preset("tiny"), lr=1e-3)
    train(task, ImageFolder(images, size=64, seed=0), None, args, resume=resume, progress=False)
    return task


def _log(out):
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"}
            for ln in (out / "log.jsonl").read_text().splitlines()]


def test_saving_deletes_only_checkpoints_this_run_wrote(images, tmp_path):
    out = tmp_path / "run"
    keep = out / "ckpt-00000060-keep"
    keep.mkdir(parents=True)
    (keep / "model.safetensors").write_bytes(b"the user's weights")
    with pytest.raises(FileExistsError, match="non-empty folder that is not a training run"):
        _run(images, out, steps=3, ckpt_every=1)
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-00000060-keep"]  # refused: nothing written
    _run(images, out, steps=3, ckpt_every=1, existing_out=True)
    (out / "ckpt-my-best-weights").mkdir()
    (out / "ckpt-my-best-weights" / "note.txt").write_text("mine")
    _run(images, out, steps=5, ckpt_every=1, resume=True, existing_out=True)
    assert (keep / "model.safetensors").read_bytes() == b"the user's weights"
    assert (out / "ckpt-my-best-weights" / "note.txt").read_text() == "mine"
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-00000005", "ckpt-00000060-keep", "ckpt-my-best-weights"]
    assert Run(out).owned() == ["ckpt-00000005"]


def test_checkpoint_is_checked_against_its_manifest(images, tmp_path):
    out = tmp_path / "run"
    _run(images, out, steps=2, ckpt_every=1)
    ck = out / "ckpt-00000002"
    manifest = io.load_json(ck / "MANIFEST.json")
    assert set(manifest["files"]) == {"model.safetensors", "ema.safetensors", "optim-adam.safetensors",
                                      "rng.safetensors", "state.json"}
    assert not list(out.glob(".ckpt-*"))  # no temporary folder left
    blob = bytearray((ck / "optim-adam.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (ck / "optim-adam.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="optim-adam.safetensors does not match its MANIFEST"):
        _run(images, out, steps=3, resume=True)


def test_stale_ema_is_repaired_on_resume(images, tmp_path, capsys):
    out, other = tmp_path / "run", tmp_path / "other"
    _run(images, out, steps=2, ckpt_every=1)
    _run(images, other, steps=1)
    (out / "ema.safetensors").write_bytes((other / "ema.safetensors").read_bytes())  # a crash before the copy
    _run(images, out, steps=2, resume=True)  # nothing to train: the check alone
    assert "was not the EMA of ckpt-00000002" in capsys.readouterr().err
    assert (out / "ema.safetensors").read_bytes() == (out / "ckpt-00000002" / "ema.safetensors").read_bytes()


def test_partial_last_log_line_is_dropped_saying_so(images, tmp_path, capsys):
    straight, out = tmp_path / "straight", tmp_path / "run"
    _run(images, straight, steps=4)
    _run(images, out, steps=2, ckpt_every=2)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 3, "split": "tr')  # killed while writing
    _run(images, out, steps=4, resume=True)
    err = capsys.readouterr().err
    assert "dropped a partial last line" in err and str(out / "log.jsonl") in err
    assert _log(out) == _log(straight)


def test_corrupt_log_line_in_the_middle_is_refused_naming_the_file(images, tmp_path):
    out = tmp_path / "run"
    _run(images, out, steps=2, ckpt_every=2)
    lines = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("{broken\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl: line 1 is not JSON"):
        _run(images, out, steps=3, resume=True)


def test_failed_start_creates_no_folder(images, tmp_path, capsys):
    out = tmp_path / "run"
    args = TrainArgs(out=str(out), steps=1, batch_size=64, device="cpu")
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        train(VQVAETask(vqvae_preset("tiny")), ImageFolder(images, size=64), None, args, progress=False)
    assert not out.exists()
    vq = tmp_path / "vq"
    _run(images, vq, steps=1)
    rc = main(["train", "structure", "--vqvae", str(vq), "--data", str(images), "--out", str(out), "--config",
               "tiny", "--steps", "1", "--batch-size", "64", "--device", "cpu", "--quiet"])
    assert rc == 2 and "fewer than one batch" in capsys.readouterr().err
    assert not out.exists()  # the VQ-VAE copy is made only once the start is sure
    rc = main(["train", "structure", "--vqvae", str(vq), "--data", str(images), "--out", str(out), "--config",
               "tiny", "--steps", "1", "--batch-size", "4", "--accumulate", "3", "--device", "cpu", "--quiet"])
    assert rc == 2 and "multiple of 3" in capsys.readouterr().err
    assert not out.exists()


def _to_first_format(out):
    """Rewrite a run as the checkpoint format before MANIFEST.json (what the long runs of today use): rank 0's
    RNG as "cpu", no world size, latest.json without the list of written checkpoints."""
    ck = out / json.loads((out / "latest.json").read_text())["checkpoint"]
    (ck / "MANIFEST.json").unlink()
    rng = io.load_tensors(ck / "rng.safetensors")
    io.save_tensors(ck / "rng.safetensors", {"cpu": rng["rank0.cpu"]})
    state = io.load_json(ck / "state.json")
    del state["world_size"]
    io.save_json(ck / "state.json", state)
    latest = io.load_json(out / "latest.json")
    io.save_json(out / "latest.json", {"step": latest["step"], "checkpoint": latest["checkpoint"]})
    config = io.load_json(out / "config.json")
    for key in ("accumulate", "precision", "tensorboard", "existing_out"):
        del config["train"][key]
    io.save_json(out / "config.json", config)


def test_runs_of_the_first_format_resume_exactly(images, tmp_path):
    straight, old = tmp_path / "straight", tmp_path / "old"
    _run(images, straight, steps=5)
    _run(images, old, steps=3, ckpt_every=3)
    _to_first_format(old)
    (old / "ckpt-00000003-keep").mkdir()  # a user's copy beside the old-format checkpoint
    _run(images, old, steps=5, ckpt_every=1, resume=True)
    assert _log(old) == _log(straight)
    for name in ("ema.safetensors", "ckpt-00000005/model.safetensors"):
        a, b = io.load_tensors(straight / name), io.load_tensors(old / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert sorted(p.name for p in old.glob("ckpt-*")) == ["ckpt-00000003-keep", "ckpt-00000005"]
    assert load_vqvae(old).cfg == vqvae_preset("tiny")


def test_accumulation_equals_the_whole_batch(images, tmp_path):
    vq = tmp_path / "vq"
    _run(images, vq, steps=1)
    common = dict(vqvae=vq, config="tiny", dropout=0.0, warmup=10, steps=2, batch_size=4, device="cpu",
                  log_every=1, progress=False)
    train_structure(images, tmp_path / "whole", **common)
    train_structure(images, tmp_path / "acc", accumulate=2, **common)
    for a, b in zip(_log(tmp_path / "whole"), _log(tmp_path / "acc")):
        assert a["bpd"] == pytest.approx(b["bpd"], rel=1e-5)
    a, b = (io.load_tensors(tmp_path / r / "ckpt-00000002" / "model.safetensors") for r in ("whole", "acc"))
    lr_sum = sum(r["lr"] for r in _log(tmp_path / "whole"))
    for k in a:
        # The key part of the attention's qkv bias has a zero gradient (softmax ignores a constant per query):
        # Adam normalises its rounding noise into steps of up to lr, so there only lr-sized agreement holds.
        atol = 2 * lr_sum if k.endswith("attention.qkv.b") else 1e-5
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=k)
    assert structure_preset("tiny").dropout > 0  # hence dropout=0 above: per-sample noise differs otherwise


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_every_stage(images, tmp_path, precision):
    vq = tmp_path / "vq"
    rc = main(["train", "vqvae", "--data", str(images), "--out", str(vq), "--config", "tiny", "--steps", "2",
               "--batch-size", "2", "--device", "cpu", "--quiet", "--log-every", "1", "--precision", precision])
    assert rc == 0
    for stage in ("structure", "texture"):
        rc = main(["train", stage, "--vqvae", str(vq), "--data", str(images), "--out", str(tmp_path / stage),
                   "--config", "tiny", "--steps", "2", "--batch-size", "2", "--device", "cpu", "--quiet",
                   "--log-every", "1", "--precision", precision])
        assert rc == 0, stage
    for run in (vq, tmp_path / "structure", tmp_path / "texture"):
        for record in _log(run):
            assert all(v == v and abs(v) < 1e6 for v in record.values() if isinstance(v, float)), record
        weights = io.load_tensors(run / "ema.safetensors")
        assert all(t.dtype in (torch.float32, torch.int64) for t in weights.values())  # master weights fp32


def test_tensorboard_logs_beside_the_jsonl_or_says_what_to_install(images, tmp_path):
    out = tmp_path / "run"
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install 'pyinpaint\[tensorboard\]'"):
            _run(images, out, steps=1, tensorboard=True)
        assert not out.exists()
        return
    _run(images, out, steps=2, tensorboard=True)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
