"""Evaluate the shipped models with the paper's metrics (Table 1 and agreement).

    python -m export.evaluate cases   --data build/data/test           # networks alone, synthetic cases
    python -m export.evaluate studies --shared ../shared/data --n 24    # whole runtime, synthetic studies
    python -m export.evaluate real    --data ../shared/data/real --reads export/datasets/dev/reads.csv --loo
    python -m export.evaluate calibrate --shared ../shared/data --n 40 --check 60  # the rule's thresholds
    python -m export.evaluate calibrate --troughs ...  # first the measure's sulcus filter, young + elderly
    python -m export.evaluate stability --loo                          # real studies turned and mirrored

`real` takes any folder of studies with a reads file (CSV: study, subject,
image, map, aspects, side, affected) and, for expert region maps, a label-order
file; `--loo` scores each subject with an atlas built without its own map.
Per region, cortical, subcortical and all: sensitivity, specificity, accuracy,
AUC, for the runtime's calls (the density rule with the DA-Net's hop; its AUC
ranks the density difference) and for each rule alone (the DA-Net with its card
thresholds, the contralateral density rule); dichotomised ASPECTS (<= 6);
score MAE, exact and +-1 agreement, ICC(2,1), Spearman, Bland-Altman; region
Dice on the slices the expert labelled. Results go to build/eval/<mode>/ and
the headline numbers into each model card's held_out metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.cpu import CpuScorer
from runtime.density import difference_table, measure
from runtime.errors import AspectsError
from runtime.modelcard import DEFAULT_MODEL_DIR, DensityRuleCard, update_card
from runtime.read import read_study
from runtime.regions import CORTICAL, REGION_NAMES, SIDES, SUBCORTICAL, label_id
from runtime.resample import ModelGrid, to_study_grid, window
from runtime.score import (
    above_cut,
    aspects_of,
    borderline_calls,
    density_calls,
    network_calls,
    rule_calls,
    score_range,
)
from runtime.segment import segment

from . import metrics as M
from .manifest import write_manifest
from .realdata import (
    DEV_SET,
    atlas_folds,
    fold_segmenter,
    labelled_slices,
    load_label_order,
    load_reads,
    read_expert_map,
)

STUDY_SEED0 = 200_000
CALIBRATION_SEED0 = 300_000      # calibration studies: never the evaluation studies' seeds
MAX_FALSE_REGIONS_PER_STUDY = 0.1
CALIBRATED = ("threshold_hu", "neighbour_threshold_hu", "network_probability", "network_threshold_hu")
NETWORK_PROBABILITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)    # tried for the DA-Net's one hop (runtime.score)
TROUGHS = tuple((r, t) for r in (1.0, 2.0, 3.0) for t in (1.0, 2.0, 3.0, 4.0))   # (trough_mm, trough_hu) tried
METHODS = ("runtime", "network", "density")


@dataclass(frozen=True)
class Scored:
    """One study as the evaluation sees it; arrays are (10 regions, 2 sides [left, right])."""
    study: str
    truth: np.ndarray
    probability: np.ndarray       # DA-Net
    difference_hu: np.ndarray     # region minus mirror twin; NaN where not measurable
    called: np.ndarray            # the runtime's calls
    dice: float | None = None
    dice_regions: dict | None = None
    network_threshold: np.ndarray | None = None   # (10,) the DA-Net cards' thresholds the study was scored with
    rule: DensityRuleCard | None = None           # the rule it was scored with, where not the evaluated set's


def scored(study: str, res, truth: np.ndarray, dice=None, dice_regions=None) -> Scored:
    shape = (len(REGION_NAMES), len(SIDES))
    p, d, c = np.zeros(shape), np.full(shape, np.nan), np.zeros(shape, bool)
    for call in res.score.calls:
        i, s = REGION_NAMES.index(call.region), SIDES.index(call.side)
        p[i, s] = call.probability or 0.0
        d[i, s] = np.nan if call.difference_hu is None else call.difference_hu
        c[i, s] = call.affected
    thr = {name: k.threshold for k in res.classifications for name in k.regions}
    network_threshold = np.array([thr[n] for n in REGION_NAMES]) if len(thr) == len(REGION_NAMES) else None
    return Scored(study, truth, p, d, c, dice, dice_regions, network_threshold)


def method_scores(rows: list[Scored], method: str, scorer: CpuScorer) -> tuple[np.ndarray, np.ndarray]:
    """(continuous evidence, calls), each (studies, 10, 2), for one method."""
    rule = scorer.models.classify_density
    if method == "network":
        default = np.array([_threshold(scorer, n) for n in REGION_NAMES])
        thr = np.array([default if r.network_threshold is None else r.network_threshold for r in rows])[:, :, None]
        ev = np.array([r.probability for r in rows])
        return ev, ev >= thr
    diffs = np.array([r.difference_hu for r in rows])
    if method == "runtime":      # the rule with the DA-Net's hop, each study's own (a fold's) where it has one
        if rule is None:         # a model set without a rule: the network decides alone
            return method_scores(rows, "network", scorer)
        return -np.nan_to_num(diffs), np.array([rule_calls(r.difference_hu, r.probability, r.rule or rule) > 0
                                                for r in rows])
    t, t2 = (rule.threshold_hu, rule.neighbour_threshold_hu) if rule else (2.0, 2.0)
    return -np.nan_to_num(diffs), density_calls(diffs, t, t2)


def _evidence(row: Scored) -> dict:
    """Per region and side: the truth, the runtime's call and both rules' evidence, so a reader
    can see which region moved a score."""
    return {f"{side} {name}": {"truth": bool(row.truth[i, s]), "called": bool(row.called[i, s]),
                               "probability": round(float(row.probability[i, s]), 4),
                               "difference_hu": _r(row.difference_hu[i, s])}
            for i, name in enumerate(REGION_NAMES) for s, side in enumerate(SIDES)}


def region_table(evidence: np.ndarray, calls: np.ndarray, truth: np.ndarray) -> dict:
    """Table 1: evidence, calls, truth are (cases, 10 regions, 2 sides)."""
    table = {}
    groups = {**{n: [i] for i, n in enumerate(REGION_NAMES)}, "subcortical": list(SUBCORTICAL),
              "cortical": list(CORTICAL), "all": list(range(10))}
    for name, idx in groups.items():
        p, t, y = calls[:, idx].ravel(), truth[:, idx].ravel(), evidence[:, idx].ravel()
        table[name] = {**M.confusion(p, t), "auc": M.auc(y, t.astype(int))}
    return table


def borderline_summary(rows: list[Scored], rule: DensityRuleCard) -> dict:
    """How often the runtime's borderline calls (runtime.score.borderline_calls) are wrong, against its
    firm ones, and the same per study for the > 6 / <= 6 decision (runtime.score.Score.dichotomy_firm):
    what the report's flags are worth. Region-sides that could not be measured are left out."""
    counts = dict.fromkeys(("borderline", "borderline_wrong", "firm", "firm_wrong", "dichotomy_unsure",
                            "dichotomy_unsure_wrong", "dichotomy_firm", "dichotomy_firm_wrong"), 0)
    for r in rows:
        own = r.rule or rule
        truth = r.truth.astype(bool)
        measured = ~np.isnan(r.difference_hu)
        calls = rule_calls(r.difference_hu, r.probability, own) > 0
        near = borderline_calls(r.difference_hu, r.probability, own) & measured
        for key, pick in (("borderline", near), ("firm", ~near & measured)):
            counts[key] += int(pick.sum())
            counts[f"{key}_wrong"] += int((pick & (calls != truth)).sum())
        lowest, highest = score_range(calls, near)
        key = "dichotomy_firm" if above_cut(lowest) == above_cut(highest) else "dichotomy_unsure"
        counts[key] += 1
        counts[f"{key}_wrong"] += int(above_cut(aspects_of(calls)) != above_cut(aspects_of(truth)))
    return counts


