"""The evaluation (export.evaluate): its metrics and tables, its modes, the reads and label-order files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from export.evaluate import (
    borderline_summary,
    by_expected_shift,
    by_lesion_contrast,
    lesions_in_expert_regions,
    method_scores,
    summarise,
    table_text,
)
from export.realdata import DEV_SET, load_label_order, load_reads
from export.studies import Scored
from runtime.errors import NotAHead, UnreadableInput
from runtime.regions import REGION_NAMES, SUBCORTICAL, label_id
from tests.conftest import ROOT, SHARED_DATA


def test_shipped_dev_reads_and_label_order():
    reads = load_reads(DEV_SET / "reads.csv", SHARED_DATA / "real")
    by_study = {r.study: r for r in reads}
    assert sorted(by_study) == ["sub002", "sub002-native", "sub003", "sub003-native", "sub005", "sub005-native"]
    sub002 = by_study["sub002"]
    assert sub002.aspects == 5 and sub002.side == "left" and sub002.map is not None
    truth = sub002.truth()
    assert truth[:, 0].sum() == 5 and truth[:, 1].sum() == 0                  # (regions, [left, right])
    assert {REGION_NAMES[i] for i in np.flatnonzero(truth[:, 0])} == {"I", "L", "M2", "M3", "M6"}
    assert by_study["sub005-native"].map is None and not by_study["sub005"].truth().any()
    order = load_label_order(DEV_SET / "label_order.json")
    # The maps number C, IC, L, I: their 2 is the internal capsule, their 13 the left lentiform nucleus.
    assert order[2] == label_id(REGION_NAMES.index("IC"), "right")
    assert order[13] == label_id(REGION_NAMES.index("L"), "left")


READS_HEADER = "study,subject,image,map,aspects,side,affected\n"


@pytest.mark.parametrize("body, message", [
    ("study,image\nx,x.nii.gz\n", "reads.csv: no column aspects"),
    (READS_HEADER, "reads.csv: no reads in it"),
    (READS_HEADER + ",x,x.nii.gz,,10,,\n", "line 2: a read needs a study name and an image"),
    (READS_HEADER + "x,x,x.nii.gz,,ten,,\n", "line 2 (study x): ASPECTS 'ten' is not a whole number"),
    (READS_HEADER + "x,x,x.nii.gz,,8,left,L\n", "line 2 (study x): ASPECTS 8 != 10 - 1 affected regions"),
    (READS_HEADER + "x,x,x.nii.gz,,9,left,M9\n", "unknown regions ['M9']"),
    (READS_HEADER + "x,x,x.nii.gz,,9,up,M1\n", "side must be left, right or empty"),
    (READS_HEADER + "x,x,x.nii.gz,,9,,M1\n", "affected regions need the side they are on"),
    (READS_HEADER + "x,x,x.nii.gz,,10,,\nx,x,x.nii.gz,,10,,\n", "line 3: study x is read twice"),
    (READS_HEADER + "x,x,x.nii.gz,,10,,\ny,y,gone.nii.gz,,10,,\n", "study y: {tmp}/gone.nii.gz: no such file"),
    (READS_HEADER + "x,x,x.nii.gz,gone.nii.gz,10,,\n", "study x: {tmp}/gone.nii.gz: no such file"),
])
def test_reads_file_is_checked_whole_before_any_study_is_scored(tmp_path, body, message):
    """Every line is checked and every file found up front: a typo in the last line of a long set
    must not end the evaluation an hour in."""
    (tmp_path / "x.nii.gz").touch()
    reads = tmp_path / "reads.csv"
    reads.write_text(body)
    with pytest.raises(UnreadableInput, match=re.escape(message.format(tmp=tmp_path))):
        load_reads(reads, tmp_path)


def test_reads_file_that_is_not_there_is_unreadable_input(tmp_path):
    with pytest.raises(UnreadableInput, match="cannot read the reads file"):
        load_reads(tmp_path / "reads.csv", tmp_path)


@pytest.mark.parametrize("text, message", [
    ('{"regions": ["C"', "cannot read the label-order file"),
    ('{"regions": ["C", "IC", "L", "I", "M1", "M2", "M3", "M4", "M5", "M6"]}', "right_first_label"),
    ('{"regions": ["C", "IC"], "right_first_label": 1, "left_first_label": 11}', "must name each of"),
    ('{"regions": ["C", "IC", "L", "I", "M1", "M2", "M3", "M4", "M5", "M6"], "right_first_label": 1, '
     '"left_first_label": 5}', "must not overlap (right 1-10, left 5-14)"),
    ('{"regions": ["C", "IC", "L", "I", "M1", "M2", "M3", "M4", "M5", "M6"], "right_first_label": "one", '
     '"left_first_label": 11}', "ValueError"),
])
def test_label_order_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "order.json"
    path.write_text(text)
    with pytest.raises(UnreadableInput, match=re.escape(message)):
        load_label_order(path)


def test_maps_of_another_dataset_are_never_read_in_the_development_sets_label_order(tmp_path):
    """The development maps number C, IC, L, I; another dataset's may not, and a silently wrong
    order would give wrong Dice. Its label order is asked for, never assumed."""
    from export.evaluate import parse_args
    assert parse_args(["real"]).label_order == DEV_SET / "label_order.json"
    assert parse_args(["real", "--reads", str(tmp_path / "reads.csv")]).label_order is None
    given = tmp_path / "order.json"
    assert parse_args(["real", "--reads", str(tmp_path / "reads.csv"), "--label-order", str(given)]).label_order \
        == given


def test_a_region_map_off_its_images_grid_is_refused(tmp_path):
    import SimpleITK as sitk

    from export.realdata import Read, expert_map_of
    path = tmp_path / "map.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 64, 64), np.uint8)), str(path))
    read = Read("x", "x", tmp_path / "x.nii.gz", path, 10, None, frozenset())
    order = load_label_order(DEV_SET / "label_order.json")
    assert expert_map_of(read, SimpleNamespace(hu=np.zeros((30, 64, 64))), order).shape == (30, 64, 64)
    with pytest.raises(UnreadableInput, match=r"\(64, 64, 30\) voxels, its image \(64, 64, 31\)"):
        expert_map_of(read, SimpleNamespace(hu=np.zeros((31, 64, 64))), order)
    path.write_bytes(b"not an image")
    with pytest.raises(UnreadableInput, match="not a readable region map"):
        expert_map_of(read, SimpleNamespace(hu=np.zeros((30, 64, 64))), order)


def test_an_input_error_while_scoring_names_its_study_and_keeps_its_exit_code(tmp_path):
    from runtime.errors import named
    with pytest.raises(NotAHead, match="^study sub9: no brain found$") as exc:
        with named("study sub9"):
            raise NotAHead("no brain found")
    assert exc.value.exit_code == NotAHead.exit_code


@pytest.mark.parametrize("body, code, message", [
    (READS_HEADER + "x,x,x.nii.gz,,ten,,\n", 3, "ASPECTS 'ten' is not a whole number"),
    (READS_HEADER + "x,x,x.nii.gz,x.nii.gz,10,,\ny,y,x.nii.gz,,10,,\n", 2, "maps of at least two subjects"),
    (READS_HEADER + "x,x,x.nii.gz,x.nii.gz,10,,\n", 2, "study x has an expert region map: give the maps' "
                                                        "--label-order file"),
])
def test_bad_evaluation_input_ends_in_one_error_line_and_its_exit_code(tmp_path, body, code, message):
    (tmp_path / "x.nii.gz").touch()
    (tmp_path / "reads.csv").write_text(body)
    loo = ["--loo", "--label-order", str(DEV_SET / "label_order.json")] if "two subjects" in message else []
    run = subprocess.run([sys.executable, "-m", "export.evaluate", "real", "--data", str(tmp_path),
                          "--reads", str(tmp_path / "reads.csv"), "--out", str(tmp_path / "eval"), *loo],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == code
    assert run.stderr.startswith("error: ") and message in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "eval").exists()


def _row(name, truth_left, called_left, diff=None):
    truth = np.zeros((10, 2), bool)
    truth[list(truth_left), 0] = True
    called = np.zeros((10, 2), bool)
    called[list(called_left), 0] = True
    d = np.zeros((10, 2)) if diff is None else diff
    return Scored(name, truth, called.astype(float), d, called)


class _Models:
    classify_density = None
    cards = ()


class _Scorer:
    models = _Models()


def test_summary_metrics_are_the_papers(monkeypatch):
    monkeypatch.setattr("export.evaluate.card_threshold", lambda scorer, region: 0.5)
    rows = [_row("a", [0, 1], [0, 1]), _row("b", [], [4]), _row("c", range(6), range(6))]
    result = summarise(rows, _Scorer())
    net = result["methods"]["network"]
    assert net["regions"]["all"]["tp"] == 8 and net["regions"]["all"]["fp"] == 1
    assert net["regions"]["subcortical"]["sensitivity"] == 1.0
    assert net["score"]["mae"] == pytest.approx(1 / 3) and net["score"]["within_1"] == 1.0
    assert net["score"]["dichotomised_le6"]["accuracy"] == 1.0
    assert "dichotomised (<=6)" in table_text(result)
    assert "look_first" not in result        # rows kept before the check say nothing of it


def test_the_evaluation_counts_hyperdense_and_metal_warnings(monkeypatch):
    """On a set read for ischaemic stroke every such warning is a false alarm: a new real set measures
    how often the check fires."""
    from dataclasses import replace
    monkeypatch.setattr("export.evaluate.card_threshold", lambda scorer, region: 0.5)
    rows = [replace(_row("a", [0], [0]), look_first=()), replace(_row("b", [], []), look_first=("hyperdense ...",)),
            replace(_row("c", [1], [1]), look_first=())]
    result = summarise(rows, _Scorer())
    assert result["look_first"] == {"measured": 3, "studies": {"b": ["hyperdense ..."]}}
    assert "hyperdense tissue or metal found (runtime.hyperdense) in 1 of 3 studies: b;" in table_text(result)


def test_synthetic_studies_are_grouped_by_their_lesions_drop(monkeypatch):
    from export import synth
    monkeypatch.setattr("export.evaluate.card_threshold", lambda scorer, region: 0.5)

    def drop(seed):
        return max((x.drop_hu for x in synth.draw_spec(seed, pose="scanner").lesions), default=0.0)

    seeds = range(200_000, 200_100)
    none = next(s for s in seeds if drop(s) == 0)
    faint = next(s for s in seeds if 0 < drop(s) <= 2)
    clear = next(s for s in seeds if drop(s) > 4)
    rows = [_row(f"synthetic_{none}", [], []),
            _row(f"synthetic_{faint}", range(5), [0]),       # ASPECTS 5 scored 9: wrong side of the cut
            _row(f"synthetic_{clear}", range(4), range(4))]
    bands = by_lesion_contrast(rows, _Scorer())
    assert bands["no lesion"]["studies"] == 1 and bands["no lesion"]["dichotomised_correct"] == 1
    assert bands["drop < 2 HU"]["dichotomised_correct"] == 0
    assert bands["drop < 2 HU"]["region_sensitivity"] == pytest.approx(1 / 5)
    assert bands["drop 4-8 HU"]["region_sensitivity"] == 1.0 and bands["drop 2-4 HU"]["studies"] == 0
    assert "drop < 2 HU" in table_text({**summarise(rows, _Scorer()), "by_lesion_contrast": bands})


def test_affected_regions_are_grouped_by_the_shift_their_lesion_should_give(monkeypatch, shared_data):
    """Each affected region-side lands in one band, found as called; measured over expected is what
    the study's differences say it is (here half of what the lesion's share and drop predict)."""
    from export import synth
    monkeypatch.setattr("export.evaluate.card_threshold", lambda scorer, region: 0.5)
    seed = next(s for s in range(200_000, 200_100)
                if any(x.drop_hu > 4 and len(x.regions) >= 3 for x in synth.draw_spec(s, pose="scanner").lesions))
    spec = synth.draw_spec(seed, pose="scanner")
    phantom = synth.load_phantom(shared_data)
    case = synth.make_case(phantom, spec)
    fractions = synth.truth_in_regions(case.core, synth.expert_regions(phantom, ROOT / "engines" / "region_atlas.npz"))
    truth = np.array([case.affected[n] for n in REGION_NAMES])
    expected = np.zeros((10, 2))
    for s, side in enumerate(("left", "right")):
        drop = max((x.drop_hu for x in spec.lesions if x.side == side), default=0.0)
        expected[:, s] = [fractions[n][1][s] * drop for n in REGION_NAMES]
    called = truth & (np.arange(10) % 2 == 0)[:, None]        # every other affected region found
    row = Scored(f"synthetic_{seed}", truth, called.astype(float), -0.5 * expected, called)
    lesions = lesions_in_expert_regions([row], shared_data, ROOT / "engines" / "region_atlas.npz")
    shift = by_expected_shift([row], _Scorer(), lesions)
    bands = shift["bands"].values()
    assert sum(b["region_sides"] for b in bands) == truth.sum()
    assert sum(b["found"] for b in bands) == called.sum()
    strong = {REGION_NAMES[r] for r, s in zip(*np.nonzero(truth & (expected >= 1.5)))}
    assert strong and set(shift["measured_over_expected"]) == strong
    assert all(v == pytest.approx(0.5) for v in shift["measured_over_expected"].values())
    assert "by expected shift" in table_text({**summarise([row], _Scorer()), "by_expected_shift": shift})


def test_network_calls_use_the_thresholds_each_study_was_scored_with(monkeypatch):
    """A leave-one-out fold's DA-Net has its own card threshold; its studies are called with it."""
    monkeypatch.setattr("export.evaluate.card_threshold", lambda scorer, region: 0.5)
    truth = np.zeros((10, 2), bool)
    p = np.full((10, 2), 0.3)
    own = replace(Scored("fold", truth, p, np.zeros((10, 2)), np.zeros((10, 2), bool)),
                  network_threshold=np.full(10, 0.2))
    plain = Scored("shipped", truth, p, np.zeros((10, 2)), np.zeros((10, 2), bool))
    _, calls = method_scores([own, plain], "network", _Scorer())
    assert calls[0].all() and not calls[1].any()


