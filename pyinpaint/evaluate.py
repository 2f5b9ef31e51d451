"""Evaluation of trained stages on a folder of images."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from pyinpaint.data import ImageFolder
from pyinpaint.runs import load_vqvae
from pyinpaint.train.vqvae import evaluate_reconstruction


def _image_batches(data, size: int, recipe: str, limit: int | None, batch_size: int, workers: int, device,
                   desc: str, progress: bool):
    """(number of images, iterator of batches on ``device``) of a folder under an evaluation recipe."""
    from tqdm.auto import tqdm

    dataset = ImageFolder(data, size=size, recipe=recipe)
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    batches = (x.to(device) for x in tqdm(loader, total=math.ceil(len(dataset) / batch_size), desc=desc,
                                          disable=not progress))
    return len(dataset), batches


def eval_vqvae(run: str | Path, data: str | Path, *, batch_size: int = 16, limit: int | None = None,
               recipe: str = "resize", device: str | torch.device = "cpu", workers: int = 0,
               progress: bool = True) -> dict[str, float]:
    """Reconstruction MSE ([-1, 1] scale, the paper's Table 3 measure) and codebook usage of a VQ-VAE run
    on the images of ``data`` (official evaluation preprocessing: resize to the model size)."""
    model = load_vqvae(run, device)
    n, batches = _image_batches(data, model.cfg.image_size, recipe, limit, batch_size, workers, device,
                                "eval vqvae", progress)
    with torch.no_grad():
        metrics = evaluate_reconstruction(model, batches)
    return {"images": n, **metrics}


def eval_structure(run: str | Path, data: str | Path, *, masks: str = "protocol", seed: int = 0,
                   batch_size: int = 16, limit: int | None = None, device: str | torch.device = "cpu",
                   workers: int = 0, progress: bool = True) -> dict[str, float]:
    """NLL of the true top codes in bits/dim (the paper's Table 3 measure) of a structure run, EMA weights,
    images resized to the model size, masks drawn from ``masks`` by image number."""
    from pyinpaint.data import make_mask_source
    from pyinpaint.runs import load_structure
    from pyinpaint.train.structure import evaluate_nll

    model, vqvae = load_structure(run, device)
    size = model.cfg.image_size
    n, batches = _image_batches(data, size, "resize", limit, batch_size, workers, device, "eval structure", progress)
    with torch.no_grad():
        metrics = evaluate_nll(model, vqvae, batches, make_mask_source(masks, size, seed=seed))
    return {"images": n, **metrics}


def _heat(values: torch.Tensor, vmax: float) -> torch.Tensor:
    """[h, w] in [0, vmax] -> 3 x h x w in [-1, 1], a perceptual dark-blue -> yellow colour ramp."""
    ramp = torch.tensor([[0.05, 0.03, 0.20], [0.25, 0.10, 0.55], [0.70, 0.20, 0.45], [0.98, 0.55, 0.10],
                         [0.99, 0.95, 0.40]])
    t = (values.float().clamp(0, vmax) / vmax) * (len(ramp) - 1)
    lo = t.floor().long().clamp(max=len(ramp) - 2)
    frac = (t - lo).unsqueeze(-1)
    rgb = ramp[lo] * (1 - frac) + ramp[lo + 1] * frac
    return rgb.permute(2, 0, 1) * 2 - 1


def entropy_map(run: str | Path, image: str | Path, mask: str | Path, out: str | Path, *, seed: int = 0,
                invert_mask: bool = False, device: str | torch.device = "cpu") -> dict[str, float]:
    """The paper's Figure 9 for one image: sample a structure and record, at each position, the entropy (bits)
    of the predicted code distribution. Writes [masked image | entropy map | decoded sampled structure]."""
    import torch.nn.functional as F

    from pyinpaint import io
    from pyinpaint.data import load_image, load_mask, make_mask_source, preprocess, MASK_SPECS
    from pyinpaint.runs import load_structure
    from pyinpaint.sampler import sample_cached

    model, vqvae = load_structure(run, device)
    size, k = model.cfg.image_size, model.cfg.num_embeddings
    x = preprocess(load_image(image), size, "resize")[None].to(device)
    if str(mask) in MASK_SPECS:
        m = make_mask_source(str(mask), size, seed=seed).sample(0)
    else:
        m = load_mask(mask, size, invert_mask)
    m = m[None].to(device)
    with torch.no_grad():
        masked = x * (1 - m)
        h = model.condition(masked, m)
        sampled = sample_cached(model.pixelcnn, h, vqvae.encoder.vq_t.embedding, seed=seed, entropy=True)
        cfg = vqvae.cfg
        zeros_b = torch.zeros(1, cfg.embedding_dim, cfg.bottom_size, cfg.bottom_size, device=device)
        structure = vqvae.decode(sampled.embeddings, zeros_b).clamp(-1, 1)
    ent = sampled.entropy[0].cpu()
    vmax = math.log2(k)
    heat = _heat(F.interpolate(ent[None, None], size=(size, size), mode="nearest")[0, 0], vmax)
    io.save_image(out, io.image_grid([[masked[0].cpu(), heat, structure[0].cpu()]]))
    hole = F.max_pool2d(m, 8)[0, 0].cpu() > 0  # code positions whose 8x8 patch touches the hole
    return {"mean_bits": float(ent[hole].mean()) if hole.any() else float("nan"),
            "mean_bits_known": float(ent[~hole].mean()) if (~hole).any() else float("nan"),
            "max_bits": float(ent.max()), "log2_k": vmax}