def score_agreement(pred: np.ndarray, truth: np.ndarray) -> dict:
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    dich = M.confusion(~above_cut(pred), ~above_cut(truth))    # "positive" = ASPECTS <= 6 (large infarct)
    return {"dichotomised_le6": dich, "mae": float(np.abs(pred - truth).mean()),
            "exact_agreement": float((pred == truth).mean()),
            "within_1": float((np.abs(pred - truth) <= 1).mean()),
            "icc_2_1": M.icc_2_1(pred, truth) if len(pred) > 1 else float("nan"),
            "spearman": M.spearman(pred, truth) if len(pred) > 1 else float("nan"),
            "bland_altman": M.bland_altman(pred, truth), "n": int(len(pred))}


def summarise(rows: list[Scored], scorer: CpuScorer, dice_against: str = "the expert maps, on the expert's slices"
              ) -> dict:
    truth = np.array([r.truth for r in rows])
    true_scores = aspects_of(truth)
    out: dict = {"cases": len(rows), "methods": {}}
    for method in METHODS:
        ev, calls = method_scores(rows, method, scorer)
        auto = aspects_of(calls)
        out["methods"][method] = {"regions": region_table(ev, calls, truth),
                                  "score": score_agreement(auto, true_scores),
                                  "scores": auto.tolist()}
    if any(r.dice is not None for r in rows):
        out["dice"] = dice_summary([(r.dice, r.dice_regions or {}) for r in rows if r.dice is not None],
                                   dice_against)
    if scorer.models.classify_density is not None:
        out["borderline"] = borderline_summary(rows, scorer.models.classify_density)
    out["studies"] = {r.study: {"true": int(t), "auto": int(a), "regions": _evidence(r)} for r, t, a in
                      zip(rows, true_scores, out["methods"]["runtime"]["scores"])}
    out["_pred"], out["_true"] = out["methods"]["runtime"]["scores"], true_scores.tolist()
    return out


