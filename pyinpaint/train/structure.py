"""Stage 2 task for the training loop: the structure generator (official ``train_structure_generator.py``).

Teacher forcing on the ground-truth top codes of the frozen VQ-VAE (its EMA weights, live codebooks), cross
entropy summed over all positions and the batch, Adam with the official schedule
``lr = 0.18 * channels^-0.5 * min((t+1)^-0.35, (t+1) * warmup^-1.5)`` (warmup 16000), dropout 0.1, Polyak
EMA 0.9997 (kept by the loop). Reported as bits per dimension: loss / (ln 2 * positions * batch).

Departure (documented): each image gets its own mask, drawn by (seed, step, position in batch) from the
mask source by its global sample index (the same under DDP and accumulation); the official code shares one
mask across a batch.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from pyinpaint import io
from pyinpaint.config import StructureConfig
from pyinpaint.masks import MaskSource
from pyinpaint.models.structure import StructureGenerator
from pyinpaint.models.vqvae import VQVAE
from pyinpaint.sampler import sample_cached


def official_lr(step: int, base: float = 0.18, channels: int = 128, warmup: int = 16000) -> float:
    """Linear warm-up then (t+1)^-0.35 decay (``train_structure_generator.py``)."""
    t = step + 1
    return base * channels ** -0.5 * min(t ** -0.35, t * warmup ** -1.5)


def bits_per_dim(ce_sum: torch.Tensor | float, positions: int) -> float:
    return float(ce_sum) / (math.log(2.0) * positions)


class StructureTask:
    stage = "structure"
    best = ("bpd", "min")  # what --keep-best keeps

    def __init__(self, cfg: StructureConfig, vqvae: VQVAE, masks: MaskSource, val_masks: MaskSource, *,
                 lr: float = 0.18, warmup: int = 16000, device: torch.device | str = "cpu", vqvae_run: str = ""):
        vq = vqvae.cfg
        if (vq.image_size, vq.embedding_dim, vq.num_embeddings) != (cfg.image_size, cfg.embedding_dim, cfg.num_embeddings):
            raise ValueError(f"the structure config (size {cfg.image_size}, dim {cfg.embedding_dim}, "
                             f"{cfg.num_embeddings} codes) does not fit the VQ-VAE (size {vq.image_size}, "
                             f"dim {vq.embedding_dim}, {vq.num_embeddings} codes)")
        self.cfg, self.lr_base, self.warmup, self.vqvae_run = cfg, lr, warmup, vqvae_run
        self.vqvae = vqvae.to(device).eval().requires_grad_(False)
        self.masks, self.val_masks = masks, val_masks
        self.model = StructureGenerator(cfg).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr(0))
        self.net: nn.Module = self.model  # what the steps call: the model, or its DDP wrapper

    def lr(self, step: int) -> float:
        return official_lr(step, self.lr_base, self.cfg.channels, self.warmup)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    def config(self) -> dict:
        return {"structure": asdict(self.cfg), "vqvae": asdict(self.vqvae.cfg), "vqvae_run": self.vqvae_run,
                "masks": repr(self.masks), "lr_warmup": self.warmup}

    @torch.no_grad()
    def targets(self, x: torch.Tensor):
        enc = self.vqvae.encode(x, update_codebooks=False)
        return enc.quant_t, enc.idx_t

    def distribute(self, ctx) -> None:
        self.net = ctx.wrap(self.model)

    def train_step(self, ctx) -> dict[str, float]:
        """Cross entropy summed over the global batch (as the official code); the masks by global sample index."""
        self.model.train()
        lr = self.lr(ctx.step_index)
        for group in self.opt.param_groups:
            group["lr"] = lr
        ctx.zero_grad("adam")
        ce, positions = 0.0, 0
        for x, first in ctx.micro_batches():
            m = self.masks.batch(first, x.shape[0], device=x.device)
            e, idx = self.targets(x)
            with ctx.autocast():
                logits = self.net(x * (1 - m), m, e)
            loss = F.cross_entropy(logits.float(), idx, reduction="sum")
            ctx.backward(loss, "adam", reduction="sum")
            ce += float(loss.detach())
            positions += idx.numel()
        ctx.step("adam")
        return {"bpd": bits_per_dim(ce, positions), "lr": lr}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        return evaluate_nll(model, self.vqvae, batches, self.val_masks)

    @torch.no_grad()
    def visualize(self, model: StructureGenerator, x: torch.Tensor):
        """Rows of (image, masked image, decoded sampled structure, decoded true structure); as the official
        ``structure_visual``, structures are decoded with a zero bottom map."""
        model.eval()
        m = self.val_masks.batch(0, x.shape[0], device=x.device)
        masked = x * (1 - m)
        e_true, _ = self.targets(x)
        h = model.condition(masked, m)
        sampled = sample_cached(model.pixelcnn, h, self.vqvae.encoder.vq_t.embedding, seed=0)
        zeros_b = torch.zeros(x.shape[0], self.vqvae.cfg.embedding_dim, self.vqvae.cfg.bottom_size,
                              self.vqvae.cfg.bottom_size, device=x.device)
        gen = self.vqvae.decode(sampled.embeddings, zeros_b).clamp(-1, 1)
        true = self.vqvae.decode(e_true, zeros_b).clamp(-1, 1)
        return io.image_grid([[a, b, c, d] for a, b, c, d in zip(x, masked, gen, true)])


@torch.no_grad()
def evaluate_nll(model: StructureGenerator, vqvae: VQVAE, batches: Iterable[torch.Tensor], masks: MaskSource) -> dict[str, float]:
    """Negative log-likelihood of the true top codes in bits per dimension (the paper's Table 3), the masks
    drawn from ``masks`` by image number (0, 1, 2, ...), so every evaluation sees the same masks."""
    model.eval()
    ce_sum, positions, count = 0.0, 0, 0
    for x in batches:
        m = masks.batch(count, x.shape[0], device=x.device)
        enc = vqvae.encode(x, update_codebooks=False)
        logits = model(x * (1 - m), m, enc.quant_t)
        ce_sum += float(F.cross_entropy(logits, enc.idx_t, reduction="sum"))
        positions += enc.idx_t.numel()
        count += x.shape[0]
    if count == 0:
        raise ValueError("no images to evaluate")
    return {"bpd": bits_per_dim(ce_sum, positions)}
