"""The paper's evaluation metrics, in numpy (no sklearn dependency)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from runtime.regions import REGION_NAMES, SIDES, label_id


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction)."""
    p, y = np.asarray(p, float), np.asarray(y, int)
    pos, neg = (y == 1).sum(), (y == 0).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Counts and rates, each rate with its 95 % Wilson interval (`<rate>_ci`): on a few dozen
    studies one study moves accuracy by several points, and a reader must see that."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, tn = int((pred & truth).sum()), int((~pred & ~truth).sum())
    fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
    out: dict = {"tp": tp, "tn": tn, "fp": fp, "fn": fn}
    for rate, hits, total in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp),
                              ("accuracy", tp + tn, tp + tn + fp + fn)):
        out[rate] = hits / total if total else float("nan")
        out[f"{rate}_ci"] = wilson(hits, total)
    return out


def wilson(hits: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion: unlike the normal approximation it stays inside
    [0, 1] and is honest at 0 or n successes. (NaN, NaN) when there is nothing to count."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = hits / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when neither map has it."""
    p, t = pred == label, truth == label
    denom = int(p.sum()) + int(t.sum())
    return 2.0 * float((p & t).sum()) / denom if denom else float("nan")


def mean_dice(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict]:
    """Mean Dice over the region-sides present in either map, and each region-side's."""
    per = {f"{side} {name}": dice(pred, truth, label_id(r, side))
           for r, name in enumerate(REGION_NAMES) for side in SIDES}
    per = {k: v for k, v in per.items() if not np.isnan(v)}
    return float(np.mean(list(per.values()))), per


def rounded(v) -> float | None:
    """4 decimals for a card or metrics.json; None for a missing value (JSON has no NaN)."""
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), 4)


def icc_2_1(a: np.ndarray, b: np.ndarray) -> float:
    """ICC(2,1): two-way random effects, absolute agreement, single rater (Shrout & Fleiss)."""
    x = np.stack([np.asarray(a, float), np.asarray(b, float)], axis=1)
    n, k = x.shape
    grand = x.mean()
    ms_r = k * ((x.mean(axis=1) - grand) ** 2).sum() / (n - 1)
    ms_c = n * ((x.mean(axis=0) - grand) ** 2).sum() / (k - 1)
    sse = ((x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + grand) ** 2).sum()
    ms_e = sse / ((n - 1) * (k - 1))
    denom = ms_r + (k - 1) * ms_e + k * (ms_c - ms_e) / n
    return float((ms_r - ms_e) / denom) if denom > 0 else float("nan")


def bland_altman(pred: np.ndarray, truth: np.ndarray) -> dict:
    d = np.asarray(pred, float) - np.asarray(truth, float)
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return {"mean_difference": mean, "lower_limit": mean - 1.96 * sd, "upper_limit": mean + 1.96 * sd}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """Maximise Youden's J on validation data; ties to the threshold nearest 0.5."""
    cands = np.unique(np.concatenate([p, [0.5]]))
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return 0.5
    j = [(p[pos] >= t).mean() + (p[neg] < t).mean() - 1 - 1e-6 * abs(t - 0.5) for t in cands]
    return float(cands[int(np.argmax(j))])
