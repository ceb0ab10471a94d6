"""Region labels by registering a region atlas onto the study's model grid.

The atlas is a CT template (HU, skull-stripped) and a region label map drawn in
the experts' convention (the two ASPECTS levels only; see export/atlas.py for
how it is built). Alignment has already put the mid-sagittal plane on the grid
centre, so an affine (scales, pitch, shifts) on the stripped brain is all the
registration has to find. The side of each region is the atlas's side, which
is the patient's side because model space is patient LPS.

Why registration and not the VB-Net: on the real development studies the
synthetic-trained VB-Net reached region Dice 0.40, this atlas 0.67 leave-one-out
(engines/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .modelcard import AtlasCard, verify_file
from .preprocess import Preprocessed
from .regions import BRAIN_LABEL
from .segment import Segmentation

# Registration works on parenchyma intensities: bone and CSF extremes would dominate the metric.
CLAMP_HU = (0.0, 80.0)
SAMPLING_FRACTION = 0.1
SAMPLING_SEED = 1
SHRINK = (4, 2)              # of the 0.5 mm model grid: 2 mm, then 1 mm in-plane
SMOOTH_MM = (2.0, 1.0)
ITERATIONS = 200


@dataclass(frozen=True)
class RegionAtlas:
    card: AtlasCard
    template: sitk.Image     # HU, skull-stripped, patient LPS mm (model space)
    labels: sitk.Image       # uint8 runtime.regions label ids on the template's space


def load_atlas(card: AtlasCard) -> RegionAtlas:
    path = verify_file(card)
    with np.load(path) as d:
        template = _image(d["template"].astype(np.float32), d["template_spacing"], d["template_origin"])
        labels = _image(d["labels"].astype(np.uint8), d["labels_spacing"], d["labels_origin"])
    return RegionAtlas(card=card, template=template, labels=labels)


def _image(array: np.ndarray, spacing, origin) -> sitk.Image:
    im = sitk.GetImageFromArray(array)
    im.SetSpacing(tuple(float(s) for s in spacing))
    im.SetOrigin(tuple(float(o) for o in origin))
    return im


def grid_image(volume: np.ndarray, spacing, origin) -> sitk.Image:
    """A model-grid array as an image whose physical space is model space (mm)."""
    return _image(volume, spacing, origin)


def register(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """Affine that maps fixed (study, model space) points to moving (template) points."""
    f = sitk.Clamp(fixed, sitk.sitkFloat32, *CLAMP_HU)
    m = sitk.Clamp(moving, sitk.sitkFloat32, *CLAMP_HU)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(SAMPLING_FRACTION, SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, ITERATIONS, relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(SHRINK))
    reg.SetSmoothingSigmasPerLevel(list(SMOOTH_MM))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    return reg.Execute(f, m)


class AtlasSegmenter:
    """Segmenter: atlas registration. ~3 s on two cores, no network."""

    def __init__(self, atlas: RegionAtlas):
        self.atlas = atlas

    def segment(self, prep: Preprocessed) -> Segmentation:
        grid = prep.grid
        fixed = grid_image(np.where(prep.brain, prep.hu, 0.0).astype(np.float32), grid.spacing, grid.origin)
        transform = register(fixed, self.atlas.template)
        warped = sitk.Resample(self.atlas.labels, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        regions = sitk.GetArrayFromImage(warped)
        labels = np.where(prep.brain, np.where(regions > 0, regions, BRAIN_LABEL), 0).astype(np.uint8)
        return Segmentation(labels=labels)