def table_text(result: dict) -> str:
    """The paper's Table 1 layout, one block per method, plus agreement and Dice."""
    lines = []
    for method, m in result["methods"].items():
        lines.append(f"{method}: sensitivity / specificity / accuracy / AUC")
        for name, row in m["regions"].items():
            lines.append(f"  {name:12s} {_f(row['sensitivity'])} {_f(row['specificity'])} "
                         f"{_f(row['accuracy'])} {_f(row['auc'])}   (tp {row['tp']} fp {row['fp']} "
                         f"fn {row['fn']} tn {row['tn']})")
        sc = m["score"]
        d = sc["dichotomised_le6"]
        lines.append(f"  dichotomised (<=6): accuracy {_f(d['accuracy'])} {_ci(d['accuracy_ci'])} sensitivity "
                     f"{_f(d['sensitivity'])} {_ci(d['sensitivity_ci'])} specificity {_f(d['specificity'])} "
                     f"{_ci(d['specificity_ci'])}")
        a = m["regions"]["all"]
        lines.append(f"  regions, all: sensitivity {_ci(a['sensitivity_ci'])} specificity {_ci(a['specificity_ci'])} "
                     "(95 % Wilson)")
        lines.append(f"  score: MAE {sc['mae']:.2f}, exact {sc['exact_agreement']:.2f}, within 1 "
                     f"{sc['within_1']:.2f}, ICC {_f(sc['icc_2_1'])}, n {sc['n']}")
    if "dice" in result:
        d = result["dice"]
        per = ", ".join(f"{k} {v:.2f}" for k, v in d["per_region"].items())
        lines.append(f"region Dice against {d.get('against', 'the reference')}: mean {d['mean']:.3f} "
                     f"(worst study {d['min_case']:.3f}); {per}")
    if "borderline" in result:
        b = result["borderline"]
        lines.append(f"runtime's borderline calls: {b['borderline']} region-sides, {b['borderline_wrong']} wrong; "
                     f"firm: {b['firm']}, {b['firm_wrong']} wrong")
        lines.append(f"  > 6 / <= 6 that borderline calls could change: {b['dichotomy_unsure']} studies, "
                     f"{b['dichotomy_unsure_wrong']} wrong; firm: {b['dichotomy_firm']}, "
                     f"{b['dichotomy_firm_wrong']} wrong")
    if "by_lesion_contrast" in result:
        lines.append("runtime by lesion contrast: studies, dichotomised right, region sensitivity (95 % Wilson)")
        for band, b in result["by_lesion_contrast"].items():
            lines.append(f"  {band:12s} {b['studies']:3d} {b['dichotomised_correct']:3d} "
                         f"{_ci(b['dichotomised_accuracy_ci'])}  {_f(b['region_sensitivity'])} "
                         f"{_ci(b['region_sensitivity_ci'])}")
    for study, v in result["studies"].items():
        lines.append(f"  {study}: true {v['true']} auto {v['auto']}")
    return "\n".join(lines)


def _f(v: float) -> str:
    return "  n/a" if v is None or np.isnan(v) else f"{v:5.3f}"


def _ci(interval) -> str:
    lo, hi = interval
    return "[n/a]" if np.isnan(lo) else f"[{lo:.2f}-{hi:.2f}]"


