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


def vqvae_preset(name: str, **overrides) -> VQVAEConfig:
    if name not in VQVAE_PRESETS:
        raise ValueError(f"unknown VQ-VAE preset {name!r}; choose one of {sorted(VQVAE_PRESETS)}")
    return dataclasses.replace(VQVAE_PRESETS[name], **overrides)
