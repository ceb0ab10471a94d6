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
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from runtime.align import align
from runtime.errors import OutputExists, UnreadableInput, exit_code_of, named
from runtime.output import make_folder
from runtime.patches import build_batch, host_pairs
from runtime.preprocess import preprocess
from runtime.read import read_study
from runtime.regions import REGION_NAMES
from runtime.resample import resample
from runtime.volume import block_mean

from .config import CLASSIFIER_CROP, FINE_STRIDE, WINDOW, grid_spec

HYPODENSE_HU = (0.0, 70.0)     # the authors' attention target: the region's tissue in this range


def affected_of(case: Path) -> set[str]:
    """The case's labels.json: region-sides named "left M2", "right I", ..."""
    try:
        names = json.loads((case / "labels.json").read_text()).get("affected", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise UnreadableInput(f"{case}: labels.json must hold {{\"affected\": [...]}} ({exc})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UnreadableInput(f"{case}: labels.json's affected must be a list of names like \"left M2\"")
    unknown = set(names) - {f"{s} {r}" for s in ("left", "right") for r in REGION_NAMES}
    if unknown:
        raise UnreadableInput(f"{case}: unknown region names {sorted(unknown)} (e.g. \"left M2\", \"right IC\")")
    return set(names)


def case_folders(folder: Path) -> list[Path]:
    """Every case, each with its three files and a readable labels.json, before any is ingested."""
    if not folder.is_dir():
        raise UnreadableInput(f"{folder}: no such folder")
    cases = sorted(d for d in folder.iterdir() if (d / "image.nii.gz").exists())
    if not cases:
        raise UnreadableInput(f"{folder}: no case folders with image.nii.gz in it")
    for case in cases:
        if not (case / "regions.nii.gz").exists():
            raise UnreadableInput(f"{case}: no regions.nii.gz beside its image")
        affected_of(case)
    return cases


def ingest_case(folder: Path) -> dict:
    study = read_study(folder / "image.nii.gz")
    try:
        regions = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "regions.nii.gz"))).astype(np.uint8)
    except RuntimeError as exc:
        raise UnreadableInput(f"regions.nii.gz is not a readable label map ({exc})") from None
    if regions.shape != study.hu.shape:
        raise UnreadableInput(f"regions {regions.shape[::-1]} and image {study.hu.shape[::-1]} voxels differ: "
                              f"the label map must lie on its image's grid")
    affected_names = affected_of(folder)
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
    p.add_argument("--out", type=Path, required=True, help="a new folder (a training folder holds one dataset)")
    args = p.parse_args(argv)
    cases = case_folders(args.folder)
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise OutputExists(f"{args.out} exists and is not empty: ingest into a new folder, so that training "
                           f"never reads two datasets' cases as one")
    # Cases are written to a hidden sibling and the folder appears whole, or not at all.
    partial = args.out.parent / f".{args.out.name}.partial-{os.getpid()}"
    make_folder(partial)
    try:
        for i, case in enumerate(cases):
            with named(f"case {case.name}"):
                np.savez_compressed(partial / f"case_{i:05d}.npz", **ingest_case(case))
            print(f"{case.name} -> case_{i:05d}.npz", flush=True)
        if args.out.exists():
            args.out.rmdir()
        partial.rename(args.out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
