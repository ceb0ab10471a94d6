"""VB-Net cascade: a coarse pass finds the ASPECTS regions, a fine pass labels them.

Coarse runs on the whole stripped head at `input_stride` x the model grid's
spacing; the fine model runs on a fixed in-plane crop around what the coarse
pass found, on only the slices that hold regions. Labels (runtime.regions) come
back on the full model grid. The networks predict side-agnostic classes
(runtime.regions.SEG_CLASSES); the side is the voxel's side of the grid centre,
which alignment put on the mid-sagittal plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import ndimage

from .engine import Engine
from .regions import BRAIN_LABEL, FIRST_REGION_CLASS, labels_from_classes
from .volume import block_mean, pad_z

if TYPE_CHECKING:
    from .preprocess import Preprocessed

Z_MARGIN_SLICES = 1
MIN_COMPONENT_FRACTION = 0.05


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray                      # uint8 (z, y, x) runtime.regions label ids on the model grid
    template_ncc: float | None = None       # atlas segmenter: how well the registered template fits
    registration_retried: bool = False      # atlas segmenter: the first fit was implausible (runtime.atlas)


class Segmenter(Protocol):
    """Two implementations: NetworkSegmenter (VB-Net cascade) and runtime.atlas.AtlasSegmenter."""

    def segment(self, prep: Preprocessed) -> Segmentation:
        ...


class NetworkSegmenter:
    """The VB-Net cascade. Trained on synthetic heads only: on real CT its regions are poor (Dice 0.40
    on the development studies), so the shipped model set uses the atlas; this stays for own-data
    retraining and for the GPU path's parity tests."""

    def __init__(self, coarse: Engine, fine: Engine):
        self.coarse, self.fine = coarse, fine

    def segment(self, prep: Preprocessed) -> Segmentation:
        return segment(prep.image, self.coarse, self.fine)


def segment(image: np.ndarray, coarse: Engine, fine: Engine) -> Segmentation:
    """`image` is the windowed, stripped model-grid volume in [-1, 1]."""
    nz, ny, nx = image.shape
    c_stride, f_stride = coarse.card.input_stride, fine.card.input_stride
    coarse_classes = _run(coarse, block_mean(image, c_stride))
    regions = significant_regions(coarse_classes >= FIRST_REGION_CLASS)
    labels = np.where(coarse_classes > 0, BRAIN_LABEL, 0).astype(np.uint8)
    labels = labels.repeat(c_stride, axis=1).repeat(c_stride, axis=2)
    labels = _fit(labels, (nz, ny, nx))
    if not regions.any():
        return Segmentation(labels=labels)

    zz, yy, xx = np.nonzero(regions)
    fx, fy = fine.card.fine_crop_xy
    z0, z1, y0, x0 = fine_window((zz.min(), zz.max(), yy.min(), yy.max(), xx.min(), xx.max()), image.shape,
                                 c_stride, f_stride, (fx, fy))
    mid = block_mean(image[z0:z1], f_stride)
    crop = np.full((z1 - z0, fy, fx), -1.0, np.float32)
    part = mid[:, y0:y0 + fy, x0:x0 + fx]
    crop[:, :part.shape[1], :part.shape[2]] = part
    fine_classes = _run(fine, crop, mirror_average=True)[:, :part.shape[1], :part.shape[2]]
    fine_classes = fine_classes.repeat(f_stride, axis=1).repeat(f_stride, axis=2)
    box = (slice(z0, z1), slice(y0 * f_stride, y0 * f_stride + fine_classes.shape[1]),
           slice(x0 * f_stride, x0 * f_stride + fine_classes.shape[2]))
    x_index = np.arange(box[2].start, box[2].stop)[None, None, :]
    labels[box] = labels_from_classes(fine_classes, x_index, (nx - 1) / 2)
    return Segmentation(labels=labels)


def significant_regions(regions: np.ndarray) -> np.ndarray:
    """Drop specks: the coarse pass leaves a few stray region voxels near the skull base, and one
    speck in the bottom slice would drag the fine crop down and sideways. Keeps the 6-connected
    components of at least MIN_COMPONENT_FRACTION of the largest (the two hemispheres' regions)."""
    labels, n = ndimage.label(regions)
    if n == 0:
        return regions
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    keep = np.concatenate([[False], sizes >= MIN_COMPONENT_FRACTION * sizes.max()])
    return keep[labels]


def fine_window(box, shape, c_stride: int, f_stride: int, crop_xy) -> tuple[int, int, int, int]:
    """Where the fine model looks: slices z0:z1 and the in-plane corner (y0, x0) in fine-network
    voxels, from the coarse regions' inclusive box (zmin, zmax, ymin, ymax, xmin, xmax) in coarse
    voxels. The crop is fixed-size so the fine engine always sees one in-plane shape."""
    zmin, zmax, ymin, ymax, xmin, xmax = (int(v) for v in box)
    nz, ny, nx = shape
    z0, z1 = max(0, zmin - Z_MARGIN_SLICES), min(nz, zmax + 1 + Z_MARGIN_SLICES)
    scale = c_stride / f_stride
    cy, cx = (ymin + ymax + 1) / 2 * scale, (xmin + xmax + 1) / 2 * scale
    fx, fy = crop_xy
    y0 = int(np.clip(round(cy - fy / 2), 0, max(0, ny // f_stride - fy)))
    x0 = int(np.clip(round(cx - fx / 2), 0, max(0, nx // f_stride - fx)))
    return z0, z1, y0, x0


def _fit(a: np.ndarray, shape) -> np.ndarray:
    """Crop or zero-pad to shape (strided nets may lose a remainder row)."""
    out = np.zeros(shape, a.dtype)
    sl = tuple(slice(0, min(s, t)) for s, t in zip(a.shape, shape))
    out[sl] = a[sl]
    return out


def _run(engine: Engine, volume: np.ndarray, mirror_average: bool = False) -> np.ndarray:
    """Pad z to the network's multiple with background, run, argmax to classes, unpad.

    `mirror_average`: also run the x-mirrored volume and average the two probability maps
    (mirrored back). The classes carry no side and the networks were trained with mirror
    augmentation, so both passes predict the same thing; their mean is steadier at region edges."""
    nz = volume.shape[0]
    x = pad_z(volume, engine.card.z_multiple, -1.0)[None, None].astype(np.float32)
    name_in, name_out = engine.card.inputs[0].name, engine.card.outputs[0].name
    prob = engine.run({name_in: x})[name_out]
    if mirror_average:
        prob = prob + engine.run({name_in: np.ascontiguousarray(x[..., ::-1])})[name_out][..., ::-1]
    return prob[0].argmax(axis=0)[:nz].astype(np.uint8)
