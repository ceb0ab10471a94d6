"""DA-Net training cases on real heads: real texture and asymmetry, inserted lesions, the runtime's crops.

The synthetic heads are one template brain with smooth texture; a DA-Net trained on them gives real
affected regions p < 0.05 (DESIGN.md, "Real CT is the measure"). Here every case is a real file as
the runtime itself prepares it (its alignment, skull strip, model grid and atlas regions), with an
early-ischaemic lesion added to its own voxels, so the noise, texture and normal asymmetry the
network sees are real. A stroke the expert read stays positive; lesions are only added on its side,
so that no region is compared with a lesioned twin.

Leave-one-subject-out: `--exclude SUBJECT` builds the cases from every other subject, with regions
from the atlas built without SUBJECT's map, so a network trained on them never saw that subject.

    python -m export.realtexture --out build/data/realtex/sub002 --exclude sub002 --cases 160
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from runtime.cli import at_least
from runtime.cpu import CpuScorer
from runtime.errors import exit_code_of
from runtime.patches import build_batch, host_pairs
from runtime.regions import NEIGHBOURS, REGION_NAMES, SIDES, label_id
from runtime.resample import window
from runtime.strip import brain_mask

from .config import CLASSIFIER_CROP, WINDOW
from .dataset import log_case
from .npz import save_npz
from .realdata import DEV_SET, atlas_folds, fold_segmenter, load_label_order, load_reads

MIN_DROP_HU, MAX_DROP_HU = 2.0, 8.0      # 1 HU lesions are invisible in real noise: a label, not a sign
LESION_FREE = 0.2                        # share of cases with no lesion added
CORE_RULE = 0.10                         # the paper's rule: a region is affected at >= 10 % core


@dataclass(frozen=True)
class Background:
    name: str
    hu: np.ndarray          # float32 (z, y, x) model-grid HU
    brain: np.ndarray       # bool, the runtime's skull strip
    labels: np.ndarray      # the runtime's regions
    truth: np.ndarray       # (10, 2) the expert's read
    spacing: tuple[float, float, float]


def backgrounds(reads, scorer: CpuScorer, folds: dict, exclude: str | None) -> list[Background]:
    out = []
    for read in reads:
        if read.subject == exclude:
            continue
        with fold_segmenter(scorer, folds, exclude or ""):
            res = scorer.score(read.image)
        sx, sy, sz = (float(s) for s in res.grid.spacing)
        spacing = (sx, sy, sz)
        out.append(Background(read.study, res.hu, brain_mask(res.hu, spacing[0]), res.labels, read.truth(),
                              spacing))
        print(f"background {read.study}: {res.hu.shape}", flush=True)
    return out


def smooth_field(rng: np.random.Generator, shape, sigma_vox: tuple[float, float, float]) -> np.ndarray:
    """Band-limited noise made on a 4x coarser in-plane grid (cheap at 4 M voxels)."""
    f = 4
    small = rng.normal(0, 1, (shape[0], shape[1] // f + 1, shape[2] // f + 1)).astype(np.float32)
    small = ndimage.gaussian_filter(small, (sigma_vox[0], sigma_vox[1] / f, sigma_vox[2] / f))
    big = ndimage.zoom(small, (1, f, f), order=1)[:, : shape[1], : shape[2]]
    return big / (big.std() + 1e-6)


def lesion_regions(rng: np.random.Generator) -> list[str]:
    """A contiguous territory: a seed region grown through runtime.regions.NEIGHBOURS."""
    chosen = [str(rng.choice(REGION_NAMES))]
    size = int(rng.integers(1, 7))
    while len(chosen) < size:
        frontier = sorted({n for r in chosen for n in NEIGHBOURS[r]} - set(chosen))
        if not frontier:
            break
        chosen.append(str(rng.choice(frontier)))
    return chosen


def insert_lesion(bg: Background, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU with the lesion, core mask, truth (10, 2)). The lesion is what export.synth draws on the
    phantom: a blob covering part of each chosen region, grey-white contrast lost, a few HU darker."""
    hu, truth = bg.hu.copy(), bg.truth.copy()
    core = np.zeros(hu.shape, bool)
    if rng.random() < LESION_FREE:
        return hu, core, truth
    stroke_sides = [s for s in range(len(SIDES)) if truth[:, s].any()]
    s = stroke_sides[0] if stroke_sides else int(rng.integers(0, len(SIDES)))
    sz, sy, sx = bg.spacing[2], bg.spacing[1], bg.spacing[0]
    blob = smooth_field(rng, hu.shape, (6.0 / sz, 6.0 / sy, 6.0 / sx))
    for name in lesion_regions(rng):
        region = bg.labels == label_id(REGION_NAMES.index(name), SIDES[s])
        if region.sum() < 50:
            continue
        cut = np.quantile(blob[region], 1.0 - rng.uniform(0.1, 1.0))
        core |= region & (blob >= cut)
    grow = np.zeros((1, 3, 3), bool)
    grow[0] = ndimage.generate_binary_structure(2, 1)
    core = ndimage.binary_dilation(core, structure=grow, iterations=2) & bg.brain
    tissue = core & (hu > 15)
    # Local mean over soft tissue only: skull or CSF in the window would pull the cortex with them.
    soft_tissue = (bg.brain & (hu > 0) & (hu < 60)).astype(np.float32)
    w = (1, int(round(9.0 / sy)), int(round(9.0 / sx)))
    local_mean = ndimage.uniform_filter(hu * soft_tissue, w) / np.maximum(ndimage.uniform_filter(soft_tissue, w), 1e-3)
    hu[tissue] = local_mean[tissue] + (hu[tissue] - local_mean[tissue]) * (1 - rng.uniform(0.2, 0.9))
    soft = ndimage.gaussian_filter(core.astype(np.float32), (0, 1.0 / sy, 1.0 / sx))
    hu -= rng.uniform(MIN_DROP_HU, MAX_DROP_HU) * soft * bg.brain
    for r in range(len(REGION_NAMES)):
        region = bg.labels == label_id(r, SIDES[s])
        if region.any() and (core & region).sum() / region.sum() >= CORE_RULE:
            truth[r, s] = True
    return hu, core, truth


