"""The one model format: save/load round trip, clear errors, export from training runs, official conversion."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import load_parity, nchw, nhwc, rel_err
from tfwriter import write_checkpoint

from pyinpaint import io, official
from pyinpaint.config import (StructureConfig, TextureConfig, structure_preset, texture_preset, to_dict,
                              vqvae_preset)
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.texture import Discriminator, TextureGenerator
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.modelfile import ModelFileError, check_configs, export_runs, load_model, save_model
from pyinpaint.official import SHADOW, _Shape, convert_official, infer_structure_config, infer_texture_config


def tiny_modules(seed: int = 0, discriminator: bool = True):
    torch.manual_seed(seed)
    tx = texture_preset("tiny")
    mods = [VQVAE(vqvae_preset("tiny")).eval(), StructureGenerator(structure_preset("tiny")).eval(),
            TextureGenerator(tx).eval(), Discriminator(tx).eval() if discriminator else None]
    # give the weight-norm gains and biases values other than their initial ones, so mix-ups show
    with torch.no_grad():
        for m in mods[:3]:
            for name, p in m.named_parameters():
                if name.endswith((".g", ".b", "bias")):
                    p.add_(0.1 * torch.randn_like(p))
    return mods


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model(path, *tiny_modules(), source={"test": "tiny"})
    return path


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    m = torch.zeros(2, 1, 64, 64)
    m[:, :, 16:40, 8:48] = 1
    e = torch.randn(2, 8, 8, 8, generator=g)
    return x, m, x * (1 - m), e


def _outputs(vq, st, gen, dis):
    x, m, masked, e = _inputs()
    with torch.no_grad():
        out = {"recon": vq(x)[0], "logits": st(masked, m, e), "texture": gen(masked, m, e)}
        if dis is not None:
            out["dis"] = dis(x, m)
    return out


def test_tiny_presets_form_one_model():
    check_configs(vqvae_preset("tiny"), structure_preset("tiny"), texture_preset("tiny"))


def test_round_trip_gives_identical_outputs(tiny_dir):
    mods = tiny_modules()
    model = load_model(tiny_dir)
    assert model.discriminator is not None and model.image_size == 64 and model.source == {"test": "tiny"}
    assert not any(m.training for m in (model.vqvae, model.structure, model.generator, model.discriminator))
    ours, theirs = _outputs(*mods), _outputs(model.vqvae, model.structure, model.generator, model.discriminator)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    config = io.load_json(tiny_dir / "config.json")
    assert config["format"] == "pyinpaint-model" and config["version"] == 1
    assert config["structure"] == to_dict(structure_preset("tiny"))
    assert "pyinpaint model" in (tiny_dir / "README.md").read_text()
    # a file of the model directory is accepted for the directory
    assert load_model(tiny_dir / "config.json").path == tiny_dir


def test_model_without_discriminator(tmp_path):
    vq, st, gen, _ = tiny_modules(discriminator=False)
    save_model(tmp_path / "m", vq, st, gen, card=False)
    assert not (tmp_path / "m" / "README.md").exists()
    assert load_model(tmp_path / "m").discriminator is None
    assert not any(k.startswith("discriminator.") for k in io.load_tensors(tmp_path / "m" / "model.safetensors"))


def test_save_refuses_to_overwrite_and_inconsistent_modules(tmp_path, tiny_dir):
    mods = tiny_modules()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_model(tiny_dir, *mods)
    bad_st = StructureGenerator(structure_preset("tiny", num_embeddings=16))
    with pytest.raises(ValueError, match="num_embeddings differs"):
        save_model(tmp_path / "bad", mods[0], bad_st, mods[2])
    assert not (tmp_path / "bad").exists()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_files(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    d = _copy(tiny_dir, tmp_path / "a")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_model(d)
    d = _copy(tiny_dir, tmp_path / "b")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model(d)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(format="something-else"), "not a pyinpaint model"),
    (lambda c: c.update(version=2), "version 2 is newer"),
    (lambda c: c.update(version="1"), "must be an integer"),
    (lambda c: c.pop("texture"), "missing config sections"),
    (lambda c: c["structure"].update(num_embeddings=16), "num_embeddings differs"),
    (lambda c: c["texture"].update(image_size=128), "image_size differs"),
    (lambda c: c["vqvae"].update(embedding_dim=4), "embedding_dim differs"),
    (lambda c: c["vqvae"].update(colour="red"), "unknown VQVAEConfig fields"),
])
def test_bad_config(tmp_path, tiny_dir, edit, match):
    d = _copy(tiny_dir, tmp_path / "m")
    config = io.load_json(d / "config.json")
    edit(config)
    io.save_json(d / "config.json", config)
    with pytest.raises(ValueError, match=match):
        load_model(d)


def test_bad_tensors(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    tensors = io.load_tensors(d / "model.safetensors")
    key = "texture.out.weight"
    wrong = dict(tensors, **{key: torch.zeros(3, 2, 3, 3)})
    io.save_tensors(d / "model.safetensors", wrong)
    with pytest.raises(ModelFileError, match=r"tensor 'texture.out.weight' has shape \(3, 2, 3, 3\), the config.json "
                       r"texture section needs \(3, 4, 3, 3\)"):
        load_model(d)
    io.save_tensors(d / "model.safetensors", dict(tensors, **{"extra.x": torch.zeros(1)}))
    with pytest.raises(ValueError, match="unexpected tensor 'extra.x'"):
        load_model(d)
    io.save_tensors(d / "model.safetensors", {k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ModelFileError, match="tensor 'texture.out.weight' is missing"):
        load_model(d)
    io.save_tensors(d / "model.safetensors", {k: v for k, v in tensors.items() if not k.startswith("structure.")})
    with pytest.raises(ValueError, match="no weights for"):
        load_model(d)
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(d)


@pytest.mark.parametrize("section,key,value,match", [
    # absurd sizes are refused before anything is built
    ("vqvae", "image_size", 8192, r"VQVAEConfig.image_size must be in \[8, 1024\], got 8192"),
    ("structure", "channels", 10 ** 7, r"StructureConfig.channels must be in \[8, 4096\]"),
    ("texture", "dis_channels", 2 ** 40, r"TextureConfig.dis_channels must be in \[1, 4096\]"),
    ("structure", "heads", 0, r"StructureConfig.heads must be in \[1, 256\], got 0"),
    ("vqvae", "res_blocks", -1, r"VQVAEConfig.res_blocks must be in \[0, 256\]"),
    # wrong types, named
    ("vqvae", "image_size", "64", "VQVAEConfig.image_size must be an integer, got '64'"),
    ("structure", "resnets", 2.0, "StructureConfig.resnets must be an integer, got 2.0"),
    ("texture", "channels", True, "TextureConfig.channels must be an integer, got True"),
    ("vqvae", "zero_debias", "yes", "VQVAEConfig.zero_debias must be true or false"),
    ("structure", "dropout", None, "StructureConfig.dropout must be a number, got None"),
    ("vqvae", "commitment_cost", [1], "VQVAEConfig.commitment_cost must be a number"),
    ("vqvae", "epsilon", "@1e400", "VQVAEConfig.epsilon must be finite"),  # JSON 1e400 reads as inf
])
def test_config_values_are_typed_and_bounded(tmp_path, tiny_dir, section, key, value, match):
    d = _copy(tiny_dir, tmp_path / "m")
    config = io.load_json(d / "config.json")
    config[section][key] = value
    (d / "config.json").write_text(json.dumps(config).replace('"@1e400"', "1e400"))
    with pytest.raises(ModelFileError, match=rf"config.json: invalid {section} config: {match}"):
        load_model(d)


@pytest.mark.parametrize("text,match", [
    ('{"format": "pyinpaint-model", "version": 1, "vqvae": {"decay": NaN}, "structure": {}, "texture": {}}',
     "NaN is not a valid number"),
    ("[" * 100000 + "]" * 100000, "nested too deeply|not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (" " * (2 << 20), "larger than"),
])
def test_config_json_that_is_not_json(tmp_path, tiny_dir, text, match):
    d = _copy(tiny_dir, tmp_path / "m")
    (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ModelFileError, match=match):
        load_model(d)


def test_unknown_config_key_is_named(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    config = io.load_json(d / "config.json")
    config["discrimnator"] = {}
    io.save_json(d / "config.json", config)
    with pytest.raises(ModelFileError, match="unknown key 'discrimnator'"):
        load_model(d)


def test_config_is_checked_against_the_weight_shapes_before_any_tensor_is_read(tmp_path, tiny_dir, monkeypatch):
    d = _copy(tiny_dir, tmp_path / "m")
    config = io.load_json(d / "config.json")
    config["structure"]["channels"] = 4096  # within bounds, but not these weights: 1.5 GB if it were built
    io.save_json(d / "config.json", config)

    def no_data(*args, **kwargs):
        raise AssertionError("tensor data read before the config was checked against the weight shapes")

    monkeypatch.setattr(io, "load_tensors", no_data)
    with pytest.raises(ModelFileError, match=r"tensor 'structure\..*' has shape .* the config.json structure section "
                                             r"needs .*4096"):
        load_model(d)


@pytest.mark.parametrize("make,match", [
    (lambda t: t.to(torch.int32), "has dtype I32, expected a floating-point type"),
    (lambda t: t.to(torch.bool), "has dtype BOOL, expected a floating-point type"),
    (lambda t: torch.where(torch.arange(t.numel()).reshape(t.shape) == 3, float("nan"), t), "1 NaN or infinite"),
    (lambda t: t.double() * 1e300, "NaN or infinite"),  # overflows float32
])
def test_tensor_dtype_and_finiteness_are_checked(tmp_path, tiny_dir, make, match):
    d = _copy(tiny_dir, tmp_path / "m")
    tensors = io.load_tensors(d / "model.safetensors")
    key = "texture.out.weight"
    io.save_tensors(d / "model.safetensors", dict(tensors, **{key: make(tensors[key])}))
    with pytest.raises(ModelFileError, match=f"tensor '{key}' .*{match}"):
        load_model(d)
    # an integer counter must stay an integer
    io.save_tensors(d / "model.safetensors", dict(tensors, **{"vqvae.encoder.vq_t.ema_steps": torch.tensor(2.0)}))
    with pytest.raises(ModelFileError, match="ema_steps' has dtype F32, expected an integer type"):
        load_model(d)


def test_half_precision_weights_load_as_float32(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    tensors = io.load_tensors(d / "model.safetensors")
    io.save_tensors(d / "model.safetensors", {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()})
    model = load_model(d)
    w = model.generator.state_dict()["out.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, tensors["texture.out.weight"].half().float())


def test_checksum_catches_flipped_weight_bytes(tmp_path, tiny_dir):
    d = _copy(tiny_dir, tmp_path / "m")
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-100] ^= 0x01  # a low mantissa bit of some weight: still a finite number
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="do not match the file's checksum"):
        load_model(d)


# ------------------------------------------------------------------------------------------- export
def _train(stage, image_dir, vq_run, out):
    from pyinpaint.cli import main

    extra = ["--warmup", "10"] if stage == "structure" else []
    assert main(["train", stage, "--vqvae", str(vq_run), "--data", str(image_dir), "--out", str(out), "--config",
                 "tiny", "--steps", "1", "--batch-size", "2", "--device", "cpu", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_runs(stage_images, tiny_vq_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_runs")
    return (tiny_vq_run, _train("structure", stage_images, tiny_vq_run, root / "st"),
            _train("texture", stage_images, tiny_vq_run, root / "tx"))


def test_export_runs(tiny_runs, tmp_path):
    from pyinpaint.inpainter import Inpainter
    from pyinpaint.runs import load_structure, load_texture, load_vqvae

    vq_run, st_run, tx_run = tiny_runs
    out = export_runs(vq_run, st_run, tx_run, tmp_path / "model")
    model = load_model(out)
    src = model.source["exported_from"]
    assert src["structure"]["step"] == 1 and src["vqvae"]["run"] == str(vq_run.resolve())
    vq, (st, _), (gen, dis, _) = load_vqvae(vq_run), load_structure(st_run), load_texture(tx_run)
    for ours, theirs in ((model.vqvae, vq), (model.structure, st), (model.generator, gen), (model.discriminator, dis)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images = Inpainter.load(out, "cpu").sample(np.full((40, 56, 3), 90, np.uint8),
                                               np.pad(np.ones((10, 12), bool), ((5, 25), (20, 24))), n=2, seed=0)
    assert [im.size for im in images] == [(56, 40)] * 2
    # the structure run's own copy of its VQ-VAE is the default
    assert export_runs(None, st_run, tx_run, tmp_path / "model2").exists()


def test_export_refuses_another_vqvae(tiny_runs, tmp_path):
    vq_run, st_run, tx_run = tiny_runs
    other = _copy(vq_run, tmp_path / "other_vq")
    tensors = io.load_tensors(other / "ema.safetensors")
    key = next(k for k in tensors if k.endswith("vq_t.embedding"))
    io.save_tensors(other / "ema.safetensors", dict(tensors, **{key: tensors[key] + 1}))
    with pytest.raises(ValueError, match="different VQ-VAE.*weight tensors differ"):
        export_runs(other, st_run, tx_run, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.warns(UserWarning, match="different VQ-VAE"):
        export_runs(other, st_run, tx_run, tmp_path / "m", allow_vqvae_mismatch=True)
    assert torch.equal(load_model(tmp_path / "m").codebook, tensors[key] + 1)


def test_export_refuses_disagreeing_configs(tiny_runs, tmp_path):
    vq_run, st_run, tx_run = tiny_runs
    tx2 = _copy(tx_run, tmp_path / "tx2")
    config = io.load_json(tx2 / "config.json")
    config["model"]["texture"]["image_size"] = 128  # the weights still fit: fully convolutional
    io.save_json(tx2 / "config.json", config)
    with pytest.raises(ValueError, match="do not form one model.*image_size differs"):
        export_runs(vq_run, st_run, tx2, tmp_path / "m")
    with pytest.raises(ValueError, match="not a 'structure' run"):
        export_runs(vq_run, tx_run, tx_run, tmp_path / "m")


# ------------------------------------------------------------------------------- official conversion
def _official_arrays(vq, st, gen, dis=None):
    arrays = {**official.export_official(official.vqvae_names(vq)),
              **official.export_official(official.structure_names(st)),
              **official.export_official(official.texture_names(gen))}
    if dis is not None:
        arrays.update(official.export_official(official.discriminator_names(dis)))
    return arrays


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _official_state(m):
    """Our tensors that have an official counterpart (the zero-debias EMA buffers do not)."""
    return {k: v for k, v in m.state_dict().items() if not k.endswith(("_biased", "ema_steps"))}


def test_convert_our_own_checkpoint(tmp_path):
    mods = tiny_modules(seed=3)
    write_checkpoint(tmp_path / "ckpt" / "model.ckpt", _official_arrays(*mods), write_state=True)
    flags = {"image_size": 64}
    out = convert_official(tmp_path / "ckpt", tmp_path / "model", flags)  # a directory with a checkpoint file
    model = load_model(out)
    assert model.configs["structure"] == structure_preset("tiny")
    assert model.configs["texture"] == texture_preset("tiny") and model.configs["vqvae"] == vqvae_preset("tiny")
    for ours, theirs in zip((model.vqvae, model.structure, model.generator, model.discriminator), mods):
        a, b = _official_state(ours), _official_state(theirs)
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert model.source["flags"] == flags and model.source["converted_from"].endswith("model.ckpt")
    # without the discriminator
    arrays = _official_arrays(*mods[:3])
    write_checkpoint(tmp_path / "nod.ckpt", arrays)
    assert load_model(convert_official(tmp_path / "nod.ckpt.index", tmp_path / "m2", flags)).discriminator is None


def test_convert_prefers_ema_shadows_and_merges_stage_checkpoints(tmp_path):
    vq, st, gen, dis = tiny_modules(seed=4)
    vq2, st2, _, _ = tiny_modules(seed=5)  # the "shadow" values
    plain = _official_arrays(vq, st, gen, dis)
    shadows = {k + SHADOW: v for k, v in {**official.export_official(official.vqvae_names(vq2)),
                                          **official.export_official(official.structure_names(st2))}.items()
               if "vector_quantize" not in k}  # codebooks are not trainable: no shadow
    vq_names = [k for k in plain if k.startswith("vq_")]
    # a structure stage checkpoint (VQ-VAE + structure + shadows + optimiser slots) and a texture stage one
    structure_stage = {**{k: plain[k] for k in plain if k.startswith(("vq_", "structure_"))},
                       **{k: v for k, v in shadows.items() if k.startswith("structure_")},
                       **{k + "/Adam": np.zeros_like(plain[k]) for k in plain if k.startswith("structure_")},
                       "global_step": np.array(7, np.int64)}
    texture_stage = {k: plain[k] for k in plain if not k.startswith("structure_")}
    write_checkpoint(tmp_path / "s.ckpt", structure_stage)
    write_checkpoint(tmp_path / "t.ckpt", texture_stage)
    model = load_model(convert_official([tmp_path / "s.ckpt", tmp_path / "t.ckpt"], tmp_path / "m", {"image_size": 64}))
    assert _same_state(model.structure, st2)  # from the shadows
    assert _same_state(model.generator, gen) and _same_state(model.discriminator, dis)
    a, b = _official_state(model.vqvae), _official_state(vq)
    assert all(torch.equal(a[k], b[k]) for k in b)  # plain: the structure stage has no VQ-VAE shadows
    assert model.source["ema_shadows_used"] == sum(1 for k in shadows if k.startswith("structure_"))
    # VQ-VAE shadows (a VQ-VAE stage checkpoint) are preferred too
    write_checkpoint(tmp_path / "full.ckpt", {**plain, **shadows})
    model = load_model(convert_official(tmp_path / "full.ckpt", tmp_path / "m2", {"image_size": 64}))
    assert torch.equal(model.vqvae.encoder.b_conv1.weight, vq2.encoder.b_conv1.weight)
    assert torch.equal(model.vqvae.encoder.vq_t.embedding, vq.encoder.vq_t.embedding)  # no shadow: plain
    # stage checkpoints that disagree on a shared variable are refused
    texture_stage[vq_names[0]] = texture_stage[vq_names[0]] + 1
    write_checkpoint(tmp_path / "t2.ckpt", texture_stage)
    with pytest.raises(ValueError, match="disagree on vq_"):
        convert_official([tmp_path / "s.ckpt", tmp_path / "t2.ckpt"], tmp_path / "m3", {"image_size": 64})


def test_convert_flag_errors(tmp_path):
    write_checkpoint(tmp_path / "x.ckpt", _official_arrays(*tiny_modules()))
    with pytest.raises(ValueError, match="does not determine image_size"):
        convert_official(tmp_path / "x.ckpt", tmp_path / "m")
    with pytest.raises(ValueError, match="--nr_channel_s 32 but the weights say 16"):
        convert_official(tmp_path / "x.ckpt", tmp_path / "m", {"image_size": 64, "nr_channel_s": 32})
    with pytest.raises(ValueError, match="resnet_nonlinearity"):
        convert_official(tmp_path / "x.ckpt", tmp_path / "m", {"image_size": 64, "resnet_nonlinearity": "elu"})
    # string flags (a command line) are compared by value
    convert_official(tmp_path / "x.ckpt", tmp_path / "m", {"image_size": "64", "nr_channel_s": "16"})
    write_checkpoint(tmp_path / "partial.ckpt", {k: v for k, v in _official_arrays(*tiny_modules()).items()
                                                 if not k.startswith("texture_generator/")})
    with pytest.raises(ValueError, match="no texture generator"):
        convert_official(tmp_path / "partial.ckpt", tmp_path / "m2", {"image_size": 64})
    with pytest.raises(FileNotFoundError):
        convert_official(tmp_path / "missing.ckpt", tmp_path / "m3", {"image_size": 64})


@pytest.mark.parametrize("name,change,match", [
    ("structure_pixelcnn/wnconv2d_5/V", lambda a: np.where(a > 0, np.nan, a), "wnconv2d_5/V: official variable holds "
                                                                              r"\d+ NaN or infinite values"),
    ("texture_generator/gated_conv2d_3/b", lambda a: a.astype(np.float64) * 1e300, "infinite"),
    ("vq_decoder/conv2d_2/W", lambda a: a.astype(np.int32), "conv2d_2/W: official variable of dtype int32"),
    ("vq_encoder/conv2d_5/b", lambda a: np.full(a.shape, b"x", dtype=object), "dtype object"),
    ("vq_encoder/conv2d_1/W", lambda a: a[..., 0], r"vq_encoder/conv2d_1/W has shape \(4, 4, 8\), expected 4 "
                                                     "dimensions"),  # IndexError before
    # a width that only this variable claims: refused before the networks are built at that width
    ("vq_encoder/conv2d_1/W", lambda a: np.zeros(a.shape[:3] + (4000,), np.float32),
     r"vq_encoder/conv2d_0/W: official shape .* does not fit the inferred networks \(expected \(4, 4, 3, 2000\)\)"),
])
def test_convert_refuses_bad_variables(tmp_path, name, change, match):
    arrays = _official_arrays(*tiny_modules())
    arrays[name] = change(arrays[name])
    write_checkpoint(tmp_path / "x.ckpt", arrays)
    with pytest.raises(ValueError, match=match):
        convert_official(tmp_path / "x.ckpt", tmp_path / "m", {"image_size": 64})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("cfg", [
    structure_preset("tiny"), structure_preset("dev"), structure_preset("small"), structure_preset("paper"),
    # 2 heads: the attention output nin is [C, C] like the output resnets' nins; no output resnets
    StructureConfig(image_size=64, embedding_dim=5, num_embeddings=7, cond_channels=3, cond_res_channels=5,
                    channels=16, res_channels=6, resnets=6, out_resnets=0, attention=3, heads=2),
    # K = C // 8 (logits shaped like a q nin), one group of 3 pairs, 1 head
    StructureConfig(image_size=64, embedding_dim=4, num_embeddings=2, cond_channels=2, cond_res_channels=2,
                    channels=16, res_channels=32, resnets=3, out_resnets=3, attention=1, heads=1),
], ids=["tiny", "dev", "small", "paper", "two-heads", "k-like-q"])
def test_infer_structure_config(cfg):
    torch.manual_seed(0)
    names = official.structure_names(StructureGenerator(cfg))
    shapes = {k: _Shape(tuple(e.to_tf(e.target.detach().numpy()).shape)) for k, e in names.items()}
    assert infer_structure_config(shapes, cfg.image_size, dropout=cfg.dropout) == cfg


@pytest.mark.parametrize("cfg", [texture_preset("tiny"), texture_preset("paper"),
                                 TextureConfig(image_size=72, embedding_dim=3, channels=6, dis_channels=5)])
def test_infer_texture_config(cfg):
    shapes = {}
    for names in (official.texture_names(TextureGenerator(cfg)), official.discriminator_names(Discriminator(cfg))):
        shapes.update({k: _Shape(tuple(e.to_tf(e.target.detach().numpy()).shape)) for k, e in names.items()})
    assert infer_texture_config(shapes, cfg.image_size) == cfg


# ----------------------------------------------------------------------- the official fixture (if present)
def test_convert_official_fixture(parity_dir, tmp_path):
    flags, _, ref = load_parity(parity_dir)
    with pytest.raises(ValueError, match="image_size"):
        convert_official(parity_dir / "model.ckpt", tmp_path / "nf", {k: v for k, v in flags.items()
                                                                       if k != "image_size"})
    model = load_model(convert_official(parity_dir / "model.ckpt", tmp_path / "model", flags))
    assert model.image_size == flags["image_size"] and model.discriminator is not None
    assert model.source["converted_from"].endswith("model.ckpt")
    assert json.loads(json.dumps(model.source["flags"])) == flags
    with torch.no_grad():
        recon, _ = model.vqvae(nchw(ref["image"]))
        h = model.structure.condition(nchw(ref["masked_image"]), nchw(ref["mask"]))
        logits = model.structure.pixelcnn(nchw(ref["sp.e"]), h)
        out = model.generator(nchw(ref["masked_image"]), nchw(ref["mask"]), nchw(ref["tg.s"]))
    assert rel_err(nhwc(recon), ref["vq.recon"]) < 1e-5
    assert rel_err(nhwc(h), ref["sc.h"]) < 1e-5
    assert rel_err(nhwc(logits), ref["sp.logits"]) < 1e-5
    assert rel_err(nhwc(out), ref["tg.out"]) < 5e-4
