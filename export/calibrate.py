"""The density rule's values, calibrated on synthetic studies the runtime scored end to end.

    python -m export.evaluate calibrate --shared ../shared/data --n 40 --check 60
    python -m export.evaluate calibrate --troughs ...   # first the measure's sulcus filter

Each value is the lowest that keeps the whole rule within MAX_FALSE_REGIONS_PER_STUDY false
regions per study (every false region costs a point of ASPECTS), on calibration seeds no other
step uses; `--check` then scores the calibrated rule on further seeds it never saw. The values
and their provenance go into the density rule card.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.cpu import CpuScorer
from runtime.errors import ModelError
from runtime.modelcard import DensityRuleCard, update_card
from runtime.score import above_cut, aspects_of, density_calls, network_calls, rule_calls

from . import metrics as M
from .manifest import write_manifest
from .studies import CALIBRATION_SEED0, Scored, load_rows, synthetic_studies

MAX_FALSE_REGIONS_PER_STUDY = 0.1
CALIBRATED = ("threshold_hu", "neighbour_threshold_hu", "network_probability", "network_threshold_hu")
NETWORK_PROBABILITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)    # tried for the DA-Net's one hop (runtime.score)
TROUGHS = tuple((r, t) for r in (1.0, 2.0, 3.0) for t in (1.0, 2.0, 3.0, 4.0))   # (trough_mm, trough_hu) tried


def calibrate(rows: list[Scored]) -> dict:
    """The runtime rule's thresholds, from synthetic studies the runtime scored end to end (studies
    no other step saw), each step within MAX_FALSE_REGIONS_PER_STUDY false regions per study for the
    whole rule so far:
    1. the lowest density threshold, in 0.1 HU steps;
    2. the lowest neighbour threshold;
    3. the DA-Net's hop beside a clear density call: the pair of NETWORK_PROBABILITIES and HU (0.1 HU
       steps up to the neighbour threshold) with the most true calls; ties go to the higher
       probability, then the higher HU (the stricter pair); no hop when no pair within the limit
       adds a true call.
    Every false region costs a point of ASPECTS, so specificity comes first; Youden's J (reported
    too) sits where the synthetic heads' small normal asymmetry allows, well below what real heads show."""
    diffs = np.array([r.difference_hu for r in rows])
    probs = np.array([r.probability for r in rows])
    truth = np.array([r.truth for r in rows]).astype(bool)
    ev, y = -np.nan_to_num(diffs).ravel(), truth.ravel().astype(int)
    candidates = np.round(np.arange(0.5, 6.01, 0.1), 1)

    def false_rate(calls: np.ndarray) -> float:
        return float((calls & ~truth).sum() / len(rows))

    t = float(next(c for c in candidates if false_rate(density_calls(diffs, c, c)) <= MAX_FALSE_REGIONS_PER_STUDY))
    t2 = float(next(c for c in candidates
                    if c <= t and false_rate(density_calls(diffs, t, c)) <= MAX_FALSE_REGIONS_PER_STUDY))
    density, clear = density_calls(diffs, t, t2), density_calls(diffs, t, t)

    def hop(p: float, h: float) -> np.ndarray:      # what the DA-Net adds to the density calls
        return network_calls(diffs, probs, clear, p, h) & ~density

    pairs = [(p, float(h)) for p in NETWORK_PROBABILITIES for h in np.round(np.arange(0.0, t2 + 1e-9, 0.1), 1)]
    within = [(int((hop(p, h) & truth).sum()), p, h) for p, h in pairs
              if false_rate(density | hop(p, h)) <= MAX_FALSE_REGIONS_PER_STUDY]
    found, p_net, t_net = max(within, default=(0, None, 0.0))
    if not found:                # a hop that finds nothing on the calibration studies only adds risk
        p_net, t_net = None, 0.0
    calls = density if p_net is None else density | hop(p_net, t_net)
    return {"threshold_hu": t, "neighbour_threshold_hu": t2, "network_probability": p_net,
            "network_threshold_hu": t_net,
            "rule": f"lowest threshold, then lowest neighbour threshold, then the DA-Net pair with the most true "
                    f"calls, each with <= {MAX_FALSE_REGIONS_PER_STUDY} false regions per study on synthetic "
                    "scanner-pose studies",
            "studies": len(rows), "region_sides": int(len(y)), "positives": int(y.sum()), "auc": M.auc(ev, y),
            "sensitivity": float(calls[truth].mean()), "specificity": float(1 - calls[~truth].mean()),
            "false_regions_per_study": false_rate(calls),
            "sensitivity_density_only": float(density[truth].mean()),
            "false_regions_per_study_density_only": false_rate(density),
            "sensitivity_without_neighbours": float((ev[y == 1] >= t).mean()),
            "youden_threshold_hu": round(M.best_threshold(ev, y), 2)}


