"""Named configurations (presets) of the networks.

Each stage has one dataclass of architecture numbers. Field names are ours; the official ``test.py`` /
``train_*.py`` flag name of each is in :data:`pyinpaint.official.FLAGS`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

# Bounds on every number of a config, checked before anything is built (a model file's config.json is input).
MAX_IMAGE_SIZE = 1024  # a 128 x 128 structure map: the PixelCNN draws its codes one by one
MAX_WIDTH = 4096  # channels, code dimension
MAX_CODES = 65536  # codebook size
MAX_DEPTH = 256  # residual blocks, resnet pairs, attention blocks, heads


def _check_fields(cfg, limits: dict[str, tuple[float, float]]) -> None:
    """Every field of ``cfg`` has its declared type (int, float or bool; a bool is not a number) and lies within
    ``limits`` ({field: (min, max)}, inclusive); floats must be finite. Raises ValueError naming the field."""
    name = type(cfg).__name__
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if f.type == "bool":
            if not isinstance(v, bool):
                raise ValueError(f"{name}.{f.name} must be true or false, got {v!r}")
            continue
        want_int = f.type == "int"
        number = numbers.Integral if want_int else numbers.Real
        if isinstance(v, bool) or not isinstance(v, number):
            raise ValueError(f"{name}.{f.name} must be {'an integer' if want_int else 'a number'}, got {v!r}")
        if not want_int and not math.isfinite(v):
            raise ValueError(f"{name}.{f.name} must be finite, got {v!r}")
        lo, hi = limits.get(f.name, (-math.inf, math.inf))
        if not lo <= v <= hi:
            raise ValueError(f"{name}.{f.name} must be in [{lo}, {hi}], got {v!r}")


@dataclass(frozen=True)
class VQVAEConfig:
    """Hierarchical VQ-VAE (stage 1). The image is reduced 4x (bottom map) and 8x (top map)."""

    image_size: int = 256
    channels: int = 128  # nr_channel_vq
    res_blocks: int = 2  # nr_res_block_vq
    res_channels: int = 64  # nr_res_channel_vq
    embedding_dim: int = 64  # embedding_dim
    num_embeddings: int = 512  # num_embeddings
    commitment_cost: float = 0.25
    decay: float = 0.99  # codebook EMA decay
    epsilon: float = 1e-5  # Laplace smoothing of the codebook EMA
    # Official TF1 codebook EMA uses assign_moving_average's default zero_debias=True: the running sums
    # are divided by (1 - decay^t), so the first update sets the codebook to the batch means. False = plain EMA.
    zero_debias: bool = True

    def __post_init__(self):
        _check_fields(self, {"image_size": (8, MAX_IMAGE_SIZE), "channels": (2, MAX_WIDTH),
                             "res_blocks": (0, MAX_DEPTH), "res_channels": (1, MAX_WIDTH),
                             "embedding_dim": (1, MAX_WIDTH), "num_embeddings": (1, MAX_CODES),
                             "commitment_cost": (0.0, math.inf), "epsilon": (0.0, math.inf)})
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (got {self.image_size})")
        if self.channels % 2:
            raise ValueError(f"channels must be even (got {self.channels})")
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1) (got {self.decay})")

    @property
    def top_size(self) -> int:
        return self.image_size // 8

    @property
    def bottom_size(self) -> int:
        return self.image_size // 4


@dataclass(frozen=True)
class StructureConfig:
    """Structure generator (stage 2): condition network + conditional PixelCNN over the top code map."""

    image_size: int = 256  # the code map is image_size / 8 square
    embedding_dim: int = 64  # of the VQ-VAE's top codebook (the PixelCNN's input)
    num_embeddings: int = 512  # classes of the logits
    cond_channels: int = 32  # nr_channel_cond_s: h has 8x this many channels
    cond_res_channels: int = 32  # nr_res_channel_cond_s
    channels: int = 128  # nr_channel_s
    res_channels: int = 128  # nr_res_channel_s
    resnets: int = 20  # nr_resnet_s: (u, ul) block pairs
    out_resnets: int = 20  # nr_resnet_out_s
    attention: int = 4  # nr_attention_s: groups, each ending with an attention block
    heads: int = 8  # nr_head_s
    dropout: float = 0.1  # dropout_s (training only)

    def __post_init__(self):
        _check_fields(self, {"image_size": (8, MAX_IMAGE_SIZE), "embedding_dim": (1, MAX_WIDTH),
                             "num_embeddings": (1, MAX_CODES), "cond_channels": (1, MAX_WIDTH // 8),
                             "cond_res_channels": (1, MAX_WIDTH), "channels": (8, MAX_WIDTH),
                             "res_channels": (1, MAX_WIDTH), "resnets": (1, MAX_DEPTH), "out_resnets": (0, MAX_DEPTH),
                             "attention": (1, MAX_DEPTH), "heads": (1, MAX_DEPTH)})
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (got {self.image_size})")
        if self.attention < 1 or self.resnets % self.attention or self.resnets // self.attention < 1:
            raise ValueError(f"resnets ({self.resnets}) must be a positive multiple of attention ({self.attention})")
        if self.channels < 8 or self.channels % 2:
            raise ValueError(f"channels must be even and >= 8 (attention uses channels // 8), got {self.channels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {self.dropout})")

    @property
    def map_size(self) -> int:
        return self.image_size // 8

    @property
    def h_channels(self) -> int:
        return 8 * self.cond_channels


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict[str, Any]):
    """Build a config from a dict, rejecting unknown keys (a typo must not pass silently)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}; known: {sorted(names)}")
    return cls(**data)


