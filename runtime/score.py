"""ASPECTS from per-region calls: 10 minus affected regions, per hemisphere.

A call comes from the contralateral density rule when the model set has one
(a region at least `threshold_hu` darker than its mirror twin, or at least
`neighbour_threshold_hu` when a neighbouring region on the same side is called:
early ischemia fills a contiguous MCA territory, so a region next to a clear
one needs less evidence). Where the rule's card enables it, the DA-Net is the
second way to that lesser evidence: a region beside a clear one, darker by at
least `network_threshold_hu`, whose probability reaches `network_probability`.
Every call that is not clear on its own sits beside one that is: neither route
chains, and the network never calls a region on its own, so its known failure on
real CT (false calls around a stroke) cannot grow a territory. Without a rule the
DA-Net decides alone, at its card's threshold. Both numbers are kept on every
call, so the report shows the evidence whichever decided, and so is whether the
call is borderline (it flips within what re-encoding the same head moves them). The reported score is
the symptomatic hemisphere's (the lower of the two, as in the paper); the
dichotomy ASPECTS > 6 vs <= 6 is the thrombectomy threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .density import RegionDensity, difference_table
from .modelcard import DensityRuleCard
from .regions import N_REGIONS, NEIGHBOURS, REGION_NAMES, SIDES

DICHOTOMY_CUT = 6
# How far the same head's evidence moves when it is encoded or cut differently: re-slicing a 12-degree
# gantry-tilted series moved region differences by up to 0.22 HU and one DA-Net probability from 0.59
# to 0.83, 1.2 in logit (tests/test_hostile.py). A call that flips within these margins is borderline.
# The probability's margin is in logit: a network output near 0.99 moves far less than one near 0.6.
BORDERLINE_HU = 0.3
BORDERLINE_LOGIT = 1.25


@dataclass(frozen=True)
class RegionCall:
    region: str
    side: str                        # patient side
    probability: float | None        # DA-Net; None when the region was not found on this study
    affected: bool
    assessed: bool
    difference_hu: float | None = None   # mean HU minus the mirror twin's (runtime.density)
    hypodense_ml: float | None = None
    decided_by: str = "network"      # "density", "density+neighbour", "density+network" or "network"
    borderline: bool = False         # the call flips within BORDERLINE_HU / BORDERLINE_LOGIT


@dataclass(frozen=True)
class Score:
    left: int
    right: int
    aspects: int                 # the symptomatic hemisphere's score
    symptomatic_side: str | None
    above_cut: bool              # ASPECTS > 6
    calls: tuple[RegionCall, ...]
    lowest: int                  # the score with every borderline and every unassessed region affected
    highest: int                 # ... and with every borderline call turned the other way

    @property
    def dichotomy_firm(self) -> bool:
        """Whether > 6 vs <= 6 holds however the borderline calls fall and whatever the regions that
        could not be assessed (outside a short scan, not found) hold."""
        return bool(above_cut(self.lowest) == above_cut(self.highest))

    @property
    def affected(self) -> tuple[str, ...]:
        return tuple(f"{c.side} {c.region}" for c in self.calls if c.affected)

    @property
    def not_assessed(self) -> tuple[str, ...]:
        return tuple(f"{c.side} {c.region}" for c in self.calls if not c.assessed)


def make_calls(probabilities: dict[str, tuple[float, float]], assessable: dict[str, bool],
               thresholds: dict[str, float], densities: tuple[RegionDensity, ...] = (),
               rule: DensityRuleCard | None = None) -> tuple[RegionCall, ...]:
    """`probabilities[region] = (p_left, p_right)`; calls in table order, left before right."""
    density = {(d.region, d.side): d for d in densities}
    if rule is not None:
        located = np.array([[assessable[n]] * len(SIDES) for n in REGION_NAMES])
        diffs = np.where(located, difference_table(densities), np.nan)      # NaN: not found or not measurable
        p_table = np.array([probabilities[n] for n in REGION_NAMES], float)
        how_table = rule_calls(diffs, p_table, rule)
        near_table = borderline_calls(diffs, p_table, rule)
    calls = []
    for r, name in enumerate(REGION_NAMES):
        for s, side in enumerate(SIDES):
            found = assessable[name]
            p = float(probabilities[name][s]) if found else None
            d = density.get((name, side))
            diff = d.difference_hu if d else None
            if rule is not None:
                ok = found and diff is not None
                affected = ok and bool(how_table[r, s])
                how, near = DECIDED_BY[how_table[r, s]], ok and bool(near_table[r, s])
            else:
                ok, how = found, "network"
                affected = p is not None and p >= thresholds[name]
                near = p is not None and abs(_logit(p) - _logit(thresholds[name])) < BORDERLINE_LOGIT
            calls.append(RegionCall(name, side, p, affected, ok, diff, d.hypodense_ml if d else None, how, near))
    return tuple(calls)


def density_calls(differences: np.ndarray, threshold_hu: float, neighbour_threshold_hu: float) -> np.ndarray:
    """The density rule on (..., 10 regions, 2 sides) differences (NaN: not measurable): affected at
    <= -threshold_hu, or at <= -neighbour_threshold_hu next to a region affected by the first test."""
    darker = _darker(differences)
    primary = darker >= threshold_hu
    return primary | (_beside(primary) & (darker >= neighbour_threshold_hu))


# How rule_calls' values read in a report (0, not called, is the density rule's answer too).
DECIDED_BY = ("density", "density", "density+neighbour", "density+network")


def rule_calls(differences: np.ndarray, probabilities: np.ndarray, rule: DensityRuleCard) -> np.ndarray:
    """The runtime's rule on (..., 10, 2) tables: 0 not called, 1 by density (clear on its own), 2 by
    density beside a clear call, 3 by the DA-Net beside a clear call (when the card enables it)."""
    primary = density_calls(differences, rule.threshold_hu, rule.threshold_hu)
    pooled = density_calls(differences, rule.threshold_hu, rule.neighbour_threshold_hu)
    how = np.where(primary, 1, np.where(pooled, 2, 0))
    if rule.network_probability is not None:
        assisted = network_calls(differences, probabilities, primary, rule.network_probability,
                                 rule.network_threshold_hu)
        how = np.where(how == 0, np.where(assisted, 3, 0), how)
    return how


def borderline_calls(differences: np.ndarray, probabilities: np.ndarray, rule: DensityRuleCard) -> np.ndarray:
    """Regions whose call changes between all the evidence moved BORDERLINE_HU darker (and the DA-Net
    BORDERLINE_LOGIT surer) and moved as far the other way. The rule is monotone in both, so these
    are exactly the calls that another encoding of the same head could turn, whether they hang on
    their own evidence or on the clear call beside them."""
    logit = _logit(np.asarray(probabilities, float))
    more = rule_calls(differences - BORDERLINE_HU, _sigmoid(logit + BORDERLINE_LOGIT), rule) > 0
    less = rule_calls(differences + BORDERLINE_HU, _sigmoid(logit - BORDERLINE_LOGIT), rule) > 0
    return more != less


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def network_calls(differences: np.ndarray, probabilities: np.ndarray, clear: np.ndarray,
                  probability: float, threshold_hu: float) -> np.ndarray:
    """Regions next to a clear density call (`clear`: the rule's first test, same side) that the DA-Net
    calls at `probability` and that are at least `threshold_hu` darker than their mirror: the
    network's evidence where the density already shows an infarct, never on its own."""
    clear = np.asarray(clear, bool)
    return (_beside(clear) & ~clear & (np.asarray(probabilities) >= probability)
            & (_darker(differences) >= threshold_hu))


def _darker(differences) -> np.ndarray:
    """How much darker than the mirror twin (HU); NaN (not measurable) is never darker."""
    return -np.nan_to_num(np.asarray(differences, float), nan=np.inf)


def _beside(calls: np.ndarray) -> np.ndarray:
    """(..., 10, 2): regions with a called neighbour on the same side (runtime.regions.NEIGHBOURS)."""
    return np.einsum("rq,...qs->...rs", _ADJACENT, calls.astype(np.int64)) > 0


_ADJACENT = np.array([[b in NEIGHBOURS[a] for b in REGION_NAMES] for a in REGION_NAMES], dtype=np.int64)


def aspects_per_side(affected) -> np.ndarray:
    """The ASPECTS arithmetic, once: `affected` (..., regions, sides) -> (..., sides) scores."""
    return N_REGIONS - np.asarray(affected, bool).sum(axis=-2)


def aspects_of(affected) -> np.ndarray:
    """The reported score: the symptomatic (lower) hemisphere's."""
    return aspects_per_side(affected).min(axis=-1)


def above_cut(scores):
    """The dichotomy, once: ASPECTS > 6 (element-wise on arrays)."""
    return np.asarray(scores) > DICHOTOMY_CUT


def score_range(affected, uncertain) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) reported ASPECTS with every uncertain call (borderline, or not assessed)
    turned affected, then turned the other way; (..., regions, sides) tables."""
    affected, uncertain = np.asarray(affected, bool), np.asarray(uncertain, bool)
    return aspects_of(affected | uncertain), aspects_of(affected & ~uncertain)


def score(calls: tuple[RegionCall, ...]) -> Score:
    table = _table(calls, "affected")
    left, right = (int(v) for v in aspects_per_side(table))
    if left == right == 10:
        side = None
    elif left != right:
        side = "left" if left < right else "right"
    else:   # equal deductions on both sides: the side with the stronger evidence
        side = max(SIDES, key=lambda s: _evidence(calls, s))
    aspects = min(left, right)
    # A region not assessed counts for nothing in the score, so it may hide a deduction: a scan that
    # stops below the supraganglionic level read ASPECTS 10, > 6, firm, with M4-M6 never looked at.
    lowest, highest = score_range(table, _table(calls, "borderline") | ~_table(calls, "assessed"))
    return Score(left=left, right=right, aspects=aspects, symptomatic_side=side,
                 above_cut=bool(above_cut(aspects)), calls=calls, lowest=int(lowest), highest=int(highest))


def _table(calls: tuple[RegionCall, ...], attr: str) -> np.ndarray:
    """(10 regions, 2 sides) of one boolean field of the calls (table order, left before right)."""
    return np.array([[bool(getattr(c, attr)) for c in calls if c.region == name] for name in REGION_NAMES])


def _evidence(calls: tuple[RegionCall, ...], side: str) -> float:
    hits = [c for c in calls if c.side == side and c.affected]
    if hits and hits[0].decided_by.startswith("density"):
        return -sum(c.difference_hu or 0.0 for c in hits)
    return sum(c.probability or 0.0 for c in hits)
