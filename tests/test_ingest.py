"""export.ingest: your own labelled studies as training cases, checked before any is written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from export.ingest import main
from export.realdata import DEV_SET, load_label_order, read_expert_map
from export.train import load_cases
from runtime.errors import OutputExists, UnreadableInput
from runtime.regions import REGION_NAMES
from tests.conftest import ROOT


def _case(root, name, affected=("left M2",), image=b"not an image", regions=True):
    case = root / name
    case.mkdir(parents=True)
    (case / "image.nii.gz").write_bytes(image)
    if regions:
        (case / "regions.nii.gz").write_bytes(b"")
    (case / "labels.json").write_text(json.dumps({"affected": list(affected)}))
    return case


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no case folders with image.nii.gz in it"),
    (lambda d: _case(d, "a", regions=False), "a: no regions.nii.gz beside its image"),
    (lambda d: _case(d, "a", affected=("left M9",)), "unknown region names ['left M9']"),
    (lambda d: (_case(d, "a") / "labels.json").write_text("[1, 2]"), "labels.json must hold"),
    (lambda d: (_case(d, "a") / "labels.json").write_text('{"affected": "left M2"}'), "must be a list of names"),
    (lambda d: (_case(d, "a", affected=()), _case(d, "b", affected=("M2",))), "b: unknown region names ['M2']"),
])
def test_every_case_is_checked_before_any_is_ingested(tmp_path, setup, message):
    data = tmp_path / "my_data"
    data.mkdir()
    setup(data)
    with pytest.raises(UnreadableInput, match=re.escape(message)):
        main([str(data), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_case_that_fails_midway_leaves_no_output(tmp_path):
    """The folder appears whole or not at all: a trainer never reads half a dataset."""
    data = tmp_path / "my_data"
    _case(data, "a")
    with pytest.raises(UnreadableInput, match="^case a: "):
        main([str(data), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]


def test_an_existing_training_folder_is_never_added_to(tmp_path):
    data = tmp_path / "my_data"
    _case(data, "a")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case_00000.npz").write_bytes(b"another dataset's case")
    with pytest.raises(OutputExists, match="is not empty"):
        main([str(data), "--out", str(out)])
    assert (out / "case_00000.npz").read_bytes() == b"another dataset's case"


def test_bad_input_ends_in_one_error_line_and_its_exit_code(tmp_path):
    run = subprocess.run([sys.executable, "-m", "export.ingest", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == UnreadableInput.exit_code
    assert run.stderr == f"error: {tmp_path / 'missing'}: no such folder\n"


@pytest.mark.slow
def test_a_real_study_becomes_a_case_the_trainer_reads(real_data, tmp_path):
    """sub002's aligned file with its expert map in the runtime's label numbers: the case holds the
    map on the model grid, the two affected region-sides, and hypodense targets only inside them."""
    image = sitk.ReadImage(str(real_data / "sub002_im_aligned.nii.gz"))
    labels = read_expert_map(real_data / "sub002_im_aligned_stripped_seg.nii.gz",
                             load_label_order(DEV_SET / "label_order.json"))
    regions = sitk.GetImageFromArray(labels)
    regions.CopyInformation(image)
    case = tmp_path / "my_data" / "sub002"
    case.mkdir(parents=True)
    sitk.WriteImage(image, str(case / "image.nii.gz"))
    sitk.WriteImage(regions, str(case / "regions.nii.gz"))
    (case / "labels.json").write_text(json.dumps({"affected": ["left L", "left I"]}))
    main([str(tmp_path / "my_data"), "--out", str(tmp_path / "out")])

    [seg] = load_cases(tmp_path / "out", ("image1", "labels1"))
    [cls] = load_cases(tmp_path / "out", ("pairs", "hypo", "affected"))
    assert set(np.unique(seg["labels1"])) >= set(range(1, 21))          # every region, both sides
    assert seg["image1"].shape == seg["labels1"].shape
    expected = np.zeros((len(REGION_NAMES), 2), bool)
    expected[[REGION_NAMES.index("L"), REGION_NAMES.index("I")], 0] = True
    assert np.array_equal(cls["affected"], expected)
    hypo = cls["hypo"].reshape(len(REGION_NAMES), 2, -1).any(axis=2)
    assert hypo[expected].all() and not hypo[~expected].any()
    assert cls["pairs"].shape[:3] == (len(REGION_NAMES), 2, 2)
