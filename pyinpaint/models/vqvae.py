"""Stage 1: the hierarchical VQ-VAE (official ``net/vqvae.py``), NCHW.

Submodules are registered in the order the official code creates its TF variables; the official name
mapping (:mod:`pyinpaint.official`) relies on that order.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyinpaint.config import VQVAEConfig
from pyinpaint.kernels.vq import nearest_code
from pyinpaint.models.layers import Conv2d, ConvTranspose2d, ResBlock, same_padding


class Quantized(NamedTuple):
    quantized: torch.Tensor  # [N, D, H, W], straight-through: z + (e - z).detach()
    loss: torch.Tensor  # commitment_cost * mean((e - z)^2), gradient to the encoder only
    indices: torch.Tensor  # [N, H, W] int64
    counts: torch.Tensor  # [K] float32: how many positions chose each code in this call


class VectorQuantizer(nn.Module):
    """``nn.vector_quantize``: nearest code, straight-through estimator, codebook learnt by EMA.

    The codebook gets no gradient: in training mode every call moves it towards the mean of the
    vectors assigned to each code (decay 0.99, Laplace smoothing epsilon 1e-5), as the official code.
    Buffers: ``embedding`` [K, D] (row = code; the TF variable is [D, K]), ``ema_cluster_size`` [K],
    ``ema_dw`` [K, D], and for the zero-debiased EMA the biased sums and the step count.
    """

    def __init__(self, num_embeddings: int, dim: int, commitment_cost: float = 0.25, decay: float = 0.99,
                 epsilon: float = 1e-5, zero_debias: bool = True):
        super().__init__()
        self.num_embeddings, self.dim = num_embeddings, dim
        self.commitment_cost, self.decay, self.epsilon = commitment_cost, decay, epsilon
        self.zero_debias = zero_debias
        embedding = torch.randn(num_embeddings, dim)  # tf.random_normal_initializer()
        self.register_buffer("embedding", embedding)
        self.register_buffer("ema_cluster_size", torch.zeros(num_embeddings))
        self.register_buffer("ema_dw", embedding.clone())
        if zero_debias:
            self.register_buffer("ema_cluster_size_biased", torch.zeros(num_embeddings))
            self.register_buffer("ema_dw_biased", torch.zeros(num_embeddings, dim))
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.int64))

    def forward(self, z: torch.Tensor, update: bool | None = None) -> Quantized:
        """Quantise z [N, D, H, W]. ``update`` (default: ``self.training``) applies the codebook EMA step."""
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}, H, W], got {tuple(z.shape)}")
        if torch.is_autocast_enabled(z.device.type):  # mixed precision: the codebook search stays float32
            with torch.autocast(z.device.type, enabled=False):
                return self.forward(z.float(), update)
        z_last = z.permute(0, 2, 3, 1)
        idx, emb = nearest_code(z_last, self.embedding)
        loss = self.commitment_cost * torch.mean((emb - z_last) ** 2)
        counts = torch.bincount(idx.reshape(-1), minlength=self.num_embeddings).to(torch.float32)
        if self.training if update is None else update:
            self._ema_update(z_last.detach().reshape(-1, self.dim), idx.reshape(-1), counts)
        emb = emb.permute(0, 3, 1, 2)
        quantized = z + (emb - z).detach()
        return Quantized(quantized, loss, idx, counts)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        dw = torch.zeros_like(self.ema_dw).index_add_(0, idx, flat.to(self.ema_dw.dtype))
        counts = counts.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(counts)  # every replica sees the statistics of the global batch
            dist.all_reduce(dw)
        keep = 1.0 - self.decay
        if self.zero_debias:
            self.ema_steps += 1
            debias = 1.0 - self.decay ** self.ema_steps.item()
            self.ema_cluster_size_biased.sub_((self.ema_cluster_size_biased - counts) * keep)
            self.ema_dw_biased.sub_((self.ema_dw_biased - dw) * keep)
            self.ema_cluster_size.copy_(self.ema_cluster_size_biased / debias)
            self.ema_dw.copy_(self.ema_dw_biased / debias)
        else:
            self.ema_cluster_size.sub_((self.ema_cluster_size - counts) * keep)
            self.ema_dw.sub_((self.ema_dw - dw) * keep)
        n = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.epsilon) / (n + self.num_embeddings * self.epsilon) * n
        self.embedding.copy_(self.ema_dw / smoothed.unsqueeze(1))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes [N, H, W] -> embeddings [N, D, H, W]."""
        return self.embedding[indices].permute(0, 3, 1, 2)


