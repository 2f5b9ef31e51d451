"""Named configurations (presets) of the networks.

Each stage has one dataclass of architecture numbers. Field names are ours; ``official_flags`` gives the
official ``test.py`` / ``train_*.py`` flag name of each, so that an official flags JSON maps onto a config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any


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

    official_flags = {
        "image_size": "image_size",
        "channels": "nr_channel_vq",
        "res_blocks": "nr_res_block_vq",
        "res_channels": "nr_res_channel_vq",
        "embedding_dim": "embedding_dim",
        "num_embeddings": "num_embeddings",
        "commitment_cost": "commitment_cost",
        "decay": "decay",
    }

    def __post_init__(self):
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (got {self.image_size})")
        if self.channels % 2:
            raise ValueError(f"channels must be even (got {self.channels})")
        for f in ("channels", "res_blocks", "res_channels", "embedding_dim", "num_embeddings"):
            if getattr(self, f) < (0 if f == "res_blocks" else 1):
                raise ValueError(f"{f} must be positive (got {getattr(self, f)})")
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

    official_flags = {
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
    }

    def __post_init__(self):
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


def from_official_flags(cls, flags: dict[str, Any], **overrides):
    """Config from the official flags (argparse names of test.py / train_*.py); missing flags keep defaults."""
    kwargs = {ours: flags[theirs] for ours, theirs in cls.official_flags.items() if theirs in flags}
    kwargs.update(overrides)
    return cls(**kwargs)


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

    official_flags = {
        "image_size": "image_size",
        "embedding_dim": "embedding_dim",
        "channels": "nr_channel_gen_t",
        "dis_channels": "nr_channel_dis_t",
    }

    def __post_init__(self):
        if self.image_size % 8 or self.image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8 (got {self.image_size})")
        if self.channels < 2 or self.channels % 2:
            raise ValueError(f"channels must be even and >= 2 (the first gated conv outputs channels/2), "
                             f"got {self.channels}")
        for f in ("embedding_dim", "dis_channels"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be positive (got {getattr(self, f)})")

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
