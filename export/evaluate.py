"""Evaluate the shipped models with the paper's metrics (Table 1 and agreement).

    python -m export.evaluate cases   --data build/data/test           # networks alone, synthetic cases
    python -m export.evaluate studies --shared ../shared/data --n 24    # whole runtime, synthetic studies
    python -m export.evaluate real    --data ../shared/data/real --reads export/datasets/dev/reads.csv --loo
    python -m export.evaluate calibrate --shared ../shared/data --n 40 --check 60  # the rule's thresholds
    python -m export.evaluate calibrate --troughs ...  # first the measure's sulcus filter, young + elderly
    python -m export.evaluate stability --loo     # real studies turned, mirrored, softer, noisier, HU +-4

The calibrate mode lives in export.calibrate, the kept synthetic studies in export.studies.

`real` takes any folder of studies with a reads file (CSV: study, subject,
image, map, aspects, side, affected) and, for expert region maps, a label-order
file; `--loo` scores each subject with an atlas built without its own map.
Per region, cortical, subcortical and all: sensitivity, specificity, accuracy,
AUC, for the runtime's calls (the density rule with the DA-Net's hop; its AUC
ranks the density difference) and for each rule alone (the DA-Net with its card
thresholds, the contralateral density rule); dichotomised ASPECTS (<= 6);
score MAE, exact and +-1 agreement, ICC(2,1), Spearman, Bland-Altman; region
Dice on the slices the expert labelled. Results go to build/eval/<mode>/ and
the headline numbers into each model card's held_out metrics (for `real`, only
from the development set's reads file, the set the cards name). A reads file is
checked whole, its images and maps found, before any study is scored; bad input
ends in one `error:` line and the runtime's exit code for it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from runtime.cli import at_least
from runtime.cpu import CpuScorer
from runtime.errors import UsageError, exit_code_of, named
from runtime.modelcard import DEFAULT_MODEL_DIR, DensityRuleCard, update_card
from runtime.read import read_study
from runtime.regions import CORTICAL, REGION_NAMES, SIDES, SUBCORTICAL
from runtime.resample import to_study_grid
from runtime.score import above_cut, aspects_of, borderline_calls, density_calls, rule_calls, score_range
from runtime.segment import segment
from runtime.shipped import INSTALLED_MODEL_DIR

from . import metrics as M
from .atlas import shared_data
from .calibrate import calibrate_run
from .folds import complete_folder
from .manifest import cards, write_manifest
from .realdata import (
    DEV_READS,
    atlas_folds,
    expert_map_of,
    fold_segmenter,
    is_dev_set,
    label_order_file,
    labelled_slices,
    load_label_order,
    load_reads,
)
from .studies import STUDY_SEED0, Scored, card_threshold, scored, seed_of, synthetic_studies

METHODS = ("runtime", "network", "density")


def method_scores(rows: list[Scored], method: str, scorer: CpuScorer) -> tuple[np.ndarray, np.ndarray]:
    """(continuous evidence, calls), each (studies, 10, 2), for one method."""
    rule = scorer.models.classify_density
    if method == "network":
        default = np.array([card_threshold(scorer, n) for n in REGION_NAMES])
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
                               "difference_hu": M.rounded(row.difference_hu[i, s])}
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
    measured = [r for r in rows if r.look_first is not None]
    if measured:      # on a set read for ischaemic stroke, each is a false alarm unless its scan holds blood or metal
        out["look_first"] = {"measured": len(measured),
                             "studies": {r.study: list(r.look_first) for r in measured if r.look_first}}
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
    if "by_expected_shift" in result:
        lines.append("runtime by expected shift (lesion core's share of the region x its drop, the runtime's "
                     "regions): affected region-sides, found, sensitivity (95 % Wilson), "
                     "median HU darker than the mirror")
        for band, b in result["by_expected_shift"]["bands"].items():
            lines.append(f"  {band:9s} {b['region_sides']:4d} {b['found']:4d} {_f(b['region_sensitivity'])} "
                         f"{_ci(b['region_sensitivity_ci'])}  {_f(b['darker_hu_median'])}")
        ratio = result["by_expected_shift"]["measured_over_expected"]
        lines.append(f"  measured / expected where >= {SHIFT_RATIO_FROM_HU} HU: "
                     + ", ".join(f"{name} {v:.2f}" for name, v in ratio.items()))
    if "look_first" in result:
        flagged = result["look_first"]["studies"]
        lines.append(f"hyperdense tissue or metal found (runtime.hyperdense) in {len(flagged)} of "
                     f"{result['look_first']['measured']} studies" + (": " + ", ".join(flagged) if flagged else "")
                     + "; on studies read for ischaemic stroke, each is a false alarm unless the scan holds blood "
                       "or metal")
    for study, v in result["studies"].items():
        lines.append(f"  {study}: true {v['true']} auto {v['auto']}")
    return "\n".join(lines)


def _f(v: float) -> str:
    return "  n/a" if v is None or np.isnan(v) else f"{v:5.3f}"


def _ci(interval) -> str:
    lo, hi = interval
    return "[n/a]" if np.isnan(lo) else f"[{lo:.2f}-{hi:.2f}]"


def plots(pred: np.ndarray, truth: np.ndarray, out: Path, title: str) -> None:
    try:
        import matplotlib
    except ImportError:    # a runtime-only install: the tables are the result, the plots an aid
        print(f"no plots in {out}: they need matplotlib (pip install 'aspects-rt[train]')")
        return
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
            dices.append(M.mean_dice(seg.labels[:, ::2, ::2], d["labels1"]))
            p = np.zeros((10, 2))
            for role, idx in cls.items():
                eng = scorer.engines[role]
                p[list(idx)] = eng.run({eng.card.inputs[0].name: d["pairs"][list(idx)].astype(np.float32)})[
                    eng.card.outputs[0].name]
            probs.append(p)
            truths.append(d["affected"])
    p_all, t_all = np.array(probs), np.array(truths)
    thr = np.array([card_threshold(scorer, n) for n in REGION_NAMES])[None, :, None]
    calls = p_all >= thr
    auto, true = aspects_of(calls), aspects_of(t_all)
    return {"cases": len(files), "dice": dice_summary(dices, "the synthetic ground truth (model space, every slice)"),
            "methods": {"network": {"regions": region_table(p_all, calls, t_all),
                                    "score": score_agreement(auto, true), "scores": auto.tolist()}},
            "studies": {}, "_pred": auto.tolist(), "_true": true.tolist()}


def lesions_in_expert_regions(rows: list[Scored], shared: Path, atlas_npz: Path) -> list[tuple]:
    """Per synthetic study: its spec, and each region's ((left, right) affected, (left, right) lesion
    core fraction) in the experts' region convention (the shipped atlas's regions on the phantom),
    the paper's 10 % rule on the same lesions. Remaking each study's case takes about a second."""
    from . import synth
    phantom = synth.load_phantom(shared)
    regions = synth.expert_regions(phantom, atlas_npz)
    out = []
    for row in rows:
        spec = synth.draw_spec(seed_of(row), pose="scanner")
        out.append((spec, synth.truth_in_regions(synth.make_case(phantom, spec).core, regions)))
    return out


def in_expert_regions(rows: list[Scored], lesions: list[tuple]) -> list[Scored]:
    """The same studies with their truth taken in the experts' region convention instead of the MNI
    atlas's (`lesions_in_expert_regions`)."""
    return [replace(row, truth=np.array([fractions[r][0] for r in REGION_NAMES]))
            for row, (_, fractions) in zip(rows, lesions)]


