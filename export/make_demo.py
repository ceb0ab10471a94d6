"""Make the bundled demo study (runtime/data/default_study.nii.gz): one synthetic
512 x 512 x 5 mm NCCT with a left MCA early ischemic change, on a tilted,
shifted head, as a scanner would write it.

    python -m export.make_demo --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import synth

DEMO_SEED = 424242
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runtime" / "data" / "default_study.nii.gz"


def demo_spec() -> synth.CaseSpec:
    """A fixed, moderate case: left M-territory change, 5 mm slices, real-world pose."""
    base = synth.draw_spec(DEMO_SEED, pose="scanner", lesion_rate=0.0)
    lesion = synth.Lesion(side="left", regions=("I", "M2", "M5", "L"), drop_hu=6.0, contrast_loss=0.7,
                          coverage=(0.9, 0.8, 0.6, 0.5))
    return synth.CaseSpec(**{**base.__dict__, "lesions": (lesion,), "old_infarct": None, "leukoaraiosis": 0.0,
                             "slice_mm": 5.0, "inplane_mm": 0.45, "noise_hu": 3.0,
                             "rotation_deg": (4.0, 6.0, -9.0), "shift_mm": (7.0, -5.0, 3.0)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    phantom = synth.load_phantom(args.shared)
    spec = demo_spec()
    case = synth.make_case(phantom, spec)
    grid, shape = synth.scanner_grid(spec)
    hu, _ = synth.render(phantom, case, grid, shape, with_labels=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    synth.write_study(args.out, hu, grid)
    truth = {"aspects": case.aspects, "affected": {k: v for k, v in case.affected.items() if any(v)},
             "core_fraction": {k: [round(x, 3) for x in v] for k, v in case.core_fraction.items() if any(v)},
             "pose": {"rotation_deg": spec.rotation_deg, "shift_mm": spec.shift_mm}, "seed": DEMO_SEED}
    args.out.with_name("default_study_truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    print(json.dumps(truth))


if __name__ == "__main__":
    main()