def plots(pred: np.ndarray, truth: np.ndarray, out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ba = M.bland_altman(pred, truth)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, (2, len(pred)))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter((pred + truth) / 2 + jitter[0], pred - truth + jitter[1], s=14, alpha=0.7)
    for v, style in ((ba["mean_difference"], "-"), (ba["lower_limit"], "--"), (ba["upper_limit"], "--")):
        ax.axhline(v, color="k", linestyle=style, linewidth=1)
    ax.set(xlabel="mean of automated and true ASPECTS", ylabel="automated - true", title=f"Bland-Altman: {title}")
    fig.tight_layout()
    fig.savefig(out / "bland_altman.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(truth + jitter[0], pred + jitter[1], s=14, alpha=0.7)
    ax.plot([0, 10], [0, 10], "k--", linewidth=1)
    ax.set(xlabel="true ASPECTS", ylabel="automated ASPECTS", xlim=(-0.5, 10.5), ylim=(-0.5, 10.5),
           title=f"Scores: {title}")
    fig.tight_layout()
    fig.savefig(out / "score_scatter.png", dpi=120)
    plt.close(fig)


def dice_summary(cases: list[tuple[float, dict]], against: str) -> dict:
    """Mean and worst case of per-case Dice (each a mean_dice result); per region, both sides pooled."""
    per_region: dict[str, list[float]] = {}
    for _, regions in cases:
        for k, v in regions.items():
            per_region.setdefault(k.split()[-1], []).append(v)
    dices = [d for d, _ in cases]
    return {"mean": float(np.mean(dices)), "min_case": float(np.min(dices)), "against": against,
            "per_region": {k: float(np.mean(v)) for k, v in per_region.items()}}


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict]:
    """Mean over the region-sides present in either map."""
    per = {f"{side} {name}": M.dice(pred, truth, label_id(r, side))
           for r, name in enumerate(REGION_NAMES) for side in SIDES}
    per = {k: v for k, v in per.items() if not np.isnan(v)}
    return float(np.mean(list(per.values()))), per


# ---------------------------------------------------------------- modes

def eval_cases(data: Path, scorer: CpuScorer) -> dict:
    """Networks alone on held-out model-space cases: the cascade's Dice, DA-Net on true-region crops."""
    files = sorted(data.glob("case_*.npz"))
    dices, probs, truths = [], [], []
    cls = {"classify_subcortical": SUBCORTICAL, "classify_cortical": CORTICAL}
    for f in files:
        with np.load(f) as d:
            image05 = d["image1"].astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)
            seg = segment(image05, scorer.engines["segment_coarse"], scorer.engines["segment_fine"])
            dices.append(mean_dice(seg.labels[:, ::2, ::2], d["labels1"]))
            p = np.zeros((10, 2))
            for role, idx in cls.items():
                eng = scorer.engines[role]
                p[list(idx)] = eng.run({eng.card.inputs[0].name: d["pairs"][list(idx)].astype(np.float32)})[
                    eng.card.outputs[0].name]
            probs.append(p)
            truths.append(d["affected"])
    p_all, t_all = np.array(probs), np.array(truths)
    thr = np.array([_threshold(scorer, n) for n in REGION_NAMES])[None, :, None]
    calls = p_all >= thr
    auto, true = aspects_of(calls), aspects_of(t_all)
    return {"cases": len(files), "dice": dice_summary(dices, "the synthetic ground truth (model space, every slice)"),
            "methods": {"network": {"regions": region_table(p_all, calls, t_all),
                                    "score": score_agreement(auto, true), "scores": auto.tolist()}},
            "studies": {}, "_pred": auto.tolist(), "_true": true.tolist()}


def _threshold(scorer: CpuScorer, region: str) -> float:
    for c in scorer.models.cards:
        if region in c.regions:
            return c.threshold
    raise KeyError(region)


def synthetic_studies(shared: Path, scorer: CpuScorer, n: int, seed0: int, cache: Path,
                      elderly: bool = False) -> list[Scored]:
    """The whole runtime, file in to score out, on synthetic studies in real-world scanner poses.
    Each scored study is kept in `cache` (one .npz per seed) with its model-grid HU and labels, so an
    interrupted run resumes and a changed density measure is re-measured without re-synthesis; a
    study kept under other networks is re-classified from them (`_current`), one kept under another
    atlas is scored again (`models_fingerprint`).
    A study the runtime refuses is reported and left out. `elderly`: the same studies (the same
    truth) in atrophic heads with sulci of their own (`synth.draw_spec`)."""
    from . import synth
    phantom = synth.load_phantom(shared)
    rows = []
    cache.mkdir(parents=True, exist_ok=True)
    models = models_fingerprint(scorer)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            kept = cache / f"study_{seed0 + i}.npz"
            if kept.exists() and _current(kept, scorer, models):
                row = _load_row(kept, scorer)
                if row is not None:
                    rows.append(row)
                continue
            spec = synth.draw_spec(seed0 + i, pose="scanner", elderly=elderly)
            case = synth.make_case(phantom, spec)
            grid, shape = synth.scanner_grid(spec)
            hu, _ = synth.render(phantom, case, grid, shape, with_labels=False)
            path = Path(tmp) / f"study_{i:03d}.nii.gz"
            synth.write_study(path, hu, grid)
            truth = np.array([case.affected[r] for r in REGION_NAMES])
            try:
                res = scorer.score(path)
            except AspectsError as exc:
                print(f"study {i}: refused by the runtime ({exc})", flush=True)
                np.savez(kept, refused=str(exc), models=models)
                continue
            # Ground-truth labels on the runtime's own model grid, through its recovered pose.
            to_world = res.alignment.matrix @ res.grid.index_to_model
            dice = mean_dice(res.labels, synth.render_labels(phantom, case, to_world, res.grid.shape))[0]
            rows.append(scored(f"synthetic_{seed0 + i}", res, truth, dice))
            _save_row(kept, rows[-1], res, models)
            print(f"study {i}: true {case.aspects} auto {res.score.aspects} dice {dice:.3f} "
                  f"{res.timings_s['total']:.1f}s", flush=True)
    return rows


