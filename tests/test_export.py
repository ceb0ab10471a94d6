"""Networks, ONNX export, metrics, the synthesizer's ground truth and the CTP rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training extra not installed (pip install -e '.[train]')")
onnx = pytest.importorskip("onnx", reason="training extra not installed (pip install -e '.[train]')")

from export import metrics as M  # noqa: E402
from export.networks import DANET_PAPER, VBNET_PAPER, DANet, DANetConfig, VBNet, VBNetConfig, parameter_count  # noqa: E402
from export.onnx_export import PARITY_TOL, export_model  # noqa: E402

TINY_VB = VBNetConfig(widths=(4, 8, 8, 8, 8), blocks=(1, 1, 1, 1), inplane_downs=2)
TINY_DA = DANetConfig(growth=4, block_layers=(1, 1), stem_channels=8, head_hidden=(16,))


def test_paper_sized_networks_build():
    assert 3.0e6 < parameter_count(DANet(DANET_PAPER)) < 5.0e6        # paper: ~3.9 M
    vb = VBNet(VBNET_PAPER)
    assert VBNET_PAPER.widths == (16, 32, 64, 128, 256) and VBNET_PAPER.blocks == (1, 2, 3, 3)
    with torch.no_grad():
        out = vb(torch.zeros(1, 1, 4, 32, 32))
    assert out.shape == (1, 12, 4, 32, 32)


def test_groupnorm3d_equals_torch_groupnorm():
    """The export-friendly GroupNorm keeps nn.GroupNorm's parameters and results, so weights
    trained with either load into the other."""
    from export.onnx_export import GroupNorm3d
    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(ref.weight)
    torch.nn.init.normal_(ref.bias)
    ours = GroupNorm3d(4, 16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 3, 20, 18) * 5 + 3
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_danet_is_side_symmetric():
    """Swapping the two crops must swap the two probabilities: one shared trunk, mirrored difference."""
    torch.manual_seed(0)
    m = DANet(TINY_DA).eval()
    x = torch.rand(3, 2, 2, 7, 32, 24)
    with torch.no_grad():
        p, cam = m(x)
        q, cam2 = m(x.flip(1))
    torch.testing.assert_close(p, q.flip(1))
    torch.testing.assert_close(cam, cam2.flip(1))
    assert ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("kind", ["vbnet", "danet"])
def test_onnx_export_parity_and_fp16(tmp_path, kind):
    import onnxruntime as ort
    torch.manual_seed(0)
    if kind == "vbnet":
        model, example = VBNet(TINY_VB), torch.zeros(1, 1, 4, 32, 32)
        names, dyn = ["probabilities"], {"image": {2: "slices"}, "probabilities": {2: "slices"}}
        inp = "image"
    else:
        model, example = DANet(TINY_DA), torch.zeros(2, 2, 2, 7, 32, 24)
        names, dyn = ["probability", "cam"], {"pairs": {0: "batch"}, "probability": {0: "batch"}, "cam": {0: "batch"}}
        inp = "pairs"
    from runtime.modelcard import CardDraft, ClassifierPart, GridSpec, SegmenterPart
    part = (SegmenterPart(input_stride=2, z_multiple=4, classes=("background", "brain")) if kind == "vbnet" else
            ClassifierPart(crop=(7, 32, 24), regions=("M1",), threshold=0.5))
    draft = CardDraft(name=kind, version="0", role="segment_coarse" if kind == "vbnet" else "classify_cortical",
                      grid=GridSpec((0.5, 0.5), (64, 64), 4.0, 5.0), window=(30.0, 60.0), part=part,
                      extra={"provenance": "test"})
    card = export_model(model, example, tmp_path, kind, inp, names, dyn, draft)
    assert card.raw["export_parity_max_abs_error"] < PARITY_TOL and card.part == part
    assert json.loads((tmp_path / f"{kind}.json").read_text())["sha256"] == card.sha256
    proto = onnx.load(str(tmp_path / f"{kind}.onnx"))
    assert proto.opset_import[0].version >= 17
    # fp16 graph: fp32 at the boundary, fp16 inside, close to fp32.
    half = onnx.load(str(tmp_path / f"{kind}.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    x = np.random.default_rng(0).uniform(-1, 1, example.shape).astype(np.float32)
    if kind == "danet":
        x = np.concatenate([x[:2], x[:2]])          # dynamic batch: run a batch of 4
    full = ort.InferenceSession(str(tmp_path / f"{kind}.onnx")).run(None, {inp: x})
    fp16 = ort.InferenceSession(str(tmp_path / f"{kind}.fp16.onnx")).run(None, {inp: x})
    for a, b in zip(full, fp16):
        assert a.shape == b.shape and np.abs(a - b).max() < 2e-2


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    assert M.auc(p, y) == pytest.approx(5 / 6)       # 5 of 6 positive/negative pairs ordered right
    c = M.confusion(p >= 0.5, y == 1)
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 1)
    a = np.array([10, 9, 7, 5, 3, 8.0])
    assert M.icc_2_1(a, a) == pytest.approx(1.0)
    assert M.icc_2_1(a, a + 1) < 1.0
    ba = M.bland_altman(a + 1, a)
    assert ba["mean_difference"] == pytest.approx(1.0) and ba["upper_limit"] == pytest.approx(1.0)
    assert M.spearman(a, 2 * a) == pytest.approx(1.0)


def test_wilson_interval_against_published_values():
    # 21 of 24 (the synthetic held-out dichotomy) and 0 of 10: Newcombe (1998), method 3.
    assert M.wilson(21, 24) == pytest.approx((0.690, 0.957), abs=1e-3)
    assert M.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert M.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert all(np.isnan(M.wilson(0, 0)))
    c = M.confusion(np.array([True, True, False]), np.array([True, False, False]))
    assert c["sensitivity_ci"] == M.wilson(1, 1) and c["accuracy_ci"] == M.wilson(2, 3)


def test_mean_dice_counts_only_region_sides_in_either_map():
    from runtime.regions import label_id
    left_l, right_l = label_id(1, "left"), label_id(1, "right")
    truth = np.zeros((1, 4, 4), np.uint8)
    truth[0, :2, :2] = left_l                              # 4 voxels
    pred = np.zeros_like(truth)
    pred[0, :2, :1] = left_l                               # 2 of them: Dice 2*2 / (2+4)
    pred[0, 3, 3] = right_l                                # a region-side only the prediction has: Dice 0
    mean, per = M.mean_dice(pred, truth)
    assert per == {"left L": pytest.approx(2 / 3), "right L": 0.0}
    assert mean == pytest.approx(1 / 3)
    assert M.rounded(0.123456) == 0.1235 and M.rounded(float("nan")) is None and M.rounded(None) is None


def test_ctp_rule_marks_regions_with_core_over_ten_percent():
    from export.ctp_label import region_labels
    from runtime.regions import label_id
    labels = np.zeros((4, 20, 40), np.uint8)
    labels[:, 5:15, 22:32] = label_id(1, "left")        # L, patient left (x > centre)
    labels[:, 5:15, 8:18] = label_id(1, "right")         # its mirror twin
    labels[:, 5:15, 2:6] = label_id(4, "right")
    labels[:, 5:15, 34:38] = label_id(4, "left")
    cbf = np.full(labels.shape, 50.0)
    cbf[:, 5:15, 22:24] = 5.0                            # 20 % of left L at 10 % flow: core
    cbf[:, 5:15, 34:34 + 0] = 5.0
    result = region_labels(cbf, labels)
    assert result["regions"]["left L"]["affected"] and result["regions"]["left L"]["core_fraction"] >= 0.1
    assert not result["regions"]["right L"]["affected"]
    assert result["aspects"] == 9


def test_ctp_command_writes_its_labels_once_and_refuses_bad_maps(tmp_path):
    import SimpleITK as sitk

    from export.ctp_label import main
    from runtime.errors import OutputExists, UnreadableInput
    from runtime.regions import label_id
    labels = np.zeros((4, 20, 40), np.uint8)
    labels[:, 5:15, 22:32] = label_id(1, "left")
    labels[:, 5:15, 8:18] = label_id(1, "right")
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("cbf", "regions", "empty", "small")}
    sitk.WriteImage(sitk.GetImageFromArray(np.full(labels.shape, 50.0, np.float32)), str(paths["cbf"]))
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(paths["regions"]))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(labels)), str(paths["empty"]))
    sitk.WriteImage(sitk.GetImageFromArray(labels[:2]), str(paths["small"]))
    out = tmp_path / "labels.json"
    main(["--cbf", str(paths["cbf"]), "--regions", str(paths["regions"]), "--out", str(out)])
    assert json.loads(out.read_text())["aspects"] == 10
    with pytest.raises(OutputExists):
        main(["--cbf", str(paths["cbf"]), "--regions", str(paths["regions"]), "--out", str(out)])
    for regions, message in ((paths["empty"], "no ASPECTS regions"), (paths["small"], "must share one grid"),
                             (tmp_path / "gone.nii.gz", "not a readable region map")):
        with pytest.raises(UnreadableInput, match=message):
            main(["--cbf", str(paths["cbf"]), "--regions", str(regions), "--out", str(tmp_path / "x.json")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cbf.nii.gz", "empty.nii.gz", "labels.json",
                                                          "regions.nii.gz", "small.nii.gz"]


@pytest.fixture(scope="module")
def phantom(shared_data):
    from export.synth import load_phantom
    return load_phantom(shared_data)


def test_synthetic_lesion_ground_truth_follows_the_ten_percent_rule(phantom):
    from export import synth
    spec = synth.draw_spec(3, lesion_rate=1.0)
    case = synth.make_case(phantom, spec)
    for name, (left, right) in case.affected.items():
        fl, fr = case.core_fraction[name]
        assert left == (fl >= 0.10) and right == (fr >= 0.10)
    assert any(any(v) for v in case.affected.values())
    # The change is hypodense: against the same case without the lesion, core tissue got darker
    # and nothing far from the core changed.
    from dataclasses import replace
    healthy = synth.make_case(phantom, replace(spec, lesions=()))
    diff = case.hu - healthy.hu
    tissue = case.core & (healthy.hu > 20)
    assert diff[tissue].mean() < -0.5
    from scipy import ndimage
    far = ~ndimage.binary_dilation(case.core, iterations=6)
    assert np.abs(diff[far]).max() < 1e-3


def test_elderly_twin_keeps_the_case_and_adds_sulci(phantom):
    """An elderly case is its young twin (same draws, same lesion, same truth) in an atrophic head:
    more CSF, in sulci that run in from the surface and differ between the sides."""
    from export import synth
    young_spec = synth.draw_spec(200011, pose="scanner")
    old_spec = synth.draw_spec(200011, pose="scanner", elderly=True)
    assert old_spec.lesions == young_spec.lesions and old_spec.rotation_deg == young_spec.rotation_deg
    assert old_spec.sulcus_mm > 0 and young_spec.sulcus_mm == 0
    young, old = synth.make_case(phantom, young_spec), synth.make_case(phantom, old_spec)
    assert old.affected == young.affected and np.array_equal(old.core, young.core)
    brain = phantom.labels > 0
    new_csf = brain & (old.hu < 15) & (young.hu >= 15)
    assert new_csf.sum() > 0.03 * brain.sum()
    # Sulci sit in the cortex; the deep white matter is untouched.
    deep = brain & (phantom.skull_dist > synth.SULCAL_DEPTH_MM + 4)
    sulcal = new_csf & (phantom.skull_dist < synth.SULCAL_DEPTH_MM)
    assert sulcal.sum() > 0.5 * new_csf.sum()
    from scipy import ndimage
    away = ~ndimage.binary_dilation((brain & (phantom.hu < 12)) | old.core, iterations=6)
    assert np.abs(old.hu - young.hu)[deep & away].max() < 1e-3
    # Each side has sulci of its own: the mirror of the left cortex's CSF is not the right's.
    mirrored = sulcal[:, :, ::-1]
    overlap = (sulcal & mirrored).sum() / sulcal.sum()
    assert overlap < 0.5


def test_phantom_covers_the_whole_head(phantom):
    """No part of the skull may touch the canonical grid's border (a cut-off head)."""
    bone = phantom.hu > 300
    for axis in range(3):
        for end in (0, -1):
            assert not np.take(bone, end, axis=axis).any(), f"skull touches the border on axis {axis}"
    assert 1500 < (phantom.labels > 0).sum() / 1000 < 2100     # brain mL