VQVAE_PRESETS: dict[str, VQVAEConfig] = {
    # The paper's networks at 256 px.
    "paper": VQVAEConfig(),
    # The configuration of the official parity fixtures (../shared/parity/dev): reduced widths, 128 px.
    "dev": VQVAEConfig(image_size=128, channels=32, res_blocks=2, res_channels=24, embedding_dim=12, num_embeddings=64),
    # CPU-trainable at 128 px: the paper's structure with half the widths.
    "small": VQVAEConfig(image_size=128, channels=64, res_blocks=2, res_channels=32, embedding_dim=64, num_embeddings=512),
    # For tests and smoke runs.
    "tiny": VQVAEConfig(image_size=64, channels=16, res_blocks=1, res_channels=8, embedding_dim=8, num_embeddings=32),
}


STRUCTURE_PRESETS: dict[str, StructureConfig] = {
    "paper": StructureConfig(),
    "dev": StructureConfig(image_size=128, embedding_dim=12, num_embeddings=64, cond_channels=6, cond_res_channels=3,
                           channels=32, res_channels=24, resnets=8, out_resnets=2, attention=4, heads=4),
    # CPU-trainable on the "small" VQ-VAE (128 px, 16x16 code map); keeps every kind of layer. The condition
    # net runs at full resolution, so its width is what costs on the CPU: 8 (h has 64 channels).
    "small": StructureConfig(image_size=128, embedding_dim=64, num_embeddings=512, cond_channels=8,
                             cond_res_channels=8, channels=64, res_channels=64, resnets=8, out_resnets=4,
                             attention=2, heads=4),
    "tiny": StructureConfig(image_size=64, embedding_dim=8, num_embeddings=32, cond_channels=4, cond_res_channels=4,
                            channels=16, res_channels=8, resnets=2, out_resnets=1, attention=1, heads=2),
}


def structure_preset(name: str, **overrides) -> StructureConfig:
    if name not in STRUCTURE_PRESETS:
        raise ValueError(f"unknown structure preset {name!r}; choose one of {sorted(STRUCTURE_PRESETS)}")
    return dataclasses.replace(STRUCTURE_PRESETS[name], **overrides)


def vqvae_preset(name: str, **overrides) -> VQVAEConfig:
    if name not in VQVAE_PRESETS:
        raise ValueError(f"unknown VQ-VAE preset {name!r}; choose one of {sorted(VQVAE_PRESETS)}")
    return dataclasses.replace(VQVAE_PRESETS[name], **overrides)


@dataclass(frozen=True)
class TextureConfig:
    """Texture generator G_t and SN-PatchGAN discriminator (stage 3)."""

    image_size: int = 256  # the structure map is image_size / 8 square
    embedding_dim: int = 64  # of the VQ-VAE's top codebook (the structure map's channels)
    channels: int = 64  # nr_channel_gen_t (cnum of the generator)
    dis_channels: int = 64  # nr_channel_dis_t

    def __post_init__(self):
        _check_fields(self, {"image_size": (8, MAX_IMAGE_SIZE), "embedding_dim": (1, MAX_WIDTH),
                             "channels": (2, MAX_WIDTH), "dis_channels": (1, MAX_WIDTH)})
        if self.image_size % 8 or self.image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8 (got {self.image_size})")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"channels must be even and >= 2 (the first gated conv outputs channels/2), "
                             f"got {self.channels}")

    @property
    def map_size(self) -> int:
        return self.image_size // 8


TEXTURE_PRESETS: dict[str, TextureConfig] = {
    "paper": TextureConfig(),
    # the official parity fixtures (../shared/parity/dev)
    "dev": TextureConfig(image_size=128, embedding_dim=12, channels=16, dis_channels=12),
    # CPU-trainable on the "small" VQ-VAE (128 px, 64-dim codes)
    "small": TextureConfig(image_size=128, embedding_dim=64, channels=32, dis_channels=32),
    # for tests and smoke runs, on the "tiny" VQ-VAE
    "tiny": TextureConfig(image_size=64, embedding_dim=8, channels=8, dis_channels=8),
}


def texture_preset(name: str, **overrides) -> TextureConfig:
    if name not in TEXTURE_PRESETS:
        raise ValueError(f"unknown texture preset {name!r}; choose one of {sorted(TEXTURE_PRESETS)}")
    return dataclasses.replace(TEXTURE_PRESETS[name], **overrides)