CONTRAST_BANDS = (("no lesion", 0.0, 0.0), ("drop < 2 HU", 0.0, 2.0), ("drop 2-4 HU", 2.0, 4.0),
                  ("drop 4-8 HU", 4.0, 8.0))


def by_lesion_contrast(rows: list[Scored], scorer: CpuScorer) -> dict:
    """The runtime on synthetic studies grouped by their strongest lesion's drop (the generator draws
    1-8 HU): where its detection limit sits. A band's region sensitivity counts its affected region-sides."""
    from . import synth
    _, calls = method_scores(rows, "runtime", scorer)
    truth = np.array([r.truth for r in rows]).astype(bool)
    auto, true = aspects_of(calls), aspects_of(truth)
    drops = np.array([max((lesion.drop_hu for lesion in synth.draw_spec(seed_of(r), pose="scanner").lesions),
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


SHIFT_BANDS = (("< 1 HU", 0.0, 1.0), ("1-1.5 HU", 1.0, 1.5), ("1.5-2 HU", 1.5, 2.0), ("2-3 HU", 2.0, 3.0),
               (">= 3 HU", 3.0, np.inf))
SHIFT_RATIO_FROM_HU = 1.5       # measured / expected only where the lesion should move the mean this far


def by_expected_shift(rows: list[Scored], scorer: CpuScorer, lesions: list[tuple]) -> dict:
    """Each affected region-side of the synthetic studies by the shift its lesion should give the
    region's mean HU: the lesion core's share of the region, in the experts' drawing (the runtime's
    regions), times the lesion's drop (the strongest on that side). The truth counts a region at 10 %
    whatever the drop, so the bands say where the detection limit sits against real heads' normal
    asymmetry; measured over expected, per region, says where the measure loses a lesion
    (engines/EXPERIMENTS.md, "Where the measure loses a lesion"). `lesions`: `lesions_in_expert_regions`."""
    _, calls = method_scores(rows, "runtime", scorer)
    items: list[tuple[float, bool, float, str]] = []      # (expected HU, found, HU darker, region)
    for row, called, (spec, fractions) in zip(rows, calls, lesions):
        for s, side in enumerate(SIDES):
            drop = max((lesion.drop_hu for lesion in spec.lesions if lesion.side == side), default=0.0)
            for r in np.flatnonzero(row.truth[:, s]):
                name = REGION_NAMES[r]
                items.append((fractions[name][1][s] * drop, bool(called[r, s]), -row.difference_hu[r, s], name))
    expected = np.array([i[0] for i in items], float)
    found = np.array([i[1] for i in items], bool)
    darker = np.array([i[2] for i in items], float)
    region = np.array([i[3] for i in items], str)
    bands = {}
    for band, lo, hi in SHIFT_BANDS:
        pick = (expected >= lo) & (expected < hi)
        hits, total = int(found[pick].sum()), int(pick.sum())
        bands[band] = {"region_sides": total, "found": hits,
                       "region_sensitivity": hits / total if total else float("nan"),
                       "region_sensitivity_ci": M.wilson(hits, total),
                       "darker_hu_median": float(np.nanmedian(darker[pick])) if total else float("nan")}
    strong = expected >= SHIFT_RATIO_FROM_HU
    ratio = {}
    for name in REGION_NAMES:
        pick = strong & (region == name)
        if pick.any():
            ratio[name] = float(np.nanmedian(darker[pick] / expected[pick]))
    return {"bands": bands, "measured_over_expected": ratio}


def real_studies(data: Path, reads_csv: Path, label_order: Path | None, scorer: CpuScorer, loo: bool,
                 shared: Path, fold_models: str | None = None) -> list[Scored]:
    """Every study of a reads file against its expert read (and region map, where there is one).
    `fold_models`: a model folder per subject, '{subject}' in the path (networks trained without
    that subject, e.g. export/train_realtex.sh); a subject without one is scored by `scorer`."""
    reads = load_reads(reads_csv, data)
    order = load_label_order(label_order) if label_order else None
    mapped = [r.study for r in reads if r.map is not None]
    if order is None and mapped:
        raise UsageError(f"{reads_csv}: study {mapped[0]} has an expert region map: give the maps' "
                         f"--label-order file")
    folds = atlas_folds(reads, order, scorer, shared) if loo else {}
    scorers = fold_scorers(reads, fold_models, scorer)
    rows = []
    for read in reads:
        subject_scorer = scorers.get(read.subject, scorer)
        with named(f"study {read.study}"), fold_segmenter(subject_scorer, folds, read.subject):
            study = read_study(read.image)
            expert = expert_map_of(read, study, order) if order is not None and read.map is not None else None
            res = subject_scorer.score(study)
        dice, per = None, None
        if expert is not None:
            ours = to_study_grid(study, res.alignment, res.grid, res.labels)
            zs = labelled_slices(expert)
            dice, per = M.mean_dice(ours[zs], expert[zs])
        rows.append(replace(scored(read.study, res, read.truth(), dice, per),
                            rule=subject_scorer.models.classify_density))
        print(f"{read.study}: expert {read.aspects} auto {res.score.aspects} "
              f"({', '.join(res.score.affected) or 'none'})" + (f" dice {dice:.3f}" if dice is not None else ""),
              flush=True)
    return rows


def fold_scorers(reads, fold_models: str | None, scorer: CpuScorer) -> dict[str, CpuScorer]:
    """A scorer per subject from `fold_models` ('{subject}' in the path), where that folder exists:
    a complete model folder, or a kept fold (export.folds) merged onto the scorer's own set."""
    if not fold_models:
        return {}
    scorers = {}
    shipped = scorer.models.segment_coarse.path.parent
    for subject in sorted({r.subject for r in reads}):
        folder = Path(fold_models.format(subject=subject))
        if folder.is_dir():
            scorers[subject] = CpuScorer(complete_folder(folder, shipped), threads=scorer.threads)
    return scorers


def loo_mode(mode: str, fold_models: str | None) -> str:
    return f"{mode}_loo" if fold_models else f"{mode}_loo_atlas"


RESULT_FILES = ("metrics.json", "table.txt", "bland_altman.png", "score_scatter.png")


def write_tables(out: Path, metrics: dict, table: str, plot_title: str | None = None) -> None:
    """An evaluation's files: metrics.json for machines, table.txt for people, the two plots where
    there are scores to plot. Made aside, then put in place together, so that `out` never holds one
    run's table beside another run's plots (other files there, such as kept studies, stay)."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
        (staging / "table.txt").write_text(table + "\n")
        if plot_title and metrics.get("_pred") and len(metrics["_pred"]) > 1:
            plots(np.array(metrics["_pred"]), np.array(metrics["_true"]), staging, plot_title)
        for name in RESULT_FILES:
            if (staging / name).exists():
                os.replace(staging / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_results(mode: str, result: dict, out: Path, model_dir: Path | None) -> None:
    """Tables and plots to `out`; with a `model_dir`, the headline numbers into each of its cards
    too, so that a deployed model carries its own evidence."""
    write_tables(out, result, table_text(result), plot_title=mode)
    if model_dir is None:
        return
    for card_path, card in cards(model_dir).items():
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
        out[method] = {**{g: {k: M.rounded(regions[g][k]) for k in ("sensitivity", "specificity", "auc")}
                          for g in ("subcortical", "cortical", "all")},
                       "dichotomised_accuracy": M.rounded(sc["dichotomised_le6"]["accuracy"]),
                       "dichotomised_accuracy_ci": [M.rounded(v) for v in sc["dichotomised_le6"]["accuracy_ci"]],
                       "dichotomised_specificity": M.rounded(sc["dichotomised_le6"]["specificity"]),
                       "mae": M.rounded(sc["mae"]), "within_1": M.rounded(sc["within_1"]),
                       "icc": M.rounded(sc["icc_2_1"])}
    if result.get("studies"):      # scores only: the per-region evidence stays in metrics.json
        out["studies"] = {k: {"true": v["true"], "auto": v["auto"]} for k, v in result["studies"].items()}
    return out


def stability_run(args, scorer: CpuScorer) -> None:
    """export.stability on a reads file; results to build/eval/stability/ (not into the cards)."""
    from . import stability
    reads = load_reads(args.reads, args.data or args.shared / "real")
    order = load_label_order(args.label_order) if args.label_order else None
    folds = atlas_folds(reads, order, scorer, args.shared) if args.loo else {}
    rows = stability.run(reads, scorer, folds, fold_scorers(reads, args.fold_models, scorer))
    total = stability.summary(rows)
    text = stability.table_text(rows, total)
    write_tables(args.out or Path("build/eval/stability"), {"rows": rows, "summary": total}, text)
    print(text)


# Synthetic studies a mode makes by default: the held-out set of the recorded tables, and the
# calibration set the shipped rule was chosen on (its check's seeds start after them).
DEFAULT_STUDIES = {"studies": 24, "calibrate": 40}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("cases", "studies", "real", "calibrate", "stability"))
    p.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, default=None, help="cases: the .npz folder; real: the studies' folder")
    p.add_argument("--reads", type=Path, default=DEV_READS,
                   help="real, stability: the expert reads (default: the three development studies)")
    p.add_argument("--label-order", type=Path, default=None,
                   help="the expert maps' label order (default: the development set's, for its reads file only)")
    p.add_argument("--loo", action="store_true",
                   help="real, stability: leave-one-subject-out atlases (the cards' real_loo with --fold-models, "
                        "else real_loo_atlas)")
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--n", type=at_least(1), default=None,
                   help="synthetic studies to make (studies: 24, calibrate: 40, as recorded and shipped)")
    p.add_argument("--check", type=at_least(0), default=0,
                   help="calibrate: score the rule on this many further calibration studies, never used to choose it")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default build/eval/<mode>); calibrate keeps its scored studies there")
    p.add_argument("--fold-models", default=None,
                   help="real, stability: a model folder per subject, e.g. engines/folds/{subject} "
                        "(its networks never saw that subject; a kept fold is merged onto --models)")
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
    if args.n is None:
        args.n = DEFAULT_STUDIES.get(args.mode, 0)
    args.label_order = label_order_file(args.reads, args.label_order)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.mode in ("studies", "calibrate") or args.loo:
        shared_data(args.shared)
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
        lesions = lesions_in_expert_regions(rows, args.shared, args.models / "region_atlas.npz")
        if args.truth == "expert":
            rows = in_expert_regions(rows, lesions)
        result = summarise(rows, scorer, dice_against="the synthetic ground truth (MNI atlas regions), every slice")
        result["by_lesion_contrast"] = by_lesion_contrast(rows, scorer)
        result["by_expected_shift"] = by_expected_shift(rows, scorer, lesions)
    else:
        rows = real_studies(args.data or args.shared / "real", args.reads, args.label_order, scorer, args.loo,
                            args.shared, args.fold_models)
        result = summarise(rows, scorer)
    # A card's "real_loo" means nothing in the set saw the subject; without fold models only the atlas
    # was left out, and the shipped networks saw every development subject.
    mode = (loo_mode(args.mode, args.fold_models) if args.loo else f"{args.mode}_expert_truth"
            if args.truth == "expert" else f"{args.mode}_elderly" if args.elderly else args.mode)
    out = args.out or Path("build/eval") / mode
    cards_dir, left_alone = card_folder(args)
    write_results(mode, result, out, cards_dir)
    print(table_text(result))
    if left_alone:
        print(f"\n{left_alone}: the model cards were left as they are")


def card_folder(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The model folder whose cards take this run's headline numbers, or None and why not."""
    if args.no_cards:
        return None, ""
    if args.mode == "real" and not is_dev_set(args.reads):
        return None, f"{args.reads} is not the development set the cards record"
    if args.models.resolve() == INSTALLED_MODEL_DIR.resolve():
        return None, f"{args.models} is an installed model set, which only a new release changes"
    return args.models, ""


if __name__ == "__main__":
    sys.exit(exit_code_of(main))
