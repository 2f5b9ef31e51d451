"""Reading training runs (see :mod:`pyinpaint.train.loop` for the layout): config and EMA weights."""
from __future__ import annotations

from pathlib import Path

import torch

from pyinpaint import io
from pyinpaint.config import VQVAEConfig, from_dict
from pyinpaint.models.vqvae import VQVAE


def read_config(run: str | Path, stage: str) -> dict:
    run = Path(run)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run} is not a training run (no config.json)")
    config = io.load_json(run / "config.json")
    if config.get("stage") != stage:
        raise ValueError(f"{run} is a {config.get('stage')!r} run, not a {stage!r} run")
    return config


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a training run's folder (a config.json that names a stage)."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    try:
        return "stage" in io.load_json(p)
    except (OSError, ValueError):
        return False


def model_source(source: str | Path) -> Path | None:
    """The model folder of ``source`` when it names a model rather than a training run: a shipped model's name
    (``faces``) or a folder written by ``pyinpaint export`` / ``convert-official``; None for a training run's folder.
    A run folder wins over a shipped name of the same spelling."""
    from pyinpaint.inpainter import model_path

    if is_run(source):
        return None
    path = model_path(str(source))
    return path if (path / "model.safetensors").is_file() else None


def load_vqvae(run: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """The VQ-VAE of a run with its Polyak-EMA weights (what the official pipeline evaluates and uses), or of a
    model (a shipped model's name or a model folder: see :func:`model_source`)."""
    model = model_source(run)
    if model is not None:
        from pyinpaint.modelfile import load_model

        return load_model(model, device).vqvae.eval()
    run = Path(run)
    cfg = from_dict(VQVAEConfig, read_config(run, "vqvae")["model"])
    if not (run / "ema.safetensors").exists():
        raise FileNotFoundError(f"{run} has no ema.safetensors yet (no checkpoint was written)")
    model = VQVAE(cfg)
    io.load_state_into(model, io.load_tensors(run / "ema.safetensors"), f"{run}/ema.safetensors")
    return model.to(device).eval()


def copy_vqvae_into(run: str | Path, vqvae_run: str | Path) -> None:
    """Keep a copy of the VQ-VAE a later stage was trained on inside that stage's run (``RUN/vqvae``), so the
    run stays usable when the VQ-VAE's own run directory moves or is deleted."""
    import shutil
    from dataclasses import asdict

    src, dst = Path(vqvae_run), Path(run) / "vqvae"
    model = model_source(vqvae_run)
    if model is not None:  # a model's VQ-VAE, written as a run folder holds it
        vq = load_vqvae(model)
        dst.mkdir(parents=True, exist_ok=True)
        io.save_tensors(dst / "ema.safetensors", {k: v.contiguous() for k, v in vq.state_dict().items()})
        io.save_json(dst / "config.json", {"stage": "vqvae", "model": asdict(vq.cfg), "from_model": str(model)})
        return
    read_config(src, "vqvae")
    if not (src / "ema.safetensors").exists():
        raise FileNotFoundError(f"{src} has no ema.safetensors yet (no checkpoint was written)")
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "ema.safetensors"):
        io.atomic_write(dst / name, lambda tmp, name=name: shutil.copyfile(src / name, tmp))


def load_structure(run: str | Path, device: str | torch.device = "cpu"):
    """(StructureGenerator with EMA weights, its VQ-VAE) of a structure run."""
    from pyinpaint.config import StructureConfig
    from pyinpaint.models.structure import StructureGenerator

    run = Path(run)
    config = read_config(run, "structure")
    cfg = from_dict(StructureConfig, config["model"]["structure"])
    if not (run / "ema.safetensors").exists():
        raise FileNotFoundError(f"{run} has no ema.safetensors yet (no checkpoint was written)")
    model = StructureGenerator(cfg)
    io.load_state_into(model, io.load_tensors(run / "ema.safetensors"), f"{run}/ema.safetensors")
    return model.to(device).eval(), load_vqvae(run / "vqvae", device)


def load_texture(run: str | Path, device: str | torch.device = "cpu"):
    """(TextureGenerator, Discriminator, its VQ-VAE) of a texture run, from ``RUN/ema.safetensors`` (stage 3 keeps
    no Polyak average by default: these are the trained weights, ``generator.*`` and ``discriminator.*``)."""
    from pyinpaint.config import TextureConfig
    from pyinpaint.models.texture import Discriminator, TextureGenerator

    run = Path(run)
    config = read_config(run, "texture")
    cfg = from_dict(TextureConfig, config["model"]["texture"])
    if not (run / "ema.safetensors").exists():
        raise FileNotFoundError(f"{run} has no ema.safetensors yet (no checkpoint was written)")
    state = io.load_tensors(run / "ema.safetensors")
    parts: dict[str, dict[str, torch.Tensor]] = {"generator": {}, "discriminator": {}}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head not in parts:
            raise ValueError(f"{run}/ema.safetensors: unexpected tensor {key!r} (expected generator.* and "
                             "discriminator.*)")
        parts[head][rest] = value
    gen, dis = TextureGenerator(cfg), Discriminator(cfg)
    io.load_state_into(gen, parts["generator"], f"{run}/ema.safetensors (generator)")
    io.load_state_into(dis, parts["discriminator"], f"{run}/ema.safetensors (discriminator)")
    return gen.to(device).eval(), dis.to(device).eval(), load_vqvae(run / "vqvae", device)
