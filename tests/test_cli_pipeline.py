"""End to end through the command line: the report, the exit codes, and never overwriting."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.result import STAGES
from runtime.shipped import DEFAULT_STUDY
from tests.conftest import ROOT
from tests.dicom_util import head_phantom, write_series


def aspects(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    run = aspects("score", "--out", out)
    assert run.returncode == 0, run.stderr
    return out, run


def test_default_study_report(demo_report):
    out, run = demo_report
    assert "ASPECTS" in run.stdout and "bundled" in run.stdout
    doc = json.loads((out / "report.json").read_text())
    assert 0 <= doc["aspects"] <= 10 and doc["aspects"] == min(doc["aspects_left"], doc["aspects_right"])
    assert doc["dichotomised"] == (">6" if doc["aspects"] > 6 else "<=6")
    assert len(doc["regions"]) == 20 and {r["side"] for r in doc["regions"]} == {"left", "right"}
    lo, hi = doc["aspects_range"]
    assert lo <= doc["aspects"] <= hi and doc["dichotomy_firm"] == ((lo > 6) == (hi > 6))
    near = [f"{r['side']} {r['region']}" for r in doc["regions"] if r["borderline"]]
    assert all(f"{n} (" in run.stdout for n in near) and ("borderline" in run.stdout) == bool(near)
    assert list(doc["timings_s"]) == list(STAGES)
    m = np.array(doc["alignment"]["model_to_study_lps"])
    np.testing.assert_allclose(m[:3, :3].T @ m[:3, :3], np.eye(3), atol=1e-4)
    assert len(doc["models"]) == 6 and all(len(x["card_sha256"]) == 64 for x in doc["models"])
    assert all(len(x["sha256"]) == 64 for x in doc["models"] if x["role"] != "classify_density")
    assert doc["study"]["source"].endswith(DEFAULT_STUDY.name)
    for name in ("ganglionic.png", "supraganglionic.png"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize()[0] >= 384 and img.GetNumberOfComponentsPerPixel() == 3
    assert doc["images"]["ganglionic"]["model_slice"] < doc["images"]["supraganglionic"]["model_slice"]
    assert doc["images"]["ganglionic"]["source_image"] is None      # a volume file has no source instances


def test_existing_report_is_never_overwritten(demo_report):
    out, _ = demo_report
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}
    run = aspects("score", "--out", out)
    assert run.returncode == 10
    assert run.stderr.startswith("error:") and "Traceback" not in run.stderr
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()}


def _bad_inputs(tmp_path):
    hu = head_phantom()
    empty = tmp_path / "empty"
    empty.mkdir()
    mr = tmp_path / "mr"
    write_series(mr, hu, modality="MR")
    gap = tmp_path / "gap"
    write_series(gap, hu, skip=(5,))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(DEFAULT_STUDY.read_bytes()[:5000])
    flat = tmp_path / "flat.nii.gz"
    flat_img = sitk.GetImageFromArray(np.zeros((20, 64, 64), np.int16))
    flat_img.SetSpacing((1.0, 1.0, 5.0))
    sitk.WriteImage(flat_img, str(flat))
    few = tmp_path / "few.nii.gz"
    img = sitk.GetImageFromArray(hu[:3].astype(np.int16))
    img.SetSpacing((1.0, 1.0, 5.0))
    sitk.WriteImage(img, str(few))
    return {"missing": (tmp_path / "none", 3), "empty": (empty, 4), "mr": (mr, 5), "few": (few, 6),
            "gap": (gap, 7), "flat": (flat, 8), "corrupt": (corrupt, 3)}


def test_bad_inputs_exit_cleanly_with_distinct_codes(tmp_path):
    for name, (path, code) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out_{name}"
        run = aspects("score", path, "--out", out)
        assert run.returncode == code, (name, run.returncode, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, run.stderr)
        assert not (out / "report.json").exists()


@pytest.mark.parametrize("args, env", [
    (["score", "--out", ""], {}),                                   # an unset $OUT: not the working folder
    (["score", "--out", "{tmp}/o", "--models", " "], {}),
    (["score", "--out", "{tmp}/o", "--threads", "0"], {}),
    (["score", "--out", "{tmp}/o", "--threads", "-3"], {}),
    (["score", "--out", "{tmp}/o"], {"ASPECTS_THREADS": "abc"}),
    (["score", "--out", "{tmp}/o"], {"ASPECTS_THREADS": "0"}),
    (["score", "--out", "{tmp}/o"], {"ASPECTS_ENGINE": "tflite"}),
    (["watch", "", "--out", "{tmp}/o", "--once"], {}),
    (["watch", "{tmp}/inbox", "--out", "{tmp}/o", "--quiet", "-1", "--once"], {}),
    (["watch", "{tmp}/inbox", "--out", "{tmp}/inbox/reports", "--once"], {}),
    (["serve", "--spool", ""], {}),
])
def test_settings_that_would_misplace_or_misrun_a_job_are_usage_errors(tmp_path, monkeypatch, args, env):
    """Exit 2 and one `error:` line, before anything is read or written: an empty path would put reports
    in the working folder (or a spool in it), reports inside a watched inbox would be taken for
    studies, and a bad thread or engine setting was an 'internal error'."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "study.nii.gz").write_bytes(DEFAULT_STUDY.read_bytes())
    work = tmp_path / "cwd"
    work.mkdir()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run = aspects(*(a.format(tmp=tmp_path) for a in args), cwd=work)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1].split(": ")[0] in ("error", "aspects score", "aspects watch",
                                                                   "aspects serve")
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr
    assert list(work.iterdir()) == [] and not (tmp_path / "o").exists()
    assert [p.name for p in inbox.iterdir()] == ["study.nii.gz"]


