"""Region labels by registering a region atlas onto the study's model grid.

The atlas is a CT template (HU, skull-stripped) and a region label map drawn in
the experts' convention (the two ASPECTS levels only; see export/atlas.py for
how it is built). Alignment has already put the mid-sagittal plane on the grid
centre, so an affine (scales, pitch, shifts) on the stripped brain is all the
registration has to find. The side of each region is the atlas's side, which
is the patient's side because model space is patient LPS.

Why registration and not the VB-Net: on the real development studies the
synthetic-trained VB-Net reached region Dice 0.40, this atlas 0.72 leave-one-out
(engines/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import NotAHead
from .modelcard import AtlasCard, verify_file
from .preprocess import Preprocessed
from .regions import BRAIN_LABEL
from .segment import Segmentation
from .volume import block_mean

# Registration works on parenchyma intensities: bone and CSF extremes would dominate the metric.
CLAMP_HU = (0.0, 80.0)
SAMPLING_FRACTION = 0.03     # of each level's voxels: ~10k and ~40k points; more moved the result < 1 mm
SAMPLING_SEED = 1
WORK_FACTOR = 2              # registration works on the model grid reduced in-plane: 1 mm at the 0.5 mm grid
SHRINK = (2, 1)              # of that working image: 2 mm, then 1 mm in-plane
SMOOTH_MM = (2.0, 1.0)
# A second try from a coarser start, only when the first fit is under MIN_TEMPLATE_NCC: fine
# structure the template lacks (an atrophic head's sulci) can hold the two-level pyramid in a wrong
# optimum. Measured on a synthetic elderly head: 0.06 (refused) -> 0.115; its young twin fits at 0.18.
RETRY_SHRINK = (4, 2, 1)
RETRY_SMOOTH_MM = (4.0, 2.0, 1.0)
ITERATIONS = 200
MIN_STEP = 1e-2              # physical-shift units: a hundredth of a millimetre
# Normalised cross-correlation of the registered template with the stripped study. Measured: 0.11-0.32
# on upright heads (the three real development studies, native and aligned, the GE series, the demo);
# -0.04 to 0.07 on the demo upside down, turned 90 degrees in-plane, or prone under a supine header,
# by the first fit or the second try (RETRY_*). The floor sits between the two; the margin is thin on
# both sides (README, known limits).
MIN_TEMPLATE_NCC = 0.08


@dataclass(frozen=True)
class RegionAtlas:
    card: AtlasCard
    template: sitk.Image     # HU, skull-stripped, patient LPS mm (model space)
    labels: sitk.Image       # uint8 runtime.regions label ids on the template's space


def load_atlas(card: AtlasCard) -> RegionAtlas:
    path = verify_file(card)
    with np.load(path) as d:
        template = grid_image(d["template"].astype(np.float32), d["template_spacing"], d["template_origin"])
        labels = grid_image(d["labels"].astype(np.uint8), d["labels_spacing"], d["labels_origin"])
    return RegionAtlas(card=card, template=template, labels=labels)


def grid_image(volume: np.ndarray, spacing, origin) -> sitk.Image:
    """An axis-aligned array as an image in patient LPS mm (model space, or the atlas's template space)."""
    im = sitk.GetImageFromArray(volume)
    im.SetSpacing(tuple(float(s) for s in spacing))
    im.SetOrigin(tuple(float(o) for o in origin))
    return im


def register(fixed: sitk.Image, moving: sitk.Image, shrink: tuple[int, ...] = SHRINK,
             smooth_mm: tuple[float, ...] = SMOOTH_MM) -> sitk.Transform:
    """Affine that maps fixed (study, model space) points to moving (template) points."""
    f = sitk.Clamp(fixed, sitk.sitkFloat32, *CLAMP_HU)
    m = sitk.Clamp(moving, sitk.sitkFloat32, *CLAMP_HU)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentagePerLevel([SAMPLING_FRACTION] * len(shrink), SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, MIN_STEP, ITERATIONS, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth_mm))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(f, m)


def registration_image(prep: Preprocessed) -> sitk.Image:
    """The stripped brain at WORK_FACTOR x the model grid's in-plane spacing: what the registration
    sees. The atlas labels are 1 mm, so nothing is lost by working, and warping, at 1 mm."""
    grid, f = prep.grid, WORK_FACTOR
    small = block_mean(np.where(prep.brain, prep.hu, 0.0).astype(np.float32), f)
    sx, sy, sz = grid.spacing
    ox, oy, oz = grid.origin
    # A block mean sits at the centre of its f x f input voxels.
    return grid_image(small, (sx * f, sy * f, sz), (ox + (f - 1) / 2 * sx, oy + (f - 1) / 2 * sy, oz))


class AtlasSegmenter:
    """Segmenter: atlas registration. About 0.6-1 s on two cores, no network."""

    def __init__(self, atlas: RegionAtlas):
        self.atlas = atlas

    def segment(self, prep: Preprocessed) -> Segmentation:
        fixed = registration_image(prep)
        transform = register(fixed, self.atlas.template)
        ncc = template_match(fixed, self.atlas.template, transform)
        retried = ncc < MIN_TEMPLATE_NCC
        if retried:
            second = register(fixed, self.atlas.template, RETRY_SHRINK, RETRY_SMOOTH_MM)
            second_ncc = template_match(fixed, self.atlas.template, second)
            if second_ncc > ncc:
                transform, ncc = second, second_ncc
        if ncc < MIN_TEMPLATE_NCC:
            raise NotAHead(f"the brain does not match a head CT after alignment (template similarity {ncc:.2f}, "
                           f"upright heads reach {MIN_TEMPLATE_NCC:.2f} or more): the head may be upside down, "
                           "turned in the image plane or prone under a supine header, or this is not a head CT")
        warped = sitk.Resample(self.atlas.labels, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        regions = _upsample(sitk.GetArrayFromImage(warped), WORK_FACTOR, prep.brain.shape)
        labels = np.where(prep.brain, np.where(regions > 0, regions, BRAIN_LABEL), 0).astype(np.uint8)
        return Segmentation(labels=labels, template_ncc=ncc, registration_retried=retried)


def _upsample(labels: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest upsampling in-plane by f onto `shape`; an odd last row or column repeats its neighbour."""
    up = labels.repeat(f, axis=1).repeat(f, axis=2)
    pad = [(0, 0), (0, shape[1] - up.shape[1]), (0, shape[2] - up.shape[2])]
    return np.pad(up, pad, mode="edge")


def template_match(fixed: sitk.Image, template: sitk.Image, transform: sitk.Transform) -> float:
    """NCC of the registered template and the study over the union of both brains."""
    moved = sitk.Resample(template, fixed, transform, sitk.sitkLinear, 0.0)
    a = np.clip(sitk.GetArrayViewFromImage(fixed), *CLAMP_HU)
    b = np.clip(sitk.GetArrayViewFromImage(moved), *CLAMP_HU)
    inside = (a > 0) | (b > 0)
    a, b = a[inside] - a[inside].mean(), b[inside] - b[inside].mean()
    return float(a @ b / (np.sqrt((a @ a) * (b @ b)) + 1e-9))
