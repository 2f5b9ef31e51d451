"""Stage 3: the texture generator G_t and its SN-PatchGAN discriminator (official ``net/texture_generator.py``),
NCHW, with the structural attention transfer and the stage-3 losses (official ``net/nn.py``,
``train_texture_generator.py``).

``TextureGenerator``: (masked image, mask, structure map s) -> raw output in (-1, 1) (tanh). The structure
map is a map of top-level codebook vectors (S/8 x S/8 x D): the ground-truth quantised top features in
training, the sampled structure at test. Deterministic (no noise input).
``Discriminator``: [image, mask] -> flattened patch logits (NHWC order, as ``tf.layers.flatten``).

Submodules are registered in the official variable-creation order (see :mod:`pyinpaint.official`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyinpaint.config import TextureConfig
from pyinpaint.models.layers import Conv2d, GatedConv2d, GatedDeconv2d, SNConv2d, same_padding
from pyinpaint.models.structure import condition_input

# dilations of the four last gated convs of the structure-fused middle branch
_MID_RATES = (2, 4, 8, 16)


def _pad_same(x: torch.Tensor, k: int) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], k)
    left, right = same_padding(x.shape[-1], k)
    return F.pad(x, (left, right, top, bottom))


def attention_weights(f: torch.Tensor, ksize: int = 3, fuse_k: int = 3, softmax_scale: float = 50.0,
                      fuse: bool = True) -> torch.Tensor:
    """The matching part of ``nn.attention_transfer``: f [N, C, h, w] -> p [N, L, L] with L = h*w,
    p[n, i, j] = weight of candidate j (raster order) for query position i (raster order); rows sum to 1.

    Candidates are the ksize x ksize zero-padded ('SAME') patches of f at every position (stride 1);
    d_ij = |P_i|^2 + |P_j|^2 - 2 P_i.P_j (the official expansion); per query row z = (d - mean) / std with the
    POPULATION std and no epsilon (a row of identical distances, e.g. f == 0, gives NaN as in TF);
    score = -tanh(z); with ``fuse``, DeepFill's fusion: a fuse_k x fuse_k identity-kernel 'SAME' conv on the
    [L, L] score map in raster order, then again with both axes in column-major order; softmax over the
    candidates of softmax_scale * score. Vectorised over the batch (memory O(N L^2)); no hole masking.
    """
    n, c, h, w = f.shape
    length = h * w
    p = F.unfold(_pad_same(f, ksize), ksize)  # [N, C*k*k, L]
    sq = (p * p).sum(1)  # [N, L]: |P|^2 (query side: conv of f^2 with ones; candidate side: reduce_sum(w^2))
    d = (sq.unsqueeze(2) + sq.unsqueeze(1)) - 2 * torch.bmm(p.transpose(1, 2), p)  # [N, L(query), L(cand)]
    mean = d.mean(dim=2, keepdim=True)
    var = ((d - mean) ** 2).mean(dim=2, keepdim=True)
    y = -torch.tanh((d - mean) / torch.sqrt(var))
    if fuse:
        eye = torch.eye(fuse_k, dtype=y.dtype, device=y.device).view(1, 1, fuse_k, fuse_k)
        y = F.conv2d(_pad_same(y.unsqueeze(1), fuse_k), eye)  # [N, 1, L, L], raster order
        y = y.view(n, h, w, h, w).permute(0, 2, 1, 4, 3).reshape(n, 1, length, length)  # column-major order
        y = F.conv2d(_pad_same(y, fuse_k), eye)
        y = y.view(n, w, h, w, h).permute(0, 2, 1, 4, 3).reshape(n, length, length)  # back to raster order
    else:
        y = y.reshape(n, length, length)
    return torch.softmax(y * softmax_scale, dim=2)


def _rebuild(p: torch.Tensor, b: torch.Tensor, block: int, h: int, w: int) -> torch.Tensor:
    """conv2d_transpose(p, blocks of b, stride=block): output block i = sum_j p[i, j] * (block j of b)."""
    n, c, bh, bw = b.shape
    if (bh, bw) != (block * h, block * w):
        raise ValueError(f"expected a {block * h}x{block * w} map for {block}x{block} blocks of a {h}x{w} "
                         f"structure map, got {bh}x{bw}")
    blocks = F.unfold(b, block, stride=block)  # [N, C*block*block, L], candidates in raster order
    return F.fold(torch.bmm(blocks, p.transpose(1, 2)), (bh, bw), block, stride=block)


def attention_transfer(f: torch.Tensor, b1: torch.Tensor, b2: torch.Tensor, ksize: int = 3, fuse_k: int = 3,
                       softmax_scale: float = 50.0, fuse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.attention_transfer(f, b1, b2, ksize, stride=1, fuse_k, softmax_scale, fuse)``, NCHW.

    Matching on the structure map f [N, C, h, w] only (:func:`attention_weights`); the weights rebuild
    y1 [N, C1, 4h, 4w] from the 4x4 blocks of b1 and y2 [N, C2, 2h, 2w] from the 2x2 blocks of b2.
    """
    h, w = f.shape[-2:]
    p = attention_weights(f, ksize, fuse_k, softmax_scale, fuse)
    return _rebuild(p, b1, 4, h, w), _rebuild(p, b2, 2, h, w)


