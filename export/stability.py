"""Does a real study's score hold when the head is posed, mirrored or reconstructed differently?

    python -m export.evaluate stability --loo    # the development set, leave-one-subject-out atlases

Each study of a reads file is scored as read and in variants made from its own
voxels: turned in-plane (yaw, the commonest head rotation on the table, exact
to resample on 0.4 mm pixels; tilt is not made, since 5 mm slices cannot be
re-sliced faithfully), and mirrored left to right (the stroke, and every normal
asymmetry, moves to the other hemisphere: the truth's side swaps). Nothing is
fitted: the variants only ask whether the runtime's answer depends on the pose
or on which hemisphere the atlas sees first. Four more stand in for another scanner: a softer
reconstruction kernel (in-plane Gaussian blur), a noisier one (lower dose or sharper kernel:
added noise, correlated in-plane like a reconstruction's, from a fixed seed), and CT numbers
4 HU high or low (the usual tolerance on water; the parenchyma window, the atlas fit and the
DA-Net all see absolute HU), since the studies that will check generalisation come from scanners the
development set did not.
Results go to build/eval/stability/.
The command line is export.evaluate's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from runtime.cpu import CpuScorer
from runtime.read import Study, read_study
from runtime.regions import SIDES

from .realdata import Read, fold_segmenter

AIR_HU = -1000.0
NOISE_SEED = 0


@dataclass(frozen=True)
class Variant:
    name: str
    yaw_deg: float = 0.0
    mirrored: bool = False
    blur_mm: float = 0.0       # in-plane Gaussian sigma: a softer kernel
    noise_hu: float = 0.0      # SD of the noise added to the head: a lower dose or a sharper kernel
    offset_hu: float = 0.0     # every voxel shifted: a scanner's CT numbers off by its calibration tolerance


VARIANTS = (Variant("as read"), Variant("yaw -12", yaw_deg=-12.0), Variant("yaw +12", yaw_deg=12.0),
            Variant("mirrored", mirrored=True), Variant("mirrored, yaw +8", yaw_deg=8.0, mirrored=True),
            Variant("softer kernel", blur_mm=0.75), Variant("noisier", noise_hu=3.0),
            Variant("HU +4", offset_hu=4.0), Variant("HU -4", offset_hu=-4.0))


def varied(study: Study, variant: Variant) -> Study:
    """The study's voxels turned in-plane about the slice centre and/or mirrored along the voxel axis
    closest to patient left-right, blurred or made noisier; the geometry (affine) is kept, so the
    head moves in the scanner."""
    hu = study.hu
    if variant.mirrored:
        hu = np.flip(hu, axis=_left_right_axis(study.affine))
    if variant.yaw_deg:
        hu = ndimage.rotate(hu, variant.yaw_deg, axes=(2, 1), reshape=False, order=1, mode="constant",
                            cval=AIR_HU)
    sx, sy, _ = study.spacing
    if variant.blur_mm:
        hu = ndimage.gaussian_filter(hu, sigma=(0.0, variant.blur_mm / sy, variant.blur_mm / sx))
    if variant.noise_hu:
        # White noise blurred by 0.5 mm in-plane, then scaled back to the SD asked for; air stays air,
        # so the head's outline (alignment, skull strip) is the study's own.
        noise = np.random.default_rng(NOISE_SEED).standard_normal(hu.shape).astype(np.float32)
        noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.5 / sy, 0.5 / sx))
        hu = np.where(hu > -500.0, hu + noise * (variant.noise_hu / noise.std()), hu)
    if variant.offset_hu:
        hu = hu + np.float32(variant.offset_hu)
    return replace(study, hu=np.ascontiguousarray(hu, dtype=np.float32), source=f"{study.source} ({variant.name})")


def _left_right_axis(affine: np.ndarray) -> int:
    """The (z, y, x) array axis whose voxel step moves most along patient x (LPS left-right)."""
    ijk = int(np.argmax(np.abs(affine[0, :3])))    # 0 = i (x), 1 = j (y), 2 = k (z)
    return 2 - ijk


def as_read_side(side: str, variant: Variant) -> str:
    """A call's side in the study as read: a mirrored variant's left is the original's right."""
    return SIDES[1 - SIDES.index(side)] if variant.mirrored else side


