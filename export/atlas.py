"""Build the region atlas the runtime segments with (runtime.atlas).

The atlas is learnt from expert region maps, not drawn from the MNI atlas: on
real heads the MNI regions reach into deep white matter and cut the two ASPECTS
levels differently from how experts draw them (real-CT Dice 0.47 against 0.67
for this atlas, leave-one-out). Per expert-labelled study: the runtime's own
alignment and preprocessing, the runtime's own registration of the CT template
to it, then the expert map carried into template space by the inverse of that
transform; every map is also mirrored (left <-> right); a voxel takes the label
most maps give it, and stays unlabelled unless most maps label it.

    python -m export.atlas --shared ../shared/data --reads export/datasets/dev/reads.csv --out engines

The template is Rorden's CT template (BSD-2), unsmoothed HU version, resampled
to 2 mm; the label map is stored at 1 mm in the same (patient LPS) space.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from runtime.align import align
from runtime.atlas import RegionAtlas, grid_image, register, registration_image
from runtime.errors import UnreadableInput, UsageError, exit_code_of
from runtime.modelcard import AtlasCard, file_sha256, load_model_set, write_card
from runtime.preprocess import preprocess
from runtime.read import read_study
from runtime.regions import BRAIN_LABEL, REGION_NAMES, swap_sides
from runtime.resample import resample

from .manifest import write_manifest
from .realdata import DEV_READS, Read, expert_map_of, label_order_file, load_label_order, load_reads

VERSION = "0.2.0"
TEMPLATE_FILE = "template/scct_unsmooth_SS_0.01.nii.gz"
TEMPLATE_MM = 2.0
LABEL_MM = 1.0
# Template space: the MNI box, patient LPS, identity direction (runtime.atlas stores no direction).
BOX_LPS = ((-90.0, -126.0, -72.0), (90.0, 90.0, 108.0))
FILE = "region_atlas.npz"


def shared_data(shared: Path) -> Path:
    """The CT template and MNI region atlas that the synthetic heads and the region atlas are made
    from: not shipped (../shared/data/SOURCES.md), so a missing one is the user's to fetch."""
    for need in (TEMPLATE_FILE, TEMPLATE_FILE.replace(".nii.gz", "_Mask.nii.gz"), "atlas"):
        if not (shared / need).exists():
            raise UnreadableInput(f"{shared}: no {need} (the CT template and atlas are not shipped: put them "
                                  f"there as SOURCES.md lists, or give --shared)")
    return shared


def template_image(shared: Path) -> sitk.Image:
    return _to_box(sitk.ReadImage(str(shared / TEMPLATE_FILE), sitk.sitkFloat32), TEMPLATE_MM, sitk.sitkLinear)


def _to_box(image: sitk.Image, mm: float, interpolator) -> sitk.Image:
    lo, hi = np.array(BOX_LPS[0]), np.array(BOX_LPS[1])
    size = [int(v) for v in np.floor((hi - lo) / mm) + 1]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, lo.tolist(), (mm, mm, mm),
                         (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, image.GetPixelID())


def label_reference() -> sitk.Image:
    ref = sitk.Image(1, 1, 1, sitk.sitkUInt8)
    return _to_box(ref, LABEL_MM, sitk.sitkNearestNeighbor)