@pytest.mark.parametrize("args", [
    ["score", "--out", "{tmp}/afile"],
    ["watch", "{tmp}/inbox", "--out", "{tmp}/afile", "--once"],
    ["serve", "--spool", "{tmp}/afile"],
    ["serve", "--spool", "{tmp}/spool", "--output", "{tmp}/afile"],
])
def test_a_file_where_a_folder_goes_is_an_output_error(tmp_path, args):
    """Exit 10, as for `score`; the watcher and the node crashed with an internal error."""
    (tmp_path / "afile").write_text("the user's file")
    (tmp_path / "inbox").mkdir()
    run = aspects(*(a.format(tmp=tmp_path) for a in args))
    assert run.returncode == 10, run.stderr
    assert run.stderr == f"error: {tmp_path / 'afile'}: exists and is not a folder\n"
    assert (tmp_path / "afile").read_text() == "the user's file"


def test_an_unwritable_log_file_is_an_output_error(tmp_path):
    run = aspects("--log-json", tmp_path / "missing" / "log.jsonl", "score", "--out", tmp_path / "o")
    assert run.returncode == 15 and run.stderr.startswith("error: --log-json ") and "Traceback" not in run.stderr
    assert not (tmp_path / "o").exists()


def test_the_json_log_keeps_our_records_and_follows_logrotate(tmp_path):
    """A node logs for months. Libraries' per-image records (pynetdicom, highdicom: thousands a study)
    are not kept below WARNING, and once the log is moved away (logrotate), the next record starts a
    new file instead of going on into the rotated one."""
    script = ("import logging, os, sys\n"
              "from runtime.logs import configure_logging\n"
              "configure_logging(sys.argv[2], sys.argv[1])\n"
              "log, library = logging.getLogger('aspects.node'), logging.getLogger('pynetdicom._handlers')\n"
              "log.info('before')\n"
              "library.debug('a PDU'); library.info('Received Store Request'); library.warning('odd PDU')\n"
              "os.rename(sys.argv[1], sys.argv[1] + '.1')\n"
              "log.info('after'); log.debug('detail')\n")
    log = tmp_path / "node.jsonl"

    def records(path) -> list[str]:
        return [json.loads(line)["message"] for line in path.read_text().splitlines()]
    for level, rotated, kept in (("ERROR", ["before", "odd PDU"], ["after"]),
                                 ("DEBUG", ["before", "a PDU", "Received Store Request", "odd PDU"],
                                  ["after", "detail"])):
        run = subprocess.run([sys.executable, "-c", script, str(log), level], cwd=ROOT, capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr
        assert records(tmp_path / "node.jsonl.1") == rotated and records(log) == kept, level
        log.unlink()
    console = subprocess.run([sys.executable, "-c", script, str(log), "INFO"], cwd=ROOT, capture_output=True,
                             text=True).stderr.splitlines()
    assert console == ["INFO aspects.node: before", "WARNING pynetdicom._handlers: odd PDU", "INFO aspects.node: after"]


def test_models_lists_what_runs_and_what_it_was_trained_on():
    from runtime.modelcard import load_model_set
    cards = load_model_set().all_cards
    table = aspects("models")
    assert table.returncode == 0 and table.stderr == ""
    for card in cards:
        assert f"{card.role}: {card.name} {card.version}" in table.stdout
        if getattr(card, "sha256", None):
            assert card.sha256[:12] in table.stdout
    assert table.stdout.count("synthetic") >= 2                    # the provenance line of each network
    lines = aspects("models", "--json").stdout.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["role"] for d in docs] == [c.role for c in cards]
    assert [d["card_sha256"] for d in docs] == [c.card_sha256 for c in cards]
    assert all("provenance" in d and "metrics" in d for d in docs)