def make_case(bg: Background, seed: int, out_dir: Path) -> dict:
    rng = np.random.default_rng(seed)
    hu, core, truth = insert_lesion(bg, rng)
    image = window(hu, bg.brain, *WINDOW)
    pairs = host_pairs(build_batch(image, bg.labels, REGION_NAMES, CLASSIFIER_CROP))
    hypo = host_pairs(build_batch(core.astype(np.float32), bg.labels, REGION_NAMES, CLASSIFIER_CROP))
    save_npz(out_dir / f"case_{seed:06d}.npz", pairs=pairs.astype(np.float16), hypo=hypo[:, :, 0] > 0.5,
             affected=truth)
    return {"seed": seed, "background": bg.name, "affected": truth.sum(axis=0).tolist()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--exclude", default=None, help="subject left out (its map too): leave-one-out training")
    p.add_argument("--cases", type=at_least(1), default=160)
    p.add_argument("--seed0", type=at_least(0), default=500_000)
    p.add_argument("--data", type=Path, default=Path("../shared/data/real"))
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", type=Path, default=Path("engines"))
    args = p.parse_args(argv)
    reads = load_reads(DEV_SET / "reads.csv", args.data)
    scorer = CpuScorer(args.models)
    folds = atlas_folds(reads, load_label_order(DEV_SET / "label_order.json"), scorer, args.shared) \
        if args.exclude else {}
    bgs = backgrounds(reads, scorer, folds, args.exclude)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.cases):
        seed = args.seed0 + i
        if (args.out / f"case_{seed:06d}.npz").exists():
            continue
        log_case(args.out, make_case(bgs[i % len(bgs)], seed, args.out), i, args.cases)


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
