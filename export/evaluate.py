"""Evaluate the shipped models with the paper's metrics (Table 1 and agreement).

    python -m export.evaluate cases   --data build/data/test          # networks alone, held-out cases
    python -m export.evaluate studies --shared ../shared/data --n 24   # whole runtime, synthetic studies
    python -m export.evaluate real    --real ../shared/data/real       # whole runtime, the two real studies

Per region, cortical, subcortical and all: sensitivity, specificity, accuracy,
AUC; dichotomised ASPECTS (> 6 vs <= 6); ICC(2,1), Spearman and Bland-Altman
of the score, with the Bland-Altman plot and score scatter as PNGs. Results go
to build/eval/<mode>/metrics.json and into each model card's held_out metrics.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from runtime.modelcard import DEFAULT_MODEL_DIR, load_model_set
from runtime.pipeline import Scorer
from runtime.regions import CORTICAL, REGION_NAMES, SUBCORTICAL, label_id
from runtime.segment import segment

from . import metrics as M

STUDY_SEED0 = 200_000


def region_table(prob: np.ndarray, truth: np.ndarray, threshold: np.ndarray) -> dict:
    """prob, truth: (cases, 10 regions, 2 sides); threshold per region."""
    pred = prob >= threshold[None, :, None]
    table = {}
    groups = {**{n: [i] for i, n in enumerate(REGION_NAMES)}, "subcortical": list(SUBCORTICAL),
              "cortical": list(CORTICAL), "all": list(range(10))}
    for name, idx in groups.items():
        p, t, y = pred[:, idx].ravel(), truth[:, idx].ravel(), prob[:, idx].ravel()
        table[name] = {**M.confusion(p, t), "auc": M.auc(y, t.astype(int))}
    return table


def score_agreement(pred: np.ndarray, truth: np.ndarray) -> dict:
    dich = M.confusion(pred <= 6, truth <= 6)    # "positive" = ASPECTS <= 6 (large infarct)
    return {"dichotomised_le6": dich, "icc_2_1": M.icc_2_1(pred, truth), "spearman": M.spearman(pred, truth),
            "bland_altman": M.bland_altman(pred, truth), "exact_agreement": float((pred == truth).mean()),
            "n": int(len(pred))}


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


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict]:
    per = {}
    for r, name in enumerate(REGION_NAMES):
        for side in ("left", "right"):
            lab = label_id(r, side)
            p, t = pred == lab, truth == lab
            if t.sum() + p.sum():
                per[f"{side} {name}"] = float(2 * (p & t).sum() / (p.sum() + t.sum()))
    return float(np.mean(list(per.values()))), per


# ---------------------------------------------------------------- modes

def eval_cases(data: Path, scorer: Scorer) -> dict:
    """Networks alone on held-out model-space cases: the cascade's Dice, DA-Net on true-region crops."""
    files = sorted(data.glob("case_*.npz"))
    dices, probs, truths = [], [], []
    cls = {"classify_subcortical": SUBCORTICAL, "classify_cortical": CORTICAL}
    for f in files:
        with np.load(f) as d:
            image05 = d["image1"].astype(np.float32).repeat(2, axis=1).repeat(2, axis=2)
            seg = segment(image05, scorer.engines["segment_coarse"], scorer.engines["segment_fine"])
            dices.append(mean_dice(seg.labels[:, ::2, ::2], d["labels1"])[0])
            p = np.zeros((10, 2))
            for role, idx in cls.items():
                eng = scorer.engines[role]
                p[list(idx)] = eng.run({eng.card.inputs[0].name: d["pairs"][list(idx)].astype(np.float32)})[
                    eng.card.outputs[0].name]
            probs.append(p)
            truths.append(d["affected"])
    return _summarise(np.array(probs), np.array(truths), scorer, {"dice_mean": float(np.mean(dices)),
                                                                 "dice_min_case": float(np.min(dices))})


def _summarise(prob, truth, scorer: Scorer, extra: dict, scores=None) -> dict:
    thr = np.array([_threshold(scorer, n) for n in REGION_NAMES])
    pred_aff = prob >= thr[None, :, None]
    auto = scores if scores is not None else np.min(10 - pred_aff.sum(axis=1), axis=1)
    true = np.min(10 - truth.sum(axis=1), axis=1)
    return {"cases": int(len(prob)), **extra, "regions": region_table(prob, truth, thr),
            "score": score_agreement(np.asarray(auto, float), true.astype(float)),
            "_pred": np.asarray(auto).tolist(), "_true": true.tolist()}


