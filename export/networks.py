"""PyTorch definitions of the paper's networks, sized by configuration.

VB-Net (segmentation): 3x3x3 input conv, down blocks with residual bottlenecks,
mirrored up blocks with skip concatenation, group norm; the first
`inplane_downs` down blocks stride only in-plane because slices are thick.

DA-Net (asymmetry classifier): a shared DenseNet trunk of 1x3x3 and 3x1x1
convolutions (in-plane dilated stem, dense blocks, in-plane-only pooling),
difference features d = (f1 - f2) / max(|f1|, |f2|), [f, d] -> ReLU -> global
average pool -> FC -> sigmoid per side; the class activation map applies the
same FC weights at every voxel before pooling.

`*_CPU` configs fit the 2-core CPU budget; `*_PAPER` configs are the published
sizes (VB-Net 16..256 channels, DA-Net ~3.9 M parameters) for GPU use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VBNetConfig:
    in_channels: int = 1
    num_classes: int = 12                               # runtime.regions.SEG_CLASSES
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)   # input conv, then one per down block
    blocks: tuple[int, ...] = (1, 2, 3, 3)              # residual bottlenecks per down block
    inplane_downs: int = 2                              # leading down blocks that keep z
    coord_channels: bool = True                         # append in-plane x, y coordinates to the input

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def z_multiple(self) -> int:
        return 2 ** (len(self.blocks) - self.inplane_downs)


VBNET_PAPER = VBNetConfig()
VBNET_CPU = VBNetConfig(widths=(16, 24, 32, 48, 64), blocks=(1, 1, 1, 1), inplane_downs=2)


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 2) if ch >= 4 else 1, ch)


class _Bottleneck(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        mid = max(4, ch // 4)
        self.body = nn.Sequential(
            nn.Conv3d(ch, mid, 1, bias=False), _gn(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, mid, 3, padding=1, bias=False), _gn(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, ch, 1, bias=False), _gn(ch))

    def forward(self, x):
        return F.relu(x + self.body(x))


def _coordinates(x: torch.Tensor) -> torch.Tensor:
    """In-plane position in [-1, 1] (x then y), broadcast over batch and slices.

    The runtime's grid is centred on the mid-sagittal plane, so the x coordinate tells a
    fully convolutional net which hemisphere it is looking at; receptive field alone cannot.
    """
    b, _, d, h, w = x.shape
    xs = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device).view(1, 1, 1, 1, w).expand(b, 1, d, h, w)
    ys = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device).view(1, 1, 1, h, 1).expand(b, 1, d, h, w)
    return torch.cat([xs, ys], dim=1)


class VBNet(nn.Module):
    def __init__(self, cfg: VBNetConfig = VBNET_CPU):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        stem_in = cfg.in_channels + (2 if cfg.coord_channels else 0)
        self.stem = nn.Sequential(nn.Conv3d(stem_in, w[0], 3, padding=1, bias=False), _gn(w[0]),
                                  nn.ReLU(inplace=True))
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        strides = [(1, 2, 2) if i < cfg.inplane_downs else (2, 2, 2) for i in range(len(cfg.blocks))]
        for i, n in enumerate(cfg.blocks):
            self.downs.append(nn.Sequential(
                nn.Conv3d(w[i], w[i + 1], strides[i], stride=strides[i], bias=False), _gn(w[i + 1]),
                nn.ReLU(inplace=True), *[_Bottleneck(w[i + 1]) for _ in range(n)]))
        for i in reversed(range(len(cfg.blocks))):
            self.ups.append(nn.ModuleDict({
                "up": nn.Sequential(nn.ConvTranspose3d(w[i + 1], w[i], strides[i], stride=strides[i], bias=False),
                                    _gn(w[i]), nn.ReLU(inplace=True)),
                "fuse": nn.Sequential(nn.Conv3d(2 * w[i], w[i], 1, bias=False), _gn(w[i]), nn.ReLU(inplace=True),
                                      *[_Bottleneck(w[i]) for _ in range(max(1, cfg.blocks[i] // 2))])}))
        self.head = nn.Conv3d(w[0], cfg.num_classes, 1)

    def forward(self, x):
        if self.cfg.coord_channels:
            x = torch.cat([x, _coordinates(x)], dim=1)
        x = self.stem(x)
        skips = [x]
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            step = cast(nn.ModuleDict, up)
            x = step["up"](x)
            x = step["fuse"](torch.cat([x, skips.pop()], dim=1))
        return self.head(x)


@dataclass(frozen=True)
class DANetConfig:
    in_channels: int = 2                  # CT crop + region mask
    growth: int = 32
    block_layers: tuple[int, ...] = (6, 8, 12, 8)   # ~3.7 M parameters, the paper's ~3.9 M scale
    stem_channels: int = 64
    head_hidden: tuple[int, ...] = (256, 64)   # paper: FC 256 -> 64 -> 1

    def to_dict(self) -> dict:
        return asdict(self)


DANET_PAPER = DANetConfig()
DANET_CPU = DANetConfig(growth=8, block_layers=(2, 3, 3), stem_channels=16, head_hidden=(64, 32))


class _DenseLayer(nn.Module):
    def __init__(self, ch: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm3d(ch), nn.ReLU(inplace=True), nn.Conv3d(ch, 4 * growth, 1, bias=False),
            nn.BatchNorm3d(4 * growth), nn.ReLU(inplace=True),
            nn.Conv3d(4 * growth, growth, (1, 3, 3), padding=(0, 1, 1), bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class DANetTrunk(nn.Module):
    def __init__(self, cfg: DANetConfig):
        super().__init__()
        c = cfg.stem_channels
        layers: list[nn.Module] = [
            nn.Conv3d(cfg.in_channels, c, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
        for d in (1, 2, 3):   # in-plane dilated block
            layers += [nn.Conv3d(c, c, (1, 3, 3), padding=(0, d, d), dilation=(1, d, d), bias=False),
                       nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
        for i, n in enumerate(cfg.block_layers):
            for _ in range(n):
                layers.append(_DenseLayer(c, cfg.growth))
                c += cfg.growth
            if i < len(cfg.block_layers) - 1:
                out = c // 2
                layers += [nn.BatchNorm3d(c), nn.ReLU(inplace=True), nn.Conv3d(c, out, 1, bias=False),
                           nn.AvgPool3d((1, 2, 2)),
                           nn.Conv3d(out, out, (3, 1, 1), padding=(1, 0, 0), bias=False)]
                c = out
        layers += [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x):
        return self.body(x)


DIFF_EPS = 0.1


class DANet(nn.Module):
    """Input (B, 2 sides [left, mirrored right], 2 channels, z, y, x).
    Output: probability (B, 2) and CAM logits (B, 2, z', y', x')."""

    def __init__(self, cfg: DANetConfig = DANET_CPU):
        super().__init__()
        self.cfg = cfg
        self.trunk = DANetTrunk(cfg)
        dims = (2 * self.trunk.out_channels, *cfg.head_hidden, 1)
        self.fc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """FC layers over the last axis; ReLU between them."""
        for i, fc in enumerate(self.fc):
            h = fc(h)
            if i < len(self.fc) - 1:
                h = F.relu(h)
        return h

    def forward(self, pairs: torch.Tensor):
        b = pairs.shape[0]
        feats = self.trunk(pairs.flatten(0, 1))                       # (2B, C, z, y, x)
        feats = feats.unflatten(0, (b, 2))
        f_left, f_right = feats[:, 0], feats[:, 1]
        # The stabiliser keeps near-zero features (most are, after ReLU) from turning rounding noise
        # into unit-sized differences; features themselves are O(1) after batch norm.
        denom = torch.maximum(f_left.abs(), f_right.abs()) + DIFF_EPS
        diff = (f_left - f_right) / denom
        left = F.relu(torch.cat([f_left, diff], dim=1))
        right = F.relu(torch.cat([f_right, -diff], dim=1))
        sides = torch.stack([left, right], dim=1)                     # (B, 2, 2C, z, y, x)
        pooled = sides.mean(dim=(3, 4, 5))                            # (B, 2, 2C)
        prob = torch.sigmoid(self._head(pooled)[..., 0])              # (B, 2)
        cam = self._head(sides.permute(0, 1, 3, 4, 5, 2))[..., 0]     # (B, 2, z, y, x)
        return prob, cam


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