class Encoding(NamedTuple):
    enc_t: torch.Tensor  # top features before quantisation [N, D, S/8, S/8]
    enc_b: torch.Tensor  # bottom features before quantisation [N, D, S/4, S/4]
    quant_t: torch.Tensor
    quant_b: torch.Tensor
    idx_t: torch.Tensor  # [N, S/8, S/8]
    idx_b: torch.Tensor  # [N, S/4, S/4]
    loss: torch.Tensor  # commitment loss, both levels
    counts_t: torch.Tensor
    counts_b: torch.Tensor


def _res_stack(channels: int, res_channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels, res_channels) for _ in range(n)])


def _reach(conv: Conv2d, touched: torch.Tensor) -> torch.Tensor:
    """The outputs of ``conv`` whose window (kernel, stride, dilation, TF-SAME padding) holds a touched input:
    touched [N, 1, H, W] float in {0, 1} -> [N, 1, H', W'] in {0, 1}. The padding is zeros, never touched."""
    (kh, kw), (s, _), (d, _) = conv.kernel_size, conv.stride, conv.dilation
    top, bottom = same_padding(touched.shape[-2], kh, s, d)
    left, right = same_padding(touched.shape[-1], kw, s, d)
    ones = touched.new_ones(1, 1, kh, kw)
    return (F.conv2d(F.pad(touched, (left, right, top, bottom)), ones, stride=s, dilation=d) > 0).to(touched.dtype)


