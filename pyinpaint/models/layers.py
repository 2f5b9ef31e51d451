"""Building blocks shared by the three stages, with the official TensorFlow semantics.

Tensors are NCHW here (PyTorch); the official code is NHWC. Where TF and PyTorch differ, the TF
behaviour is the one implemented (padding, initialisation), so that official weights give the same
numbers. The official TF names of the layers live in :mod:`pyinpaint.models.official`, not here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