def in_expert_regions(rows: list[Scored], shared: Path, atlas_npz: Path) -> list[Scored]:
    """The same studies with their truth taken in the experts' region convention (the shipped atlas's
    regions on the phantom) instead of the MNI atlas's: the paper's 10 % rule on the same lesions."""
    from . import synth
    phantom = synth.load_phantom(shared)
    regions = synth.expert_regions(phantom, atlas_npz)
    out = []
    for row in rows:
        case = synth.make_case(phantom, synth.draw_spec(_seed(row), pose="scanner"))
        truth = synth.truth_in_regions(case.core, regions)
        out.append(replace(row, truth=np.array([truth[r][0] for r in REGION_NAMES])))
    return out


CONTRAST_BANDS = (("no lesion", 0.0, 0.0), ("drop < 2 HU", 0.0, 2.0), ("drop 2-4 HU", 2.0, 4.0),
                  ("drop 4-8 HU", 4.0, 8.0))


def by_lesion_contrast(rows: list[Scored], scorer: CpuScorer) -> dict:
    """The runtime on synthetic studies grouped by their strongest lesion's drop (the generator draws
    1-8 HU): where its detection limit sits. A band's region sensitivity counts its affected region-sides."""
    from . import synth
    _, calls = method_scores(rows, "runtime", scorer)
    truth = np.array([r.truth for r in rows]).astype(bool)
    auto, true = aspects_of(calls), aspects_of(truth)
    drops = np.array([max((lesion.drop_hu for lesion in synth.draw_spec(_seed(r), pose="scanner").lesions),
                          default=0.0) for r in rows])
    out = {}
    for name, lo, hi in CONTRAST_BANDS:
        pick = drops == 0 if hi == 0 else (drops > lo) & (drops <= hi)
        hits, total = int((calls[pick] & truth[pick]).sum()), int(truth[pick].sum())
        right = int((above_cut(auto[pick]) == above_cut(true[pick])).sum())
        out[name] = {"studies": int(pick.sum()), "dichotomised_correct": right,
                     "dichotomised_accuracy_ci": M.wilson(right, int(pick.sum())),
                     "region_sensitivity": hits / total if total else float("nan"),
                     "region_sensitivity_ci": M.wilson(hits, total)}
    return out


def _seed(row: Scored) -> int:
    return int(row.study.rsplit("_", 1)[1])


def models_fingerprint(scorer: CpuScorer) -> str:
    """What a kept study depends on: its labels on the atlas's file, its probabilities on the
    networks' (not the rule, whose measure and thresholds are re-applied to the kept HU)."""
    atlas = scorer.models.segment_atlas
    return ",".join([atlas.sha256 if atlas else "no-atlas"] + [c.sha256 for c in scorer.models.cards])


def _kept_fingerprint(path: Path) -> str | None:
    with np.load(path) as d:
        return str(d["models"]) if "models" in d else None


def _current(path: Path, scorer: CpuScorer, models: str) -> bool:
    """Whether a kept study holds for `models`, after re-classifying it where only the networks
    changed (a fold's DA-Net, a retrained one): its labels come from the same atlas, so both
    DA-Nets run again on its kept HU and labels, about a second against half a minute for
    synthesis and the whole runtime. The kept HU is float16 (steps of 0.03 HU at brain density,
    under a thousandth of the networks' window), so the probabilities are the runtime's within that.
    A study kept under another atlas, or scored without one, is not current: it is made again."""
    kept = _kept_fingerprint(path)
    if kept == models:
        return True
    atlas = models.split(",")[0]
    if kept is None or atlas == "no-atlas" or kept.split(",")[0] != atlas:
        return False
    with np.load(path) as d:
        record = dict(d)
    if "refused" not in record:          # refusals come before the networks (read, strip, atlas fit)
        hu, labels = record["hu"].astype(np.float32), record["labels"]
        results, batches = scorer.classify(window(hu, labels > 0, *scorer.models.window), labels, {})
        probability = np.zeros((len(REGION_NAMES), len(SIDES)))
        for batch, result in zip(batches, results):
            for b, name in enumerate(batch.regions):
                if batch.assessable[b]:
                    probability[REGION_NAMES.index(name)] = result.probability[b]
        rule = scorer.models.classify_density
        record["probability"] = probability
        record["called"] = (rule_calls(record["difference_hu"], probability, rule) > 0 if rule is not None
                            else probability >= np.array([[_threshold(scorer, n)] for n in REGION_NAMES]))
    record["models"] = models
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **record)
    tmp.replace(path)
    return True


