"""Stage 2: the diverse structure generator (official ``net/structure_generator.py``), NCHW.

``ConditionNet``: [masked image, ones, mask] -> h (8*cond_channels x S/8 x S/8), run once per image.
``PixelCNN``: top-code embeddings e (teacher forcing, or what has been sampled so far) + h -> logits over
the K codes at every position, strictly causal in raster order. Submodules are registered in the official
variable-creation order (see :mod:`pyinpaint.models.official`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyinpaint.config import StructureConfig
from pyinpaint.models.layers import GatedResBlock, WNConv2d, WNDense, concat_elu, down_shift, right_shift

# dilation of the first conv of each of the 10 gated blocks at the condition network's bottom
_COND_RATES = (1, 1, 1, 2, 4, 8, 16, 1, 1, 1)


def condition_input(masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[masked image (holes 0), ones, mask]: the 5-channel input of the condition net and texture generator."""
    ones = torch.ones_like(mask)
    return torch.cat([masked, ones, ones * mask], dim=1)


class ConditionNet(nn.Module):
    """Official ``structure_condition``: conv 5x5 + gated block, twice (stride-2 conv + gated block), a stride-2
    conv to 8*c channels, then 10 gated blocks whose first convs have dilations 1, 1, 1, 2, 4, 8, 16, 1, 1, 1."""

    def __init__(self, cfg: StructureConfig):
        super().__init__()
        c, r = cfg.cond_channels, cfg.cond_res_channels
        layers: list[nn.Module] = [WNConv2d(5, c, 5), GatedResBlock(c, r)]
        for mult in (2, 4):
            layers += [WNConv2d(mult // 2 * c, mult * c, 3, stride=2), GatedResBlock(mult * c, mult * r)]
        layers.append(WNConv2d(4 * c, 8 * c, 3, stride=2))
        layers += [GatedResBlock(8 * c, 8 * r, dilation=rate) for rate in _COND_RATES]
        self.layers = nn.Sequential(*layers)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """masked [N, 3, S, S] (image * (1 - mask), in [-1, 1]), mask [N, 1, S, S] (1 = hole) -> h."""
        return self.layers(condition_input(masked, mask))


class PixelCNN(nn.Module):
    """Official ``structure_pixelcnn``: u (rows above) and ul (above and left) streams of gated blocks, h in
    every block, an attention block closing each group, ``out_resnets`` residual nins, logits over K codes."""

    def __init__(self, cfg: StructureConfig):
        super().__init__()
        c, d = cfg.channels, cfg.embedding_dim
        common = dict(cond_channels=cfg.h_channels, dropout=cfg.dropout)
        self.u_in = WNConv2d(d + 1, c, (2, 3), padding="down")
        self.ul_in_up = WNConv2d(d + 1, c, (1, 3), padding="down")
        self.ul_in_left = WNConv2d(d + 1, c, (2, 1), padding="down_right")
        blocks: list[nn.Module] = []
        per_group = cfg.resnets // cfg.attention
        for _ in range(cfg.attention):
            for i in range(per_group):
                last = i == per_group - 1
                blocks.append(GatedResBlock(c, cfg.res_channels, padding="down", kernel=(2, 3), **common))
                blocks.append(GatedResBlock(c, cfg.res_channels, padding="down_right", kernel=(2, 2), aux_channels=c,
                                            attention_heads=cfg.heads if last else 0, **common))
        self.blocks = nn.ModuleList(blocks)  # u, ul, u, ul, ...
        self.out = nn.ModuleList(WNDense(c, c) for _ in range(cfg.out_resnets))
        self.logits = WNDense(c, cfg.num_embeddings)

    def embed_input(self, e: torch.Tensor) -> torch.Tensor:
        return torch.cat([e, torch.ones_like(e[:, :1])], dim=1)

    def condition_projections(self, h: torch.Tensor) -> list[torch.Tensor]:
        """nin(concat_elu(h)) of every block: computed once per image, reused at every sampling step."""
        hc = concat_elu(h)
        return [blk.cond(hc) for blk in self.blocks]

    def forward(self, e: torch.Tensor, h: torch.Tensor | None = None,
                h_proj: list[torch.Tensor] | None = None) -> torch.Tensor:
        """e [N, D, s, s] (embeddings, zeros where not yet sampled), h [N, 8*cond_channels, s, s] -> logits [N, K, s, s]."""
        if h_proj is None:
            if h is None:
                raise ValueError("the PixelCNN needs the condition h (or its projections h_proj)")
            h_proj = self.condition_projections(h)
        x = self.embed_input(e)
        u = down_shift(self.u_in(x))
        ul = down_shift(self.ul_in_up(x)) + right_shift(self.ul_in_left(x))
        for i in range(0, len(self.blocks), 2):
            u = self.blocks[i](u, h_proj=h_proj[i])
            ul = self.blocks[i + 1](ul, a=u, h_proj=h_proj[i + 1])
        for nin in self.out:
            ul = ul + nin(F.elu(ul))
        return self.logits(F.elu(ul))


class StructureGenerator(nn.Module):
    """Condition network + PixelCNN: the model trained in stage 2."""

    def __init__(self, cfg: StructureConfig):
        super().__init__()
        self.cfg = cfg
        self.condition = ConditionNet(cfg)
        self.pixelcnn = PixelCNN(cfg)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.pixelcnn(e, self.condition(masked, mask))