@pytest.mark.slow
def test_trainers_write_cards_the_runtime_loads(tmp_path):
    """Two iterations of each trainer on random cases: the cards they build load as runtime records."""
    from export.config import CLASSIFIER_CROP, GRID_SHAPE_XY
    from export.train import TrainConfig, train_classifier, train_segmenter
    from runtime.modelcard import ClassifierPart, SegmenterPart, load_card
    from runtime.regions import label_id
    rng = np.random.default_rng(0)
    nx, ny = GRID_SHAPE_XY[0] // 2, GRID_SHAPE_XY[1] // 2
    cases = []
    for _ in range(3):
        labels = np.zeros((8, ny, nx), np.uint8)
        labels[2:6, 60:160, 40:150] = 21
        labels[3:5, 90:120, 60:80] = label_id(0, "right")
        labels[3:5, 90:120, 110:130] = label_id(0, "left")
        cases.append({"image1": rng.uniform(-1, 1, (8, ny, nx)).astype(np.float16), "labels1": labels,
                      "pairs": rng.uniform(-1, 1, (10, 2, 2, *CLASSIFIER_CROP)).astype(np.float16),
                      "hypo": rng.random((10, 2, *CLASSIFIER_CROP)) > 0.9,
                      "affected": rng.random((10, 2)) > 0.7, "name": "c"})
    cfg = TrainConfig(iterations=2, batch=1)
    log = tmp_path / "log.jsonl"
    fine = train_segmenter("fine", cases, cases[:1], cfg, False, tmp_path, log)
    cortical = train_classifier("cortical", cases, cases[:1], TrainConfig(iterations=2, batch=2), False, tmp_path,
                                log)
    assert isinstance(fine.part, SegmenterPart) and fine.fine_crop_xy == (160, 176)
    assert isinstance(cortical.part, ClassifierPart) and cortical.regions == ("M1", "M2", "M3", "M4", "M5", "M6")
    assert load_card(tmp_path / "vbnet_fine.json").part == fine.part
    assert (tmp_path / "MANIFEST.json").exists()


