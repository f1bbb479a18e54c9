"""U^2-Net (Qin et al., 2020), the salient-object network DualAnoDiff uses to segment part images.

The architecture follows the original repository (xuebinqin/U-2-Net, ``model/u2net.py``) module
for module and name for name (``stage1``, ``pool12``, ``rebnconvin``, ``conv_s1``, ``bn_s1``,
``side1``, ``outconv`` ...) so that the published ``u2net.pth`` (full, 176.3 MB) and
``u2netp.pth`` (small, 4.7 MB) state dicts load with ``strict=True``. No package ships these
weights, so the user passes the file; nothing is downloaded.

Inference keeps the original preprocessing (resize to 320 x 320, divide by the image maximum,
ImageNet mean/std) but NOT its per-image min-max normalisation of the prediction: see
:class:`U2NetMasker`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..progress import progress_bar
from ..weights import read_state_dict

Variant = Literal["u2net", "u2netp"]

# ---------------------------------------------------------------------------------------------
# Architecture. Attribute names and layer order follow the original for weight compatibility.
# ---------------------------------------------------------------------------------------------


def _upsample_like(src: torch.Tensor, tar: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``src`` to the spatial size of ``tar`` (the original's ``_upsample_like``)."""
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 (dilated) convolution, batch norm, ReLU."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, dirate: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class _RSU(nn.Module):
    """Residual U-block of ``height`` levels (RSU7 .. RSU4): an encoder-decoder inside one stage.

    The original writes RSU7, RSU6, RSU5 and RSU4 out by hand; they differ only in depth, so one
    parametrised class builds the same attributes (``rebnconvin``, ``rebnconv1..H``, ``pool1..H-2``,
    ``rebnconv{H-1..1}d``) and therefore the same state-dict keys.
    """

    height: int = 0

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__()
        h = self.height
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.pool1 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        for i in range(2, h):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch, dirate=1))
            if i < h - 1:
                setattr(self, f"pool{i}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        setattr(self, f"rebnconv{h}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(h - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch, dirate=1))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.height
        hxin = self.rebnconvin(x)
        enc = [self.rebnconv1(hxin)]  # hx1 .. hx{h-1}
        for i in range(2, h):
            enc.append(getattr(self, f"rebnconv{i}")(getattr(self, f"pool{i - 1}")(enc[-1])))
        hx = getattr(self, f"rebnconv{h}")(enc[-1])
        for i in range(h - 1, 0, -1):
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, enc[i - 1]), 1))
            if i > 1:
                hx = _upsample_like(hx, enc[i - 2])
        return hx + hxin


class RSU7(_RSU):
    height = 7


class RSU6(_RSU):
    height = 6


class RSU5(_RSU):
    height = 5


class RSU4(_RSU):
    height = 4


class RSU4F(nn.Module):
    """RSU-4 with dilations instead of pooling (the deepest stages, where the maps are small)."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


class _U2NetBase(nn.Module):
    """Six encoder stages, five decoder stages, six side outputs fused by a 1x1 convolution.

    ``forward`` returns the seven sigmoid maps like the original: the fused map first, then the
    side outputs ``side1`` .. ``side6`` upsampled to the input size.
    """

    # (in, mid, out) of stage1..stage6, stage5d..stage1d, and the input channels of side1..side6
    _encoder: tuple[tuple[int, int, int], ...] = ()
    _decoder: tuple[tuple[int, int, int], ...] = ()
    _sides: tuple[int, ...] = ()

    def __init__(self, in_ch: int = 3, out_ch: int = 1) -> None:
        super().__init__()
        blocks = (RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F)
        for i, (block, (c_in, c_mid, c_out)) in enumerate(zip(blocks, self._encoder), start=1):
            setattr(self, f"stage{i}", block(in_ch if i == 1 else c_in, c_mid, c_out))
            if i < 6:
                setattr(self, f"pool{i}{i + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for i, block, (c_in, c_mid, c_out) in zip(range(5, 0, -1), blocks[4::-1], self._decoder):
            setattr(self, f"stage{i}d", block(c_in, c_mid, c_out))
        for i, c_in in enumerate(self._sides, start=1):
            setattr(self, f"side{i}", nn.Conv2d(c_in, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = []
        hx = x
        for i in range(1, 7):
            hx = getattr(self, f"stage{i}")(hx)
            enc.append(hx)
            if i < 6:
                hx = getattr(self, f"pool{i}{i + 1}")(hx)
        dec = {6: enc[5]}
        hx = enc[5]
        for i in range(5, 0, -1):
            hx = getattr(self, f"stage{i}d")(torch.cat((_upsample_like(hx, enc[i - 1]), enc[i - 1]), 1))
            dec[i] = hx
        d1 = self.side1(dec[1])
        sides = [d1] + [_upsample_like(getattr(self, f"side{i}")(dec[i]), d1) for i in range(2, 7)]
        d0 = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in (d0, *sides))


class U2NET(_U2NetBase):
    """Full U^2-Net (about 44.0 M parameters, ``u2net.pth``)."""

    _encoder = ((3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512), (512, 256, 512))
    _decoder = ((1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64))
    _sides = (64, 64, 128, 256, 512, 512)


class U2NETP(_U2NetBase):
    """Small U^2-Net (about 1.13 M parameters, ``u2netp.pth``)."""

    _encoder = ((3, 16, 64),) + ((64, 16, 64),) * 5
    _decoder = ((128, 16, 64),) * 5
    _sides = (64,) * 6


ARCHITECTURES: dict[str, type[_U2NetBase]] = {"u2net": U2NET, "u2netp": U2NETP}

# ---------------------------------------------------------------------------------------------
# Loading user-supplied weights
# ---------------------------------------------------------------------------------------------

# The output channels of stage2's input conv tell the variants apart (128 full, 64 small).
_VARIANT_KEY = "stage2.rebnconvin.conv_s1.weight"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return read_state_dict(path, "U^2-Net weights (the original u2net.pth or u2netp.pth)")


def detect_variant(state_dict: dict[str, torch.Tensor]) -> Variant | None:
    """``"u2net"`` or ``"u2netp"`` from the width of stage 2; None if the key is absent or odd."""
    w = state_dict.get(_VARIANT_KEY)
    if w is None or w.ndim != 4:
        return None
    return {128: "u2net", 64: "u2netp"}.get(int(w.shape[0]))


def state_dict_mismatches(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between ``model``'s keys/shapes and ``state_dict``.

    ``num_batches_tracked`` may be absent (checkpoints from before PyTorch 0.4.1 lack it, and
    BatchNorm fills it in on load), so it never counts as missing.
    """
    expected = model.state_dict()
    problems = []
    for key, tensor in expected.items():
        if key not in state_dict:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing {key}")
        elif tuple(state_dict[key].shape) != tuple(tensor.shape):
            problems.append(f"{key} has shape {tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}")
    problems += [f"unexpected {key}" for key in state_dict if key not in expected]
    return problems