def _save_row(path: Path, row: Scored, res, models: str) -> None:
    tmp = path.with_suffix(".tmp.npz")
    brain = res.labels > 0
    np.savez_compressed(tmp, study=row.study, truth=row.truth, probability=row.probability,
                        difference_hu=row.difference_hu, called=row.called,
                        dice=np.nan if row.dice is None else row.dice,
                        hu=np.where(brain, res.hu, 0).astype(np.float16), labels=res.labels,
                        spacing=np.asarray(res.grid.spacing), models=models)
    tmp.replace(path)


def _load_row(path: Path, scorer: CpuScorer) -> Scored | None:
    """A kept study, its density differences measured again with the current measure."""
    rows = _load_rows(path, [scorer.models.classify_density])
    return rows[0] if rows else None


def _load_rows(path: Path, rules: Sequence[DensityRuleCard | None]) -> list[Scored]:
    """A kept study measured by each of `rules` (one load for all); [] for a refused study."""
    with np.load(path) as d:
        if "refused" in d:
            return []
        dice = float(d["dice"])
        if "hu" not in d:        # kept before studies carried their HU: only the measure of that day
            differences = [d["difference_hu"]] * len(rules)
        else:
            hu, labels = d["hu"].astype(np.float32), d["labels"]
            differences = [remeasure(hu, labels, tuple(d["spacing"]), rule) for rule in rules]
        return [Scored(str(d["study"]), d["truth"], d["probability"], difference, d["called"],
                       None if np.isnan(dice) else dice) for difference in differences]


def remeasure(hu: np.ndarray, labels: np.ndarray, spacing: tuple, rule: DensityRuleCard | None) -> np.ndarray:
    """(10, 2) density differences of a kept study by runtime.density, as `rule` measures."""
    grid = ModelGrid(shape=labels.shape, spacing=spacing, origin=(0.0, 0.0, 0.0), slab=1)
    return difference_table(measure(hu, labels, grid, rule).regions)


def real_studies(data: Path, reads_csv: Path, label_order: Path | None, scorer: CpuScorer, loo: bool,
                 shared: Path, fold_models: str | None = None) -> list[Scored]:
    """Every study of a reads file against its expert read (and region map, where there is one).
    `fold_models`: a model folder per subject, '{subject}' in the path (networks trained without
    that subject, e.g. export/train_realtex.sh); a subject without one is scored by `scorer`."""
    reads = load_reads(reads_csv, data)
    order = load_label_order(label_order) if label_order else None
    if loo and order is None:
        raise SystemExit("error: --loo builds its atlases from the expert maps: it needs their label-order file")
    folds = atlas_folds(reads, order, scorer, shared) if loo and order is not None else {}
    scorers = fold_scorers(reads, fold_models, scorer)
    rows = []
    for read in reads:
        subject_scorer = scorers.get(read.subject, scorer)
        with fold_segmenter(subject_scorer, folds, read.subject):
            res = subject_scorer.score(read.image)
        dice, per = None, None
        if read.map is not None and order is not None:
            study = read_study(read.image)
            expert = read_expert_map(read.map, order)
            ours = to_study_grid(study, res.alignment, res.grid, res.labels)
            zs = labelled_slices(expert)
            dice, per = mean_dice(ours[zs], expert[zs])
        rows.append(replace(scored(read.study, res, read.truth(), dice, per),
                            rule=subject_scorer.models.classify_density))
        print(f"{read.study}: expert {read.aspects} auto {res.score.aspects} "
              f"({', '.join(res.score.affected) or 'none'})" + (f" dice {dice:.3f}" if dice is not None else ""),
              flush=True)
    return rows