def test_runtime_calls_use_the_rule_each_study_was_scored_with():
    """A leave-one-out fold has its own rule (calibrated with its own DA-Net); its study is called by it."""
    from runtime.modelcard import load_model_set
    shipped = load_model_set().classify_density
    truth = np.zeros((10, 2), bool)
    diffs, p = np.zeros((10, 2)), np.full((10, 2), 0.05)
    diffs[3, 0], diffs[5, 0], p[5, 0] = -2.5, -1.2, 0.9          # I clear; M2 beside it, p 0.9
    strict = replace(shipped, network_probability=0.95, network_threshold_hu=1.0)
    loose = replace(shipped, network_probability=0.6, network_threshold_hu=1.0)
    rows = [replace(Scored(name, truth, p, diffs, np.zeros((10, 2), bool)), rule=rule)
            for name, rule in (("strict", strict), ("loose", loose))]
    scorer = SimpleNamespace(models=SimpleNamespace(classify_density=shipped, cards=()))
    _, calls = method_scores(rows, "runtime", scorer)
    assert not calls[0, 5, 0] and calls[1, 5, 0]


def test_borderline_summary_counts_wrong_calls_on_each_side_of_the_flag():
    from runtime.modelcard import load_model_set
    rule = replace(load_model_set().classify_density, threshold_hu=1.8, neighbour_threshold_hu=1.8,
                   network_probability=None)
    diffs = np.zeros((10, 2))
    diffs[3] = (-3.0, 3.0)                       # left I: firm call, truly affected
    diffs[0] = (-1.9, 1.9)                       # left C: called by 0.1 HU, not affected
    diffs[2] = (np.nan, np.nan)                  # L: not measurable, not counted
    truth = np.zeros((10, 2), bool)
    truth[3, 0] = True
    row = Scored("s", truth, np.zeros((10, 2)), diffs, np.zeros((10, 2), bool))
    # C's twin (right C, +1.9 HU) is far from any call: firm.
    assert borderline_summary([row], rule) == {"borderline": 1, "borderline_wrong": 1, "firm": 17, "firm_wrong": 0,
                                               "dichotomy_unsure": 0, "dichotomy_unsure_wrong": 0,
                                               "dichotomy_firm": 1, "dichotomy_firm_wrong": 0}