def load_u2net(
    path: str | os.PathLike,
    variant: Literal["auto", "u2net", "u2netp"] = "auto",
    device: str | torch.device | None = None,
) -> _U2NetBase:
    """Build U^2-Net, load the user's original state dict strictly, return it in eval mode on ``device``.

    ``variant="auto"`` reads the variant from the state dict. A missing file, an unreadable one or
    a state dict whose keys/shapes do not match raise :class:`InputError` naming the file and the
    first mismatches.
    """
    path = Path(path)
    if variant not in ("auto", *ARCHITECTURES):
        raise InputError(f"U^2-Net variant must be auto, u2net or u2netp, got {variant!r}")
    state_dict = _read_state_dict(path)
    if variant == "auto":
        detected = detect_variant(state_dict)
        if detected is None:
            keys = ", ".join(list(state_dict)[:3]) or "no keys"
            raise InputError(
                f"{path}: not a U^2-Net state dict: cannot tell u2net from u2netp "
                f"({_VARIANT_KEY} missing or of unknown width; first keys: {keys})"
            )
        variant = detected
    model = ARCHITECTURES[variant]()
    problems = state_dict_mismatches(model, state_dict)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise InputError(f"{path}: state dict does not match U^2-Net variant {variant!r}: {shown}{more}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval().to(device or default_device())


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 320


def preprocess(parts: Sequence[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """The original test-time input: resize to ``size`` x ``size``, divide by the max, ImageNet-normalise.

    The original resizes with scikit-image (bilinear, anti-aliased when shrinking); torch's
    anti-aliased bilinear resize is the same filter. Each image is divided by its own maximum like
    the original's ``ToTensorLab`` (guarded against an all-black image).
    """
    batch = []
    for part in parts:
        part = np.asarray(part)
        if part.ndim != 3 or part.shape[-1] != 3 or part.dtype != np.uint8:
            raise InputError(f"part image must be uint8 (H, W, 3), got {part.dtype} {tuple(part.shape)}")
        x = torch.from_numpy(part.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        batch.append(x / x.max().clamp_min(1e-8))
    x = torch.cat(batch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class U2NetMasker:
    """Part image -> bool mask with a U^2-Net: fused output, resized back, ABSOLUTE threshold.

    The original demo min-max normalises every prediction to [0, 1] before saving it. We do not:
    on a part image with no defect the network's output is uniformly low, and min-max would stretch
    that noise to the full range, turning an empty part image into a (near-)full mask. Thresholding
    the raw sigmoid output keeps such pairs empty so the quality gate can reject them.
    """

    def __init__(
        self,
        model: nn.Module,
        threshold: float = 0.5,
        device: str | torch.device | None = None,
        input_size: int = INPUT_SIZE,
        batch_size: int = 8,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"U^2-Net threshold must be in [0, 1] (a probability), got {threshold}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.eval().to(self.device)
        self.threshold = float(threshold)
        self.input_size = input_size
        self.batch_size = batch_size

    @torch.no_grad()
    def probabilities(self, parts: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The fused sigmoid map of each part image, float32 at the image's own (H, W)."""
        out: list[np.ndarray] = []
        for start in range(0, len(parts), self.batch_size):
            chunk = parts[start : start + self.batch_size]
            x = preprocess(chunk, self.input_size).to(self.device)
            fused = self.model(x)[0].float()  # first output = fused map d0, sigmoid applied in the model
            for part, prob in zip(chunk, fused):
                h, w = part.shape[:2]
                prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)
                out.append(prob[0, 0].cpu().numpy())
        return out

    def batch(self, parts: Sequence[np.ndarray], show_progress: bool = False) -> list[np.ndarray]:
        """Masks of many part images, ``batch_size`` at a time."""
        masks: list[np.ndarray] = []
        starts = range(0, len(parts), self.batch_size)
        for start in progress_bar(starts, desc="U^2-Net masks", unit="batch", disable=not show_progress):
            probs = self.probabilities(parts[start : start + self.batch_size])
            masks.extend(p > self.threshold for p in probs)
        return masks

    def __call__(self, part: np.ndarray) -> np.ndarray:
        return self.probabilities([part])[0] > self.threshold
