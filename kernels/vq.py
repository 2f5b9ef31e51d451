"""Nearest-codebook search: the op behind vector quantisation.

For each row z_i of ``z`` ([..., D]) find argmin_k |z_i - e_k|^2 over the codebook ``codebook`` ([K, D],
row k = code k) and gather e_k. Distances are computed as the official code does,
``|z|^2 - 2 z.e + |e|^2`` in float32, ties go to the lowest index (as torch.argmin and tf.argmax(-d)).
"""
from __future__ import annotations

import torch


def code_norms(codebook: torch.Tensor) -> torch.Tensor:
    """|e_k|^2 per code, float32: precompute once per codebook version."""
    cb = codebook.detach().float()
    return (cb * cb).sum(dim=1)


def nearest_code_reference(z: torch.Tensor, codebook: torch.Tensor, norms: torch.Tensor | None = None):
    """Plain PyTorch reference. Returns (indices int64 [...], embeddings [..., D] in codebook's dtype)."""
    if z.shape[-1] != codebook.shape[-1]:
        raise ValueError(f"z has {z.shape[-1]} channels but the codebook has codes of size {codebook.shape[-1]}")
    flat = z.detach().reshape(-1, z.shape[-1]).float()
    cb = codebook.detach().float()
    if norms is None:
        norms = code_norms(codebook)
    d = (flat * flat).sum(1, keepdim=True) - 2.0 * flat @ cb.t() + norms.float().unsqueeze(0)
    idx = torch.argmin(d, dim=1)
    emb = codebook.detach()[idx]
    return idx.reshape(z.shape[:-1]), emb.reshape(*z.shape[:-1], codebook.shape[-1])