def _threshold(scorer: Scorer, region: str) -> float:
    for c in scorer.models.cards:
        if region in c.regions:
            return c.threshold
    raise KeyError(region)


def eval_studies(shared: Path, scorer: Scorer, n: int) -> dict:
    """The whole runtime, file in to score out, on synthetic studies with real-world poses."""
    from . import synth
    phantom = synth.load_phantom(shared)
    probs, truths, scores, dices = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            spec = synth.draw_spec(STUDY_SEED0 + i, pose="scanner")
            case = synth.make_case(phantom, spec)
            grid, shape = synth.scanner_grid(spec)
            hu, _ = synth.render(phantom, case, grid, shape, with_labels=False)
            path = Path(tmp) / f"study_{i:03d}.nii.gz"
            synth.write_study(path, hu, grid)
            res = scorer.score(path)
            p = np.zeros((10, 2))
            for c in res.score.calls:
                p[REGION_NAMES.index(c.region), 0 if c.side == "left" else 1] = c.probability or 0.0
            probs.append(p)
            truths.append(np.array([case.affected[r] for r in REGION_NAMES]))
            scores.append(res.score.aspects)
            # Ground-truth labels on the runtime's own model grid, through its recovered pose.
            to_world = res.alignment.matrix @ res.grid.index_to_model
            dices.append(mean_dice(res.labels, synth.render_labels(phantom, case, to_world, res.grid.shape))[0])
            print(f"study {i}: true {case.aspects} auto {res.score.aspects} dice {dices[-1]:.3f} "
                  f"{res.timings['total']:.1f}s", flush=True)
    return _summarise(np.array(probs), np.array(truths), scorer,
                      {"dice_mean": float(np.mean(dices)), "dice_min_case": float(np.min(dices))}, scores)


EXPERT_READS = {"sub003": {"aspects": 9, "affected": ("right L",)}, "sub005": {"aspects": 10, "affected": ()}}


def eval_real(real: Path, scorer: Scorer) -> dict:
    """Both real studies against their expert reads. (The authors' region maps sit on a
    skull-stripped image, which the reader refuses as no head, so no region Dice here.)"""
    out = {}
    for sub, read in EXPERT_READS.items():
        res = scorer.score(real / f"{sub}_im.nii.gz")
        out[sub] = {"expert": {"aspects": read["aspects"], "affected": list(read["affected"])},
                    "auto": {"aspects": res.score.aspects, "affected": list(res.score.affected),
                             "symmetry": res.alignment.symmetry, "seconds": res.timings["total"]}}
        print(sub, json.dumps(out[sub]["auto"]), flush=True)
    return out


def write_results(mode: str, result: dict, out: Path, model_dir: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if "_pred" in result:
        plots(np.array(result["_pred"]), np.array(result["_true"]), out, mode)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    # Copy the headline numbers into every card so a deployed model carries its own evidence.
    for card_path in sorted(model_dir.glob("*.json")):
        card = json.loads(card_path.read_text())
        if "role" not in card:
            continue
        held = card.setdefault("metrics", {}).setdefault("held_out", {})
        held[mode] = _headline(mode, result, card)
        card_path.write_text(json.dumps(card, indent=2) + "\n")


def _headline(mode: str, result: dict, card: dict) -> dict:
    if mode == "real":
        return {k: {"expert": v["expert"]["aspects"], "auto": v["auto"]["aspects"]} for k, v in result.items()}
    group = {"classify_subcortical": "subcortical", "classify_cortical": "cortical"}.get(card["role"], "all")
    r = result["regions"][group]
    return {"cases": result["cases"], "dice_mean": round(result["dice_mean"], 4),
            "region_group": group, **{k: round(r[k], 4) for k in ("sensitivity", "specificity", "accuracy", "auc")},
            "dichotomised_accuracy": round(result["score"]["dichotomised_le6"]["accuracy"], 4),
            "icc": round(result["score"]["icc_2_1"], 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("cases", "studies", "real"))
    p.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--data", type=Path, default=Path("build/data/test"))
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--real", type=Path, default=Path("../shared/data/real"))
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    load_model_set(args.models)
    scorer = Scorer(args.models)
    if args.mode == "cases":
        result = eval_cases(args.data, scorer)
    elif args.mode == "studies":
        result = eval_studies(args.shared, scorer, args.n)
    else:
        result = eval_real(args.real, scorer)
    write_results(args.mode, result, args.out or Path("build/eval") / args.mode, args.models)
    summary = {k: v for k, v in result.items() if not k.startswith("_") and k != "regions"}
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
