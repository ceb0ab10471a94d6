"""CPU benchmarks per stage and for the whole study (pytest-benchmark).

    python -m pytest benchmarks --benchmark-enable --benchmark-json build/bench_cpu.json

The bundled study is 512 x 512 x 26 slices of 5 mm. In the default test run
(--benchmark-disable) each body runs once, as a smoke test.
"""

from __future__ import annotations

import pytest

from runtime.align import align
from runtime.patches import build_batch
from runtime.pipeline import DEFAULT_STUDY, Scorer
from runtime.read import read_study
from runtime.resample import model_grid, resample, window
from runtime.segment import segment
from runtime.strip import brain_mask


@pytest.fixture(scope="module")
def scorer():
    return Scorer()


@pytest.fixture(scope="module")
def stages(scorer):
    study = read_study(DEFAULT_STUDY)
    al = align(study)
    grid = model_grid(study, al, scorer.models.grid)
    hu = resample(study, al, grid)
    brain = brain_mask(hu, grid.spacing[0])
    image = window(hu, brain, *scorer.models.window)
    seg = segment(image, scorer.engines["segment_coarse"], scorer.engines["segment_fine"])
    return {"study": study, "align": al, "grid": grid, "hu": hu, "image": image, "labels": seg.labels}


def test_bench_read(benchmark):
    benchmark.pedantic(read_study, args=(DEFAULT_STUDY,), rounds=5, iterations=1)


def test_bench_align(benchmark, stages):
    benchmark.pedantic(align, args=(stages["study"],), rounds=3, iterations=1)


def test_bench_resample(benchmark, stages):
    benchmark.pedantic(resample, args=(stages["study"], stages["align"], stages["grid"]), rounds=5, iterations=1)


def test_bench_skull_strip(benchmark, stages):
    benchmark.pedantic(brain_mask, args=(stages["hu"], 0.5), rounds=5, iterations=1)


def test_bench_segment(benchmark, scorer, stages):
    benchmark.pedantic(segment, args=(stages["image"], scorer.engines["segment_coarse"],
                                      scorer.engines["segment_fine"]), rounds=3, iterations=1)


def test_bench_batch(benchmark, scorer, stages):
    card = scorer.models.classify_cortical
    benchmark.pedantic(build_batch, args=(stages["image"], stages["labels"], card.regions, card.crop),
                       rounds=5, iterations=1)


def test_bench_classify(benchmark, scorer, stages):
    from runtime.classify import classify
    eng = scorer.engines["classify_cortical"]
    batch = build_batch(stages["image"], stages["labels"], eng.card.regions, eng.card.crop)
    benchmark.pedantic(classify, args=(eng, batch), rounds=5, iterations=1)


def test_bench_whole_study(benchmark, scorer):
    result = benchmark.pedantic(scorer.score, args=(DEFAULT_STUDY,), rounds=3, iterations=1)
    assert 0 <= result.score.aspects <= 10
