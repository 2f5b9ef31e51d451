"""Building blocks shared by the three stages, with the official TensorFlow semantics.

Tensors are NCHW here (PyTorch); the official code is NHWC. Where TF and PyTorch differ, the TF
behaviour is the one implemented (padding, initialisation), so that official weights give the same
numbers. The official TF names of the layers live in :mod:`pyinpaint.official`, not here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyinpaint.kernels.causal_attention import causal_attention
from pyinpaint.kernels.causal_conv import (CausalConvState, causal_conv2d, causal_conv2d_init_state,
                                           causal_conv2d_update)
from pyinpaint.kernels.decode_attention import choose_backend as choose_decode_backend
from pyinpaint.kernels.decode_attention import decode_attention


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after) along one axis.

    total = max((ceil(n/s) - 1) * s + (k - 1) * d + 1 - n, 0); before = total // 2. For a 3x3/s2 conv
    on an even size this is (0, 1), not PyTorch's symmetric (1, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _tf_trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    # tf.truncated_normal_initializer(0, std): resample outside two standard deviations.
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Conv2d(nn.Conv2d):
    """Plain convolution with TF 'SAME' padding and the official initialiser (``nn.conv2d``).

    Official init: truncated normal, std 1/sqrt(kh*kw*in); bias zero.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, dilation=dilation, padding=0)
        _tf_trunc_normal_(self.weight, 1.0 / math.sqrt(kernel * kernel * in_ch))
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
        top, bottom = same_padding(x.shape[-2], k, s, d)
        left, right = same_padding(x.shape[-1], k, s, d)
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, self.bias, s, (top, left), d)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, s, 0, d)