def choose_troughs(young: list[Path], elderly: list[Path], rule: DensityRuleCard) -> dict:
    """The measure's sulcus filter (runtime.density.troughs): each TROUGHS pair, and none, calibrated
    by `calibrate` on the young calibration studies alone (as the card's procedure is), then counted
    on those and on their elderly twins together. The fewest region errors (false plus missed) wins;
    ties go to the deeper trough (fewer voxels left out; none is the deepest), then the smaller
    radius. The elderly twins are what makes a filter worth having: young synthetic heads have no
    sulci, real stroke patients do."""
    candidates = [(0.0, 0.0), *TROUGHS]
    rules = [replace(rule, trough_mm=r, trough_hu=t) for r, t in candidates]
    young_rows = list(zip(*[rows for path in young if (rows := load_rows(path, rules))]))
    elderly_rows = list(zip(*[rows for path in elderly if (rows := load_rows(path, rules))]))
    tried = []
    for (r, t), ys, es in zip(candidates, young_rows, elderly_rows):
        calibrated = replace(rule, **{k: v for k, v in calibrate(list(ys)).items() if k in CALIBRATED})
        truth = np.array([row.truth for row in (*ys, *es)]).astype(bool)
        calls = np.array([rule_calls(row.difference_hu, row.probability, calibrated) > 0 for row in (*ys, *es)])
        false, missed = int((calls & ~truth).sum()), int((truth & ~calls).sum())
        tried.append({"trough_mm": r, "trough_hu": t, "errors": false + missed, "false_regions": false,
                      "missed_regions": missed, **{k: getattr(calibrated, k) for k in CALIBRATED}})

    def order(v: dict) -> tuple:
        depth = v["trough_hu"] if v["trough_mm"] else np.inf
        return v["errors"], -depth, v["trough_mm"]

    best = min(tried, key=order)
    return {"trough_mm": best["trough_mm"], "trough_hu": best["trough_hu"], "young_studies": len(young_rows[0]),
            "elderly_studies": len(elderly_rows[0]), "tried": tried}


def calibrate_troughs(args, scorer: CpuScorer, kept: Path, rule: DensityRuleCard) -> dict:
    """`calibrate --troughs`: score (or reuse) the young calibration studies and their elderly twins,
    choose the filter, and write it into the card before the thresholds are calibrated."""
    kept_elderly = args.out / "studies_elderly" if args.out else Path("build/eval/calibrate_elderly/studies")
    synthetic_studies(args.shared, scorer, args.n, CALIBRATION_SEED0, kept, elderly=False)
    synthetic_studies(args.shared, scorer, args.n, CALIBRATION_SEED0, kept_elderly, elderly=True)
    seeds = range(CALIBRATION_SEED0, CALIBRATION_SEED0 + args.n)
    troughs = choose_troughs([kept / f"study_{s}.npz" for s in seeds],
                             [kept_elderly / f"study_{s}.npz" for s in seeds], rule)
    update_card(args.models / "density_rule.json", {k: troughs[k] for k in ("trough_mm", "trough_hu")})
    write_manifest(args.models)
    return troughs


def kept_troughs(card: Path) -> dict | None:
    """Without --troughs the card's filter stays, and so must the record of how it was chosen: the
    thresholds' calibration replaces the card's whole calibration entry."""
    earlier = json.loads(card.read_text()).get("metrics", {}).get("calibration", {}).get("troughs")
    if earlier is None:
        return None
    return {**earlier, "chosen": "by an earlier `calibrate --troughs` run, kept: this run chose the thresholds only"}


def rule_check(rows: list[Scored], rule: DensityRuleCard) -> dict:
    """A calibrated rule on studies its calibration never saw: picking the lowest threshold that passes
    a noisy count flatters the calibration studies, and a card must say what holds beyond them."""
    truth = np.array([r.truth for r in rows]).astype(bool)
    calls = np.array([rule_calls(r.difference_hu, r.probability, rule) > 0 for r in rows])
    auto, true = aspects_of(calls), aspects_of(truth)
    right = int((above_cut(auto) == above_cut(true)).sum())
    return {"studies": len(rows), "sensitivity": M.rounded(calls[truth].mean()),
            "specificity": M.rounded(1 - calls[~truth].mean()),
            "false_regions_per_study": M.rounded((calls & ~truth).sum() / len(rows)),
            "dichotomised_accuracy": M.rounded(right / len(rows)),
            "dichotomised_accuracy_ci": [M.rounded(v) for v in M.wilson(right, len(rows))],
            "mae": M.rounded(np.abs(auto - true).mean())}


def calibrate_run(args, scorer: CpuScorer) -> None:
    """export.evaluate calibrate: the rule's values (and with --troughs first the measure's filter)
    from synthetic studies, written into the density rule card with their provenance."""
    rule = scorer.models.classify_density
    if rule is None:
        raise ModelError(f"{args.models} has no density rule card to calibrate")
    default_out = Path("build/eval/calibrate_elderly" if args.elderly else "build/eval/calibrate")
    kept = (args.out or default_out) / "studies"
    troughs = calibrate_troughs(args, scorer, kept, rule) if args.troughs else None
    if troughs is not None:                                           # the card now carries the filter
        scorer = CpuScorer(args.models, threads=scorer.threads)
        rule = replace(rule, trough_mm=troughs["trough_mm"], trough_hu=troughs["trough_hu"])
    result = calibrate(synthetic_studies(args.shared, scorer, args.n, CALIBRATION_SEED0, kept, args.elderly))
    result["elderly_heads"] = args.elderly      # provenance: which synthetic heads chose the thresholds
    kept_filter = troughs if troughs is not None else kept_troughs(args.models / "density_rule.json")
    if kept_filter is not None:
        result["troughs"] = kept_filter
    if args.check:
        first = CALIBRATION_SEED0 + args.n
        rows = synthetic_studies(args.shared, scorer, args.check, first, kept, args.elderly)
        calibrated = replace(rule, **{k: result[k] for k in CALIBRATED})
        result["check"] = {"seeds": f"{first}-{first + args.check - 1}", **rule_check(rows, calibrated)}
    update_card(args.models / "density_rule.json", {k: result[k] for k in CALIBRATED},
                metrics={"calibration": {k: M.rounded(v) if isinstance(v, float) else v for k, v in result.items()}})
    write_manifest(args.models)
    print(json.dumps(result, indent=2, default=float))