def fold_scorers(reads, fold_models: str | None, scorer: CpuScorer) -> dict[str, CpuScorer]:
    """A scorer per subject from `fold_models` ('{subject}' in the path), where that folder exists."""
    if not fold_models:
        return {}
    scorers = {}
    for subject in sorted({r.subject for r in reads}):
        folder = Path(fold_models.format(subject=subject))
        if folder.is_dir():
            scorers[subject] = CpuScorer(folder, threads=scorer.threads)
    return scorers


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
    young_rows = list(zip(*[rows for path in young if (rows := _load_rows(path, rules))]))
    elderly_rows = list(zip(*[rows for path in elderly if (rows := _load_rows(path, rules))]))
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


def rule_check(rows: list[Scored], rule: DensityRuleCard) -> dict:
    """A calibrated rule on studies its calibration never saw: picking the lowest threshold that passes
    a noisy count flatters the calibration studies, and a card must say what holds beyond them."""
    truth = np.array([r.truth for r in rows]).astype(bool)
    calls = np.array([rule_calls(r.difference_hu, r.probability, rule) > 0 for r in rows])
    auto, true = aspects_of(calls), aspects_of(truth)
    right = int((above_cut(auto) == above_cut(true)).sum())
    return {"studies": len(rows), "sensitivity": _r(calls[truth].mean()),
            "specificity": _r(1 - calls[~truth].mean()),
            "false_regions_per_study": _r((calls & ~truth).sum() / len(rows)),
            "dichotomised_accuracy": _r(right / len(rows)),
            "dichotomised_accuracy_ci": [_r(v) for v in M.wilson(right, len(rows))],
            "mae": _r(np.abs(auto - true).mean())}


