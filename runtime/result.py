"""What one scored study is, for the CPU and the GPU path alike: the frozen
StudyResult, and the steps after the networks that both paths share (the brain
volume check, the calls and the score)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import __version__
from .align import Alignment
from .classify import Classification
from .density import DensityMap
from .errors import NotAHead
from .hyperdense import Hyperdensity, look_first
from .modelcard import ModelSet
from .patches import PatchBatch
from .read import Study
from .read.series import ADULT_YEARS
from .resample import ModelGrid
from .score import Score, make_calls, score
from .segment import Segmentation

MIN_BRAIN_ML = 200.0
MAX_BRAIN_ML = 2600.0          # more than any skull holds: a phantom or a body, not a head
LOW_SYMMETRY = 0.5
CLASSIFIER_ROLES = ("classify_subcortical", "classify_cortical")
# Every path fills these stages, in this order; "total" is the wall clock from file to score.
STAGES = ("read", "align", "preprocess", "segment", "batch", "classify", "score", "total")


@dataclass(frozen=True)
class StudyResult:
    source: str
    metadata: dict
    warnings: tuple[str, ...]
    alignment: Alignment
    grid: ModelGrid
    score: Score
    timings: tuple[tuple[str, float], ...]   # (stage, seconds) in STAGES order
    models: tuple[dict, ...]                 # role, name, version, sha256 of every model used
    hu: np.ndarray = field(repr=False)       # model-grid HU, for the report's images
    labels: np.ndarray = field(repr=False)   # model-grid region labels
    asymmetry_hu: np.ndarray = field(repr=False)  # model-grid HU minus mirror (runtime.density): the heat map
    hyperdense: Hyperdensity = field(repr=False)  # tissue brighter than its mirror: look before using the score
    classifications: tuple[Classification, ...] = field(repr=False, default=())
    batches: tuple[PatchBatch, ...] = field(repr=False, default=())
    source_images: tuple = field(repr=False, default=())    # DICOM headers of the source slices
    # A volume input (no DICOM source images): its HU and index -> LPS affine, from which the report
    # can make a CT series with new UIDs for DICOM outputs to reference (runtime.dicom_out).
    volume: tuple[np.ndarray, np.ndarray] | None = field(repr=False, default=None)

    @property
    def timings_s(self) -> dict[str, float]:
        return dict(self.timings)

    @property
    def weak_fit(self) -> tuple[str, ...]:
        """What fitted this scan weakly ("alignment", "atlas fit"): the region outlines need checking."""
        return tuple(name for name, weak in (("alignment", self.alignment.symmetry < LOW_SYMMETRY),
                                             ("atlas fit", bool(self.metadata.get("atlas_second_try")))) if weak)

    @property
    def source_limits(self) -> tuple[str, ...]:
        """What about the scored series makes its density comparison less sure ("lossy-compressed", "sharp
        kernel", "named a contrast study"; runtime.read.series.series_limits)."""
        return tuple(self.metadata.get("source_limits", ()))

    @property
    def child_years(self) -> float | None:
        """The patient's age where the header gives one under ADULT_YEARS: every model here is adult."""
        years = self.metadata.get("patient_age_years")
        return years if years is not None and years < ADULT_YEARS else None


def check_brain_volume(study: Study, brain_ml: float) -> float:
    """Refuses a study with too little brain to hold the ASPECTS regions."""
    if brain_ml < MIN_BRAIN_ML:
        raise NotAHead(f"{study.source}: only {brain_ml:.0f} mL of brain found after skull stripping; "
                       "is this a head CT covering the basal ganglia?")
    if brain_ml > MAX_BRAIN_ML:
        raise NotAHead(f"{study.source}: {brain_ml:.0f} mL of brain-density tissue inside the skull, more than a "
                       f"head holds ({MAX_BRAIN_ML:.0f} mL); is this a head CT?")
    return brain_ml


def score_study(batches, results, densities: DensityMap, models: ModelSet) -> Score:
    """Per-region calls from the classifiers and the density measure, then the ASPECTS."""
    probs, assessable, thresholds = {}, {}, {}
    for batch, result in zip(batches, results):
        for b, name in enumerate(batch.regions):
            probs[name] = tuple(result.probability[b])
            assessable[name] = batch.assessable[b]
            thresholds[name] = result.threshold
    return score(make_calls(probs, assessable, thresholds, densities.regions, models.classify_density))


def study_result(study: Study, alignment: Alignment, grid: ModelGrid, hu: np.ndarray, seg: Segmentation,
                 densities: DensityMap, hyperdense: Hyperdensity, brain_ml: float, final: Score,
                 timings: dict[str, float], models: ModelSet, device_label: str, results: tuple,
                 batches: tuple) -> StudyResult:
    """The one place a StudyResult is made. A hyperdense focus or metal is the first warning: it says
    the score may not hold at all."""
    warnings = look_first(hyperdense) + list(study.warnings)
    if alignment.symmetry < LOW_SYMMETRY:
        warnings.append(f"head symmetry after alignment is low ({alignment.symmetry:.2f}): check the alignment "
                        "in the key-slice images before trusting the score")
    if seg.registration_retried:
        warnings.append(f"the region atlas fitted only at a second, coarser try (template similarity "
                        f"{seg.template_ncc:.2f}): check the regions in the key-slice images before trusting the score")
    if final.not_assessed:
        warnings.append(f"regions not found, not scored: {', '.join(final.not_assessed)}; the score cannot see "
                        f"them, so its range goes down to {final.lowest} as if they were affected")
    missing = [s for s in STAGES if s not in timings]
    if missing:
        raise ValueError(f"stages not timed: {missing}")
    return StudyResult(
        source=study.source, metadata={**study.metadata, "brain_ml": round(brain_ml, 1),
                                       "template_similarity": None if seg.template_ncc is None
                                       else round(seg.template_ncc, 3),
                                       "atlas_second_try": seg.registration_retried,
                                       "runtime_version": __version__, "device": device_label},
        warnings=tuple(warnings), alignment=alignment, grid=grid, score=final,
        timings=tuple((s, float(timings[s])) for s in STAGES),
        models=tuple({"role": c.role, "name": c.name, "version": c.version,
                      "sha256": getattr(c, "sha256", None), "card_sha256": c.card_sha256}
                     for c in models.all_cards),
        hu=hu, labels=seg.labels, asymmetry_hu=densities.asymmetry_hu, hyperdense=hyperdense,
        classifications=results, batches=batches,
        source_images=study.source_images, volume=None if study.source_images else (study.hu, study.affine))
