"""Evaluation of trained stages on a folder of images."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from pyinpaint.data import ImageFolder
from pyinpaint.runs import load_vqvae
from pyinpaint.train.vqvae import evaluate_reconstruction


def eval_vqvae(run: str | Path, data: str | Path, *, batch_size: int = 16, limit: int | None = None,
               recipe: str = "resize", device: str | torch.device = "cpu", workers: int = 0,
               progress: bool = True) -> dict[str, float]:
    """Reconstruction MSE ([-1, 1] scale, the paper's Table 3 measure) and codebook usage of a VQ-VAE run
    on the images of ``data`` (official evaluation preprocessing: resize to the model size)."""
    from tqdm.auto import tqdm

    model = load_vqvae(run, device)
    dataset = ImageFolder(data, size=model.cfg.image_size, recipe=recipe)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    batches = (x.to(device) for x in tqdm(loader, total=math.ceil(len(dataset) / batch_size),
                                          desc="eval vqvae", disable=not progress))
    with torch.no_grad():
        metrics = evaluate_reconstruction(model, batches)
    return {"images": len(dataset), **metrics}