def expected(read: Read, variant: Variant) -> tuple[int, str | None, frozenset[str]]:
    side = read.side
    if variant.mirrored and side:
        side = SIDES[1 - SIDES.index(side)]
    return read.aspects, side, read.affected


def run(reads: list[Read], scorer: CpuScorer, folds: dict, scorers: dict[str, CpuScorer] | None = None) -> list[dict]:
    """`folds`: leave-one-out atlases; `scorers`: a subject's own model set (networks that never saw it)."""
    rows = []
    for read in reads:
        study = read_study(read.image)
        subject_scorer = (scorers or {}).get(read.subject, scorer)
        as_read: dict = {}
        for variant in VARIANTS:
            with fold_segmenter(subject_scorer, folds, read.subject):
                res = subject_scorer.score(varied(study, variant))
            aspects, side, affected = expected(read, variant)
            called = {(c.region, c.side) for c in res.score.calls if c.affected}
            truth = {(r, side) for r in affected}
            calls = {(c.region, as_read_side(c.side, variant)): c for c in res.score.calls}
            as_read = as_read or calls          # VARIANTS[0] is the study as read
            changed = [k for k, c in calls.items() if c.affected != as_read[k].affected]
            rows.append({"study": read.study, "variant": variant.name, "expert": aspects, "expert_side": side,
                         "auto": res.score.aspects, "auto_side": res.score.symptomatic_side,
                         "within_1": abs(res.score.aspects - aspects) <= 1,
                         "side_ok": side is None or res.score.symptomatic_side == side,
                         "found": len(called & truth), "false": sorted(f"{s} {r}" for r, s in called - truth),
                         "changed": sorted(f"{s} {r}" for r, s in changed),
                         "changed_borderline": sum(calls[k].borderline or as_read[k].borderline for k in changed)})
            print(f"{read.study} {variant.name}: expert {aspects} {side or ''} auto {res.score.aspects} "
                  f"{res.score.symptomatic_side or ''} ({', '.join(res.score.affected) or 'none'})", flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    n = len(rows)
    return {"scorings": n, "within_1": sum(r["within_1"] for r in rows) / n,
            "side_correct": sum(r["side_ok"] for r in rows) / n,
            "false_regions_per_scoring": sum(len(r["false"]) for r in rows) / n,
            "calls_changed": sum(len(r["changed"]) for r in rows),
            "calls_changed_borderline": sum(r["changed_borderline"] for r in rows),
            "score_range_per_study": {s: [min(r["auto"] for r in rows if r["study"] == s),
                                          max(r["auto"] for r in rows if r["study"] == s)]
                                      for s in dict.fromkeys(r["study"] for r in rows)}}


def table_text(rows: list[dict], total: dict) -> str:
    lines = ["| study | variant | expert | runtime | found | false regions | calls changed from as read |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['study']} | {r['variant']} | {r['expert']} {r['expert_side'] or ''} | "
                     f"{r['auto']} {r['auto_side'] or ''} | {r['found']} | {', '.join(r['false']) or '-'} | "
                     f"{', '.join(r['changed']) or '-'} |")
    lines.append("")
    lines.append(f"within +-1: {total['within_1']:.2f}; side correct: {total['side_correct']:.2f}; "
                 f"false regions per scoring: {total['false_regions_per_scoring']:.2f}; "
                 f"score range per study: {total['score_range_per_study']}")
    lines.append(f"calls changed from the study as read: {total['calls_changed']}, of which reported borderline "
                 f"in either scoring: {total['calls_changed_borderline']}")
    return "\n".join(lines)
