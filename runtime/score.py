"""ASPECTS from per-region calls: 10 minus affected regions, per hemisphere.

The reported score is the symptomatic hemisphere's (the lower of the two, as in
the paper); the dichotomy ASPECTS > 6 vs <= 6 is the thrombectomy threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from .regions import REGION_NAMES, SIDES

DICHOTOMY_CUT = 6


@dataclass(frozen=True)
class RegionCall:
    region: str
    side: str                    # patient side
    probability: float | None    # None when the region was not found on this study
    affected: bool
    assessed: bool


@dataclass(frozen=True)
class Score:
    left: int
    right: int
    aspects: int                 # the symptomatic hemisphere's score
    symptomatic_side: str | None
    above_cut: bool              # ASPECTS > 6
    calls: tuple[RegionCall, ...]

    @property
    def affected(self) -> tuple[str, ...]:
        return tuple(f"{c.side} {c.region}" for c in self.calls if c.affected)

    @property
    def not_assessed(self) -> tuple[str, ...]:
        return tuple(f"{c.side} {c.region}" for c in self.calls if not c.assessed)


def make_calls(probabilities: dict[str, tuple[float, float]], assessable: dict[str, bool],
               thresholds: dict[str, float]) -> tuple[RegionCall, ...]:
    """`probabilities[region] = (p_left, p_right)`; regions in table order."""
    calls = []
    for name in REGION_NAMES:
        for s, side in enumerate(SIDES):
            ok = assessable[name]
            p = float(probabilities[name][s]) if ok else None
            calls.append(RegionCall(name, side, p, ok and p >= thresholds[name], ok))
    return tuple(calls)


def score(calls: tuple[RegionCall, ...]) -> Score:
    per_side = {side: 10 - sum(c.affected for c in calls if c.side == side) for side in SIDES}
    left, right = per_side["left"], per_side["right"]
    if left == right == 10:
        side = None
    elif left != right:
        side = "left" if left < right else "right"
    else:   # equal deductions on both sides: the side with the stronger evidence
        weight = {s: sum(c.probability for c in calls if c.side == s and c.affected) for s in SIDES}
        side = max(SIDES, key=lambda s: weight[s])
    aspects = min(left, right)
    return Score(left=left, right=right, aspects=aspects, symptomatic_side=side,
                 above_cut=aspects > DICHOTOMY_CUT, calls=calls)
