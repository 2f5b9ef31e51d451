"""Train a stage from folders and names, as ``pyinpaint train`` does: the Python API the CLI calls.

Each function builds the stage's task from a preset, the data set and (stages 2-3) a trained VQ-VAE run, and
runs :func:`pyinpaint.train.loop.train`. Everything that can refuse the start (presets, data and mask folders,
the VQ-VAE run, the batch against the data set, the run folder) is checked before the run folder is created.
``train_args`` are :class:`~pyinpaint.train.loop.TrainArgs` fields (``steps``, ``batch_size``, ``lr``, ``seed``,
``device``, ``accumulate``, ``precision``, ...); ``lr`` and ``ema_decay`` default to the official values of
the stage. Works the same under ``torchrun`` (every process calls it; rank 0 alone writes and prints).

    from pyinpaint.train.stages import train_vqvae, train_structure, train_texture
    train_vqvae("photos", "runs/vq", config="small", steps=2000, batch_size=8)
    train_structure("photos", "runs/st", vqvae="runs/vq", config="small", steps=2000)
    train_texture("photos", "runs/tx", vqvae="runs/vq", config="small", steps=2000)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from pyinpaint.train.loop import TrainArgs, resolve_device, train

# Official hyper-parameters per stage (train_vqvae.py, train_structure_generator.py, train_texture_generator.py).
STAGE_DEFAULTS = {"vqvae": {"lr": 1e-4, "ema_decay": 0.9997}, "structure": {"lr": 0.18, "ema_decay": 0.9997},
                  "texture": {"lr": 1e-4, "ema_decay": 0.0}}


def _args(stage: str, out: str | os.PathLike, train_args: dict[str, Any]) -> TrainArgs:
    return TrainArgs(out=str(out), **{**STAGE_DEFAULTS[stage], **train_args})


def _announce(task, config: str, size: int, n_images: int, device, out, extra: str = "") -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    params = sum(p.numel() for p in task.model.parameters()) / 1e6
    world = int(os.environ.get("WORLD_SIZE", "1"))
    procs = f" x {world} processes" if world > 1 else ""
    print(f"training {task.stage} ({config}, {size}px, {params:.2f}M parameters) on {n_images} images{extra}, "
          f"device {device}{procs}, run {out}", file=sys.stderr)


def train_vqvae(data: str | os.PathLike, out: str | os.PathLike, *, config: str = "paper",
                image_size: int | None = None, val_data: str | os.PathLike | None = None, recipe: str = "faces",
                resume: bool = False, progress: bool = True, **train_args) -> dict[str, float]:
    """Stage 1: the hierarchical VQ-VAE. Returns the last logged metrics ({} if the run was already done)."""
    from pyinpaint.config import vqvae_preset
    from pyinpaint.data import ImageFolder
    from pyinpaint.train.vqvae import VQVAETask

    args = _args("vqvae", out, train_args)
    cfg = vqvae_preset(config, **({"image_size": image_size} if image_size else {}))
    device = resolve_device(args.device)
    train_set = ImageFolder(data, size=cfg.image_size, recipe=recipe, seed=args.seed)
    val_set = ImageFolder(val_data, size=cfg.image_size, recipe="resize") if val_data else None
    torch.manual_seed(args.seed)  # the initial weights depend on the seed only
    task = VQVAETask(cfg, lr=args.lr, device=device)
    _announce(task, config, cfg.image_size, len(train_set), device, out)
    return train(task, train_set, val_set, args, resume=resume, device=device, progress=progress)


def _train_on_vqvae(stage: str, data, out, vqvae, make_task, *, masks: str, val_masks: str, val_data, recipe: str,
                    resume: bool, progress: bool, config: str, train_args: dict[str, Any]) -> dict[str, float]:
    """Stages 2 and 3: train ``make_task(vqvae_model, masks, val_masks, device)`` on the codes of a VQ-VAE run,
    keeping a copy of that VQ-VAE in the new run (``RUN/vqvae``; a resumed run uses its copy)."""
    from pyinpaint.data import ImageFolder
    from pyinpaint.masks import make_mask_source
    from pyinpaint.runs import copy_vqvae_into, load_vqvae

    args = _args(stage, out, train_args)
    if resume and not (Path(out) / "config.json").exists():
        raise FileNotFoundError(f"--resume: {out} is not a run directory (no config.json)")
    if not resume and vqvae is None:
        raise ValueError(f"train {stage}: a VQ-VAE run is needed (vqvae=...)")
    device = resolve_device(args.device)
    vq = load_vqvae(Path(out) / "vqvae" if resume else vqvae, device)
    size = vq.cfg.image_size
    train_set = ImageFolder(data, size=size, recipe=recipe, seed=args.seed)
    val_set = ImageFolder(val_data, size=size, recipe="resize") if val_data else None
    mask_source = make_mask_source(masks, size, seed=args.seed)
    val_mask_source = make_mask_source(val_masks, size, seed=12345)
    torch.manual_seed(args.seed)  # the initial weights depend on the seed only
    task = make_task(vq, mask_source, val_mask_source, device)
    _announce(task, config, size, len(train_set), device, out, f", masks {masks}")
    return train(task, train_set, val_set, args, resume=resume, device=device, progress=progress,
                 on_create=None if resume else (lambda run_dir: copy_vqvae_into(run_dir, vqvae)))


def _vqvae_run_name(vqvae, out) -> str:
    """The VQ-VAE run recorded in the config (a resume without ``vqvae`` keeps the recorded one)."""
    if vqvae is not None:
        from pyinpaint.runs import model_source

        model = model_source(vqvae)
        return str((model or Path(vqvae)).resolve())
    from pyinpaint import io

    p = Path(out) / "config.json"
    return io.load_json(p)["model"].get("vqvae_run", "") if p.exists() else ""


def train_structure(data: str | os.PathLike, out: str | os.PathLike, vqvae: str | os.PathLike | None = None, *,
                    config: str = "paper", masks: str = "random", val_masks: str = "protocol", warmup: int = 16000,
                    dropout: float | None = None, val_data: str | os.PathLike | None = None, recipe: str = "faces",
                    resume: bool = False, progress: bool = True, **train_args) -> dict[str, float]:
    """Stage 2: the structure generator on the top codes of the VQ-VAE run ``vqvae`` (frozen, EMA weights)."""
    from pyinpaint.config import structure_preset
    from pyinpaint.train.structure import StructureTask

    lr = train_args.get("lr", STAGE_DEFAULTS["structure"]["lr"])

    def make_task(vq, mask_source, val_mask_source, device):
        overrides = dict(image_size=vq.cfg.image_size, embedding_dim=vq.cfg.embedding_dim,
                         num_embeddings=vq.cfg.num_embeddings)
        if dropout is not None:
            overrides["dropout"] = dropout
        return StructureTask(structure_preset(config, **overrides), vq, mask_source, val_mask_source, lr=lr,
                             warmup=warmup, device=device, vqvae_run=_vqvae_run_name(vqvae, out))

    return _train_on_vqvae("structure", data, out, vqvae, make_task, masks=masks, val_masks=val_masks,
                           val_data=val_data, recipe=recipe, resume=resume, progress=progress, config=config,
                           train_args=train_args)


def train_texture(data: str | os.PathLike, out: str | os.PathLike, vqvae: str | os.PathLike | None = None, *,
                  config: str = "paper", masks: str = "random", val_masks: str = "protocol",
                  feature_weight: float = 0.1, val_data: str | os.PathLike | None = None, recipe: str = "faces",
                  resume: bool = False, progress: bool = True, **train_args) -> dict[str, float]:
    """Stage 3: the texture generator and its discriminator on the structures of the VQ-VAE run ``vqvae``."""
    from pyinpaint.config import texture_preset
    from pyinpaint.train.texture import TextureTask

    lr = train_args.get("lr", STAGE_DEFAULTS["texture"]["lr"])

    def make_task(vq, mask_source, val_mask_source, device):
        cfg = texture_preset(config, image_size=vq.cfg.image_size, embedding_dim=vq.cfg.embedding_dim)
        return TextureTask(cfg, vq, mask_source, val_mask_source, lr=lr, feature_weight=feature_weight,
                           device=device, vqvae_run=_vqvae_run_name(vqvae, out))

    return _train_on_vqvae("texture", data, out, vqvae, make_task, masks=masks, val_masks=val_masks,
                           val_data=val_data, recipe=recipe, resume=resume, progress=progress, config=config,
                           train_args=train_args)