def map_in_template_space(read: Read, order: dict[int, int], template: sitk.Image, spec, window) -> np.ndarray:
    """One expert map carried into template space through the runtime's own alignment and registration."""
    study = read_study(read.image)
    alignment = align(study)
    prep = preprocess(study, alignment, spec, window)
    transform = register(registration_image(prep), template)
    expert = expert_map_of(read, study, order)
    on_grid = resample(study, alignment, prep.grid, volume=expert, nearest=True)
    moving = grid_image(on_grid, prep.grid.spacing, prep.grid.origin)
    out = sitk.Resample(moving, label_reference(), transform.GetInverse(), sitk.sitkNearestNeighbor, 0,
                        sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def mirrored(labels: np.ndarray) -> np.ndarray:
    """Left <-> right: flip x through x = 0 (the box is symmetric about it) and swap the sides' ids."""
    return swap_sides(labels[:, :, ::-1])


def fuse(maps: list[np.ndarray]) -> np.ndarray:
    """Majority vote over the maps and their mirrors."""
    stack = np.stack([m for lab in maps for m in (lab, mirrored(lab))])
    counts = np.stack([(stack == v).sum(axis=0) for v in range(BRAIN_LABEL)])
    labels = counts[1:].argmax(axis=0).astype(np.uint8) + 1
    labels[counts[1:].sum(axis=0) * 2 <= len(stack)] = 0
    return labels


def atlas_arrays(template: sitk.Image, labels: np.ndarray) -> dict[str, np.ndarray]:
    ref = label_reference()
    return {"template": np.round(sitk.GetArrayFromImage(template)).astype(np.int16),
            "template_spacing": np.array(template.GetSpacing()), "template_origin": np.array(template.GetOrigin()),
            "labels": labels, "labels_spacing": np.array(ref.GetSpacing()),
            "labels_origin": np.array(ref.GetOrigin())}


def in_memory_atlas(template: sitk.Image, labels: np.ndarray) -> RegionAtlas:
    """An atlas that never touches disk (leave-one-out folds in export.evaluate)."""
    lab = sitk.GetImageFromArray(labels)
    lab.CopyInformation(label_reference())
    t = sitk.GetImageFromArray(np.round(sitk.GetArrayFromImage(template)).astype(np.float32))
    t.CopyInformation(template)
    card = AtlasCard(path=Path("<memory>"), name="fold", version=VERSION, role="segment_atlas", onnx=Path(),
                     sha256="")
    return RegionAtlas(card=card, template=t, labels=lab)


def write_atlas(out: Path, arrays: dict, reads: list[Read], shared: Path, metrics: dict | None = None) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (out / FILE).write_bytes(buf.getvalue())
    card = {
        "name": "aspects-region-atlas", "version": VERSION, "role": "segment_atlas", "file": FILE,
        "sha256": file_sha256(out / FILE),
        "method": "affine registration (runtime.atlas.register) of the CT template to the skull-stripped model "
                  "grid; nearest-neighbour label warp; majority vote of expert maps and their mirrors",
        "regions": list(REGION_NAMES),
        "template": {"source": "Rorden's CT template, unsmoothed, skull-stripped, HU (neurolabusc/Clinical, "
                               "BSD-2; as redistributed in muschellij2/ichseg)", "spacing_mm": TEMPLATE_MM,
                     "sha256_source": hashlib.sha256((shared / TEMPLATE_FILE).read_bytes()).hexdigest()},
        "training": {"expert_maps": [{"study": r.study, "image": r.image.name, "map": r.expert_map().name,
                                      "sha256": file_sha256(r.expert_map())} for r in reads],
                     "source": "public release simonsf/ct-aspects (data/): real NCCT with expert region maps "
                               "on the two ASPECTS levels; maps mirrored left <-> right",
                     "label_spacing_mm": LABEL_MM},
        "provenance": "Region labels learnt from three real NCCT studies' expert maps (simonsf/ct-aspects) in "
                      "the space of a public CT template; no synthetic data. Research use only.",
        "metrics": metrics or {},
    }
    path = out / "region_atlas.json"
    write_card(path, card)
    write_manifest(out)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--reads", type=Path, default=DEV_READS)
    p.add_argument("--label-order", type=Path, default=None,
                   help="the maps' label order (default: the development set's, for its reads file only)")
    p.add_argument("--out", type=Path, default=Path("engines"))
    args = p.parse_args(argv)
    shared_data(args.shared)
    models = load_model_set(args.out)
    reads = [r for r in load_reads(args.reads, args.shared / "real") if r.map is not None]
    order_file = label_order_file(args.reads, args.label_order)
    if order_file is None:
        raise UsageError(f"{args.reads} is not the development set: give its maps' --label-order file")
    order = load_label_order(order_file)
    template = template_image(args.shared)
    maps = [map_in_template_space(r, order, template, models.grid, models.window) for r in reads]
    print(write_atlas(args.out, atlas_arrays(template, fuse(maps)), reads, args.shared))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
