"""Kept synthetic studies (export.studies): reused only under the models that scored them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from export.studies import code_fingerprint, is_current, kept_fingerprint, models_fingerprint, save_row, scored


def test_kept_studies_are_keyed_by_the_models_they_were_scored_with(scorer, tmp_path):
    """A kept synthetic study is reused only under the atlas and networks that scored it: labels from
    an earlier atlas once went unnoticed, and the rule's DA-Net hop reads the kept probabilities."""
    models = models_fingerprint(scorer)
    assert scorer.models.segment_atlas.sha256 in models
    assert all(card.sha256 in models for card in scorer.models.cards)
    np.savez(tmp_path / "old.npz", truth=np.zeros((10, 2)))
    np.savez(tmp_path / "new.npz", truth=np.zeros((10, 2)), models=models)
    assert kept_fingerprint(tmp_path / "old.npz") is None
    assert kept_fingerprint(tmp_path / "new.npz") == models


def test_kept_study_under_other_networks_is_reclassified_not_made_again(scorer, demo_result, tmp_path):
    """Only the networks changed (a fold's DA-Net): the kept study's DA-Net probabilities are computed
    again from its kept HU and labels and match the whole runtime's; under another atlas its labels
    no longer hold, so it is not current and stays as it was, to be made again."""
    models = models_fingerprint(scorer)
    row = scored("demo", demo_result, np.zeros((10, 2), bool))
    other_networks = models.rsplit(",", 1)[0] + "," + "0" * 64
    save_row(tmp_path / "kept.npz", replace(row, probability=np.full((10, 2), 0.5)), demo_result, other_networks)
    assert is_current(tmp_path / "kept.npz", scorer, models)
    with np.load(tmp_path / "kept.npz") as d:
        assert str(d["models"]) == models
        np.testing.assert_allclose(d["probability"], row.probability, atol=1e-3)
        np.testing.assert_array_equal(d["called"], row.called)
    other_atlas = "0" * 64 + "," + models.split(",", 1)[1]
    save_row(tmp_path / "old.npz", row, demo_result, other_atlas)
    assert not is_current(tmp_path / "old.npz", scorer, models)
    with np.load(tmp_path / "old.npz") as d:
        assert str(d["models"]) == other_atlas


def test_a_change_in_the_code_that_made_a_kept_study_makes_it_again(scorer, demo_result, tmp_path, monkeypatch):
    """The kept HU and labels come from synthesis, reading, alignment, resampling, the strip and the
    atlas fit: a change to any of them (here a changed strip) leaves the atlas and networks as they
    were, yet the kept study no longer is what the runtime makes, so it is not current."""
    import export.studies as studies

    models = models_fingerprint(scorer)
    save_row(tmp_path / "kept.npz", scored("demo", demo_result, np.zeros((10, 2), bool)), demo_result, models)
    assert is_current(tmp_path / "kept.npz", scorer, models)
    monkeypatch.setattr(studies, "code_fingerprint", lambda: "a changed strip")
    changed = models_fingerprint(scorer)
    assert changed != models and changed.split(",")[1:] == models.split(",")[1:]
    assert not is_current(tmp_path / "kept.npz", scorer, changed)
    with np.load(tmp_path / "kept.npz") as d:
        assert str(d["models"]) == models


def test_code_fingerprint_follows_every_file_of_a_package(tmp_path, monkeypatch):
    """A package (runtime.read) counts with all its files: an edit in any of them is a change."""
    package = tmp_path / "kept_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "reader.py").write_text("SLOPE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_fingerprint(("kept_pkg",))
    assert code_fingerprint(("kept_pkg",)) == before
    (package / "reader.py").write_text("SLOPE = 1.0  # rescale slope\n")
    assert code_fingerprint(("kept_pkg",)) != before


def test_a_file_cut_off_by_an_interrupt_never_appears_under_a_case_name(tmp_path, monkeypatch):
    """Resumed runs skip the case files that exist: a half-written one must not be among them."""
    from export import npz

    def cut_off(f, **arrays):
        f.write(b"PK\x03\x04")
        raise KeyboardInterrupt

    npz.save_npz(tmp_path / "case_00000.npz", a=np.arange(3))
    monkeypatch.setattr(npz.np, "savez_compressed", cut_off)
    with pytest.raises(KeyboardInterrupt):
        npz.save_npz(tmp_path / "case_00001.npz", a=np.arange(3))
    assert [p.name for p in tmp_path.glob("case_*.npz")] == ["case_00000.npz"]
    with np.load(tmp_path / "case_00000.npz") as d:
        assert d["a"].tolist() == [0, 1, 2]
