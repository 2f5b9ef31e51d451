"""The one room for the authors' official TensorFlow code: names, flags, config inference, conversion.

Everything pyinpaint knows about the official DSI code (``net/*.py``, ``test.py``, ``train_*.py``,
``save_full_model.py``) lives here, and nowhere else:

* flags: :data:`FLAGS` maps each config field to its official argparse flag; :func:`from_official_flags`;
* variable names: official names are ``<template>/<layer>_<i>/<leaf>`` where ``i`` counts layers of one type in
  creation order within one template call (``vq_encoder/conv2d_13/W``). Our modules register their layers in
  that creation order, so walking ``module.modules()`` and counting per type reproduces the names
  (:func:`template_names`, :func:`vqvae_names`, ...). Array layouts (TF -> ours):

  - conv ``W`` HWIO -> OIHW; VQ-VAE ``deconv2d/W`` [kh, kw, out, in] -> ConvTranspose2d [in, out, kh, kw]
    (both ``transpose(3, 2, 0, 1)``); biases as they are;
  - codebooks ``embedding`` and ``ema_dw`` [D, K] -> [K, D]; ``ema_cluster_size`` [K];
  - weight-norm ``wnconv2d/V`` HWIO -> OIHW, ``wndense/V`` [in, out] -> [out, in]; ``g``, ``b`` as they are.
    The per-head q, k, v ``wndense`` layers of an attention block are row slices of our fused projection;

* config inference from the variable shapes (:func:`infer_vqvae_config`, :func:`infer_structure_config`,
  :func:`infer_texture_config`, :func:`official_configs`);
* conversion of an official checkpoint (read with :mod:`pyinpaint.tfcheckpoint`, no TensorFlow) into our model
  format (:func:`convert_official`, written by :func:`pyinpaint.modelfile.save_model`).

Used by the converter (``pyinpaint convert-official``) and the parity tests. Work floor: it imports the models,
the model format and the checkpoint reader; nothing below imports it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyinpaint import tfcheckpoint
from pyinpaint.config import StructureConfig, TextureConfig, VQVAEConfig
from pyinpaint.modelfile import PathLike, check_configs, on_meta, save_model
from pyinpaint.models import layers
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.texture import Discriminator, TextureGenerator
from pyinpaint.models.vqvae import VQVAE, VectorQuantizer

# ------------------------------------------------------------------------------------------------ flags
# Our config field -> the official test.py / train_*.py flag of the same number.
FLAGS: dict[type, dict[str, str]] = {
    VQVAEConfig: {
        "image_size": "image_size",
        "channels": "nr_channel_vq",
        "res_blocks": "nr_res_block_vq",
        "res_channels": "nr_res_channel_vq",
        "embedding_dim": "embedding_dim",
        "num_embeddings": "num_embeddings",
        "commitment_cost": "commitment_cost",
        "decay": "decay",
    },
    StructureConfig: {
        "image_size": "image_size",
        "embedding_dim": "embedding_dim",
        "num_embeddings": "num_embeddings",
        "cond_channels": "nr_channel_cond_s",
        "cond_res_channels": "nr_res_channel_cond_s",
        "channels": "nr_channel_s",
        "res_channels": "nr_res_channel_s",
        "resnets": "nr_resnet_s",
        "out_resnets": "nr_resnet_out_s",
        "attention": "nr_attention_s",
        "heads": "nr_head_s",
        "dropout": "dropout_s",
    },
    TextureConfig: {
        "image_size": "image_size",
        "embedding_dim": "embedding_dim",
        "channels": "nr_channel_gen_t",
        "dis_channels": "nr_channel_dis_t",
    },
}


def from_official_flags(cls, flags: Mapping[str, Any], **overrides):
    """Config from the official flags (argparse names of test.py / train_*.py); missing flags keep defaults."""
    kwargs = {ours: flags[theirs] for ours, theirs in FLAGS[cls].items() if theirs in flags}
    kwargs.update(overrides)
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------ names
_CONV = (3, 2, 0, 1)
_T = (1, 0)


@dataclass(frozen=True)
class Entry:
    tensor: torch.Tensor  # our parameter or buffer
    perm: tuple[int, ...] | None  # axes permutation TF -> ours (None = same layout)
    rows: slice | None = None  # the official variable is these rows (dim 0) of ours (fused projections)

    @property
    def target(self) -> torch.Tensor:
        return self.tensor if self.rows is None else self.tensor[self.rows]

    def from_tf(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a, self.perm) if self.perm else a

    def to_tf(self, a: np.ndarray) -> np.ndarray:
        return np.transpose(a, np.argsort(self.perm)) if self.perm else a


def _wn(v: torch.Tensor, g: torch.Tensor, b: torch.Tensor, perm, rows: slice | None = None) -> dict[str, Entry]:
    return {"V": Entry(v, perm, rows), "g": Entry(g, None, rows), "b": Entry(b, None, rows)}


def _leaves(m: nn.Module) -> list[tuple[str, dict[str, Entry]]] | None:
    """The official (layer type, {leaf: entry}) of one of our modules, in creation order; None = not a layer."""
    if isinstance(m, layers.WNConv2d):
        return [("wnconv2d", _wn(m.v, m.g, m.b, _CONV))]
    if isinstance(m, layers.WNDense):
        return [("wndense", _wn(m.v, m.g, m.b, _T))]
    if isinstance(m, layers.CausalSelfAttention):
        # per head: q, k, v (separate official wndense layers, fused in ours), then the output nin
        out, width, start = [], 2 * m.dk + m.dv, 0
        for _ in range(m.heads):
            for size in (m.dk, m.dk, m.dv):
                out.append(("wndense", _wn(m.qkv.v, m.qkv.g, m.qkv.b, _T, slice(start, start + size))))
                start += size
        assert start == m.heads * width
        return out + [("wndense", _wn(m.out.v, m.out.g, m.out.b, _T))]
    if isinstance(m, layers.Conv2d):
        return [("conv2d", {"W": Entry(m.weight, _CONV), "b": Entry(m.bias, None)})]
    if isinstance(m, layers.ConvTranspose2d):
        return [("deconv2d", {"W": Entry(m.weight, _CONV), "b": Entry(m.bias, None)})]
    if isinstance(m, VectorQuantizer):
        return [("vector_quantize", {"embedding": Entry(m.embedding, _T),
                                     "ema_cluster_size": Entry(m.ema_cluster_size, None), "ema_dw": Entry(m.ema_dw, _T)})]
    # stage 3: gated_deconv2d/W is an ordinary [3, 3, in, out] conv weight (upsampling + conv), not a deconv
    if isinstance(m, layers.GatedDeconv2d):
        return [("gated_deconv2d", {"W": Entry(m.gated.conv.weight, _CONV), "b": Entry(m.gated.conv.bias, None)})]
    if isinstance(m, layers.GatedConv2d):
        return [("gated_conv2d", {"W": Entry(m.conv.weight, _CONV), "b": Entry(m.conv.bias, None)})]
    if isinstance(m, layers.SNConv2d):  # u: [1, out] in both (non-trainable state)
        return [("snconv2d", {"W": Entry(m.weight, _CONV), "u": Entry(m.u, None), "b": Entry(m.bias, None)})]
    return None


def template_names(template: str, root: nn.Module) -> dict[str, Entry]:
    """Official names of every variable of one TF template (``vq_encoder``, ...) built by ``root``."""
    counters: dict[str, int] = {}
    out: dict[str, Entry] = {}
    done: set[int] = set()  # modules already named as part of a composite (the attention's projections)
    for m in root.modules():
        found = None if id(m) in done else _leaves(m)
        if found is None:
            continue
        done.update(id(c) for c in m.modules())
        for kind, leaves in found:
            i = counters.get(kind, 0)
            counters[kind] = i + 1
            for leaf, entry in leaves.items():
                out[f"{template}/{kind}_{i}/{leaf}"] = entry
    return out


def vqvae_names(model: VQVAE) -> dict[str, Entry]:
    return {**template_names("vq_encoder", model.encoder), **template_names("vq_decoder", model.decoder)}


def structure_names(model: StructureGenerator) -> dict[str, Entry]:
    return {**template_names("structure_condition", model.condition),
            **template_names("structure_pixelcnn", model.pixelcnn)}


def texture_names(model: TextureGenerator) -> dict[str, Entry]:
    return template_names("texture_generator", model)


def discriminator_names(model: Discriminator) -> dict[str, Entry]:
    return template_names("texture_discriminator", model)


def load_official(names: dict[str, Entry], arrays: Mapping[str, np.ndarray], *, strict: bool = True) -> list[str]:
    """Copy official arrays into our tensors. Returns the official names that were not in ``arrays``.

    With ``strict``, a missing name raises KeyError; a wrong shape or dtype (strings, booleans, integers for a
    float parameter) or NaN / infinite values raise ValueError naming the variable. Arrays not in ``names`` are
    ignored (a full checkpoint holds the other stages too).
    """
    missing = [k for k in names if k not in arrays]
    if strict and missing:
        raise KeyError(f"{len(missing)} official variables missing, e.g. {missing[:5]}")
    with torch.no_grad():
        for name, entry in names.items():
            if name not in arrays:
                continue
            a, target = np.asarray(arrays[name]), entry.target
            if a.dtype.kind not in "fiu" or (a.dtype.kind != "f" and target.is_floating_point()):
                raise ValueError(f"{name}: official variable of dtype {a.dtype}, expected "
                                 f"{'floating-point' if target.is_floating_point() else 'numbers'}")
            b = entry.from_tf(a) if entry.perm is None or a.ndim == len(entry.perm) else a
            if tuple(b.shape) != tuple(target.shape):
                raise ValueError(f"{name}: official shape {tuple(a.shape)} does not fit our {tuple(target.shape)} "
                                 f"(after layout change {tuple(b.shape)})")
            t = torch.from_numpy(np.ascontiguousarray(b)).to(target.dtype)
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"{name}: official variable holds {int((~torch.isfinite(t)).sum())} NaN or "
                                 "infinite values: the checkpoint is corrupt")
            target.copy_(t)
    return missing


def export_official(names: dict[str, Entry]) -> dict[str, np.ndarray]:
    """Our tensors under their official names and layouts (the inverse of :func:`load_official`)."""
    return {k: np.ascontiguousarray(e.to_tf(e.target.detach().cpu().numpy())) for k, e in names.items()}


# -------------------------------------------------------------------------------------- config inference
def _shape(arrays: Mapping[str, Any], name: str, rank: int) -> tuple[int, ...]:
    """The shape of ``arrays[name]``, which must have ``rank`` dimensions (KeyError when absent)."""
    shape = tuple(int(d) for d in arrays[name].shape)
    if len(shape) != rank:
        raise ValueError(f"{name} has shape {shape}, expected {rank} dimensions: not an official DSI checkpoint")
    return shape


def infer_vqvae_config(arrays: Mapping[str, Any], image_size: int = 256, **overrides) -> VQVAEConfig:
    """VQ-VAE widths from the official variable shapes (the image size is not in the weights)."""
    try:
        channels = _shape(arrays, "vq_encoder/conv2d_1/W", 4)[3]
        res_channels = _shape(arrays, "vq_encoder/conv2d_3/W", 4)[3]
        dim, k = _shape(arrays, "vq_encoder/vector_quantize_0/embedding", 2)
    except KeyError as e:
        raise KeyError(f"not an official VQ-VAE checkpoint: {e} is missing") from None
    n_conv = sum(1 for name in arrays if name.startswith("vq_encoder/conv2d_") and name.endswith("/W"))
    res_blocks, rest = divmod(n_conv - 8, 6)  # 8 plain convs + 3 stacks of 2 convs per block
    if rest or res_blocks < 0:
        raise ValueError(f"unexpected number of vq_encoder convolutions: {n_conv}")
    kw = dict(image_size=image_size, channels=channels, res_blocks=res_blocks, res_channels=res_channels,
              embedding_dim=dim, num_embeddings=k)
    kw.update(overrides)
    return VQVAEConfig(**kw)


# flags that the weights do not determine
REQUIRED_FLAGS = {"image_size": "the networks are fully convolutional, so the weights do not fix the image size"}


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, ...]


def _indexed(arrays: Mapping[str, Any], template: str, kind: str, leaf: str, rank: int) -> list[tuple[int, ...]]:
    """Shapes of ``template/kind_i/leaf`` for i = 0, 1, ... (must be numbered without gaps, of rank ``rank``)."""
    pat = re.compile(rf"^{re.escape(template)}/{kind}_(\d+)/{leaf}$")
    found = {int(m.group(1)): _shape(arrays, n, rank) for n in arrays if (m := pat.match(n))}
    if sorted(found) != list(range(len(found))):
        raise ValueError(f"{template}/{kind}_* layers are not numbered 0..{len(found) - 1}: {sorted(found)[:10]}")
    return [found[i] for i in range(len(found))]


def infer_structure_config(arrays: Mapping[str, Any], image_size: int = 256, **overrides) -> StructureConfig:
    """Structure-generator widths from the official variable shapes (``arrays``: name -> anything with .shape).

    Condition net: ``wnconv2d_0/V`` [5, 5, 5, c] and ``wnconv2d_1/V`` [3, 3, 2c, r]. PixelCNN: ``wnconv2d_0/V``
    [2, 3, D + 1, C], ``wnconv2d_3/V`` [2, 3, 2C, R], 3 + 4 x (resnet pairs) convolutions; the ``wndense``
    layers, in creation order, are per pair the u block's h nin [2Hc, 2C] and the ul block's a nin [2C, R] and
    h nin [2Hc, 2C]; after the last pair of each attention group 3 x heads q, k, v nins ([C, C//8], [C, C//8],
    [C, C//2]) and the output nin [heads x C//2, C]; then the output resnets' nins [C, C] and the logits [C, K].
    """
    try:
        cond = _indexed(arrays, "structure_condition", "wnconv2d", "V", 4)
        conv = _indexed(arrays, "structure_pixelcnn", "wnconv2d", "V", 4)
        dense = _indexed(arrays, "structure_pixelcnn", "wndense", "V", 2)
    except ValueError as e:
        raise ValueError(f"not an official structure generator: {e}") from None
    if not cond or not conv or not dense:
        raise ValueError("no structure generator in the checkpoint (structure_condition/*, structure_pixelcnn/*)")
    if len(cond) != 30 or len(cond[0]) != 4 or cond[0][:3] != (5, 5, 5):
        raise ValueError(f"unexpected structure_condition: {len(cond)} wnconv2d layers (official: 30), first "
                         f"{cond[0]}")
    resnets, rest = divmod(len(conv) - 3, 4)
    if rest or resnets < 1:
        raise ValueError(f"unexpected number of structure_pixelcnn wnconv2d layers: {len(conv)}")
    c, r = cond[0][3], cond[1][3]
    d, ch = conv[0][2] - 1, conv[0][3]
    res = conv[3][3]
    h_nin, aux, q, v = (16 * c, 2 * ch), (2 * ch, res), (ch, ch // 8), (ch, ch // 2)

    def fail(i: int, what: str):
        got = dense[i] if i < len(dense) else "nothing"
        return ValueError(f"structure_pixelcnn/wndense_{i}/V: expected {what}, found {got} (inferred C={ch}, "
                          f"R={res}, h channels {8 * c})")

    i, pairs, groups = 0, 0, []
    pair = ((h_nin, "the u block's h nin"), (aux, "the ul block's a nin"), (h_nin, "the ul block's h nin"))
    for _ in range(resnets):
        for want, what in pair:
            if i >= len(dense) or dense[i] != want:
                raise fail(i, f"{what} {want}")
            i += 1
        pairs += 1
        if i < len(dense) and dense[i] == q:  # an attention block closes this group
            heads = 0
            while dense[i:i + 3] == [q, q, v]:
                heads, i = heads + 1, i + 3
            if i >= len(dense) or dense[i] != (heads * (ch // 2), ch):
                raise fail(i, f"the attention output nin {(heads * (ch // 2), ch)}")
            groups.append((pairs, heads))
            i, pairs = i + 1, 0
    if pairs or not groups:
        raise ValueError(f"structure_pixelcnn: the last {pairs} resnet pairs end without an attention block")
    if len(set(groups)) != 1:
        raise ValueError(f"structure_pixelcnn: attention groups differ in size or heads: {groups} "
                         "((pairs, heads) per group)")
    for j in range(i, len(dense) - 1):
        if dense[j] != (ch, ch):
            raise fail(j, f"an output resnet nin {(ch, ch)}")
    if len(dense) <= i or dense[-1][0] != ch:
        raise fail(len(dense) - 1, f"the logits nin ({ch}, K)")
    kw = dict(image_size=image_size, embedding_dim=d, num_embeddings=dense[-1][1], cond_channels=c,
              cond_res_channels=r, channels=ch, res_channels=res, resnets=resnets, out_resnets=len(dense) - 1 - i,
              attention=len(groups), heads=groups[0][1])
    kw.update(overrides)
    return StructureConfig(**kw)


def infer_texture_config(arrays: Mapping[str, Any], image_size: int = 256, **overrides) -> TextureConfig:
    """Texture generator (and discriminator) widths from the official variable shapes: ``gated_conv2d_0/W``
    [5, 5, 5, c], the structure branch's ``gated_conv2d_4/W`` [3, 3, D, 4c], ``snconv2d_0/W`` [5, 5, 4, c_d]
    (when the checkpoint holds the discriminator; otherwise ``dis_channels`` keeps its default or override)."""
    try:
        g0 = _shape(arrays, "texture_generator/gated_conv2d_0/W", 4)
        g4 = _shape(arrays, "texture_generator/gated_conv2d_4/W", 4)
    except KeyError as e:
        raise ValueError(f"no texture generator in the checkpoint: {e} is missing") from None
    if len(g0) != 4 or g0[:3] != (5, 5, 5) or len(g4) != 4 or g4[3] != 4 * g0[3]:
        raise ValueError(f"unexpected texture_generator shapes: gated_conv2d_0/W {g0}, gated_conv2d_4/W {g4}")
    kw: dict[str, Any] = dict(image_size=image_size, embedding_dim=g4[2], channels=g0[3])
    if "texture_discriminator/snconv2d_0/W" in arrays:
        kw["dis_channels"] = _shape(arrays, "texture_discriminator/snconv2d_0/W", 4)[3]
    kw.update(overrides)
    return TextureConfig(**kw)


# ------------------------------------------------------------------------------------------ conversion
SHADOW = "/ExponentialMovingAverage"
# Templates whose trained weights are the Polyak shadows in official stage checkpoints (train_vqvae.py and
# train_structure_generator.py keep an ExponentialMovingAverage; later stages and save_full_model.py restore
# from it). The texture generator and discriminator are trained and used without averaging.
SHADOWED = ("vq_encoder/", "vq_decoder/", "structure_condition/", "structure_pixelcnn/")


class _Checkpoints:
    """One or several official checkpoints seen as one set of variables, shadows preferred where they count."""

    def __init__(self, paths: Sequence[PathLike]):
        self.prefixes = [tfcheckpoint.resolve_prefix(p) for p in paths]
        self.where: dict[str, list[tuple[Path, tuple[int, ...]]]] = {}
        for prefix in self.prefixes:
            for name, (shape, _) in tfcheckpoint.list_variables(prefix).items():
                self.where.setdefault(name, []).append((prefix, tuple(shape)))

    def source(self, name: str) -> str:
        """The stored name that holds ``name``'s weights: its EMA shadow for the VQ-VAE and structure generator."""
        if name.startswith(SHADOWED) and name + SHADOW in self.where:
            return name + SHADOW
        return name

    def shapes(self) -> dict[str, _Shape]:
        plain = {n[: -len(SHADOW)] if n.endswith(SHADOW) else n for n in self.where}
        return {n: _Shape(self.where.get(self.source(n), self.where.get(n + SHADOW))[0][1]) for n in plain}

    def read(self, names: list[str]) -> dict[str, np.ndarray]:
        """{official name: array} for the names present (a name held by several checkpoints must agree)."""
        wanted: dict[Path, list[str]] = {}
        for name in names:
            src = self.source(name)
            for prefix, _ in self.where.get(src, []):
                wanted.setdefault(prefix, []).append(src)
        out: dict[str, np.ndarray] = {}
        origin: dict[str, Path] = {}
        for prefix, srcs in wanted.items():
            for src, a in tfcheckpoint.read_checkpoint(prefix, names=srcs).items():
                name = src[: -len(SHADOW)] if src.endswith(SHADOW) else src
                if name in out and not (out[name].shape == a.shape and np.array_equal(out[name], a)):
                    raise ValueError(f"the checkpoints disagree on {src}: {origin[name]} and {prefix} hold different "
                                     "values (were the stages trained on the same VQ-VAE?)")
                out[name], origin[name] = a, prefix
        return out


def _flag_value(flags: Mapping[str, Any], name: str, kind=int):
    try:
        return kind(flags[name])
    except (TypeError, ValueError):
        raise ValueError(f"flag {name} must be {kind.__name__}, got {flags[name]!r}") from None


def official_configs(arrays: Mapping[str, Any], flags: Mapping[str, Any] | None = None
                     ) -> tuple[VQVAEConfig, StructureConfig, TextureConfig]:
    """The three configs of an official full model: widths inferred from the variable shapes, the rest (the
    image size; optionally the VQ training constants and dropout) from the official flags, which must agree
    with the shapes where both say something."""
    flags = dict(flags or {})
    missing = [f"{k} ({why})" for k, why in REQUIRED_FLAGS.items() if flags.get(k) is None]
    if missing:
        raise ValueError("the checkpoint does not determine " + "; ".join(missing) + ": pass the official flags, "
                         "e.g. flags={'image_size': 256} (the --image_size the model was trained with)")
    if flags.get("resnet_nonlinearity", "concat_elu") != "concat_elu":
        raise ValueError(f"resnet_nonlinearity {flags['resnet_nonlinearity']!r} is not supported (only concat_elu, "
                         "the one every released model uses)")
    size = _flag_value(flags, "image_size")
    vq_extra = {ours: _flag_value(flags, theirs, float) for ours, theirs in
                (("commitment_cost", "commitment_cost"), ("decay", "decay")) if flags.get(theirs) is not None}
    st_extra = {"dropout": _flag_value(flags, "dropout_s", float)} if flags.get("dropout_s") is not None else {}
    has_dis = "texture_discriminator/snconv2d_0/W" in arrays
    tx_extra = ({"dis_channels": _flag_value(flags, "nr_channel_dis_t")}
                if not has_dis and flags.get("nr_channel_dis_t") is not None else {})
    try:
        vq = infer_vqvae_config(arrays, image_size=size, **vq_extra)
    except KeyError as e:
        raise ValueError(f"no VQ-VAE in the checkpoint: {e.args[0] if e.args else e}") from None
    st = infer_structure_config(arrays, size, **st_extra)
    tx = infer_texture_config(arrays, size, **tx_extra)
    conflicts = []
    for cfg in (vq, st, tx):
        for ours, theirs in FLAGS[type(cfg)].items():
            if flags.get(theirs) is not None and ours not in ("dropout", "commitment_cost", "decay"):
                value = getattr(cfg, ours)
                try:
                    same = type(value)(flags[theirs]) == value
                except (TypeError, ValueError):
                    same = False
                if not same:
                    conflicts.append(f"--{theirs} {flags[theirs]!r} but the weights say {getattr(cfg, ours)!r}")
    if conflicts:
        raise ValueError("the flags contradict the checkpoint: " + "; ".join(sorted(set(conflicts))))
    check_configs(vq, st, tx)
    return vq, st, tx


def convert_official(ckpt: PathLike | Sequence[PathLike], out: PathLike, flags: Mapping[str, Any] | None = None, *,
                     overwrite: bool = False, card: str | bool = True) -> Path:
    """Convert an official TensorFlow checkpoint (read without TensorFlow) into a model directory.

    ``ckpt``: anything :func:`~pyinpaint.tfcheckpoint.resolve_prefix` accepts (prefix, .index, .data file, or a
    directory with a ``checkpoint`` file): a full model as ``save_full_model.py`` writes it, or a list of stage
    checkpoints that together hold every network (e.g. the structure and texture stages; variables they share
    must be equal). Where a checkpoint holds ``<var>/ExponentialMovingAverage`` shadows (stage checkpoints),
    they are used for the VQ-VAE and the structure generator, as the official pipeline does; the texture
    generator and discriminator are read by their plain names. Widths are inferred from the shapes; ``flags``
    (official argparse names, e.g. ``{"image_size": 256}``) give the rest, and a clear error lists what is
    missing. The discriminator is included when the checkpoint has one. Returns the model directory.
    """
    paths = [ckpt] if isinstance(ckpt, (str, os.PathLike)) else list(ckpt)
    if not paths:
        raise ValueError("no checkpoint given")
    cps = _Checkpoints(paths)
    shapes = cps.shapes()
    vq_cfg, st_cfg, tx_cfg = official_configs(shapes, flags)
    with_dis = any(n.startswith("texture_discriminator/") for n in cps.where)

    def build():
        mods = {"vqvae": VQVAE(vq_cfg), "structure": StructureGenerator(st_cfg), "texture": TextureGenerator(tx_cfg)}
        if with_dis:
            mods["discriminator"] = Discriminator(tx_cfg)
        return mods, {"vqvae": vqvae_names(mods["vqvae"]), "structure": structure_names(mods["structure"]),
                      "texture": texture_names(mods["texture"]),
                      **({"discriminator": discriminator_names(mods["discriminator"])} if with_dis else {})}

    with on_meta():  # every variable's shape is checked before the networks take memory
        _, names = build()
    for group in names.values():
        for name, entry in group.items():
            if name in shapes:
                want = tuple(entry.target.shape)
                if entry.perm is not None:
                    want = tuple(want[i] for i in np.argsort(entry.perm))
                if shapes[name].shape != want:
                    raise ValueError(f"{name}: official shape {shapes[name].shape} does not fit the inferred networks "
                                     f"(expected {want}): not a consistent DSI checkpoint")
    modules, names = build()
    vqvae, structure, generator = modules["vqvae"], modules["structure"], modules["texture"]
    discriminator = modules.get("discriminator")
    wanted = [n for group in names.values() for n in group]
    arrays = cps.read(wanted)
    for what, group in names.items():
        try:
            load_official(group, arrays)
        except KeyError as e:
            raise ValueError(f"the checkpoint lacks {what} variables: {e.args[0] if e.args else e}") from None
    shadows = sorted({cps.source(n) for n in wanted if cps.source(n).endswith(SHADOW)})
    prefixes = [str(p.resolve()) for p in cps.prefixes]
    source = {"converted_from": prefixes[0] if len(prefixes) == 1 else prefixes,
              "flags": dict(flags) if flags is not None else None,
              "ema_shadows_used": len(shadows)}
    for m in (vqvae, structure, generator, discriminator):
        if m is not None:
            m.eval()
    return save_model(out, vqvae, structure, generator, discriminator, source, card=card, overwrite=overwrite)
