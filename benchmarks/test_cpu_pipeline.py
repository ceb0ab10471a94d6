"""CPU benchmarks per stage and for the whole study (pytest-benchmark).

    python -m pytest benchmarks --benchmark-enable --benchmark-json build/bench_cpu.json

The bundled study is 512 x 512 x 26 slices of 5 mm. In the default test run
(--benchmark-disable) each body runs once, as a smoke test.
"""

from __future__ import annotations

import pytest

from runtime.align import align
from runtime.cpu import CpuScorer
from runtime.density import measure
from runtime.patches import build_batch
from runtime.preprocess import preprocess
from runtime.read import read_study
from runtime.resample import resample
from runtime.shipped import DEFAULT_STUDY
from runtime.strip import brain_mask


@pytest.fixture(scope="module")
def scorer():
    return CpuScorer()


@pytest.fixture(scope="module")
def stages(scorer):
    study = read_study(DEFAULT_STUDY)
    al = align(study)
    prep = preprocess(study, al, scorer.models.grid, scorer.models.window)
    labels = scorer.segmenter.segment(prep).labels
    return {"study": study, "align": al, "grid": prep.grid, "hu": prep.hu, "prep": prep, "image": prep.image,
            "labels": labels}


def test_bench_read(benchmark):
    benchmark.pedantic(read_study, args=(DEFAULT_STUDY,), rounds=5, iterations=1)


def test_bench_align(benchmark, stages):
    benchmark.pedantic(align, args=(stages["study"],), rounds=3, iterations=1)


def test_bench_preprocess(benchmark, scorer, stages):
    benchmark.pedantic(preprocess, args=(stages["study"], stages["align"], scorer.models.grid, scorer.models.window),
                       rounds=3, iterations=1)


def test_bench_resample(benchmark, stages):
    benchmark.pedantic(resample, args=(stages["study"], stages["align"], stages["grid"]), rounds=5, iterations=1)


def test_bench_skull_strip(benchmark, stages):
    benchmark.pedantic(brain_mask, args=(stages["hu"], 0.5), rounds=5, iterations=1)


def test_bench_segment(benchmark, scorer, stages):
    benchmark.pedantic(scorer.segmenter.segment, args=(stages["prep"],), rounds=3, iterations=1)


def test_bench_density(benchmark, scorer, stages):
    benchmark.pedantic(measure, args=(stages["hu"], stages["labels"], stages["grid"], scorer.models.classify_density),
                       rounds=3, iterations=1)


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