class TextureGenerator(nn.Module):
    """Official ``texture_generator`` with cnum = ``cfg.channels`` (c). A gated conv of n filters outputs n/2.

    pl1: gconv5x5(c) @S, gconv3x3 s2(2c) @S/2, gconv(2c)                           -> c channels @S/2
    pl2: gconv3x3 s2(4c) @S/4; structure: gconv(4c), gconv(4c) @S/8, gated_deconv(4c) @S/4;
         concat -> gconv(4c) x2, gconv(4c) dilations 2, 4, 8, 16                    -> 2c channels @S/4
    attention_transfer(s, pl1, pl2) -> pl1_att, pl2_att
    decoder: gconv(4c) x2, concat pl2_att, gconv(4c); gated_deconv(2c) @S/2, concat pl1_att, gconv(2c);
             gated_deconv(c) @S, gconv(c); conv3x3 -> 3, tanh.
    """

    def __init__(self, cfg: TextureConfig):
        super().__init__()
        self.cfg = cfg
        c, d = cfg.channels, cfg.embedding_dim
        # modules in the official creation order (gated_conv2d_0.., gated_deconv2d_0.., conv2d_0)
        self.enc1 = nn.Sequential(GatedConv2d(5, c, 5), GatedConv2d(c // 2, 2 * c, 3, stride=2),
                                  GatedConv2d(c, 2 * c, 3))
        self.enc2 = GatedConv2d(c, 4 * c, 3, stride=2)
        self.structure = nn.Sequential(GatedConv2d(d, 4 * c, 3), GatedConv2d(2 * c, 4 * c, 3),
                                       GatedDeconv2d(2 * c, 4 * c))
        self.mid = nn.Sequential(GatedConv2d(4 * c, 4 * c, 3), GatedConv2d(2 * c, 4 * c, 3),
                                 *(GatedConv2d(2 * c, 4 * c, 3, dilation=r) for r in _MID_RATES))
        self.dec2 = nn.Sequential(GatedConv2d(2 * c, 4 * c, 3), GatedConv2d(2 * c, 4 * c, 3))
        self.dec2_fuse = GatedConv2d(4 * c, 4 * c, 3)
        self.up1 = GatedDeconv2d(2 * c, 2 * c)
        self.dec1_fuse = GatedConv2d(2 * c, 2 * c, 3)
        self.up0 = GatedDeconv2d(c, c)
        self.dec0 = GatedConv2d(c // 2, c, 3)
        self.out = Conv2d(c // 2, 3, 3)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, s: torch.Tensor, return_attention: bool = False):
        """masked [N, 3, S, S] (image * (1 - mask)), mask [N, 1, S, S] (1 = hole), s [N, D, S/8, S/8]
        -> raw output [N, 3, S, S] in (-1, 1). With ``return_attention``: (output, {"b1", "b2", "y1", "y2"}),
        the inputs pl1, pl2 and outputs of the attention transfer."""
        n, _, h, w = masked.shape
        if masked.shape[1] != 3 or h % 8 or w % 8:
            raise ValueError(f"masked must be [N, 3, H, W] with H and W multiples of 8, got {tuple(masked.shape)}")
        if tuple(s.shape) != (n, self.cfg.embedding_dim, h // 8, w // 8):
            raise ValueError(f"s must be [{n}, {self.cfg.embedding_dim}, {h // 8}, {w // 8}], got {tuple(s.shape)}")
        pl1 = self.enc1(condition_input(masked, mask))
        pl2 = torch.cat([self.enc2(pl1), self.structure(s)], dim=1)
        pl2 = self.mid(pl2)
        pl1_att, pl2_att = attention_transfer(s, pl1, pl2, 3, 3, softmax_scale=50.0, fuse=True)
        x = self.dec2_fuse(torch.cat([self.dec2(pl2), pl2_att], dim=1))
        x = self.dec1_fuse(torch.cat([self.up1(x), pl1_att], dim=1))
        x = torch.tanh(self.out(self.dec0(self.up0(x))))
        if return_attention:
            return x, {"b1": pl1, "b2": pl2, "y1": pl1_att, "y2": pl2_att}
        return x


def complete(raw: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels in the hole, known pixels elsewhere: raw * mask + masked * (1 - mask) (official order)."""
    return raw * mask + masked * (1.0 - mask)


class Discriminator(nn.Module):
    """Official ``texture_discriminator`` (SN-PatchGAN): 6 spectral-norm conv5x5 stride 2 with
    dis_channels x (1, 2, 4, 4, 4, 4) filters, TF 'SAME' padding, leaky ReLU 0.2 after every layer
    (the last included). Input [image, mask] (4 channels); output flattened in NHWC (h, w, c) order:
    [N, (S/64)^2 * 4 * dis_channels] for S a multiple of 64.

    ``update_u`` (default ``self.training``): store the power-iteration vectors of this call (see
    :class:`~pyinpaint.models.layers.SNConv2d`; the official graph updates them on every call).
    """

    def __init__(self, cfg: TextureConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.dis_channels
        widths = (4, c, 2 * c, 4 * c, 4 * c, 4 * c, 4 * c)
        self.convs = nn.ModuleList(SNConv2d(i, o, 5, 2) for i, o in zip(widths[:-1], widths[1:]))

    def forward(self, image: torch.Tensor, mask: torch.Tensor, update_u: bool | None = None) -> torch.Tensor:
        """image [N, 3, S, S], mask [N or 1, 1, S, S] -> logits [N, h*w*4*dis_channels]."""
        if mask.shape[0] != image.shape[0]:
            mask = mask.expand(image.shape[0], -1, -1, -1)  # the official training tiles one mask
        x = torch.cat([image, mask], dim=1)
        for conv in self.convs:
            x = F.leaky_relu(conv(x, update_u=update_u), 0.2)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * mean(relu(1 - D(real))) + 0.5 * mean(relu(1 + D(fake)))."""
    return 0.5 * torch.relu(1.0 - d_real).mean() + 0.5 * torch.relu(1.0 + d_fake).mean()


def hinge_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake))."""
    return -d_fake.mean()


def feature_loss(f: torch.Tensor, idx: torch.Tensor, codebook: torch.Tensor,
                 softmax_scale: float = 10.0) -> torch.Tensor:
    """``nn.feature_loss``: f [N, D, H, W] (pre-quantisation encoder features of the completed image),
    idx [N, H, W] (ground-truth codes), codebook [K, D] (row = code).

    d = |f|^2 - 2 f E^T + |E|^2 to all K codes; per position z = (d - mean) / std (population std, no eps);
    s = -tanh(z); cross entropy of softmax(softmax_scale * s) against idx, mean over batch and positions.
    """
    dim = codebook.shape[1]
    if f.dim() != 4 or f.shape[1] != dim:
        raise ValueError(f"expected features [N, {dim}, H, W], got {tuple(f.shape)}")
    flat = f.permute(0, 2, 3, 1).reshape(-1, dim)
    d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ codebook.t() + (codebook * codebook).sum(1).unsqueeze(0)
    mean = d.mean(dim=1, keepdim=True)
    var = ((d - mean) ** 2).mean(dim=1, keepdim=True)
    score = -torch.tanh((d - mean) / torch.sqrt(var))
    return F.cross_entropy(softmax_scale * score, idx.reshape(-1).long())
