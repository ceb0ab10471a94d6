"""The paper's ground-truth rule from CT perfusion, as a command.

Ischemic core = voxels whose CBF is below 30 % of the mirrored contralateral
CBF (smoothed); a region is affected when the core covers >= 10 % of it.
Inputs share one grid whose x-centre is the mid-sagittal plane (the runtime's
model grid, or any symmetric-aligned export), labels in runtime.regions order.

    python -m export.ctp_label --cbf cbf.nii.gz --regions regions.nii.gz --out labels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from runtime.errors import OutputExists, OutputUnwritable, UnreadableInput, exit_code_of
from runtime.regions import BRAIN_LABEL, REGION_LABELS, REGION_NAMES, SIDES, label_id
from runtime.score import aspects_per_side

RCBF_CORE = 0.30
AFFECTED_FRACTION = 0.10


def core_mask(cbf: np.ndarray, brain: np.ndarray, smooth_voxels: float = 2.0) -> np.ndarray:
    """rCBF < 30 % of the x-mirrored (contralateral) side, inside the brain."""
    contra = ndimage.gaussian_filter(np.where(brain, cbf, 0.0), smooth_voxels)[:, :, ::-1]
    weight = ndimage.gaussian_filter(brain.astype(float), smooth_voxels)[:, :, ::-1]
    contra = contra / np.maximum(weight, 1e-6)
    return brain & (contra > 0) & (cbf < RCBF_CORE * contra)


def region_labels(cbf: np.ndarray, labels: np.ndarray) -> dict:
    core = core_mask(cbf.astype(float), labels > 0)
    out = {}
    for r, name in enumerate(REGION_NAMES):
        for side in SIDES:
            region = labels == label_id(r, side)
            frac = float((core & region).sum() / region.sum()) if region.any() else None
            out[f"{side} {name}"] = {"core_fraction": frac,
                                     "affected": bool(frac is not None and frac >= AFFECTED_FRACTION)}
    table = [[out[f"{side} {name}"]["affected"] for side in SIDES] for name in REGION_NAMES]
    left, right = (int(v) for v in aspects_per_side(table))
    return {"regions": out, "aspects_left": left, "aspects_right": right, "aspects": min(left, right)}


def read_array(path: Path, what: str) -> np.ndarray:
    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise UnreadableInput(f"{path}: not a readable {what} ({str(exc).strip().splitlines()[-1]})") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cbf", type=Path, required=True)
    p.add_argument("--regions", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.out.exists():
        raise OutputExists(f"{args.out} exists; not overwriting it")
    cbf = read_array(args.cbf, "CBF map")
    labels = read_array(args.regions, "region map")
    if cbf.shape != labels.shape:
        raise UnreadableInput(f"CBF {cbf.shape[::-1]} and region map {labels.shape[::-1]} voxels: they must share "
                              f"one grid")
    if labels.min() < 0 or labels.max() > BRAIN_LABEL or not np.isin(labels, REGION_LABELS).any():
        raise UnreadableInput(f"{args.regions}: no ASPECTS regions in runtime.regions numbering (1-10 right, "
                              f"11-20 left, {BRAIN_LABEL} other brain)")
    result = region_labels(cbf, labels)
    partial = args.out.with_name(f".{args.out.name}.partial")
    try:
        partial.write_text(json.dumps(result, indent=2) + "\n")
        partial.replace(args.out)
    except OSError as exc:
        raise OutputUnwritable(f"{args.out}: cannot write it ({exc.strerror})") from None
    print(f"ASPECTS from CTP: {result['aspects']}")


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
