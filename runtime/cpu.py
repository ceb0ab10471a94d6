"""The CPU path (ONNX Runtime): read -> align -> preprocess -> segment -> batch ->
classify -> density -> score. Loads the models once, so a console or a benchmark
can score many studies without paying start-up again."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np

from .align import align
from .atlas import AtlasSegmenter, load_atlas
from .classify import Classification, classify
from .density import measure
from .engine import Engine, cpu_engine, engine_version
from .hyperdense import find_hyperdense
from .modelcard import DEFAULT_MODEL_DIR, ModelSet, load_model_set
from .patches import PatchBatch, build_batch
from .preprocess import preprocess
from .read import Study, read_study, validate_study
from .result import CLASSIFIER_ROLES, StudyResult, check_brain_volume, score_study, study_result
from .segment import NetworkSegmenter, Segmenter
from .threads import resolve


class CpuScorer:
    def __init__(self, model_dir: str | os.PathLike = DEFAULT_MODEL_DIR, segmenter: str = "auto",
                 threads: int | None = None, engine: str = "onnxruntime"):
        """`segmenter`: "atlas", "network" (the VB-Net cascade) or "auto" (the atlas when the model
        set has one). `threads`: cores for every stage (default: runtime.threads.resolve).
        `engine`: one of runtime.engine.CPU_ENGINES."""
        self.models: ModelSet = load_model_set(model_dir)
        self.threads = resolve(threads)
        self.engines: dict[str, Engine] = {card.role: cpu_engine(card, engine, self.threads)
                                           for card in self.models.cards}
        self.device_label = f"cpu ({engine_version(engine)})"
        self.on_stage: Callable[[str], None] | None = None      # told each stage as it starts (progress)
        self.segmenter: Segmenter = make_segmenter(self.models, self.engines, segmenter)

    def score(self, source: str | os.PathLike | Study) -> StudyResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with self._stage(timings, "read"):
            if isinstance(source, Study):
                study = source
                validate_study(study)     # a Study built in code gets the same checks as a file
            else:
                study = read_study(source)
        with self._stage(timings, "align"):
            alignment = align(study)
        with self._stage(timings, "preprocess"):
            prep = preprocess(study, alignment, self.models.grid, self.models.window)
            brain_ml = check_brain_volume(study, prep.brain_ml)
        with self._stage(timings, "segment"):
            seg = self.segmenter.segment(prep)
            labels = seg.labels
        results, batches = self.classify(prep.image, labels, timings)
        with self._stage(timings, "score"):
            densities = measure(prep.hu, labels, prep.grid, self.models.classify_density)
            hyperdense = find_hyperdense(prep.hu, labels, prep.grid)
            final = score_study(batches, results, densities, self.models)
        timings["total"] = time.perf_counter() - t0
        return study_result(study, alignment, prep.grid, prep.hu, seg, densities, hyperdense, brain_ml, final,
                            timings, self.models, self.device_label, results, batches)

    def classify(self, image: np.ndarray, labels: np.ndarray, timings: dict[str, float]
                 ) -> tuple[tuple[Classification, ...], tuple[PatchBatch, ...]]:
        """Both DA-Nets on one windowed grid and its labels. Also what re-classifies a kept
        evaluation study when only the networks changed (export.evaluate)."""
        batches, results = [], []
        for role in CLASSIFIER_ROLES:
            engine = self.engines[role]
            with self._stage(timings, "batch"):
                batch = build_batch(image, labels, engine.card.regions, engine.card.crop)
            with self._stage(timings, "classify"):
                results.append(classify(engine, batch))
            batches.append(batch)
        return tuple(results), tuple(batches)

    def _stage(self, timings: dict[str, float], stage: str):
        if self.on_stage is not None:
            self.on_stage(stage)
        return _timed(timings, stage)


def make_segmenter(models: ModelSet, engines: dict[str, Engine], choice: str = "auto") -> Segmenter:
    if choice not in ("auto", "atlas", "network"):
        raise ValueError(f"segmenter must be auto, atlas or network, not {choice!r}")
    if choice == "network" or (choice == "auto" and models.segment_atlas is None):
        return NetworkSegmenter(engines["segment_coarse"], engines["segment_fine"])
    if models.segment_atlas is None:
        raise ValueError("this model set has no region atlas")
    return AtlasSegmenter(load_atlas(models.segment_atlas))


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
