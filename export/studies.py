"""Studies as the evaluation sees them, and the synthetic ones kept between runs.

A `Scored` row is one study's truth and the runtime's evidence, per region and side. Synthetic
scanner-pose studies take half a minute each to make and score, so each is kept (one .npz per
seed, with its model-grid HU and labels): an interrupted run resumes, a changed density measure is
re-measured from the kept HU, and changed networks re-classify it, without synthesis.
"""

from __future__ import annotations

import hashlib
import importlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.cpu import CpuScorer
from runtime.density import difference_table, measure
from runtime.errors import AspectsError
from runtime.hyperdense import look_first
from runtime.modelcard import DensityRuleCard
from runtime.regions import REGION_NAMES, SIDES
from runtime.resample import ModelGrid, window
from runtime.score import rule_calls

from .metrics import mean_dice
from .npz import save_npz

STUDY_SEED0 = 200_000
CALIBRATION_SEED0 = 300_000      # calibration studies: never the evaluation studies' seeds


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
    look_first: tuple[str, ...] | None = None     # runtime.hyperdense's warnings; None for a row kept before them


def scored(study: str, res, truth: np.ndarray, dice=None, dice_regions=None) -> Scored:
    """The row of one runtime result (`CpuScorer.score`), with the DA-Net thresholds it was called with."""
    shape = (len(REGION_NAMES), len(SIDES))
    p, d, c = np.zeros(shape), np.full(shape, np.nan), np.zeros(shape, bool)
    for call in res.score.calls:
        i, s = REGION_NAMES.index(call.region), SIDES.index(call.side)
        p[i, s] = call.probability or 0.0
        d[i, s] = np.nan if call.difference_hu is None else call.difference_hu
        c[i, s] = call.affected
    thr = {name: k.threshold for k in res.classifications for name in k.regions}
    network_threshold = np.array([thr[n] for n in REGION_NAMES]) if len(thr) == len(REGION_NAMES) else None
    return Scored(study, truth, p, d, c, dice, dice_regions, network_threshold,
                  look_first=tuple(look_first(res.hyperdense)))


def card_threshold(scorer: CpuScorer, region: str) -> float:
    """The DA-Net card's threshold for a region: what the network alone calls it at."""
    for c in scorer.models.cards:
        if region in c.regions:
            return c.threshold
    raise KeyError(region)


def synthetic_studies(shared: Path, scorer: CpuScorer, n: int, seed0: int, cache: Path,
                      elderly: bool = False) -> list[Scored]:
    """The whole runtime, file in to score out, on synthetic studies in real-world scanner poses.
    Each scored study is kept in `cache` (one .npz per seed) with its model-grid HU and labels, so an
    interrupted run resumes and a changed density measure is re-measured without re-synthesis; a
    study kept under other networks is re-classified from them (`is_current`), one kept under another
    atlas, grid or code that makes HU and labels is made again (`models_fingerprint`).
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
            if kept.exists() and is_current(kept, scorer, models):
                row = load_row(kept, scorer)
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
                save_npz(kept, refused=str(exc), models=models)
                continue
            # Ground-truth labels on the runtime's own model grid, through its recovered pose.
            to_world = res.alignment.matrix @ res.grid.index_to_model
            dice = mean_dice(res.labels, synth.render_labels(phantom, case, to_world, res.grid.shape))[0]
            rows.append(scored(f"synthetic_{seed0 + i}", res, truth, dice))
            save_row(kept, rows[-1], res, models)
            print(f"study {i}: true {case.aspects} auto {res.score.aspects} dice {dice:.3f} "
                  f"{res.timings_s['total']:.1f}s", flush=True)
    return rows


def seed_of(row: Scored) -> int:
    return int(row.study.rsplit("_", 1)[1])


# The modules a kept study's HU and labels come from, synthesis to atlas labels (a package: all its
# files). Once a change there went unnoticed: the kept studies were scored as if the old code had made them.
KEPT_CODE = ("export.synth", "runtime.read", "runtime.align", "runtime.preprocess", "runtime.resample",
             "runtime.strip", "runtime.atlas", "runtime.segment", "runtime.volume", "runtime.regions")


def code_fingerprint(modules: Sequence[str] = KEPT_CODE) -> str:
    """A digest of the source of `modules`: any edit, even a comment, counts as a change."""
    digest = hashlib.sha256()
    for name in modules:
        path = Path(importlib.import_module(name).__file__ or "")
        for source in sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]:
            digest.update(f"{name}/{source.name}".encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def models_fingerprint(scorer: CpuScorer) -> str:
    """What a kept study depends on: its HU and labels on the atlas's file, the grid and the code that
    made them (`code_fingerprint`); its probabilities on the networks' files (not on the window or
    the rule, which are applied again to the kept HU)."""
    models = scorer.models
    atlas = models.segment_atlas
    if atlas is None:
        labels = "no-atlas"
    else:
        making = hashlib.sha256(f"{models.grid!r}{code_fingerprint()}".encode())
        labels = f"{atlas.sha256}+{making.hexdigest()[:16]}"
    return ",".join([labels] + [c.sha256 for c in models.cards])


def kept_fingerprint(path: Path) -> str | None:
    with np.load(path) as d:
        return str(d["models"]) if "models" in d else None


def is_current(path: Path, scorer: CpuScorer, models: str) -> bool:
    """Whether a kept study holds for `models`, after re-classifying it where only the networks
    changed (a fold's DA-Net, a retrained one): its labels come from the same atlas, so both
    DA-Nets run again on its kept HU and labels, about a second against half a minute for
    synthesis and the whole runtime. The kept HU is float16 (steps of 0.03 HU at brain density,
    under a thousandth of the networks' window), so the probabilities are the runtime's within that.
    A study kept under another atlas, grid or making code, or scored without an atlas, is not
    current: it is made again."""
    kept = kept_fingerprint(path)
    if kept == models:
        return True
    labels = models.split(",")[0]
    if kept is None or labels == "no-atlas" or kept.split(",")[0] != labels:
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
                            else probability >= np.array([[card_threshold(scorer, n)] for n in REGION_NAMES]))
    record["models"] = models
    save_npz(path, **record)
    return True


def save_row(path: Path, row: Scored, res, models: str) -> None:
    brain = res.labels > 0
    save_npz(path, study=row.study, truth=row.truth, probability=row.probability,
             difference_hu=row.difference_hu, called=row.called, dice=np.nan if row.dice is None else row.dice,
             hu=np.where(brain, res.hu, 0).astype(np.float16), labels=res.labels,
             spacing=np.asarray(res.grid.spacing), models=models)


def load_row(path: Path, scorer: CpuScorer) -> Scored | None:
    """A kept study, its density differences measured again with the current measure."""
    rows = load_rows(path, [scorer.models.classify_density])
    return rows[0] if rows else None


def load_rows(path: Path, rules: Sequence[DensityRuleCard | None]) -> list[Scored]:
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
