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
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from runtime.regions import REGION_NAMES, SIDES, label_id
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cbf", type=Path, required=True)
    p.add_argument("--regions", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; not overwriting it")
    cbf = sitk.GetArrayFromImage(sitk.ReadImage(str(args.cbf)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(args.regions)))
    if cbf.shape != labels.shape:
        raise SystemExit(f"error: CBF {cbf.shape} and region map {labels.shape} are on different grids")
    result = region_labels(cbf, labels)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ASPECTS from CTP: {result['aspects']}")


if __name__ == "__main__":
    main()
