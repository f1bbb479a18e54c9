"""The DRAEM discriminative U-Net and its focal loss: the downstream localization model of the protocol.

Hand-written because the only packaged copy (anomalib's DRAEM) pulls in lightning and its whole stack
for two small modules. The layer layout and attribute names follow DRAEM's ``model_unet.py``
(VitjanZ/DRAEM), so a ``state_dict`` saved by DRAEM or AnomalyDiffusion loads here unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), *_conv_bn_relu(c_in, c_out)
    )


class EncoderDiscriminative(nn.Module):
    """Six double-conv blocks, five 2x max-pools: widths w, 2w, 4w, 8w, 8w, 8w."""

    def __init__(self, in_channels: int, base_width: int):
        super().__init__()
        w = base_width
        self.block1 = _double_conv(in_channels, w)
        self.mp1 = nn.Sequential(nn.MaxPool2d(2))
        self.block2 = _double_conv(w, 2 * w)
        self.mp2 = nn.Sequential(nn.MaxPool2d(2))
        self.block3 = _double_conv(2 * w, 4 * w)
        self.mp3 = nn.Sequential(nn.MaxPool2d(2))
        self.block4 = _double_conv(4 * w, 8 * w)
        self.mp4 = nn.Sequential(nn.MaxPool2d(2))
        self.block5 = _double_conv(8 * w, 8 * w)
        self.mp5 = nn.Sequential(nn.MaxPool2d(2))
        self.block6 = _double_conv(8 * w, 8 * w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b1 = self.block1(x)
        b2 = self.block2(self.mp1(b1))
        b3 = self.block3(self.mp2(b2))
        b4 = self.block4(self.mp3(b3))
        b5 = self.block5(self.mp4(b4))
        b6 = self.block6(self.mp5(b5))
        return b1, b2, b3, b4, b5, b6


class DecoderDiscriminative(nn.Module):
    """Five bilinear up-steps, each concatenated with the encoder skip of the same scale."""

    def __init__(self, base_width: int, out_channels: int = 1):
        super().__init__()
        w = base_width
        self.up_b = _up(8 * w, 8 * w)
        self.db_b = _double_conv(16 * w, 8 * w)
        self.up1 = _up(8 * w, 4 * w)
        self.db1 = _double_conv(12 * w, 4 * w)
        self.up2 = _up(4 * w, 2 * w)
        self.db2 = _double_conv(6 * w, 2 * w)
        self.up3 = _up(2 * w, w)
        self.db3 = _double_conv(3 * w, w)
        self.up4 = _up(w, w)
        self.db4 = _double_conv(2 * w, w)
        self.fin_out = nn.Sequential(nn.Conv2d(w, out_channels, kernel_size=3, padding=1))

    def forward(self, b1, b2, b3, b4, b5, b6) -> torch.Tensor:
        x = self.db_b(torch.cat((self.up_b(b6), b5), dim=1))
        x = self.db1(torch.cat((self.up1(x), b4), dim=1))
        x = self.db2(torch.cat((self.up2(x), b3), dim=1))
        x = self.db3(torch.cat((self.up3(x), b2), dim=1))
        x = self.db4(torch.cat((self.up4(x), b1), dim=1))
        return self.fin_out(x)


class DiscriminativeSubNetwork(nn.Module):
    """DRAEM's segmentation U-Net: image (B, 3, H, W) in [0, 1] -> logits (B, 2, H, W), H and W % 32 == 0."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, base_channels: int = 64):
        super().__init__()
        self.encoder_segment = EncoderDiscriminative(in_channels, base_channels)
        self.decoder_segment = DecoderDiscriminative(base_channels, out_channels=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_segment(*self.encoder_segment(x))


def draem_weights_init(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """The authors' init: conv weights N(0, 0.02), batch-norm weights N(1, 0.02) and biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data.normal_(0.0, 0.02, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.normal_(1.0, 0.02, generator=generator)
            m.bias.data.fill_(0.0)


def focal_loss(
    probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """DRAEM's ``FocalLoss`` (alpha = 1) on already-softmaxed ``probs`` (B, C, H, W), target (B, 1, H, W).

    As in DRAEM the one-hot target is clamped to [smooth/(C-1), 1-smooth] and ``smooth`` is added to
    p_t before the log, so the loss is finite even for a confident wrong pixel.
    """
    num_class = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, num_class)
    idx = target.reshape(-1).long()
    one_hot = torch.zeros_like(p).scatter_(1, idx[:, None], 1.0)
    one_hot = one_hot.clamp(smooth / (num_class - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(1) + smooth
    return (-torch.pow(1.0 - pt, gamma) * pt.log()).mean()