def write_tables(out: Path, metrics: dict, table: str) -> None:
    """An evaluation's two files: metrics.json for machines, table.txt for people."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    (out / "table.txt").write_text(table + "\n")


def write_results(mode: str, result: dict, out: Path, model_dir: Path) -> None:
    write_tables(out, result, table_text(result))
    if result.get("_pred") and len(result["_pred"]) > 1:
        plots(np.array(result["_pred"]), np.array(result["_true"]), out, mode)
    # Copy the headline numbers into every card so a deployed model carries its own evidence.
    for card_path in sorted(model_dir.glob("*.json")):
        card = json.loads(card_path.read_text())
        if "role" not in card:
            continue
        held = {**card.get("metrics", {}).get("held_out", {}), mode: headline(result)}
        update_card(card_path, {}, metrics={"held_out": held})
    write_manifest(model_dir)


def headline(result: dict) -> dict:
    out = {"cases": result["cases"]}
    if "dice" in result:
        out["dice_mean"] = round(result["dice"]["mean"], 4)
        if "per_region" in result["dice"]:
            out["dice_per_region"] = {k: round(v, 3) for k, v in result["dice"]["per_region"].items()}
    for method, m in result["methods"].items():
        regions, sc = m["regions"], m["score"]
        out[method] = {**{g: {k: _r(regions[g][k]) for k in ("sensitivity", "specificity", "auc")}
                          for g in ("subcortical", "cortical", "all")},
                       "dichotomised_accuracy": _r(sc["dichotomised_le6"]["accuracy"]),
                       "dichotomised_accuracy_ci": [_r(v) for v in sc["dichotomised_le6"]["accuracy_ci"]],
                       "dichotomised_specificity": _r(sc["dichotomised_le6"]["specificity"]),
                       "mae": _r(sc["mae"]), "within_1": _r(sc["within_1"]), "icc": _r(sc["icc_2_1"])}
    if result.get("studies"):      # scores only: the per-region evidence stays in metrics.json
        out["studies"] = {k: {"true": v["true"], "auto": v["auto"]} for k, v in result["studies"].items()}
    return out


def calibrate_run(args, scorer: CpuScorer) -> None:
    """export.evaluate calibrate: the rule's values (and with --troughs first the measure's filter)
    from synthetic studies, written into the density rule card with their provenance."""
    rule = scorer.models.classify_density
    if rule is None:
        raise SystemExit(f"error: {args.models} has no density rule card to calibrate")
    default_out = Path("build/eval/calibrate_elderly" if args.elderly else "build/eval/calibrate")
    kept = (args.out or default_out) / "studies"
    troughs = calibrate_troughs(args, scorer, kept, rule) if args.troughs else None
    if troughs is not None:                                           # the card now carries the filter
        scorer = CpuScorer(args.models, threads=scorer.threads)
        rule = replace(rule, trough_mm=troughs["trough_mm"], trough_hu=troughs["trough_hu"])
    result = calibrate(synthetic_studies(args.shared, scorer, args.n, CALIBRATION_SEED0, kept, args.elderly))
    result["elderly_heads"] = args.elderly      # provenance: which synthetic heads chose the thresholds
    if troughs is not None:
        result["troughs"] = troughs
    if args.check:
        first = CALIBRATION_SEED0 + args.n
        rows = synthetic_studies(args.shared, scorer, args.check, first, kept, args.elderly)
        calibrated = replace(rule, **{k: result[k] for k in CALIBRATED})
        result["check"] = {"seeds": f"{first}-{first + args.check - 1}", **rule_check(rows, calibrated)}
    update_card(args.models / "density_rule.json", {k: result[k] for k in CALIBRATED},
                metrics={"calibration": {k: _r(v) if isinstance(v, float) else v for k, v in result.items()}})
    write_manifest(args.models)
    print(json.dumps(result, indent=2, default=float))


def stability_run(args, scorer: CpuScorer) -> None:
    """export.stability on a reads file; results to build/eval/stability/ (not into the cards)."""
    from . import stability
    reads = load_reads(args.reads, args.data or args.shared / "real")
    folds = atlas_folds(reads, load_label_order(args.label_order), scorer, args.shared) if args.loo else {}
    rows = stability.run(reads, scorer, folds, fold_scorers(reads, args.fold_models, scorer))
    total = stability.summary(rows)
    text = stability.table_text(rows, total)
    write_tables(args.out or Path("build/eval/stability"), {"rows": rows, "summary": total}, text)
    print(text)


def _r(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("cases", "studies", "real", "calibrate", "stability"))
    p.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, default=None, help="cases: the .npz folder; real: the studies' folder")
    p.add_argument("--reads", type=Path, default=DEV_SET / "reads.csv")
    p.add_argument("--label-order", type=Path, default=DEV_SET / "label_order.json")
    p.add_argument("--loo", action="store_true", help="real, stability: leave-one-subject-out atlases")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--check", type=int, default=0,
                   help="calibrate: score the rule on this many further calibration studies, never used to choose it")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default build/eval/<mode>); calibrate keeps its scored studies there")
    p.add_argument("--fold-models", default=None,
                   help="real, stability: a model folder per subject, e.g. build/realtex/models_{subject} "
                        "(its networks never saw that subject)")
    p.add_argument("--no-cards", action="store_true", help="do not copy the headline numbers into the cards")
    p.add_argument("--elderly", action="store_true",
                   help="studies, calibrate: the same synthetic studies in atrophic heads with sulci of their own")
    p.add_argument("--troughs", action="store_true",
                   help="calibrate: first choose the measure's sulcus filter on the young calibration studies "
                        "and their elderly twins (runtime.density.troughs), then the thresholds")
    p.add_argument("--truth", choices=("mni", "expert"), default="mni",
                   help="studies: ground truth in the MNI atlas regions (as drawn) or the experts' (shipped atlas)")
    args = p.parse_args(argv)
    if args.elderly and args.mode not in ("studies", "calibrate"):
        p.error("--elderly makes synthetic studies: it applies to studies and calibrate only")
    if args.troughs and (args.mode != "calibrate" or args.elderly):
        p.error("--troughs chooses the measure on young and elderly calibration studies: calibrate only, "
                "without --elderly")
    scorer = CpuScorer(args.models)
    if args.mode == "calibrate":
        calibrate_run(args, scorer)
        return
    if args.mode == "stability":
        stability_run(args, scorer)
        return
    if args.mode == "cases":
        result = eval_cases(args.data or Path("build/data/test"), scorer)
    elif args.mode == "studies":
        kept = Path("build/eval/studies_elderly/studies" if args.elderly else "build/eval/studies/studies")
        rows = synthetic_studies(args.shared, scorer, args.n, STUDY_SEED0, kept, args.elderly)
        if args.truth == "expert":
            rows = in_expert_regions(rows, args.shared, args.models / "region_atlas.npz")
        result = summarise(rows, scorer, dice_against="the synthetic ground truth (MNI atlas regions), every slice")
        result["by_lesion_contrast"] = by_lesion_contrast(rows, scorer)
    else:
        rows = real_studies(args.data or args.shared / "real", args.reads, args.label_order, scorer, args.loo,
                            args.shared, args.fold_models)
        result = summarise(rows, scorer)
    mode = (f"{args.mode}_loo" if args.loo else f"{args.mode}_expert_truth" if args.truth == "expert"
            else f"{args.mode}_elderly" if args.elderly else args.mode)
    out = args.out or Path("build/eval") / mode
    if args.no_cards:
        write_tables(out, result, table_text(result))
    else:
        write_results(mode, result, out, args.models)
    print(table_text(result))


if __name__ == "__main__":
    main()