@pytest.mark.slow
def test_real_evaluation_runs_on_a_reads_file(real_data, tmp_path):
    """Any folder with a reads file; its figures go to --out and never into the cards, which record
    the development set's."""
    reads = tmp_path / "reads.csv"
    rows = [r for r in (DEV_SET / "reads.csv").read_text().splitlines() if r.startswith(("study,", "sub005,"))]
    reads.write_text("\n".join(rows) + "\n")
    models = tmp_path / "models"
    shutil.copytree(ROOT / "engines", models)
    before = {p.name: p.read_bytes() for p in models.glob("*.json")}
    run = subprocess.run([sys.executable, "-m", "export.evaluate", "real", "--data", str(real_data),
                          "--reads", str(reads), "--label-order", str(DEV_SET / "label_order.json"),
                          "--models", str(models), "--out", str(tmp_path / "eval")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == 1 and 0.3 < metrics["dice"]["mean"] <= 1.0
    assert set(metrics["methods"]) == {"runtime", "network", "density"}
    assert "region Dice against the expert maps, on the expert's slices" in run.stdout
    assert "hyperdense tissue or metal found (runtime.hyperdense) in 0 of 1 studies;" in run.stdout
    assert "is not the development set the cards record: the model cards were left as they are" in run.stdout
    assert {p.name: p.read_bytes() for p in models.glob("*.json")} == before


def test_stability_variants_move_the_head_not_the_geometry():
    from export.realdata import Read
    from export.stability import Variant, expected, varied
    from runtime.read import Study
    hu = np.zeros((3, 40, 40), np.float32)
    hu[:, 15:25, 5:12] = 30.0                                   # a block on the image's low-x side
    affine = np.diag([0.5, 0.5, 5.0, 1.0])                      # i along patient x
    study = Study(hu=hu, affine=affine, source="block")
    mirrored = varied(study, Variant("m", mirrored=True))
    np.testing.assert_array_equal(mirrored.hu, hu[:, :, ::-1])
    np.testing.assert_array_equal(mirrored.affine, affine)
    turned = varied(study, Variant("y", yaw_deg=45.0))
    assert turned.hu.shape == hu.shape and turned.hu[:, 0, 0].max() <= -999   # corners brought in as air
    assert abs(float((turned.hu > 15).sum()) - float((hu > 15).sum())) < 0.1 * (hu > 15).sum()
    read = Read("s", "s", ROOT, None, 8, "left", frozenset({"L", "I"}))
    assert expected(read, Variant("b", blur_mm=0.75))[1] == "left"
    assert expected(read, Variant("m", mirrored=True))[1] == "right"
    assert expected(read, Variant("y", yaw_deg=8.0))[1] == "left"
    from export.stability import as_read_side
    assert as_read_side("left", Variant("m", mirrored=True)) == "right" and as_read_side("left", Variant("y")) == "left"


def test_stability_reconstruction_variants_change_texture_not_density():
    """A softer kernel and a noisier scan keep every region's mean HU and the air around the head; the
    noise is the SD asked for, the same on every run, and the blur lowers the noise. An offset
    scanner shifts every voxel by its offset."""
    from export.stability import Variant, varied
    from runtime.read import Study
    rng = np.random.default_rng(1)
    hu = np.full((4, 64, 64), -1000.0, np.float32)
    hu[:, 12:52, 12:52] = 30.0 + rng.normal(0.0, 4.0, (4, 40, 40))     # a noisy square "head"
    study = Study(hu=hu, affine=np.diag([0.5, 0.5, 5.0, 1.0]), source="square")
    inner = (slice(None), slice(20, 44), slice(20, 44))
    softer = varied(study, Variant("s", blur_mm=0.75)).hu
    assert softer[inner].std() < 0.6 * hu[inner].std()
    assert abs(float(softer[inner].mean() - hu[inner].mean())) < 0.1
    noisy = varied(study, Variant("n", noise_hu=3.0)).hu
    added = (noisy - hu)[:, 12:52, 12:52]
    assert abs(float(added.std()) - 3.0) < 0.3 and abs(float(added.mean())) < 0.3
    assert np.all(noisy[hu < -500] == hu[hu < -500])
    np.testing.assert_array_equal(noisy, varied(study, Variant("n", noise_hu=3.0)).hu)
    np.testing.assert_allclose(varied(study, Variant("o", offset_hu=-4.0)).hu, hu - 4.0)


@pytest.mark.slow
def test_stability_mode_scores_every_variant_of_a_reads_file(tmp_path):
    """The bundled demo as a one-study reads file: every variant, the mirrored ones on the other side."""
    from export.stability import VARIANTS
    from tests.conftest import DEMO_STUDY
    truth = json.loads(DEMO_STUDY.with_name("default_study_truth.json").read_text())
    reads = tmp_path / "reads.csv"
    reads.write_text("study,subject,image,map,aspects,side,affected\n"
                     f"demo,demo,{DEMO_STUDY.name},,{truth['aspects']},left,{';'.join(truth['affected'])}\n")
    run = subprocess.run([sys.executable, "-m", "export.evaluate", "stability", "--data", str(DEMO_STUDY.parent),
                          "--reads", str(reads), "--out", str(tmp_path / "eval")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = {r["variant"]: r for r in got["rows"]}
    assert set(rows) == {v.name for v in VARIANTS} and got["summary"]["scorings"] == len(VARIANTS)
    assert rows["mirrored"]["expert_side"] == "right" and rows["as read"]["expert_side"] == "left"
    assert all(r["side_ok"] for r in rows.values())
    assert rows["as read"]["changed"] == [] and rows["as read"]["changed_borderline"] == 0
    assert got["summary"]["calls_changed"] == sum(len(r["changed"]) for r in rows.values())
    assert 0 <= got["summary"]["calls_changed_borderline"] <= got["summary"]["calls_changed"]
    assert (tmp_path / "eval" / "table.txt").read_text().startswith("| study | variant |")


@pytest.mark.slow
def test_fold_models_score_each_subject_with_its_own_folder(real_data, scorer, tmp_path):
    """`real --fold-models`: a subject with a folder of its own is scored by that folder's networks
    (here: the shipped set with different DA-Net thresholds), and its calls use that folder's thresholds."""
    import shutil

    from export.evaluate import real_studies
    from export.manifest import write_manifest
    from runtime.modelcard import DEFAULT_MODEL_DIR
    folder = tmp_path / "models_sub005"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    for group, threshold in (("subcortical", 0.123), ("cortical", 0.456)):
        card = folder / f"danet_{group}.json"
        card.write_text(json.dumps({**json.loads(card.read_text()), "threshold": threshold}, indent=2) + "\n")
    write_manifest(folder)
    reads = tmp_path / "reads.csv"
    rows = [r for r in (DEV_SET / "reads.csv").read_text().splitlines()
            if r.startswith(("study,", "sub005-native,"))]
    reads.write_text("\n".join(rows) + "\n")
    (row,) = real_studies(real_data, reads, None, scorer, False, SHARED_DATA, str(tmp_path / "models_{subject}"))
    expected = [0.123 if i in SUBCORTICAL else 0.456 for i in range(len(REGION_NAMES))]
    assert row.study == "sub005-native" and np.allclose(row.network_threshold, expected)


@pytest.mark.slow
def test_cases_mode_reports_the_networks_on_model_space_cases(shared_data, tmp_path):
    """`cases`: the cascade's Dice (per region too) and DA-Net on true-region crops, end to end."""
    made = subprocess.run([sys.executable, "-m", "export.dataset", "--shared", str(shared_data), "--out",
                           str(tmp_path / "cases"), "--seeds", "100000:100002", "--workers", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr
    run = subprocess.run([sys.executable, "-m", "export.evaluate", "cases", "--data", str(tmp_path / "cases"),
                          "--no-cards", "--out", str(tmp_path / "eval")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["cases"] == 2 and 0.0 < metrics["dice"]["mean"] <= 1.0
    assert set(metrics["dice"]["per_region"]) == set(REGION_NAMES)
    assert "region Dice against the synthetic ground truth" in run.stdout


@pytest.mark.slow
def test_dataset_elderly_case_is_its_young_twin_in_an_atrophic_head(shared_data, tmp_path):
    """`export.dataset --elderly`: the same lesion truth as the young case of that seed, other voxels,
    and the index says which head it was drawn in."""
    made = {}
    for name, extra in (("young", []), ("elderly", ["--elderly"])):
        run = subprocess.run([sys.executable, "-m", "export.dataset", "--shared", str(shared_data), "--out",
                              str(tmp_path / name), "--seeds", "100001:100002", "--workers", "1", *extra],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        (info,) = [json.loads(line) for line in (tmp_path / name / "index.jsonl").read_text().splitlines()]
        assert info["elderly"] == (name == "elderly")
        with np.load(tmp_path / name / "case_100001.npz") as d:
            made[name] = {k: d[k] for k in ("affected", "image1")}
    assert np.array_equal(made["young"]["affected"], made["elderly"]["affected"])
    assert not np.array_equal(made["young"]["image1"], made["elderly"]["image1"])


def test_elderly_is_refused_where_no_synthetic_study_is_made(capsys):
    """`--elderly` changes the synthetic heads; on real files it would only mislabel the output folder
    and the cards' key, so it is one clear usage error."""
    from export.evaluate import main
    with pytest.raises(SystemExit) as exc:
        main(["real", "--elderly"])
    assert exc.value.code == 2
    assert "error: --elderly makes synthetic studies" in capsys.readouterr().err


def test_real_loo_card_key_says_whether_the_networks_were_left_out_too():
    """Without fold models the shipped networks saw every development subject: their figures must not
    be filed under the key that means nothing in the set saw the subject."""
    from export.evaluate import loo_mode
    assert loo_mode("real", "build/realtex/models_{subject}") == "real_loo"
    assert loo_mode("real", None) == "real_loo_atlas"


def test_an_evaluation_folder_holds_one_runs_files_only(tmp_path):
    """A run with one study makes no plots: the last run's plots must not stay beside its table.
    What else the folder keeps (the kept studies) stays."""
    from export.evaluate import RESULT_FILES, write_tables
    (tmp_path / "studies").mkdir()
    write_tables(tmp_path, {"_pred": [7, 8, 9], "_true": [7, 9, 9]}, "first", plot_title="real")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*RESULT_FILES, "studies"])
    write_tables(tmp_path, {"_pred": [7], "_true": [7]}, "second", plot_title="real")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "studies", "table.txt"]
    assert (tmp_path / "table.txt").read_text() == "second\n"
    assert json.loads((tmp_path / "metrics.json").read_text())["_pred"] == [7]


def test_cards_take_the_development_sets_figures_from_a_source_checkout_only(tmp_path):
    """Another dataset's figures would be filed under the development set's key, and an installed
    model set changes only with a release: in both cases the cards are left alone, and the run says so."""
    from export.evaluate import card_folder, parse_args
    from runtime.shipped import INSTALLED_MODEL_DIR
    assert card_folder(parse_args(["real", "--models", str(tmp_path)])) == (tmp_path, "")
    folder, why = card_folder(parse_args(["real", "--models", str(tmp_path), "--reads", str(tmp_path / "r.csv")]))
    assert folder is None and "is not the development set" in why
    folder, why = card_folder(parse_args(["real", "--models", str(INSTALLED_MODEL_DIR)]))
    assert folder is None and "installed model set" in why
    assert card_folder(parse_args(["real", "--models", str(tmp_path), "--no-cards"])) == (None, "")