class ConvTranspose2d(nn.ConvTranspose2d):
    """Transposed convolution, 4x4 stride 2 'SAME' (``nn.deconv2d``): output exactly twice the input.

    Equals ``tf.nn.conv2d_transpose`` with TF weight W [kh, kw, out, in] as weight W.permute(3, 2, 0, 1),
    padding (1, 1), no kernel flip. Official init: truncated normal, std 1/sqrt(kh*kw*in); bias zero.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 4, stride: int = 2):
        if kernel - stride != 2 * ((kernel - stride) // 2):
            raise ValueError("only kernel - stride even is supported (output = stride * input)")
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=(kernel - stride) // 2)
        _tf_trunc_normal_(self.weight, 1.0 / math.sqrt(kernel * kernel * in_ch))
        nn.init.zeros_(self.bias)


class ResBlock(nn.Module):
    """``nn.resnet``: x + conv1x1(elu(conv3x3(elu(x)))) (the VQ-VAE's residual block)."""

    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.conv1 = Conv2d(channels, res_channels, 3)
        self.conv2 = Conv2d(res_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """``nn.concat_elu``: elu(cat([x, -x], channel)): doubles the channels."""
    return F.elu(torch.cat([x, -x], dim=1))


_concat_elu = concat_elu  # for methods whose ``concat_elu`` flag shadows the function


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift a map one row down, zero in the first row (``nn.down_shift``)."""
    return F.pad(x[:, :, :-1, :], (0, 0, 1, 0))


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Shift a map one column right, zero in the first column (``nn.right_shift``)."""
    return F.pad(x[:, :, :, :-1], (1, 0, 0, 0))


# ----------------------------------------------------------------------------------------------------
# Step mode (the cached sampler): one protocol for every causal layer (WNConv2d with a causal padding,
# CausalSelfAttention, a causal GatedResBlock, and the PixelCNN in pyinpaint.models.structure):
#
#   forward(x)                              the whole map (training, the naive sampler)
#   init_state(batch, height, width, ...)   static state for a height x width map, every buffer allocated here
#   step(state, x_t, pos, ...)              the output at raster position pos = y * width + x
#   prefill(state, x_run, pos, ...)         position-at-a-time layers only: x_run [B, R, C] at pos .. pos+R-1 (one
#                                           row; the PixelCNN's may span rows), as R steps in one batched call
#
# ``pos`` is always a raster index. Layers whose output row depends on whole input rows only ("down" convolutions
# and blocks: the u stream) step a row at a time, at the row's first position (pos = y * width, x_t and the output [B, W, C]); the
# others a position at a time (x_t and the output [B, C]). Step tensors are channels-last. Steps come in raster
# order; the sampler owns the loop. States hold the weights in the layout the step needs (normalised once), track
# no gradients, and are run under torch.inference_mode() (the sampler does). The step arithmetic of the ops lives
# beside their full forms in pyinpaint.kernels (causal_conv2d_update, decode_attention).


def concat_elu_last(x: torch.Tensor) -> torch.Tensor:
    """concat_elu over the LAST axis (channels-last step tensors): elu(cat([x, -x], -1))."""
    return F.elu(torch.cat([x, -x], dim=-1))


def _weight_norm(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # tf.nn.l2_normalize(V, [0, 1, 2]) * g: norm over everything but the output channel, eps 1e-12 on the square.
    sq = (v * v).sum(dim=tuple(range(1, v.dim())), keepdim=True)
    return v * torch.rsqrt(sq.clamp_min(1e-12)) * g.view(-1, *([1] * (v.dim() - 1)))


class WNConv2d(nn.Module):
    """Weight-normalised convolution (``nn.wnconv2d``): W = g * V / ||V||, norm per output channel.

    ``padding``: "same" (TF SAME, with ``dilation``), "down" (``down_shifted_conv2d``: pad top kh-1, left and
    right (kw-1)/2) or "down_right" (``down_right_shifted_conv2d``: pad top kh-1, left kw-1). The causal
    kinds go through :func:`pyinpaint.kernels.causal_conv.causal_conv2d`, which can fuse concat_elu into
    its input load: ``forward(x, concat_elu=True)`` equals ``forward(concat_elu(x))``.
    Official init: V ~ N(0, 0.05), g = 1, b = 0 (no data-dependent init).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int] = 3, *, stride: int = 1,
                 dilation: int = 1, padding: str = "same"):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if padding not in ("same", "down", "down_right"):
            raise ValueError(f"padding must be 'same', 'down' or 'down_right', got {padding!r}")
        if padding != "same" and (stride != 1 or dilation != 1):
            raise ValueError("shifted (causal) convolutions have stride 1 and no dilation")
        self.in_ch, self.out_ch, self.kernel = in_ch, out_ch, (kh, kw)
        self.stride, self.dilation, self.padding = stride, dilation, padding
        self.v = nn.Parameter(torch.randn(out_ch, in_ch, kh, kw) * 0.05)
        self.g = nn.Parameter(torch.ones(out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))

    def weight(self) -> torch.Tensor:
        return _weight_norm(self.v, self.g)

    def forward(self, x: torch.Tensor, concat_elu: bool = False) -> torch.Tensor:
        w = self.weight()
        if self.padding != "same":
            b = self.b
            if torch.is_autocast_enabled(x.device.type):  # the op takes one dtype: autocast's (norms stay fp32)
                dt = torch.get_autocast_dtype(x.device.type)
                x, w, b = x.to(dt), w.to(dt), b.to(dt)
            return causal_conv2d(x, w, b, kind=self.padding, concat_elu=concat_elu)
        if concat_elu:
            x = _concat_elu(x)
        (kh, kw), s, d = self.kernel, self.stride, self.dilation
        top, bottom = same_padding(x.shape[-2], kh, s, d)
        left, right = same_padding(x.shape[-1], kw, s, d)
        if top == bottom and left == right:
            return F.conv2d(x, w, self.b, s, (top, left), d)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, self.b, s, 0, d)


    # ---------------------------------------------------------------------------------- step mode
    def init_state(self, batch: int, height: int, width: int, *, concat_elu: bool = False) -> CausalConvState:
        """Step state on a ``height`` x ``width`` map (the causal kinds only); ``concat_elu`` as in forward."""
        if self.padding == "same":
            raise ValueError("only causal ('down', 'down_right') convolutions have a step mode")
        with torch.no_grad():
            w = self.weight().detach()  # [O, C', kh, kw]
        return causal_conv2d_init_state(w, self.b, batch, width, kind=self.padding, concat_elu=concat_elu)

    def step(self, state: CausalConvState, x_t: torch.Tensor, pos: int,
             row_extra: torch.Tensor | None = None) -> torch.Tensor:
        """"down": x_t = input row [B, W, C] at pos = y * W -> output row [B, W, O]. "down_right": x_t = input at
        raster position ``pos`` [B, C] -> output there [B, O]; ``row_extra`` [B, W, O] (read when a row starts,
        x = 0) is added to every output of that row."""
        return causal_conv2d_update(state, x_t, pos, row_extra)

    def prefill(self, state: CausalConvState, x_run: torch.Tensor, pos: int,
                row_extra: torch.Tensor | None = None) -> torch.Tensor:
        """"down_right" only: R steps at once. x_run [B, R, C] are the inputs at raster positions pos .. pos+R-1,
        all in one row -> the outputs there [B, R, O], as R calls of :meth:`step` (``row_extra`` as there)."""
        if self.padding != "down_right":
            raise ValueError("prefill is for 'down_right' convolutions (a 'down' step is already a whole row)")
        return causal_conv2d_update(state, x_run, pos, row_extra)


class WNDense(nn.Module):
    """Weight-normalised dense layer applied per position (``nn.nin`` / ``nn.wndense``) on NCHW maps:
    y = (x V) * g / ||V||_col + b, as a 1x1 convolution. ``v`` is [out, in] (the TF variable is [in, out])."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.v = nn.Parameter(torch.randn(out_ch, in_ch) * 0.05)
        self.g = nn.Parameter(torch.ones(out_ch))
        self.b = nn.Parameter(torch.zeros(out_ch))

    def weight(self) -> torch.Tensor:
        # no epsilon in the official wndense
        return self.v * (self.g / torch.sqrt((self.v * self.v).sum(dim=1))).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight()[:, :, None, None], self.b)

    def step_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [out, in], bias), detached, for ``F.linear`` on channels-last step tensors."""
        with torch.no_grad():
            return self.weight().detach(), self.b.detach().clone()


@dataclass
class AttentionState:
    """Step state of :class:`CausalSelfAttention`: a key cache and, in place of a value cache, the inputs.

    Values are never cached: a query's softmax weights sum to 1, so sum_j p_j (x_j Wv_h + bv_h) =
    (sum_j p_j x_j) Wv_h + bv_h, and Wv_h folds into the output projection: ``mix`` [heads*C, C] stacks
    Wv_h^T Wout_h^T, ``mix_bias`` = bout + sum_h Wout_h bv_h. A position costs C cached numbers instead of
    heads*dv (4x less memory traffic at the paper's sizes, where the cache outgrows the CPU's caches), and
    reading the cache is one [heads, p] x [p, C] product per sample. The scale 1/sqrt(dk) is folded into Wq.
    """

    qk_t: torch.Tensor  # [C, heads*2dk]: per head [q_h * scale, k_h]
    qk_bias: torch.Tensor
    mix: torch.Tensor  # [heads*C, C]
    mix_bias: torch.Tensor
    out_bias: torch.Tensor  # position 0 attends to nothing: its output is the out projection's bias
    keys_t: torch.Tensor  # [B, heads, dk, L] (transposed: the scores are one [1, dk] x [dk, p] product per head)
    inputs: torch.Tensor  # [B, L, C]
    backend: str = "torch"  # of the decode-attention op, chosen once in init_state by its auto dispatch
    pos_t: torch.Tensor | None = None  # int32 [1] on the device: the position as the Triton kernel reads it


class CausalSelfAttention(nn.Module):
    """The strictly causal multi-head attention inside the PixelCNN's gated blocks (official gated_resnet).

    Per head: q, k = nin(c3) of ``dk`` channels, v = nin(c3) of ``dv`` channels (official: C//8 and C//2
    whatever the number of heads); logits q k^T / sqrt(dk); each raster position attends to strictly
    earlier ones (position 0 outputs 0); heads concatenated in order, then nin -> C. The per-head q, k, v
    projections are one fused dense layer (columns [q_0, k_0, v_0, q_1, ...], the official creation
    order): weight norm is per output column, so fusing them changes no number.
    """

    def __init__(self, channels: int, heads: int, dk: int, dv: int):
        super().__init__()
        self.heads, self.dk, self.dv = heads, dk, dv
        self.qkv = WNDense(channels, heads * (2 * dk + dv))
        self.out = WNDense(heads * dv, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        qkv = self.qkv(x).view(n, self.heads, 2 * self.dk + self.dv, h * w).transpose(2, 3)
        q, k, v = qkv.split([self.dk, self.dk, self.dv], dim=-1)
        att = causal_attention(q, k, v, scale=1.0 / math.sqrt(self.dk))  # [n, heads, L, dv]
        return self.out(att.transpose(2, 3).reshape(n, self.heads * self.dv, h, w))

    def init_state(self, batch: int, height: int, width: int) -> AttentionState:
        """Step state on a ``height`` x ``width`` map (empty caches) and the folded weights (see
        :class:`AttentionState`)."""
        length = height * width
        h, dk, dv = self.heads, self.dk, self.dv
        (w_qkv, b_qkv), (w_out, b_out) = self.qkv.step_params(), self.out.step_params()
        c = w_qkv.shape[1]
        w3, b3 = w_qkv.view(h, 2 * dk + dv, c), b_qkv.view(h, 2 * dk + dv)
        scale = torch.ones(2 * dk, dtype=w3.dtype, device=w3.device)
        scale[:dk] = 1.0 / math.sqrt(dk)
        w_o = w_out.view(c, h, dv)  # Wout_h = w_o[:, h]
        mix = torch.einsum("hdc,ohd->hco", w3[:, 2 * dk:], w_o).reshape(h * c, c).contiguous()
        mix_bias = b_out + torch.einsum("ohd,hd->o", w_o, b3[:, 2 * dk:])
        qk_t = (w3[:, :2 * dk] * scale[:, None]).reshape(-1, c).t()
        keys_t, inputs = w3.new_zeros(batch, h, dk, length), w3.new_zeros(batch, length, c)
        backend = choose_decode_backend(keys_t[..., 0], keys_t, inputs).require()  # a query is [B, heads, dk]
        return AttentionState(qk_t, (b3[:, :2 * dk] * scale).reshape(-1), mix, mix_bias, b_out, keys_t, inputs,
                              backend, torch.empty(1, dtype=torch.int32, device=w3.device) if backend == "triton"
                              else None)

    def step(self, state: AttentionState, x_t: torch.Tensor, pos: int) -> torch.Tensor:
        """x_t [B, C] at raster position ``pos`` -> [B, C]: attends to positions 0 .. pos-1 of the cache, then
        stores its own key and input at ``pos`` (position 0 attends to nothing: out(0) = the out bias)."""
        st, b = state, x_t.shape[0]
        qk = torch.addmm(st.qk_bias, x_t, st.qk_t).view(b, self.heads, 2 * self.dk)
        st.keys_t[:, :, :, pos] = qk[:, :, self.dk:]
        st.inputs[:, pos] = x_t
        if pos == 0:
            return st.out_bias.expand(b, -1)
        # Triton (CUDA): one launch shape for every position, pos only in a device tensor (a fill, no sync)
        mixed = decode_attention(qk[:, :, :self.dk], st.keys_t, st.inputs,
                                 pos if st.pos_t is None else st.pos_t.fill_(pos), backend=st.backend)  # [B, heads, C]
        return torch.addmm(st.mix_bias, mixed.view(b, -1), st.mix)

    def prefill(self, state: AttentionState, x_run: torch.Tensor, pos: int) -> torch.Tensor:
        """R attention steps at once: x_run [B, R, C] at positions pos .. pos+R-1 -> [B, R, C]. The R keys and inputs
        go into the caches, then each query attends to the positions before its own (a causal mask inside the run)."""
        b, r, c = x_run.shape
        end = pos + r
        qk = torch.addmm(state.qk_bias, x_run.reshape(b * r, c), state.qk_t).view(b, r, self.heads, 2 * self.dk)
        state.keys_t[:, :, :, pos:end] = qk[..., self.dk:].permute(0, 2, 3, 1)
        state.inputs[:, pos:end] = x_run
        scores = torch.matmul(qk[..., :self.dk].transpose(1, 2), state.keys_t[:, :, :, :end])  # [B, heads, R, end]
        later = torch.arange(end, device=x_run.device) >= torch.arange(pos, end, device=x_run.device)[:, None]
        scores.masked_fill_(later, float("-inf"))  # position p attends to 0 .. p-1
        if pos == 0:
            scores[:, :, 0, 0] = 0.0  # position 0 attends to nothing: any finite row (its output is replaced below)
        probs = torch.softmax(scores, dim=-1).view(b, self.heads * r, end)  # heads and queries as one M: no broadcast
        mixed = torch.bmm(probs, state.inputs[:, :end]).view(b, self.heads, r, c)  # [B, heads, R, C]
        out = torch.addmm(state.mix_bias, mixed.transpose(1, 2).reshape(b * r, -1), state.mix).view(b, r, c)
        if pos == 0:
            out[:, 0] = state.out_bias
        return out


@dataclass
class GatedBlockState:
    """Step state of a causal :class:`GatedResBlock`."""

    width: int
    conv1: CausalConvState
    conv2: CausalConvState
    aux: tuple[torch.Tensor, torch.Tensor] | None  # nin of a: (weight, bias)
    attention: AttentionState | None


class GatedResBlock(nn.Module):
    """``nn.gated_resnet`` with concat_elu:

        c1 = conv(concat_elu(x)) [+ nin(concat_elu(a))];  c2 = conv(concat_elu(c1), 2C) [+ nin(concat_elu(h), 2C)]
        c3 = c2[:C] * sigmoid(c2[C:]);  [c3 += attention(c3)];  [dropout];  return x + c3

    ``padding`` picks the convolution ("same" with ``kernel`` and ``dilation`` for the first conv,
    "down" [2, 3] or "down_right" [2, 2] in the PixelCNN). Layers are registered in the official order.
    """

    def __init__(self, channels: int, res_channels: int, *, padding: str = "same", kernel=3, dilation: int = 1,
                 aux_channels: int = 0, cond_channels: int = 0, attention_heads: int = 0, dropout: float = 0.0):
        super().__init__()
        self.channels = channels
        self.conv1 = WNConv2d(2 * channels, res_channels, kernel, dilation=dilation, padding=padding)
        self.aux = WNDense(2 * aux_channels, res_channels) if aux_channels else None
        self.conv2 = WNConv2d(2 * res_channels, 2 * channels, kernel, padding=padding)
        self.cond = WNDense(2 * cond_channels, 2 * channels) if cond_channels else None
        self.attention = (CausalSelfAttention(channels, attention_heads, channels // 8, channels // 2)
                          if attention_heads else None)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, a: torch.Tensor | None = None, h: torch.Tensor | None = None,
                h_proj: torch.Tensor | None = None) -> torch.Tensor:
        """``h_proj`` (= ``self.cond(concat_elu(h))``, precomputed once per image) may replace ``h``."""
        c1 = self.conv1(x, concat_elu=True)
        if self.aux is not None:
            if a is None:
                raise ValueError("this block takes an auxiliary input a")
            c1 = c1 + self.aux(concat_elu(a))
        c2 = self.conv2(c1, concat_elu=True)
        if self.cond is not None:
            if h_proj is None:
                if h is None:
                    raise ValueError("this block takes a condition h")
                h_proj = self.cond(concat_elu(h))
            c2 = c2 + h_proj
        u, gate = c2.chunk(2, dim=1)
        c3 = u * torch.sigmoid(gate)
        if self.attention is not None:
            c3 = c3 + self.attention(c3)
        if self.dropout > 0 and self.training:
            # the mask is drawn in memory order: contiguous, so that channels-last training draws the same mask
            c3 = F.dropout(c3.contiguous(), self.dropout, training=True)
        return x + c3

    # ---------------------------------------------------------------------------------- step mode
    def init_state(self, batch: int, height: int, width: int) -> GatedBlockState:
        """Step state on a ``height`` x ``width`` map (causal blocks only). A "down" block steps a row at a time, a
        "down_right" block a position at a time (attention only in the latter)."""
        if self.conv1.padding == "same":
            raise ValueError("only causal ('down', 'down_right') gated blocks have a step mode")
        if self.training and self.dropout > 0:
            raise ValueError("step mode is for inference: call .eval() first (the block has dropout)")
        if self.attention is not None and self.conv1.padding == "down":
            raise ValueError("attention is stepped a position at a time: it needs a 'down_right' block")
        return GatedBlockState(
            width, self.conv1.init_state(batch, height, width, concat_elu=True),
            self.conv2.init_state(batch, height, width, concat_elu=True),
            None if self.aux is None else self.aux.step_params(),
            None if self.attention is None else self.attention.init_state(batch, height, width))

    def step(self, state: GatedBlockState, x_t: torch.Tensor, pos: int, a: torch.Tensor | None = None,
             h_proj: torch.Tensor | None = None) -> torch.Tensor:
        """"down": x_t = input row [B, W, C] at pos = y * W -> output row [B, W, C]. "down_right": x_t = input at
        raster position ``pos`` [B, C] -> output there [B, C]. Per-row inputs, this row's [B, W, ...] (a "down_right"
        block reads them when a row starts, x = 0): ``a`` the auxiliary input, ``h_proj`` the condition's
        projection nin(concat_elu(h)) (see ``forward``)."""
        st = state
        if self.cond is not None and h_proj is None:
            raise ValueError("this block takes a condition: pass h_proj, its projection at this row")
        if self.conv1.padding == "down":
            c1 = self.conv1.step(st.conv1, x_t, pos)
            if st.aux is not None:
                c1 = c1 + F.linear(concat_elu_last(a), *st.aux)
            c2 = self.conv2.step(st.conv2, c1, pos)
            if self.cond is not None:
                c2 = c2 + h_proj
        else:
            aux_row = None
            if st.aux is not None and pos % st.width == 0:  # known for the whole row: into conv1's row base
                aux_row = F.linear(concat_elu_last(a), *st.aux)
            c1 = self.conv1.step(st.conv1, x_t, pos, row_extra=aux_row)
            c2 = self.conv2.step(st.conv2, c1, pos, row_extra=h_proj if self.cond is not None else None)
        c3 = F.glu(c2, dim=-1)  # first half * sigmoid(second half)
        if st.attention is not None:
            c3 = c3 + self.attention.step(st.attention, c3, pos)
        return x_t + c3

    def prefill(self, state: GatedBlockState, x_run: torch.Tensor, pos: int, a: torch.Tensor | None = None,
                h_proj: torch.Tensor | None = None) -> torch.Tensor:
        """"down_right" only: R steps at once, x_run [B, R, C] at positions pos .. pos+R-1 of one row -> [B, R, C]
        (per-row inputs as in :meth:`step`)."""
        st = state
        if self.conv1.padding != "down_right":
            raise ValueError("prefill is for 'down_right' blocks (a 'down' step is already a whole row)")
        if self.cond is not None and h_proj is None:
            raise ValueError("this block takes a condition: pass h_proj, its projection at this row")
        aux_row = None
        if st.aux is not None and pos % st.width == 0:
            aux_row = F.linear(concat_elu_last(a), *st.aux)
        c1 = self.conv1.prefill(st.conv1, x_run, pos, row_extra=aux_row)
        c2 = self.conv2.prefill(st.conv2, c1, pos, row_extra=h_proj if self.cond is not None else None)
        c3 = F.glu(c2, dim=-1)
        if st.attention is not None:
            c3 = c3 + self.attention.prefill(st.attention, c3, pos)
        return x_run + c3


# ----------------------------------------------------------------------------------------------------
# Stage 3 layers (texture generator and discriminator)


class GatedConv2d(nn.Module):
    """``nn.gated_conv2d`` (DeepFill v2): a plain TF-'SAME' conv to ``filters`` channels, split in two halves,
    ``elu(first) * sigmoid(second)``: the output has ``filters // 2`` channels.

    The convolution is a :class:`Conv2d` (official init: truncated normal std 1/sqrt(kh*kw*in), bias 0).
    """

    def __init__(self, in_ch: int, filters: int, kernel: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        if filters % 2:
            raise ValueError(f"a gated conv needs an even number of filters (got {filters})")
        self.conv = Conv2d(in_ch, filters, kernel, stride=stride, dilation=dilation)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = self.conv(x).chunk(2, dim=1)
        return F.elu(feat) * torch.sigmoid(gate)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """``tf.image.resize_nearest_neighbor(x, 2x, align_corners=True)``: output index i reads input floor(i/2)."""
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


class GatedDeconv2d(nn.Module):
    """``nn.gated_deconv2d``: nearest x2 upsampling then a 3x3 stride-1 gated conv (``filters`` -> filters // 2).

    Not a transposed convolution: the official ``gated_deconv2d/W`` is an ordinary [3, 3, in, out] conv weight.
    """

    def __init__(self, in_ch: int, filters: int, kernel: int = 3):
        super().__init__()
        self.gated = GatedConv2d(in_ch, filters, kernel)

    @property
    def out_channels(self) -> int:
        return self.gated.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gated(upsample_nearest2x(x))


def _l2n(x: torch.Tensor) -> torch.Tensor:
    # nn.l2_norm: x / (||x||_2 + 1e-12), the norm over the whole tensor
    return x / (torch.sqrt((x * x).sum()) + 1e-12)


class SNConv2d(nn.Module):
    """``nn.snconv2d``: spectral-normalised convolution (TF 'SAME' padding) with a persistent power-iteration
    vector ``u`` ([1, out], as the TF variable).

    Every call runs ONE power iteration from the stored ``u`` with w = W reshaped [kh*kw*in, out] in TF's
    HWIO order: v = l2n(u w^T), u_hat = l2n(v w), sigma = v w u_hat^T, and convolves with W / sigma.
    As in the official code the gradient flows through v and u_hat (no stop_gradient, unlike
    ``torch.nn.utils.spectral_norm``), while ``u`` itself is state, not a parameter.

    ``update_u`` (default ``self.training``) stores u_hat into ``u`` after the call. The official graph
    overwrites ``u`` on EVERY evaluation of the discriminator (there is no inference mode for it; in
    ``train_texture_generator.py`` both the generator step and the discriminator step evaluate it, so ``u``
    advances twice per iteration). Our default leaves ``u`` untouched in eval mode so that evaluating a
    trained discriminator does not change it; pass ``update_u=True`` to get the official behaviour
    regardless of the mode. The output is the same either way (it uses u_hat of this call).
    Official init: W truncated normal std 0.05, u truncated normal std 1, b = 0.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 5, stride: int = 2):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel, self.stride = in_ch, out_ch, kernel, stride
        self.weight = nn.Parameter(_tf_trunc_normal_(torch.empty(out_ch, in_ch, kernel, kernel), 0.05))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.register_buffer("u", _tf_trunc_normal_(torch.empty(1, out_ch), 1.0))

    def power_iteration(self, u: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma [1, 1], u_hat [1, out]) of one power iteration from ``u`` (default: the stored one)."""
        u = self.u if u is None else u
        w = self.weight.permute(2, 3, 1, 0).reshape(-1, self.out_ch)  # [kh*kw*in, out], TF's HWIO row order
        v = _l2n(u @ w.t())
        vw = v @ w
        u_hat = _l2n(vw)
        return vw @ u_hat.t(), u_hat

    def normalized_weight(self, update_u: bool | None = None) -> torch.Tensor:
        """W / sigma after one power iteration; stores u_hat in ``u`` if ``update_u`` (default: training)."""
        # a copy: the in-place update below must not touch a tensor autograd saved for the backward pass
        with torch.autocast(self.weight.device.type, enabled=False):  # the statistics stay float32
            sigma, u_hat = self.power_iteration(self.u.clone())
        if self.training if update_u is None else update_u:
            with torch.no_grad():
                self.u.copy_(u_hat)
        return self.weight / sigma

    def forward(self, x: torch.Tensor, update_u: bool | None = None) -> torch.Tensor:
        w = self.normalized_weight(update_u)
        k, s = self.kernel, self.stride
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), w, self.bias, s)