def test_a_continued_phase_starts_from_the_saved_weights_with_its_own_seed(tmp_path):
    """Long trainings run as phases that resume (`--continue`): the second phase loads the first's
    checkpoint, draws a new sample stream, and its card and checkpoint record both phases."""
    import torch

    from export.config import CLASSIFIER_CROP
    from export.npz import save_npz
    from export.train import main
    rng = np.random.default_rng(0)
    (tmp_path / "cases").mkdir()
    for i in range(3):
        save_npz(tmp_path / "cases" / f"case_{i}.npz",
                 pairs=rng.uniform(-1, 1, (10, 2, 2, *CLASSIFIER_CROP)).astype(np.float16),
                 hypo=rng.random((10, 2, *CLASSIFIER_CROP)) > 0.9, affected=rng.random((10, 2)) > 0.7)
    args = ["classify", "--data", str(tmp_path / "cases"), "--out", str(tmp_path / "m"), "--stages", "cortical",
            "--iterations", "2"]
    main(args)
    checkpoint = tmp_path / "m" / "pytorch" / "danet_cortical.pt"
    first = torch.load(checkpoint, weights_only=True)
    main([*args, "--continue"])
    second = torch.load(checkpoint, weights_only=True)
    phases = [h for h in second["training"] if "iterations" in h]
    assert len(phases) == 2 and phases[0]["seed"] != phases[1]["seed"]
    assert [h for h in second["training"] if "continued_from" in h][0]["continued_from"] == str(checkpoint)
    assert any(not torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    assert not list(checkpoint.parent.glob(".*partial"))
    card = json.loads((tmp_path / "m" / "danet_cortical.json").read_text())
    assert card["training"]["seed"] == phases[1]["seed"]
    assert [h["seed"] for h in card["training"]["earlier_phases"] if "iterations" in h] == [phases[0]["seed"]]


def test_hu_offset_moves_both_sides_of_a_pair_alike_and_only_inside_the_brain():
    """The DA-Net's offset augmentation: one offset per pair, in HU through the stroke window, so the
    asymmetry the network should read is kept exactly and only the level moves."""
    import torch

    from export.config import WINDOW
    from export.train import shift_hu
    rng = np.random.default_rng(1)
    ct = torch.from_numpy(rng.uniform(-0.9, 0.9, (3, 2, 4, 5, 6)).astype(np.float32))
    ct[:, :, 0] = -1.0                                            # outside the brain
    brain = ct > -1
    shifted = shift_hu(ct, brain, np.array([3.0, -3.0, 0.0]))
    step = 3.0 * 2.0 / WINDOW[1]
    inside = (ct[0] + step < 1) & brain[0]
    np.testing.assert_allclose((shifted[0] - ct[0])[inside], step, atol=1e-6)
    np.testing.assert_allclose((shifted[1] - ct[1])[brain[1] & (ct[1] - step > -1)], -step, atol=1e-6)
    np.testing.assert_array_equal(shifted[2], ct[2])
    np.testing.assert_array_equal(shifted[:, :, 0], -1.0)          # air stays air
    assert shifted.max() <= 1.0 and shifted.min() >= -1.0
    unclamped = (ct[:, 0].abs() < 0.8) & (ct[:, 1].abs() < 0.8)     # both sides inside the brain, off the window's ends
    np.testing.assert_allclose((shifted[:, 0] - shifted[:, 1])[unclamped], (ct[:, 0] - ct[:, 1])[unclamped], atol=1e-6)


def test_truth_in_any_region_map_follows_the_ten_percent_rule():
    """The same core judged on two region maps (MNI or the experts' drawing): 10 % of a region."""
    from export.synth import truth_in_regions
    from runtime.regions import label_id
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :, :5] = label_id(0, "left")          # C left: 200 voxels
    labels[:, :, 5:] = label_id(1, "right")         # L right: 200 voxels
    core = np.zeros(labels.shape, bool)
    core[0, :2, :5] = True                          # 10 voxels: 5 % of C left
    core[:, :, 5:6] = True                          # 40 voxels: 20 % of L right
    truth = truth_in_regions(core, labels)
    assert truth["C"] == ((False, False), (0.05, 0.0))
    assert truth["L"] == ((False, True), (0.0, 0.2))
    assert truth["M1"][0] == (False, False)
