"""Stage 2: the diverse structure generator (official ``net/structure_generator.py``), NCHW.

``ConditionNet``: [masked image, ones, mask] -> h (8*cond_channels x S/8 x S/8), run once per image.
``PixelCNN``: top-code embeddings e (teacher forcing, or what has been sampled so far) + h -> logits over
the K codes at every position, strictly causal in raster order. Submodules are registered in the official
variable-creation order (see :mod:`pyinpaint.official`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyinpaint.config import StructureConfig
from pyinpaint.kernels.causal_conv import CausalConvState
from pyinpaint.models.layers import (GatedBlockState, GatedResBlock, WNConv2d, WNDense, concat_elu, concat_elu_last,
                                     down_shift, right_shift)

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


@dataclass
class PixelCNNState:
    """Step state of the :class:`PixelCNN` (see :meth:`PixelCNN.step`)."""

    height: int
    width: int
    x: torch.Tensor  # [B, H, W, D+1] the input: embeddings as they are drawn, then the ones channel
    u_in: CausalConvState
    ul_in_up: CausalConvState
    ul_in_left: CausalConvState
    blocks: list[GatedBlockState]
    # the condition: concat_elu(h) channels-last [B, H, W, 2 C_h], projected a row at a time by all the blocks' nins
    # stacked (cond_wt [2 C_h, blocks * 2C], cond_b), or the caller's projections h_proj (a list of NCHW maps)
    hc: torch.Tensor | None
    cond_wt: torch.Tensor | None
    cond_b: torch.Tensor | None
    h_proj: list[torch.Tensor] | None
    h_rows: list[torch.Tensor]  # per block, its condition projection at the current row [B, W, 2C]
    u_rows: list[torch.Tensor | None]  # the u stream at the current row, per block (u blocks only)
    ul_up: torch.Tensor  # [B, W, C] down_shift(ul_in_up(x)) at the current row
    ul_left: torch.Tensor | None  # [B, C] ul_in_left(x) at the previous position (right_shift)
    out: list[tuple[torch.Tensor, torch.Tensor]]
    logits: tuple[torch.Tensor, torch.Tensor]


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

    # ---------------------------------------------------------------------------------- step mode
    def init_state(self, batch: int, height: int, width: int, *, h: torch.Tensor | None = None,
                   h_proj: list[torch.Tensor] | None = None) -> PixelCNNState:
        """Step state for sampling a ``height`` x ``width`` map for ``batch`` rows of the condition
        ``h`` [B, C_h, H, W] (or its projections ``h_proj``, as in forward): weights normalised once, every cache
        allocated here. The projections of h are made a row at a time (so they are never all held). Eval mode."""
        w = self.logits.v
        hc = cond_wt = cond_b = None
        if h_proj is None:
            if h is None:
                raise ValueError("the PixelCNN needs the condition h (or its projections h_proj)")
            if tuple(h.shape) != (batch, self.blocks[0].cond.in_ch // 2, height, width):
                raise ValueError(f"h must be [{batch}, {self.blocks[0].cond.in_ch // 2}, {height}, {width}], "
                                 f"got {tuple(h.shape)}")
            with torch.no_grad():
                hc = concat_elu_last(h.detach().permute(0, 2, 3, 1))
                weights, biases = zip(*(blk.cond.step_params() for blk in self.blocks))
                cond_wt, cond_b = torch.cat(weights).t(), torch.cat(biases)
        elif len(h_proj) != len(self.blocks):
            raise ValueError(f"h_proj must hold one projection per block ({len(self.blocks)}), got {len(h_proj)}")
        x = w.new_zeros(batch, height, width, self.u_in.in_ch)
        x[..., -1] = 1.0  # embed_input's ones channel (the padding around the map has none)
        return PixelCNNState(
            height, width, x,
            self.u_in.init_state(batch, height, width), self.ul_in_up.init_state(batch, height, width),
            self.ul_in_left.init_state(batch, height, width),
            [blk.init_state(batch, height, width) for blk in self.blocks],
            hc, cond_wt, cond_b, None if h_proj is None else [p.detach() for p in h_proj], [],
            [None] * len(self.blocks), w.new_zeros(batch, width, self.u_in.out_ch), None,
            [nin.step_params() for nin in self.out], self.logits.step_params())

    def step(self, state: PixelCNNState, e_prev: torch.Tensor | None, pos: int) -> torch.Tensor:
        """Logits [B, K] at raster position ``pos``, given ``e_prev`` [B, D], the embedding drawn at ``pos - 1``
        (None at 0). Call for pos = 0, 1, 2, ... in order. The u stream advances a whole row when a row starts;
        the ul stream, its attention and the output layers advance one position."""
        st = state
        y, x = divmod(pos, st.width)
        if pos > 0:  # take in the previous code: the input map and ul_in_left (which feeds the next position)
            yp, xp = divmod(pos - 1, st.width)
            st.x[:, yp, xp, :-1] = e_prev
            st.ul_left = self.ul_in_left.step(st.ul_in_left, st.x[:, yp, xp], pos - 1)
        if x == 0:
            self._start_row(st, y)
        ul = st.ul_up[:, x] if x == 0 else st.ul_up[:, x] + st.ul_left
        for i in range(1, len(self.blocks), 2):
            ul = self.blocks[i].step(st.blocks[i], ul, pos, a=st.u_rows[i - 1], h_proj=st.h_rows[i])
        for w, b in st.out:
            ul = ul + F.linear(F.elu(ul), w, b)
        return F.linear(F.elu(ul), *st.logits)

    def prefill(self, state: PixelCNNState, x_run: torch.Tensor, pos: int) -> None:
        """R steps at once where no logits are needed (codes known in advance): x_run [B, R, D] holds the step
        inputs at positions pos .. pos+R-1, the embeddings at pos-1 .. pos+R-2 (x_run[:, 0] is not read at pos 0).
        The state afterwards is that of ``step(state, x_run[:, i], pos + i)`` for i < R; nothing is returned. Like a
        language model's prompt: for each row the run covers, the rows above go in through the row products
        (``_start_row``) and the run's pixels of that row through the ul stream together (one ``prefill`` per
        layer: [B*R, ...] products and the attention over the run at once); the output layers are skipped."""
        st, width, r = state, state.width, x_run.shape[1]
        if r < 1 or pos < 0 or pos + r > st.height * width:
            raise ValueError(f"prefill positions {pos}..{pos + r - 1} are outside the {st.height}x{width} map")
        q = pos
        while q < pos + r:
            y, x0 = divmod(q, width)
            n = min(width - x0, pos + r - q)  # this row's part of the run: columns x0 .. x0+n-1
            run = x_run[:, q - pos:q - pos + n]  # the embeddings at q-1 .. q+n-2
            if x0 == 0:  # q - 1 ends the row above: it goes in alone (as in step), then the row products
                if q > 0:
                    st.x[:, y - 1, width - 1, :-1] = run[:, 0]
                    self.ul_in_left.step(st.ul_in_left, st.x[:, y - 1, width - 1], q - 1)
                self._start_row(st, y)
                run, first = run[:, 1:], 0
            else:
                first = x0 - 1
            ul = st.ul_up[:, x0:x0 + n]
            if run.shape[1]:
                st.x[:, y, first:first + run.shape[1], :-1] = run
                left = self.ul_in_left.prefill(st.ul_in_left, st.x[:, y, first:first + run.shape[1]],
                                               y * width + first)
                ul = ul + (F.pad(left, (0, 0, 1, 0)) if x0 == 0 else left)  # right_shift: column 0 has none
            for i in range(1, len(self.blocks), 2):
                ul = self.blocks[i].prefill(st.blocks[i], ul, q, a=st.u_rows[i - 1], h_proj=st.h_rows[i])
            q += n

    def _start_row(self, st: PixelCNNState, y: int) -> None:
        """Row y of the condition projections, of the u stream and of down_shift(ul_in_up), from the rows above."""
        b, w = st.x.shape[0], st.width
        if st.h_proj is not None:
            st.h_rows = [p[:, :, y].transpose(1, 2) for p in st.h_proj]
        else:  # all the blocks' nins at once: one GEMM per row
            st.h_rows = torch.addmm(st.cond_b, st.hc[:, y].reshape(b * w, -1), st.cond_wt).view(b, w, -1).split(
                2 * self.u_in.out_ch, dim=-1)
        if y == 0:  # down_shift: row 0 sees only the zero padding
            u = torch.zeros_like(st.ul_up)
        else:
            row = st.x[:, y - 1]
            u = self.u_in.step(st.u_in, row, (y - 1) * w)  # down_shift: u_in's row y-1 is u's row y
            st.ul_up = self.ul_in_up.step(st.ul_in_up, row, (y - 1) * w)
        for i in range(0, len(self.blocks), 2):
            u = self.blocks[i].step(st.blocks[i], u, y * w, h_proj=st.h_rows[i])
            st.u_rows[i] = u


class StructureGenerator(nn.Module):
    """Condition network + PixelCNN: the model trained in stage 2."""

    def __init__(self, cfg: StructureConfig):
        super().__init__()
        self.cfg = cfg
        self.condition = ConditionNet(cfg)
        self.pixelcnn = PixelCNN(cfg)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.pixelcnn(e, self.condition(masked, mask))
