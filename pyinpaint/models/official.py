"""The one mapping between the official TensorFlow variable names and our parameters.

Official names are ``<template>/<layer>_<i>/<leaf>`` where ``i`` counts layers of one type in creation
order within one template call (``vq_encoder/conv2d_13/W``). Our modules register their layers in that
creation order, so walking ``module.modules()`` and counting per type reproduces the names. Used by the
official-checkpoint converter and by the parity tests. Array layouts (TF -> ours):

- conv ``W`` HWIO -> OIHW; VQ-VAE ``deconv2d/W`` [kh, kw, out, in] -> ConvTranspose2d [in, out, kh, kw]
  (both ``transpose(3, 2, 0, 1)``); biases as they are;
- codebooks ``embedding`` and ``ema_dw`` [D, K] -> [K, D]; ``ema_cluster_size`` [K];
- weight-norm ``wnconv2d/V`` HWIO -> OIHW, ``wndense/V`` [in, out] -> [out, in]; ``g``, ``b`` as they are.
  The per-head q, k, v ``wndense`` layers of an attention block are row slices of our fused projection.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pyinpaint.config import VQVAEConfig
from pyinpaint.models import layers
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.texture import Discriminator, TextureGenerator
from pyinpaint.models.vqvae import VQVAE, VectorQuantizer

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

    With ``strict``, a missing name or a shape mismatch raises; arrays not in ``names`` are ignored
    (a full checkpoint holds the other stages too).
    """
    missing = [k for k in names if k not in arrays]
    if strict and missing:
        raise KeyError(f"{len(missing)} official variables missing, e.g. {missing[:5]}")
    with torch.no_grad():
        for name, entry in names.items():
            if name not in arrays:
                continue
            a = entry.from_tf(np.asarray(arrays[name]))
            target = entry.target
            if tuple(a.shape) != tuple(target.shape):
                raise ValueError(f"{name}: official shape {tuple(np.asarray(arrays[name]).shape)} does not fit "
                                 f"our {tuple(target.shape)} (after layout change {tuple(a.shape)})")
            target.copy_(torch.from_numpy(np.ascontiguousarray(a)).to(target.dtype))
    return missing


def export_official(names: dict[str, Entry]) -> dict[str, np.ndarray]:
    """Our tensors under their official names and layouts (the inverse of :func:`load_official`)."""
    return {k: np.ascontiguousarray(e.to_tf(e.target.detach().cpu().numpy())) for k, e in names.items()}


def infer_vqvae_config(arrays: Mapping[str, np.ndarray], image_size: int = 256, **overrides) -> VQVAEConfig:
    """VQ-VAE widths from the official variable shapes (the image size is not in the weights)."""
    try:
        channels = int(arrays["vq_encoder/conv2d_1/W"].shape[3])
        res_channels = int(arrays["vq_encoder/conv2d_3/W"].shape[3])
        dim, k = (int(s) for s in arrays["vq_encoder/vector_quantize_0/embedding"].shape)
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
