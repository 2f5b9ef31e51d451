"""Stage 1 task for the training loop: the hierarchical VQ-VAE (official ``train_vqvae.py``).

Loss = MSE(x, x_hat) + commitment (0.25 per level); Adam (TF defaults), lr 1e-4, batch 8; the codebooks
learn by EMA inside the quantiser (no gradient); Polyak EMA 0.9997 of the other weights for evaluation.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict

import torch
from torch import nn

from pyinpaint import io
from pyinpaint.config import VQVAEConfig
from pyinpaint.models.vqvae import VQVAE


def codebook_stats(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity = exp(entropy of the code histogram))."""
    total = counts.sum()
    if total <= 0:
        return 0.0, 0.0
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class VQVAETask:
    stage = "vqvae"
    best = ("mse", "min")  # what --keep-best keeps

    def __init__(self, cfg: VQVAEConfig, lr: float = 1e-4, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.model = VQVAE(cfg).to(device)
        # The codebooks are buffers, so only the convolutions are optimised (as in the official code).
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
        self.net: nn.Module = self.model  # what the steps call: the model, or its DDP wrapper

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": self.opt}

    def config(self) -> dict:
        return asdict(self.cfg)

    def distribute(self, ctx) -> None:
        self.net = ctx.wrap(self.model)

    def train_step(self, ctx) -> dict[str, float]:
        """Mean losses over each micro-batch; the codebook EMA moves once per micro-batch (as the official
        code per batch), on statistics all-reduced over the processes."""
        self.model.train()
        ctx.zero_grad("adam")
        sums: dict[str, float] = defaultdict(float)
        for x, _ in ctx.micro_batches():
            with ctx.autocast():
                rec, enc = self.net(x)
            mse = torch.mean((x - rec.float()) ** 2)
            loss = mse + enc.loss
            ctx.backward(loss, "adam")
            use_t, ppl_t = codebook_stats(enc.counts_t)
            use_b, ppl_b = codebook_stats(enc.counts_b)
            for k, v in {"loss": loss.item(), "mse": mse.item(), "commit": enc.loss.item(), "use_t": use_t,
                         "use_b": use_b, "ppl_t": ppl_t, "ppl_b": ppl_b}.items():
                sums[k] += v
        ctx.step("adam")
        return {k: v / ctx.accumulate for k, v in sums.items()}

    @torch.no_grad()
    def validate(self, model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        return evaluate_reconstruction(model, batches)

    @torch.no_grad()
    def visualize(self, model: nn.Module, x: torch.Tensor):
        model.eval()
        rec, _ = model(x, update_codebooks=False)
        return io.image_grid([[a, b.clamp(-1, 1)] for a, b in zip(x, rec)])


@torch.no_grad()
def evaluate_reconstruction(model: VQVAE, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """Reconstruction MSE on the official [-1, 1] scale (mean over images and pixels, unclipped output as
    in train_vqvae.py), commitment loss, and codebook usage / perplexity of each level over all batches."""
    model.eval()
    sq_sum, n_values, commit_sum, n_batches = 0.0, 0, 0.0, 0
    counts_t = counts_b = None
    for x in batches:
        rec, enc = model(x, update_codebooks=False)
        sq_sum += float(((x - rec) ** 2).sum())
        n_values += x.numel()
        commit_sum += float(enc.loss)
        n_batches += 1
        counts_t = enc.counts_t if counts_t is None else counts_t + enc.counts_t
        counts_b = enc.counts_b if counts_b is None else counts_b + enc.counts_b
    if n_batches == 0:
        raise ValueError("no images to evaluate")
    use_t, ppl_t = codebook_stats(counts_t)
    use_b, ppl_b = codebook_stats(counts_b)
    return {"mse": sq_sum / n_values, "commit": commit_sum / n_batches,
            "use_t": use_t, "use_b": use_b, "ppl_t": ppl_t, "ppl_b": ppl_b}
