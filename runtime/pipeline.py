"""One study, start to finish: read -> align -> resample/strip -> segment -> batch
-> classify -> score. `Scorer` loads the engines once, so a console or a
benchmark can score many studies without paying start-up again.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .align import Alignment, align
from .classify import Classification, classify
from .engine import Engine, OnnxRuntimeEngine
from .errors import DeviceUnavailable, NotAHead
from .modelcard import DEFAULT_MODEL_DIR, ModelSet, load_model_set
from .patches import PatchBatch, build_batch
from .read import Study, read_study
from .resample import ModelGrid, model_grid, resample, window
from .score import Score, make_calls, score
from .segment import Segmentation, segment
from .strip import brain_mask

DEFAULT_STUDY = Path(__file__).resolve().parent / "data" / "default_study.nii.gz"
MIN_BRAIN_ML = 200.0
LOW_SYMMETRY = 0.5


@dataclass(frozen=True)
class StudyResult:
    source: str
    metadata: dict
    warnings: tuple[str, ...]
    alignment: Alignment
    grid: ModelGrid
    score: Score
    timings: dict[str, float]                # seconds per stage
    models: tuple[dict, ...]                 # name, version, sha256 of every model used
    hu: np.ndarray = field(repr=False)       # model-grid HU, for the report's images
    labels: np.ndarray = field(repr=False)   # model-grid region labels
    classifications: tuple[Classification, ...] = field(repr=False, default=())
    batches: tuple[PatchBatch, ...] = field(repr=False, default=())


class Scorer:
    """The CPU path (ONNX Runtime). `make_scorer` picks this or the GPU path."""

    device = "cpu"

    def __init__(self, model_dir: str | os.PathLike = DEFAULT_MODEL_DIR):
        self.models: ModelSet = load_model_set(model_dir)
        self.engines: dict[str, Engine] = {card.role: OnnxRuntimeEngine(card) for card in self.models.cards}

    def score(self, source: str | os.PathLike | Study) -> StudyResult:
        timings: dict[str, float] = {}
        with _timed(timings, "read"):
            study = source if isinstance(source, Study) else read_study(source)
        with _timed(timings, "align"):
            alignment = align(study)
        with _timed(timings, "resample"):
            grid = model_grid(study, alignment, self.models.grid)
            hu = resample(study, alignment, grid)
        with _timed(timings, "skull_strip"):
            brain = brain_mask(hu, grid.spacing[0])
            brain_ml = brain_volume_ml(study, int(brain.sum()), grid)
            image = window(hu, brain, *self.models.window)
        with _timed(timings, "segment"):
            seg: Segmentation = segment(image, self.engines["segment_coarse"], self.engines["segment_fine"])
        batches, results = [], []
        for role in CLASSIFIER_ROLES:
            engine = self.engines[role]
            with _timed(timings, "batch"):
                batch = build_batch(image, seg.labels, engine.card.regions, engine.card.crop)
            with _timed(timings, "classify"):
                results.append(classify(engine, batch))
            batches.append(batch)
        with _timed(timings, "score"):
            final = score_batches(batches, results)
        return study_result(study, alignment, grid, hu, seg.labels, brain_ml, final, timings, self.models, self.device,
                            tuple(results), tuple(batches))


CLASSIFIER_ROLES = ("classify_subcortical", "classify_cortical")


def brain_volume_ml(study: Study, voxels: int, grid: ModelGrid) -> float:
    """Brain volume from its model-grid voxel count; refuses a study with too little brain."""
    brain_ml = voxels * float(np.prod(grid.spacing)) / 1000.0
    if brain_ml < MIN_BRAIN_ML:
        raise NotAHead(f"{study.source}: only {brain_ml:.0f} mL of brain found after skull stripping; "
                       "is this a head CT covering the basal ganglia?")
    return brain_ml


def score_batches(batches, results) -> Score:
    """Per-region calls from each classifier's batch, then the ASPECTS."""
    probs, assessable, thresholds = {}, {}, {}
    for batch, result in zip(batches, results):
        for b, name in enumerate(batch.regions):
            probs[name] = tuple(result.probability[b])
            assessable[name] = batch.assessable[b]
            thresholds[name] = result.threshold
    return score(make_calls(probs, assessable, thresholds))


def study_result(study: Study, alignment: Alignment, grid: ModelGrid, hu: np.ndarray, labels: np.ndarray,
                 brain_ml: float, final: Score, timings: dict, models: ModelSet, device: str,
                 results: tuple, batches: tuple) -> StudyResult:
    """The one place a StudyResult is made, for the CPU and the GPU path alike."""
    warnings = list(study.warnings)
    if alignment.symmetry < LOW_SYMMETRY:
        warnings.append(f"head symmetry after alignment is low ({alignment.symmetry:.2f}): check the alignment "
                        "in the key-slice images before trusting the score")
    if final.not_assessed:
        warnings.append(f"regions not found, not scored: {', '.join(final.not_assessed)}")
    timings.setdefault("total", sum(timings.values()))
    return StudyResult(
        source=study.source, metadata={**study.metadata, "brain_ml": round(brain_ml, 1),
                                       "runtime_version": __version__, "device": device},
        warnings=tuple(warnings), alignment=alignment, grid=grid, score=final, timings=timings,
        models=tuple({"role": c.role, "name": c.name, "version": c.version, "sha256": c.sha256}
                     for c in models.cards),
        hu=hu, labels=labels, classifications=results, batches=batches)


def make_scorer(model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, device: str = "cpu"):
    """The scorer for `device`: 'cpu' (ONNX Runtime) or 'gpu' (TensorRT + CUDA kernels).
    The GPU path raises DeviceUnavailable with the reason when this machine cannot run it."""
    if device == "cpu":
        return Scorer(model_dir)
    if device == "gpu":
        from .gpu.pipeline import GpuScorer
        return GpuScorer(model_dir)
    raise DeviceUnavailable(f"unknown device {device!r}; use cpu or gpu")


def score_study(path: str | os.PathLike, model_dir: str | os.PathLike = DEFAULT_MODEL_DIR,
                device: str = "cpu") -> StudyResult:
    """Python API: score one study with the shipped models."""
    return make_scorer(model_dir, device).score(path)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0

