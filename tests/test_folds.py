"""Kept leave-one-out folds (export.folds, engines/folds/): what a fold keeps, how it is checked and
merged, and that the kept folds give the real leave-one-out rows the cards and README state."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from export.folds import FOLD_ROLES, complete_folder, extract
from export.manifest import write_manifest
from runtime.errors import ModelError, OutputExists
from runtime.modelcard import DEFAULT_MODEL_DIR, MANIFEST, load_manifest, load_model_set
from tests.conftest import ROOT

FOLDS = ROOT / "engines" / "folds"


@pytest.fixture
def trained(tmp_path):
    """A complete model folder standing in for a fold's training: the shipped set, its DA-Net
    thresholds changed."""
    folder = tmp_path / "models_sub005"
    shutil.copytree(DEFAULT_MODEL_DIR, folder, ignore=shutil.ignore_patterns("folds", "pytorch", "*.md"))
    card = folder / "danet_cortical.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "threshold": 0.456}, indent=2) + "\n")
    write_manifest(folder)
    return folder


def test_a_kept_fold_holds_the_danets_and_the_rule_only(trained, tmp_path):
    names = extract(trained, tmp_path / "kept" / "sub005")
    roles = {json.loads((tmp_path / "kept" / "sub005" / n).read_text())["role"] for n in names if n.endswith(".json")}
    assert roles == set(FOLD_ROLES)
    assert not any(n.startswith(("vbnet", "region_atlas")) for n in names)
    assert set(load_manifest(tmp_path / "kept" / "sub005")) == set(names)


def test_a_kept_fold_is_never_overwritten(trained, tmp_path):
    (tmp_path / "sub005").mkdir()
    with pytest.raises(OutputExists, match="never overwritten"):
        extract(trained, tmp_path / "sub005")


def test_a_merged_fold_scores_with_its_own_networks_and_the_shipped_rest(trained, tmp_path):
    extract(trained, tmp_path / "sub005")
    models = load_model_set(complete_folder(tmp_path / "sub005"))
    assert models.classify_cortical.raw["threshold"] == 0.456
    shipped = load_model_set(DEFAULT_MODEL_DIR)
    assert models.segment_fine.sha256 == shipped.segment_fine.sha256
    assert models.segment_atlas is not None and shipped.segment_atlas is not None
    assert models.segment_atlas.sha256 == shipped.segment_atlas.sha256


def test_a_complete_folder_is_used_as_it_is(trained):
    assert complete_folder(trained) == trained


def test_an_edited_fold_file_is_refused(trained, tmp_path):
    extract(trained, tmp_path / "sub005")
    rule = tmp_path / "sub005" / "density_rule.json"
    rule.write_text(rule.read_text().replace('"threshold_hu": 2.1', '"threshold_hu": 1.1'))
    with pytest.raises(ModelError, match=MANIFEST):
        complete_folder(tmp_path / "sub005")


def test_the_kept_folds_are_whole():
    for subject in ("sub002", "sub003", "sub005"):
        fold = FOLDS / subject
        models = load_model_set(complete_folder(fold))
        assert f"other than {subject}" in models.classify_cortical.raw["provenance"]
        assert models.classify_density is not None


@pytest.mark.slow
def test_kept_folds_give_the_stated_real_leave_one_out_rows(real_data, tmp_path):
    """The rows of README.md's Models section and the cards' real_loo: every file within 1 of the
    expert, sub002's native file 6 and its aligned file 5 (expert 5), sub003 8 (9), sub005 10 (10)."""
    run = subprocess.run([sys.executable, "-m", "export.evaluate", "real", "--data", str(real_data),
                          "--loo", "--fold-models", str(FOLDS / "{subject}"), "--no-cards",
                          "--out", str(tmp_path / "eval")],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    scores = {name: (v["true"], v["auto"]) for name, v in metrics["studies"].items()}
    assert scores == {"sub002": (5, 5), "sub002-native": (5, 6), "sub003": (9, 8), "sub003-native": (9, 8),
                      "sub005": (10, 10), "sub005-native": (10, 10)}
    assert metrics["dice"]["mean"] >= 0.60
