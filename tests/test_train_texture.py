"""Stage 3 training end to end on tiny presets: CLI train, losses finite, grids, exact resume."""
import json

import numpy as np
import torch
from PIL import Image

from pyinpaint import io
from pyinpaint.cli import main


def _train(image_dir, vq_run, out, steps, *extra):
    return main(["train", "texture", "--vqvae", str(vq_run), "--data", str(image_dir), "--out", str(out),
                 "--config", "tiny", "--steps", str(steps), "--batch-size", "2", "--device", "cpu", "--quiet",
                 "--log-every", "1", *extra])


def test_cli_train_texture(stage_images, tiny_vq_run, tmp_path):
    out = tmp_path / "tx"
    assert _train(stage_images, tiny_vq_run, out, 2, "--val-data", str(stage_images), "--val-every", "2",
                  "--val-batches", "1") == 0
    cfg = io.load_json(out / "config.json")
    assert cfg["stage"] == "texture" and cfg["train"]["ema_decay"] == 0.0
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["split"] == "train"]
    assert len(train) == 2 and all(np.isfinite(r[k]) for r in train for k in ("g_loss", "l1", "gan", "fea", "d_loss"))
    val = [r for r in log if r["split"] == "val"]
    assert len(val) == 1 and 0 < val[0]["hole_l1"] < 2 and np.isfinite(val[0]["hole_psnr"])
    grid = np.asarray(Image.open(out / "samples" / "step_00000002.png"))
    assert grid.shape == (4 * 64 + 6, 4 * 64 + 6, 3)
    # no Polyak averaging in stage 3: the saved weights are the trained ones
    ema = io.load_tensors(out / "ema.safetensors")
    model = io.load_tensors(next(out.glob("ckpt-*")) / "model.safetensors")
    assert all(torch.equal(ema[k], model[k]) for k in model)
    assert any(k.startswith("discriminator.") and k.endswith(".u") for k in model)


def test_texture_resume_is_exact(stage_images, tiny_vq_run, tmp_path):
    assert _train(stage_images, tiny_vq_run, tmp_path / "a", 3) == 0
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 1) == 0
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 3, "--resume") == 0
    a = io.load_tensors(tmp_path / "a" / "ema.safetensors")
    b = io.load_tensors(tmp_path / "b" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_texture_init_from(stage_images, tiny_vq_run, tmp_path):
    """--init-from starts at step 0 from another run's weights (a different lr is fine); it checks the stage and
    architecture and says what is wrong."""
    assert _train(stage_images, tiny_vq_run, tmp_path / "a", 2, "--seed", "1") == 0  # another initialisation
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 1) == 0  # seed 0: what the fine-tune would start from
    assert _train(stage_images, tiny_vq_run, tmp_path / "ft", 1, "--init-from", str(tmp_path / "a"), "--lr",
                  "0.0004") == 0
    cfg = io.load_json(tmp_path / "ft" / "config.json")["train"]
    assert cfg["init_from"] == str(tmp_path / "a") and cfg["lr"] == 0.0004
    log = [json.loads(ln) for ln in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]
    # the fine-tuned weights moved one step away from the source's, not from a fresh initialisation
    src = io.load_tensors(tmp_path / "a" / "ema.safetensors")
    ft = io.load_tensors(tmp_path / "ft" / "ema.safetensors")
    fresh = io.load_tensors(tmp_path / "b" / "ema.safetensors")
    for key in (k for k in src if k.endswith("weight")):
        assert (ft[key] - src[key]).abs().max() < 0.01 < (fresh[key] - src[key]).abs().max(), key
    # a run of another architecture or stage is refused
    assert main(["train", "texture", "--vqvae", str(tiny_vq_run), "--data", str(stage_images), "--out",
                 str(tmp_path / "bad"), "--config", "tiny", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                 "--quiet", "--init-from", str(tiny_vq_run)]) == 1  # runtime error: exit 1
    assert main(["train", "texture", "--vqvae", str(tiny_vq_run), "--data", str(stage_images), "--out",
                 str(tmp_path / "bad2"), "--config", "tiny", "--steps", "1", "--batch-size", "2", "--device", "cpu",
                 "--quiet", "--init-from", str(tmp_path / "nothing")]) == 1


def test_keep_best_keeps_the_best_validation(stage_images, tiny_vq_run, tmp_path):
    """--keep-best: RUN/best holds the weights of the best validation so far (the highest hole PSNR), as a run folder
    of its own; a resumed run goes on comparing against it; the kept weights are those of that step."""
    from pyinpaint.runs import load_texture

    val = ("--val-data", str(stage_images), "--val-every", "1", "--val-batches", "1", "--ckpt-every", "4",
           "--keep-best")
    assert _train(stage_images, tiny_vq_run, tmp_path / "a", 4, *val) == 0
    log = [json.loads(ln) for ln in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    psnr = {r["step"]: r["hole_psnr"] for r in log if r["split"] == "val"}
    best = io.load_json(tmp_path / "a" / "best" / "best.json")
    assert best["metric"] == "hole_psnr" and best["step"] == max(psnr, key=psnr.get)
    assert best["value"] == max(psnr.values())
    gen, dis, vq = load_texture(tmp_path / "a" / "best")  # reads as a run (its VQ-VAE copied in)
    kept = io.load_tensors(tmp_path / "a" / "best" / "ema.safetensors")
    # the same run stopped at that step has exactly those weights
    assert _train(stage_images, tiny_vq_run, tmp_path / "c", best["step"]) == 0
    ref = io.load_tensors(tmp_path / "c" / "ema.safetensors")
    assert all(torch.equal(kept[k], ref[k]) for k in ref)
    # interrupted and resumed: the same best
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 2, *val) == 0
    assert _train(stage_images, tiny_vq_run, tmp_path / "b", 4, *val, "--resume") == 0
    assert io.load_json(tmp_path / "b" / "best" / "best.json") == best
    assert not list((tmp_path / "b").glob(".best*"))  # no temporary folder left
    # without the flag, nothing is kept
    assert _train(stage_images, tiny_vq_run, tmp_path / "d", 1, *val[:-1]) == 0
    assert not (tmp_path / "d" / "best").exists()
