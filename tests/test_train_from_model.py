"""Training from a model instead of a run: --vqvae MODEL and --init-from MODEL (a shipped model's name or a model
folder), for fine-tuning a finished model on other photos or continuing it, on a tiny model."""
import pytest
import torch

from pyinpaint import io
from pyinpaint.cli import main
from pyinpaint.modelfile import load_model
from pyinpaint.runs import is_run, load_vqvae, model_source


def _train(stage, image_dir, out, *extra, steps=1, config="tiny"):
    return main(["train", stage, "--data", str(image_dir), "--out", str(out), "--config", config, "--steps",
                 str(steps), "--batch-size", "2", "--device", "cpu", "--quiet", "--log-every", "1", *extra])


def _distance(run, net, prefix=""):
    """Largest difference between the run's weights and the parameters of ``net`` (not buffers: the spectral norm's
    power-iteration vector moves at every step)."""
    ema = io.load_tensors(run / "ema.safetensors")
    state = dict(net.named_parameters())
    keys = [k for k in state if state[k].numel() > 1]
    assert keys
    return max(float((ema[prefix + k] - state[k].detach()).abs().max()) for k in keys)


def test_model_sources(tiny_model_dir, tiny_vq_run, tmp_path):
    assert is_run(tiny_vq_run) and not is_run(tiny_model_dir)
    assert model_source(tiny_vq_run) is None and model_source(tiny_model_dir) == tiny_model_dir
    assert model_source("faces").name == "faces-128"  # a shipped model by name
    assert model_source(tmp_path / "nothing") is None
    vq = load_vqvae(tiny_model_dir)
    ref = load_model(tiny_model_dir).vqvae.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in vq.state_dict().items())


@pytest.mark.parametrize("stage", ["texture", "structure"])
def test_fine_tune_stages_2_3_from_a_model(stage, stage_images, tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    out = tmp_path / stage
    assert _train(stage, stage_images, out, "--vqvae", str(tiny_model_dir), "--init-from", str(tiny_model_dir)) == 0
    # the run keeps the model's VQ-VAE as a run folder, and says where it came from
    copy = io.load_json(out / "vqvae" / "config.json")
    assert copy["stage"] == "vqvae" and copy["from_model"] == str(tiny_model_dir)
    assert io.load_json(out / "config.json")["model"]["vqvae_run"] == str(tiny_model_dir.resolve())
    kept = load_vqvae(out / "vqvae").state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in model.vqvae.state_dict().items())
    # one small step away from the model's weights; a fresh start is far from them
    assert _train(stage, stage_images, tmp_path / "fresh", "--vqvae", str(tiny_model_dir), "--seed", "1") == 0
    nets = ({"generator.": model.generator, "discriminator.": model.discriminator} if stage == "texture"
            else {"": model.structure})
    for prefix, net in nets.items():
        assert _distance(out, net, prefix) < 0.01 < _distance(tmp_path / "fresh", net, prefix)
    # it resumes like any run (from the copy of the VQ-VAE)
    assert _train(stage, stage_images, out, "--vqvae", str(tiny_model_dir), "--init-from", str(tiny_model_dir),
                  "--resume", steps=2) == 0
    assert io.load_json(out / "latest.json")["step"] == 2


def test_fine_tune_the_vqvae_from_a_model(stage_images, tiny_model_dir, tmp_path):
    assert _train("vqvae", stage_images, tmp_path / "vq", "--init-from", str(tiny_model_dir)) == 0
    assert _train("vqvae", stage_images, tmp_path / "fresh", "--seed", "1") == 0  # another initialisation
    vq = load_model(tiny_model_dir).vqvae
    assert _distance(tmp_path / "vq", vq) < 0.01 < _distance(tmp_path / "fresh", vq)


def test_refusals(stage_images, tiny_model_dir, tiny_vq_run, tmp_path, capsys):
    # the generators read their own VQ-VAE's codes: another VQ-VAE is refused, naming the fix
    assert _train("texture", stage_images, tmp_path / "a", "--vqvae", str(tiny_vq_run), "--init-from",
                  str(tiny_model_dir)) == 1
    assert f"pass --vqvae {tiny_model_dir}" in capsys.readouterr().err
    # another architecture (the dev preset) is refused
    assert _train("structure", stage_images, tmp_path / "b", "--vqvae", str(tiny_model_dir), "--init-from",
                  str(tiny_model_dir), config="dev") == 1
    assert "differ from this run's architecture" in capsys.readouterr().err
    # neither a run nor a model
    assert _train("texture", stage_images, tmp_path / "c", "--vqvae", str(tiny_model_dir), "--init-from",
                  str(tmp_path / "nothing")) == 1
    assert "neither a run directory" in capsys.readouterr().err


def test_export_fine_tuned_runs(stage_images, tiny_model_dir, tmp_path):
    from pyinpaint.inpainter import Inpainter

    for stage in ("structure", "texture"):
        assert _train(stage, stage_images, tmp_path / stage, "--vqvae", str(tiny_model_dir), "--init-from",
                      str(tiny_model_dir)) == 0
    assert main(["export", "--structure", str(tmp_path / "structure"), "--texture", str(tmp_path / "texture"),
                 "-o", str(tmp_path / "model")]) == 0
    inp = Inpainter.load(tmp_path / "model", "cpu")
    ref = load_model(tiny_model_dir).vqvae.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in inp.model.vqvae.state_dict().items())
    hole = torch.zeros(64, 64, dtype=torch.bool)
    hole[20:40, 20:40] = True
    assert len(inp.sample(torch.rand(3, 64, 64), hole, n=2, seed=0)) == 2


def test_export_one_fine_tuned_stage_with_the_rest_of_a_model(stage_images, tiny_model_dir, tiny_vq_run, tmp_path,
                                                               capsys):
    assert _train("texture", stage_images, tmp_path / "tx", "--vqvae", str(tiny_model_dir), "--init-from",
                  str(tiny_model_dir)) == 0
    assert main(["export", "--texture", str(tmp_path / "tx"), "--base", str(tiny_model_dir), "-o",
                 str(tmp_path / "model")]) == 0
    base, new = load_model(tiny_model_dir), load_model(tmp_path / "model")
    for a, b in ((base.vqvae, new.vqvae), (base.structure, new.structure)):  # from the base model
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    tuned = io.load_tensors(tmp_path / "tx" / "ema.safetensors")  # from the run
    assert all(torch.equal(tuned["generator." + k], v) for k, v in new.generator.state_dict().items())
    source = io.load_json(tmp_path / "model" / "config.json")["source"]["exported_from"]
    assert source["structure"] == {"model": str(tiny_model_dir)} and source["texture"]["step"] == 1
    # a run trained on another VQ-VAE does not go with the base model's networks
    assert _train("texture", stage_images, tmp_path / "other", "--vqvae", str(tiny_vq_run)) == 0
    assert main(["export", "--texture", str(tmp_path / "other"), "--base", str(tiny_model_dir), "-o",
                 str(tmp_path / "bad")]) == 1
    assert "different VQ-VAE" in capsys.readouterr().err
    # without a base model both runs are needed
    assert main(["export", "--texture", str(tmp_path / "tx"), "-o", str(tmp_path / "bad2")]) == 1
    assert "or a base model" in capsys.readouterr().err
