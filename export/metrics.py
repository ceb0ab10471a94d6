"""The paper's evaluation metrics, in numpy (no sklearn dependency)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction)."""
    p, y = np.asarray(p, float), np.asarray(y, int)
    pos, neg = (y == 1).sum(), (y == 0).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(p)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def confusion(pred: np.ndarray, truth: np.ndarray) -> dict:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, tn = int((pred & truth).sum()), int((~pred & ~truth).sum())
    fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
    n = max(1, tp + tn + fp + fn)
    return {"sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "accuracy": (tp + tn) / n, "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when neither map has it."""
    p, t = pred == label, truth == label
    denom = int(p.sum()) + int(t.sum())
    return 2.0 * float((p & t).sum()) / denom if denom else float("nan")


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