class VQEncoder(nn.Module):
    """Official ``vq_encoder``: bottom encoder, top encoder + VQ, top decoder, bottom VQ."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        c, d = cfg.channels, cfg.embedding_dim
        vq = dict(num_embeddings=cfg.num_embeddings, dim=d, commitment_cost=cfg.commitment_cost,
                  decay=cfg.decay, epsilon=cfg.epsilon, zero_debias=cfg.zero_debias)
        # Registration order = the official variable creation order (conv2d_0, conv2d_1, ...).
        self.b_conv1 = Conv2d(3, c // 2, 4, stride=2)
        self.b_conv2 = Conv2d(c // 2, c, 4, stride=2)
        self.b_conv3 = Conv2d(c, c, 3)
        self.b_res = _res_stack(c, cfg.res_channels, cfg.res_blocks)
        self.t_conv1 = Conv2d(c, c // 2, 4, stride=2)
        self.t_conv2 = Conv2d(c // 2, c, 3)
        self.t_res = _res_stack(c, cfg.res_channels, cfg.res_blocks)
        self.t_proj = Conv2d(c, d, 1)
        self.vq_t = VectorQuantizer(**vq)
        self.td_conv = Conv2d(d, c, 3)
        self.td_res = _res_stack(c, cfg.res_channels, cfg.res_blocks)
        self.td_up = ConvTranspose2d(c, c, 4, 2)
        self.b_proj = Conv2d(2 * c, d, 1)
        self.vq_b = VectorQuantizer(**vq)

    def forward(self, x: torch.Tensor, update_codebooks: bool | None = None) -> Encoding:
        enc_b = F.elu(self.b_conv1(x))
        enc_b = F.elu(self.b_conv2(enc_b))
        enc_b = F.elu(self.b_res(self.b_conv3(enc_b)))
        enc_t = F.elu(self.t_conv1(enc_b))
        enc_t = F.elu(self.t_res(self.t_conv2(enc_t)))
        enc_t = self.t_proj(enc_t)
        qt = self.vq_t(enc_t, update_codebooks)
        dec_t = F.elu(self.td_res(self.td_conv(qt.quantized)))
        dec_t = self.td_up(dec_t)
        enc_b = self.b_proj(torch.cat([enc_b, dec_t], dim=1))
        qb = self.vq_b(enc_b, update_codebooks)
        return Encoding(enc_t, enc_b, qt.quantized, qb.quantized, qt.indices, qb.indices,
                        qt.loss + qb.loss, qt.counts, qb.counts)

    def top_reach(self, hole: torch.Tensor) -> torch.Tensor:
        """Which top codes the hole can change: hole [N, 1, H, W] (nonzero = hole) -> bool [N, H/8, W/8], True
        where the receptive field of the top code (``enc_t`` before quantisation) holds a hole pixel. Elsewhere the
        code of the masked image is the code of the whole image, whatever the hole holds.

        Exact, not a bound guessed from the field's size: the hole is propagated through the layers of the top
        path as ``forward`` runs them (each conv's kernel, stride, dilation and TF-SAME padding; a residual
        block's output is touched where its input or its branch is; ELU is per pixel)."""
        if hole.dim() != 4 or hole.shape[1] != 1:
            raise ValueError(f"hole must be [N, 1, H, W], got {tuple(hole.shape)}")
        r = (hole != 0).float()
        for conv in (self.b_conv1, self.b_conv2, self.b_conv3):
            r = _reach(conv, r)
        for blk in self.b_res:
            r = torch.maximum(r, _reach(blk.conv2, _reach(blk.conv1, r)))
        for conv in (self.t_conv1, self.t_conv2):
            r = _reach(conv, r)
        for blk in self.t_res:
            r = torch.maximum(r, _reach(blk.conv2, _reach(blk.conv1, r)))
        return _reach(self.t_proj, r)[:, 0] > 0


class VQDecoder(nn.Module):
    """Official ``vq_decoder``: (quant_t, quant_b) -> image, no output activation."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        c, d = cfg.channels, cfg.embedding_dim
        self.t_up = ConvTranspose2d(d, d, 4, 2)
        self.conv = Conv2d(2 * d, c, 3)
        self.res = _res_stack(c, cfg.res_channels, cfg.res_blocks)
        self.up1 = ConvTranspose2d(c, c // 2, 4, 2)
        self.up2 = ConvTranspose2d(c // 2, 3, 4, 2)

    def forward(self, quant_t: torch.Tensor, quant_b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([quant_b, self.t_up(quant_t)], dim=1)
        x = F.elu(self.res(self.conv(x)))
        x = F.elu(self.up1(x))
        return self.up2(x)


class VQVAE(nn.Module):
    """The hierarchical VQ-VAE: ``encode`` (image in [-1, 1] -> codes), ``decode``, ``forward`` (both)."""

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = VQEncoder(cfg)
        self.decoder = VQDecoder(cfg)

    def encode(self, x: torch.Tensor, update_codebooks: bool | None = None) -> Encoding:
        size = self.cfg.image_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"expected images [N, 3, H, W] with H, W multiples of 8 (model size {size}), "
                             f"got {tuple(x.shape)}")
        return self.encoder(x, update_codebooks)

    def decode(self, quant_t: torch.Tensor, quant_b: torch.Tensor) -> torch.Tensor:
        return self.decoder(quant_t, quant_b)

    def decode_codes(self, idx_t: torch.Tensor, idx_b: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder.vq_t.lookup(idx_t), self.encoder.vq_b.lookup(idx_b))

    def forward(self, x: torch.Tensor, update_codebooks: bool | None = None):
        enc = self.encode(x, update_codebooks)
        return self.decode(enc.quant_t, enc.quant_b), enc
