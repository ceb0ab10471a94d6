"""Turn your own labelled studies into training cases (the layout export.dataset writes).

Folder layout, one sub-folder per case:

    my_data/
      case001/
        image.nii.gz      NCCT in HU (NIfTI, MHA or NRRD; any orientation)
        regions.nii.gz    ASPECTS region label map on the same grid, runtime.regions convention
                          (1..10 = C, L, IC, I, M1..M6 on the patient's right, 11..20 on the left)
        labels.json       {"affected": ["left M2", "left I"]}  (regions not listed are unaffected)

Each case is read, aligned, resampled, skull-stripped, windowed and cut into patch pairs by the
runtime's own code, so training sees what inference sees.

    python -m export.ingest my_data --out build/data/mine
    python -m export.train segment --data build/data/mine
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from runtime.align import align
from runtime.patches import build_batch, host_pairs
from runtime.preprocess import preprocess
from runtime.read import read_study
from runtime.regions import REGION_NAMES
from runtime.resample import resample
from runtime.volume import block_mean

from .config import CLASSIFIER_CROP, FINE_STRIDE, WINDOW, grid_spec

HYPODENSE_HU = (0.0, 70.0)     # the authors' attention target: the region's tissue in this range


def ingest_case(folder: Path) -> dict:
    study = read_study(folder / "image.nii.gz")
    regions = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "regions.nii.gz"))).astype(np.uint8)
    if regions.shape != study.hu.shape:
        raise ValueError(f"{folder}: regions {regions.shape} and image {study.hu.shape} differ")
    affected_names = set(json.loads((folder / "labels.json").read_text()).get("affected", []))
    unknown = affected_names - {f"{s} {r}" for s in ("left", "right") for r in REGION_NAMES}
    if unknown:
        raise ValueError(f"{folder}: unknown region names {sorted(unknown)}")
    alignment = align(study)
    prep = preprocess(study, alignment, grid_spec(), WINDOW)
    hu, image = prep.hu, prep.image
    labels = resample(study, alignment, prep.grid, volume=regions, nearest=True).astype(np.uint8)
    pairs = host_pairs(build_batch(image, labels, REGION_NAMES, CLASSIFIER_CROP))
    hypodense = ((hu >= HYPODENSE_HU[0]) & (hu < HYPODENSE_HU[1])).astype(np.float32)
    hypo = host_pairs(build_batch(hypodense, labels, REGION_NAMES, CLASSIFIER_CROP))[:, :, 0] > 0.5
    affected = np.array([[f"left {r}" in affected_names, f"right {r}" in affected_names] for r in REGION_NAMES])
    hypo &= pairs[:, :, 1] > 0.5
    hypo &= affected[:, :, None, None, None]
    f = FINE_STRIDE
    return {"image1": block_mean(image, f).astype(np.float16),
            "labels1": labels[:, f // 2::f, f // 2::f], "pairs": pairs.astype(np.float16), "hypo": hypo,
            "affected": affected, "fractions": np.full((10, 2), np.nan, np.float32)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = sorted(d for d in args.folder.iterdir() if (d / "image.nii.gz").exists())
    if not cases:
        raise SystemExit(f"error: no case folders with image.nii.gz in {args.folder}")
    for i, d in enumerate(cases):
        np.savez_compressed(args.out / f"case_{i:05d}.npz", **ingest_case(d))
        print(f"{d.name} -> case_{i:05d}.npz")


if __name__ == "__main__":
    main()
