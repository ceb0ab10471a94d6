"""The one table of ASPECTS regions, label ids and sides.

Label map convention used by every model and report in this project:
0 background, 1..10 regions on the patient's RIGHT, 11..20 the same regions on
the patient's LEFT (order of REGIONS), 21 other brain tissue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str        # ASPECTS name
    title: str       # human-readable
    cortical: bool   # M1-M6 are cortical; C, L, IC, I are subcortical (DA-Net model split)
    atlas_key: str   # file stem in the MNI152 region-mask atlas (shared/data/atlas)


REGIONS: tuple[Region, ...] = (
    Region("C", "caudate", False, "C"),
    Region("L", "lentiform nucleus", False, "LN"),
    Region("IC", "internal capsule", False, "InCa"),
    Region("I", "insular ribbon", False, "IC"),
    Region("M1", "anterior MCA cortex", True, "M1"),
    Region("M2", "MCA cortex lateral to insula", True, "M2"),
    Region("M3", "posterior MCA cortex", True, "M3"),
    Region("M4", "anterior MCA territory, supraganglionic", True, "M4"),
    Region("M5", "lateral MCA territory, supraganglionic", True, "M5"),
    Region("M6", "posterior MCA territory, supraganglionic", True, "M6"),
)
REGION_NAMES: tuple[str, ...] = tuple(r.name for r in REGIONS)
SIDES: tuple[str, ...] = ("left", "right")   # patient sides, never image sides
BACKGROUND_LABEL = 0
BRAIN_LABEL = 21
# Segmentation networks predict side-agnostic classes: 0 background, 1 other brain, 2..11 the
# regions in table order. The side comes from the model grid: x above the centre (the
# mid-sagittal plane) is the patient's left.
SEG_CLASSES = ("background", "brain", *REGION_NAMES)
SUBCORTICAL = tuple(i for i, r in enumerate(REGIONS) if not r.cortical)
CORTICAL = tuple(i for i, r in enumerate(REGIONS) if r.cortical)


def label_id(region_index: int, side: str) -> int:
    """Label value of a region on one patient side."""
    if side == "right":
        return 1 + region_index
    if side == "left":
        return 11 + region_index
    raise ValueError(f"side must be 'left' or 'right', not {side!r}")


def region_of_label(label: int) -> tuple[int, str] | None:
    """Inverse of label_id; None for background and other brain."""
    if 1 <= label <= 10:
        return label - 1, "right"
    if 11 <= label <= 20:
        return label - 11, "left"
    return None


def labels_from_classes(classes, x_index, centre_x: float):
    """Network classes -> label map, siding each voxel by its model-grid x index."""
    import numpy as np

    classes = np.asarray(classes)
    left = np.asarray(x_index) > centre_x
    other = np.where(classes == 1, BRAIN_LABEL, BACKGROUND_LABEL)
    sided = np.where(left, classes.astype(np.int16) + 9, classes.astype(np.int16) - 1)   # class r+2 -> 11+r / 1+r
    return np.where(classes >= 2, sided, other).astype(np.uint8)


def classes_from_labels(labels):
    """Label map -> side-agnostic network classes (training targets)."""
    import numpy as np

    labels = np.asarray(labels)
    out = np.where(labels == BRAIN_LABEL, 1, 0)
    out = np.where((labels >= 1) & (labels <= 10), labels + 1, out)
    out = np.where((labels >= 11) & (labels <= 20), labels - 9, out)
    return out.astype(np.uint8)
