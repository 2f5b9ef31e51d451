"""Stage 3 task for the training loop: texture generator + discriminator (official ``train_texture_generator.py``).

Teacher forcing on the ground-truth top structure (quantised codes of the frozen EMA VQ-VAE). Per step, as
the official script: a generator step on L1(x, G) + hinge -mean D(completed) + 0.1 x feature losses of the
completed image through the frozen VQ encoder (both levels), then a discriminator step (hinge, 0.5 weights)
on real and completed images recomputed with the updated generator. Adam 1e-4, betas (0.5, 0.999) for both.
The official code evaluates the raw generator (no Polyak EMA): the CLI's default ``--ema-decay 0``.

Departures (documented): per-image masks (official: one per batch); G and D have separate Adam states (the
official TF1 code shares one AdamOptimizer object, whose bias-correction powers then advance twice a step).
Spectral-norm vectors u are updated at every D call, as the official graph does (twice per step).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict

import torch
from torch import nn

from pyinpaint import io
from pyinpaint.config import TextureConfig
from pyinpaint.masks import MaskSource
from pyinpaint.models.texture import Discriminator, TextureGenerator, complete, feature_loss, hinge_d_loss, hinge_g_loss
from pyinpaint.models.vqvae import VQVAE


class TextureGAN(nn.Module):
    """The trained pair: ``generator`` (kept for inference) and ``discriminator`` (for training, ranking)."""

    def __init__(self, cfg: TextureConfig):
        super().__init__()
        self.cfg = cfg
        self.generator = TextureGenerator(cfg)
        self.discriminator = Discriminator(cfg)


class TextureTask:
    stage = "texture"
    best = ("hole_psnr", "max")  # what --keep-best keeps

    def __init__(self, cfg: TextureConfig, vqvae: VQVAE, masks: MaskSource, val_masks: MaskSource, *,
                 lr: float = 1e-4, feature_weight: float = 0.1, device: torch.device | str = "cpu",
                 vqvae_run: str = ""):
        vq = vqvae.cfg
        if (vq.image_size, vq.embedding_dim) != (cfg.image_size, cfg.embedding_dim):
            raise ValueError(f"the texture config (size {cfg.image_size}, dim {cfg.embedding_dim}) does not fit the "
                             f"VQ-VAE (size {vq.image_size}, dim {vq.embedding_dim})")
        self.cfg, self.feature_weight, self.vqvae_run = cfg, feature_weight, vqvae_run
        self.vqvae = vqvae.to(device).eval().requires_grad_(False)
        self.masks, self.val_masks = masks, val_masks
        self.model = TextureGAN(cfg).to(device)
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self.g: nn.Module = self.model.generator  # what the steps call: the networks, or their DDP wrappers
        self.d: nn.Module = self.model.discriminator

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"g": self.opt_g, "d": self.opt_d}

    def config(self) -> dict:
        return {"texture": asdict(self.cfg), "vqvae": asdict(self.vqvae.cfg), "vqvae_run": self.vqvae_run,
                "masks": repr(self.masks), "feature_weight": self.feature_weight}

    def distribute(self, ctx) -> None:
        self.g, self.d = ctx.wrap(self.model.generator), ctx.wrap(self.model.discriminator)

    def train_step(self, ctx) -> dict[str, float]:
        """A generator step over all micro-batches, then a discriminator step over them (on completions of the
        updated generator). Losses and the feature loss's codebook distances in float32."""
        g, d, vq = self.g, self.d, self.vqvae.encoder
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        prepared = []
        # generator step
        ctx.zero_grad("g")
        for x, first in ctx.micro_batches():
            m = self.masks.batch(first, x.shape[0], device=x.device)
            masked = x * (1 - m)
            with torch.no_grad():
                gt = self.vqvae.encode(x, update_codebooks=False)
            with ctx.autocast():
                out = g(masked, m, gt.quant_t)
                comp = complete(out, masked, m)
                d_fake = d(comp, m, update_u=True)
                enc = self.vqvae.encode(comp, update_codebooks=False)  # gradients reach comp, not the frozen VQ-VAE
            ae = torch.mean(torch.abs(x - out.float()))
            gan = hinge_g_loss(d_fake.float())
            fea = self.feature_weight * (feature_loss(enc.enc_t.float(), gt.idx_t, vq.vq_t.embedding)
                                         + feature_loss(enc.enc_b.float(), gt.idx_b, vq.vq_b.embedding))
            g_loss = ae + gan + fea
            ctx.backward(g_loss, "g")
            prepared.append((m, masked, gt.quant_t))
            for k, v in {"g_loss": g_loss, "l1": ae, "gan": gan, "fea": fea}.items():
                sums[k] += v.item()
        ctx.step("g")
        # discriminator step, on completions of the updated generator
        ctx.zero_grad("d")
        for (x, _), (m, masked, quant_t) in zip(ctx.micro_batches(), prepared):
            with torch.no_grad(), ctx.autocast():
                comp = complete(g(masked, m, quant_t), masked, m)
            with ctx.autocast():
                logits = d(torch.cat([x, comp.to(x.dtype)]), torch.cat([m, m]), update_u=True)
            real, fake = logits.float().chunk(2)
            d_loss = hinge_d_loss(real, fake)
            ctx.backward(d_loss, "d")
            sums["d_loss"] += d_loss.item()
        ctx.step("d")
        return {k: v / ctx.accumulate for k, v in sums.items()}

    @torch.no_grad()
    def validate(self, model: TextureGAN, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        return evaluate_texture(model, self.vqvae, batches, self.val_masks)

    @torch.no_grad()
    def visualize(self, model: TextureGAN, x: torch.Tensor):
        """Rows of (masked image, decoded true structure, completion, image), as the official texture_visual."""
        model.eval()
        m = self.val_masks.batch(0, x.shape[0], device=x.device)
        masked = x * (1 - m)
        gt = self.vqvae.encode(x, update_codebooks=False)
        comp = complete(model.generator(masked, m, gt.quant_t), masked, m).clamp(-1, 1)
        structure = self.vqvae.decode(gt.quant_t, torch.zeros_like(gt.quant_b)).clamp(-1, 1)
        return io.image_grid([[a, b, c, e] for a, b, c, e in zip(masked, structure, comp, x)])


@torch.no_grad()
def evaluate_texture(model: TextureGAN, vqvae: VQVAE, batches: Iterable[torch.Tensor], masks: MaskSource) -> dict[str, float]:
    """With the true structure (teacher forcing): L1 of the raw output over the image (the training ae loss),
    L1 and PSNR of the completion inside the hole ([-1, 1] scale, PSNR on [0, 1])."""
    model.eval()
    l1_sum = hole_abs = hole_sq = hole_n = 0.0
    n_values = count = 0
    for x in batches:
        m = masks.batch(count, x.shape[0], device=x.device)
        masked = x * (1 - m)
        gt = vqvae.encode(x, update_codebooks=False)
        out = model.generator(masked, m, gt.quant_t)
        comp = complete(out, masked, m).clamp(-1, 1)
        l1_sum += float((x - out).abs().sum())
        n_values += x.numel()
        hole = m.expand_as(x)
        hole_abs += float(((comp - x).abs() * hole).sum())
        hole_sq += float((((comp - x) / 2) ** 2 * hole).sum())
        hole_n += float(hole.sum())
        count += x.shape[0]
    if count == 0:
        raise ValueError("no images to evaluate")
    mse = hole_sq / max(hole_n, 1.0)
    return {"l1": l1_sum / n_values, "hole_l1": hole_abs / max(hole_n, 1.0),
            "hole_psnr": float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))))}
