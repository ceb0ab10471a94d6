"""Model cards are the contract; model files are checked like executables."""

from __future__ import annotations

import json
import shutil

import pytest

from runtime.engine import OnnxRuntimeEngine
from runtime.errors import ModelError
from runtime.modelcard import DEFAULT_MODEL_DIR, ROLES, load_card, load_model_set, load_rule_card


def test_shipped_cards_are_complete():
    models = load_model_set()
    for card in models.cards:
        assert card.onnx.exists() and len(card.sha256) == 64
        assert card.raw["provenance"] and "synthetic" in card.raw["provenance"]
        assert card.inputs[0].dtype == "float32"
        if card.role.startswith("classify"):
            assert card.crop == (7, 130, 110) and 0 < card.threshold < 1 and card.regions
            assert card.inputs[0].shape[0] == "batch"       # dynamic batch
    assert {r for c in models.cards for r in c.regions} == {"C", "L", "IC", "I", "M1", "M2", "M3", "M4", "M5",
                                                            "M6"}


@pytest.mark.parametrize("group", ["subcortical", "cortical"])
def test_danet_real_texture_phase_starts_from_the_kept_synthetic_weights(group):
    """The shipped DA-Net's last phase continued from engines/pytorch/synthetic/ (export/train_realtex.sh
    starts every folder there), and its card says which real volumes it saw."""
    import hashlib
    card = json.loads((DEFAULT_MODEL_DIR / f"danet_{group}.json").read_text())
    starts = [phase["sha256"] for phase in card["training"]["earlier_phases"] if "continued_from" in phase]
    kept = DEFAULT_MODEL_DIR / "pytorch" / "synthetic" / f"danet_{group}.pt"
    assert starts[-1] == hashlib.sha256(kept.read_bytes()).hexdigest()
    assert "real-textured" in card["provenance"] and "simonsf/ct-aspects" in card["provenance"]


@pytest.fixture
def model_copy(tmp_path):
    for p in DEFAULT_MODEL_DIR.iterdir():
        if p.suffix in (".json", ".onnx"):
            shutil.copy(p, tmp_path / p.name)
    return tmp_path


def test_tampered_model_is_refused(model_copy):
    card = load_model_set(model_copy).classify_cortical
    data = bytearray(card.onnx.read_bytes())
    data[-10] ^= 0xFF
    card.onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        OnnxRuntimeEngine(card)


def test_malformed_or_missing_cards_are_refused(model_copy):
    card_path = next(p for p in model_copy.glob("*.json") if json.loads(p.read_text()).get("role") == ROLES[0])
    doc = json.loads(card_path.read_text())
    del doc["grid"]
    card_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="malformed"):
        load_card(card_path)
    card_path.unlink()
    with pytest.raises(ModelError, match="no model card"):
        load_model_set(model_copy)


def test_edited_card_content_is_refused(model_copy):
    """A threshold edited by hand changes no model file: the manifest catches the card itself."""
    path = model_copy / "density_rule.json"
    doc = json.loads(path.read_text())
    doc["threshold_hu"] += 0.5                      # a plausible value: only the manifest can tell
    path.write_text(json.dumps(doc, indent=2) + "\n")
    with pytest.raises(ModelError, match="MANIFEST"):
        load_model_set(model_copy)


NO_HOP = {"network_probability": None, "network_threshold_hu": 0.0}     # no hop: its threshold is not read
NO_FILTER = {"trough_mm": 0.0, "trough_hu": 0.0}


@pytest.mark.parametrize("edit, valid", [
    ({"network_probability": 1.5}, NO_HOP), ({"network_probability": 0.0}, NO_HOP),
    ({"network_threshold_hu": -0.1}, NO_HOP), ({"network_threshold_hu": 5.0}, NO_HOP),
    ({"trough_mm": 3.0, "trough_hu": 0.0}, NO_FILTER),     # no depth: every voxel a closing touches
    ({"trough_mm": -1.0}, NO_FILTER), ({"trough_mm": 12.0, "trough_hu": 2.0}, NO_FILTER)])
def test_rule_card_values_out_of_range_are_refused(tmp_path, edit, valid):
    """The DA-Net's hop and the trough filter: refused out of range, read when switched off."""
    path = tmp_path / "density_rule.json"
    doc = {**json.loads((DEFAULT_MODEL_DIR / "density_rule.json").read_text()), **edit}
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="out of range"):
        load_rule_card(path)
    path.write_text(json.dumps({**doc, **valid}))
    card = load_rule_card(path)
    assert all(getattr(card, k) == v for k, v in valid.items())


def test_shipped_manifest_is_pinned(monkeypatch):
    import runtime.modelcard as modelcard
    load_model_set()                                            # the shipped set matches its pin
    monkeypatch.setattr(modelcard, "SHIPPED_MANIFEST_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="pinned"):
        load_model_set()


def test_a_folder_without_manifest_is_refused(model_copy):
    (model_copy / "MANIFEST.json").unlink()
    with pytest.raises(ModelError, match="MANIFEST"):
        load_model_set(model_copy)
