"""Make the bundled demo study (runtime/data/default_study.nii.gz): one synthetic
512 x 512 x 5 mm NCCT with a left MCA early ischemic change, on a tilted,
shifted head, as a scanner would write it.

    python -m export.make_demo --shared ../shared/data

The demo's truth must not hang on how the regions are drawn. The synthetic
generator draws ASPECTS regions as the MNI atlas does; the experts (and so the
runtime, whose atlas is fused from their maps) draw the M regions as a cortical
ribbon and the basal ganglia a little differently. A lesion whose core is 40 %
of the experts' M3 but 2 % of the MNI atlas's M3 (the old demo's) has two
truths. So the lesion is the first drawn (a fixed seed sequence) that affects
three or more regions and the same regions in both drawings, with no region
near the 10 % cut in either (a borderline region has no clear truth either).
The selection looks at the two truths only, never at what the runtime scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from runtime.errors import exit_code_of
from runtime.regions import REGION_NAMES
from runtime.shipped import DEFAULT_MODEL_DIR, DEFAULT_STUDY

from . import synth

DEMO_SEED = 424242
MAX_CANDIDATES = 200
MIN_REGIONS = 3               # a visible, multi-region stroke
CLEAR_OF_CUT = 0.05           # no region's core fraction within this of the paper's 10 % cut, in either drawing


def demo_spec(lesion: synth.Lesion) -> synth.CaseSpec:
    """A fixed, moderate case: 6 HU left M-territory change, 5 mm slices, real-world pose."""
    base = synth.draw_spec(DEMO_SEED, pose="scanner", lesion_rate=0.0)
    return synth.CaseSpec(**{**base.__dict__, "lesions": (lesion,), "old_infarct": None, "leukoaraiosis": 0.0,
                             "slice_mm": 5.0, "inplane_mm": 0.45, "noise_hu": 3.0,
                             "rotation_deg": (4.0, 6.0, -9.0), "shift_mm": (7.0, -5.0, 3.0)})


def candidate_case(phantom: synth.Phantom, k: int) -> synth.Case:
    """Candidate k: a left lesion drawn as the synthetic studies draw theirs, at a fixed 6 HU."""
    drawn = synth.draw_lesion(np.random.default_rng(DEMO_SEED + k), "left")
    lesion = synth.Lesion(side="left", regions=drawn.regions, drop_hu=6.0, contrast_loss=0.7, coverage=drawn.coverage)
    return synth.make_case(phantom, demo_spec(lesion))


def clear_truth(case: synth.Case, expert_labels: np.ndarray) -> dict | None:
    """The case's truth in the experts' drawing (`expert_labels`, on the phantom's grid) when it names
    the same regions as the MNI drawing's, none near the cut, and at least MIN_REGIONS; else None."""
    expert = synth.truth_in_regions(case.core, expert_labels)
    same = all(case.affected[r] == expert[r][0] for r in REGION_NAMES)
    fractions = [f for r in REGION_NAMES for f in (*case.core_fraction[r], *expert[r][1])]
    clear = all(abs(f - synth.AFFECTED_FRACTION) >= CLEAR_OF_CUT for f in fractions)
    big_enough = sum(a[0] + a[1] for a in case.affected.values()) >= MIN_REGIONS
    return expert if same and clear and big_enough else None


def demo_case(phantom: synth.Phantom, expert_labels: np.ndarray) -> tuple[synth.Case, dict, int]:
    """The first candidate with one clear truth; also that truth in the experts' drawing, and k."""
    for k in range(MAX_CANDIDATES):
        case = candidate_case(phantom, k)
        expert = clear_truth(case, expert_labels)
        if expert is not None:
            return case, expert, k
    raise RuntimeError(f"no demo lesion among {MAX_CANDIDATES} candidates has one clear truth in both drawings")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--out", type=Path, default=DEFAULT_STUDY)
    args = p.parse_args(argv)
    phantom = synth.load_phantom(args.shared)
    case, expert, k = demo_case(phantom, synth.expert_regions(phantom, args.models / "region_atlas.npz"))
    spec = case.spec
    grid, shape = synth.scanner_grid(spec)
    hu, _ = synth.render(phantom, case, grid, shape, with_labels=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    synth.write_study(args.out, hu, grid)
    lesion = spec.lesions[0]
    truth = {"aspects": case.aspects, "side": lesion.side,
             "affected": {k: v for k, v in case.affected.items() if any(v)},
             "core_fraction": {k: [round(x, 3) for x in v] for k, v in case.core_fraction.items() if any(v)},
             "core_fraction_expert_regions": {r: [round(x, 3) for x in f] for r, (_, f) in expert.items() if any(f)},
             "lesion": {"regions": lesion.regions, "drop_hu": lesion.drop_hu, "contrast_loss": lesion.contrast_loss,
                        "coverage": [round(c, 3) for c in lesion.coverage], "candidate": k},
             "pose": {"rotation_deg": spec.rotation_deg, "shift_mm": spec.shift_mm}, "seed": DEMO_SEED}
    args.out.with_name("default_study_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(json.dumps(truth))


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
