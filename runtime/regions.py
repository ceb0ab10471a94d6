"""The one table of ASPECTS regions, label ids and sides.

Label map convention used by every model and report in this project:
0 background, 1..10 regions on the patient's RIGHT, 11..20 the same regions on
the patient's LEFT (order of REGIONS), 21 other brain tissue. Every other module
takes these numbers from here (the CUDA kernels through cuda_defines()).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str        # ASPECTS name
    title: str       # human-readable
    cortical: bool   # M1-M6 are cortical; C, L, IC, I are subcortical (DA-Net model split)
    level: str       # the ASPECTS level it is read on: "ganglionic" or "supraganglionic"
    atlas_key: str   # file stem in the MNI152 region-mask atlas (shared/data/atlas)
    rgb: tuple[int, int, int]   # its outline on the key images, its display colour in the SEG


REGIONS: tuple[Region, ...] = (
    Region("C", "caudate", False, "ganglionic", "C", (230, 159, 0)),
    Region("L", "lentiform nucleus", False, "ganglionic", "LN", (86, 180, 233)),
    Region("IC", "internal capsule", False, "ganglionic", "InCa", (0, 158, 115)),
    Region("I", "insular ribbon", False, "ganglionic", "IC", (240, 228, 66)),
    Region("M1", "anterior MCA cortex", True, "ganglionic", "M1", (0, 114, 178)),
    Region("M2", "MCA cortex lateral to insula", True, "ganglionic", "M2", (204, 121, 167)),
    Region("M3", "posterior MCA cortex", True, "ganglionic", "M3", (170, 255, 195)),
    Region("M4", "anterior MCA territory, supraganglionic", True, "supraganglionic", "M4", (255, 215, 180)),
    Region("M5", "lateral MCA territory, supraganglionic", True, "supraganglionic", "M5", (128, 128, 255)),
    Region("M6", "posterior MCA territory, supraganglionic", True, "supraganglionic", "M6", (190, 190, 190)),
)
N_REGIONS = len(REGIONS)
AFFECTED_RGB = (255, 30, 30)   # an affected region, on the key images and in the SEG
REGION_NAMES: tuple[str, ...] = tuple(r.name for r in REGIONS)
SIDES: tuple[str, ...] = ("left", "right")   # patient sides, never image sides
BACKGROUND_LABEL = 0
RIGHT_FIRST_LABEL = 1
LEFT_FIRST_LABEL = RIGHT_FIRST_LABEL + N_REGIONS       # 11
BRAIN_LABEL = LEFT_FIRST_LABEL + N_REGIONS             # 21
REGION_LABELS = tuple(range(RIGHT_FIRST_LABEL, BRAIN_LABEL))
# Segmentation networks predict side-agnostic classes: 0 background, 1 other brain, 2..11 the
# regions in table order. The side comes from the model grid: x above the centre (the
# mid-sagittal plane) is the patient's left.
SEG_CLASSES = ("background", "brain", *REGION_NAMES)
BRAIN_CLASS = SEG_CLASSES.index("brain")
FIRST_REGION_CLASS = SEG_CLASSES.index(REGION_NAMES[0])
SUBCORTICAL = tuple(i for i, r in enumerate(REGIONS) if not r.cortical)
CORTICAL = tuple(i for i, r in enumerate(REGIONS) if r.cortical)
SUPRAGANGLIONIC = tuple(i for i, r in enumerate(REGIONS) if r.level == "supraganglionic")
# Regions that touch on one side (the MCA territory is contiguous: an infarct spreads to neighbours).
# The density rule pools evidence over them (runtime.score); the synthetic lesions grow along them.
NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "C": ("L", "IC", "M1", "M4"), "L": ("C", "IC", "I"), "IC": ("C", "L"), "I": ("L", "M2", "M1", "M3"),
    "M1": ("I", "M2", "M4", "C"), "M2": ("I", "M1", "M3", "M5"), "M3": ("I", "M2", "M6"),
    "M4": ("M1", "M5", "C"), "M5": ("M2", "M4", "M6"), "M6": ("M3", "M5"),
}


def label_id(region_index: int, side: str) -> int:
    """Label value of a region on one patient side."""
    if side == "right":
        return RIGHT_FIRST_LABEL + region_index
    if side == "left":
        return LEFT_FIRST_LABEL + region_index
    raise ValueError(f"side must be 'left' or 'right', not {side!r}")


def is_region(labels):
    """True where a label map holds one of the 20 region-side labels."""
    return (labels >= RIGHT_FIRST_LABEL) & (labels < BRAIN_LABEL)


def swap_sides(labels):
    """The same regions with left and right ids exchanged (for an x-mirrored label map)."""
    import numpy as np

    labels = np.asarray(labels)
    right = (labels >= RIGHT_FIRST_LABEL) & (labels < LEFT_FIRST_LABEL)
    left = (labels >= LEFT_FIRST_LABEL) & (labels < BRAIN_LABEL)
    out = labels.copy()
    out[right] = labels[right] + N_REGIONS
    out[left] = labels[left] - N_REGIONS
    return out


def labels_from_classes(classes, x_index, centre_x: float):
    """Network classes -> label map, siding each voxel by its model-grid x index."""
    import numpy as np

    classes = np.asarray(classes).astype(np.int16)
    left = np.asarray(x_index) > centre_x
    other = np.where(classes == BRAIN_CLASS, BRAIN_LABEL, BACKGROUND_LABEL)
    region = classes - FIRST_REGION_CLASS
    sided = np.where(left, LEFT_FIRST_LABEL + region, RIGHT_FIRST_LABEL + region)
    return np.where(classes >= FIRST_REGION_CLASS, sided, other).astype(np.uint8)


def classes_from_labels(labels):
    """Label map -> side-agnostic network classes (training targets)."""
    import numpy as np

    labels = np.asarray(labels).astype(np.int16)
    out = np.where(labels == BRAIN_LABEL, BRAIN_CLASS, 0)
    right = (labels >= RIGHT_FIRST_LABEL) & (labels < LEFT_FIRST_LABEL)
    left = (labels >= LEFT_FIRST_LABEL) & (labels < BRAIN_LABEL)
    out = np.where(right, labels - RIGHT_FIRST_LABEL + FIRST_REGION_CLASS, out)
    out = np.where(left, labels - LEFT_FIRST_LABEL + FIRST_REGION_CLASS, out)
    return out.astype(np.uint8)


def cuda_defines() -> str:
    """The table's numbers for runtime/gpu/kernels.cu, which compiles with this block in front."""
    return "".join(f"#define {k} {v}\n" for k, v in (
        ("RIGHT_FIRST_LABEL", RIGHT_FIRST_LABEL), ("LEFT_FIRST_LABEL", LEFT_FIRST_LABEL),
        ("BRAIN_LABEL", BRAIN_LABEL), ("BRAIN_CLASS", BRAIN_CLASS), ("FIRST_REGION_CLASS", FIRST_REGION_CLASS)))