def test_gpu_request_explains_itself(tmp_path):
    """Where the GPU path cannot run, `--device gpu` says why in one line and exits 12."""
    pytest.importorskip("onnxruntime")
    from runtime.errors import DeviceUnavailable
    from runtime.gpu.device import CudaDevice
    try:
        CudaDevice()
        import tensorrt  # noqa: F401
    except (DeviceUnavailable, ImportError):
        run = aspects("score", "--device", "gpu", "--out", tmp_path / "o")
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 12 and len(lines) == 1 and lines[0].startswith("error:")
        assert "--device cpu" in lines[0]
        assert not (tmp_path / "o" / "report.json").exists()
    else:
        pytest.skip("this machine has a GPU and TensorRT: the GPU path runs instead of refusing")


def test_python_api_returns_typed_result(demo_result):
    from runtime.score import Score
    assert isinstance(demo_result.score, Score)
    assert demo_result.labels.shape == demo_result.hu.shape == demo_result.grid.shape
    present = set(np.unique(demo_result.labels)) - {0, 21}
    assert len(present) >= 18, f"segmentation found only labels {sorted(present)}"


def test_runtime_never_imports_torch():
    code = ("import sys, runtime.cli, runtime.pipeline, runtime.report; "
            "from runtime.cpu import CpuScorer; CpuScorer(); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_dicom_and_nifti_of_one_study_score_the_same(tmp_path, demo_study, demo_result):
    """The demo written as a DICOM series (files shuffled) must give the same geometry and score."""
    a = demo_study.affine
    spacing = tuple(np.linalg.norm(a[:3, :3], axis=0))
    write_series(tmp_path / "dicom", demo_study.hu, spacing=spacing, origin=tuple(a[:3, 3]),
                 orientation=tuple((a[:3, 0] / spacing[0]).tolist() + (a[:3, 1] / spacing[1]).tolist()))
    for f in (tmp_path / "dicom").iterdir():
        f.rename(f.with_name(hashlib.md5(f.name.encode()).hexdigest() + ".dcm"))
    out = tmp_path / "report"
    run = aspects("score", tmp_path / "dicom", "--out", out)
    assert run.returncode == 0, run.stderr
    doc = json.loads((out / "report.json").read_text())
    assert doc["aspects"] == demo_result.score.aspects
    # DICOM stores positions as decimal strings: the pose may move by a fraction of a voxel, no more.
    np.testing.assert_allclose(doc["alignment"]["model_to_study_lps"], demo_result.alignment.matrix, atol=0.3)


@pytest.mark.slow
def test_batch_scores_each_study_and_records_failures(tmp_path):
    """Several inputs, models loaded once: one sub-folder per study, batch.json with every outcome."""
    out = tmp_path / "batch"
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "score", str(DEFAULT_STUDY),
                          str(tmp_path / "missing.nii.gz"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 3
    assert run.stderr.splitlines() == [f"error: {tmp_path / 'missing.nii.gz'}: no such file or folder"]
    records = json.loads((out / "batch.json").read_text())["studies"]
    assert [(r["output"], r["exit_code"]) for r in records] == [("default_study", 0), ("missing", 3)]
    assert (out / "default_study" / "report.json").exists() and not (out / "missing").exists()


def test_progress_is_told_every_stage_in_order(scorer, capsys):
    from runtime.cli import _progress
    seen: list[str] = []
    scorer.on_stage = seen.append
    try:
        scorer.score(DEFAULT_STUDY)
    finally:
        scorer.on_stage = None
    assert list(dict.fromkeys(seen)) == [s for s in STAGES if s != "total"]
    _progress(DEFAULT_STUDY)("align")
    assert capsys.readouterr().out == f"\r\033[K{DEFAULT_STUDY.name}: [2/7] align"
