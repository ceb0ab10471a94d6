"""Every hostile or unusual input of tests/corpus.py gives the exit code the README promises,
one `error:` line on stderr when it fails, no report, and nothing of the input changed."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import assert_same_calls
from tests.corpus import CASES, DEMO, ROOT, run_case


def _tree_hashes(path):
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.scores else c for c in CASES],
                         ids=[c.name for c in CASES])
def test_corpus_input(case, tmp_path):
    if case.needs is not None and not case.needs.exists():
        pytest.skip(f"needs {case.needs} (real DICOM from ../shared/data, not shipped)")
    got = run_case(case, tmp_path)
    lines = got.stderr.splitlines()
    assert got.code == case.expected, got.stderr or got.stdout
    if case.expected == 0:
        assert (got.out / "report.json").exists() and not lines, got.stderr
        if "lossy" in case.name:
            assert "warning: the series is lossy-compressed" in got.stdout
    else:
        assert len(lines) == 1 and lines[0].startswith("error:"), got.stderr
        assert not (got.out / "report.json").exists() or os.path.islink(got.out / "report.json")
    assert not (tmp_path / "outside.json").exists()          # no write through a link


def test_inputs_are_never_changed(tmp_path):
    case = next(c for c in CASES if c.name == "zip of a series")
    args = case.build(tmp_path)
    before = _tree_hashes(tmp_path)
    subprocess.run([sys.executable, "-m", "runtime.cli", "score", *args, "--out", str(tmp_path / "r")],
                   capture_output=True, cwd=ROOT, timeout=600)
    after = {k: v for k, v in _tree_hashes(tmp_path).items() if not k.startswith("r/")}
    assert after == before


def test_two_runs_never_share_an_output_folder(tmp_path, demo_result):
    from runtime.errors import OutputExists
    from runtime.report import output_folder, write_report
    with output_folder(tmp_path / "out") as claimed:
        with pytest.raises(OutputExists, match="another aspects run"):
            write_report(demo_result, tmp_path / "out")
        write_report(demo_result, claimed)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ganglionic.png", "report.json",
                                                                    "supraganglionic.png"]


def test_a_failed_write_leaves_nothing(tmp_path, demo_result, monkeypatch):
    from runtime import output
    from runtime.report import write_report
    real_link = os.link
    calls = []

    def failing_link(src, dst):
        calls.append(dst)
        if str(dst).endswith("report.json"):
            raise KeyboardInterrupt            # as SIGINT would, between the images and the report
        return real_link(src, dst)

    monkeypatch.setattr(output.os, "link", failing_link)
    with pytest.raises(KeyboardInterrupt):
        write_report(demo_result, tmp_path / "out")
    assert not (tmp_path / "out").exists() and len(calls) == 3     # the folder the run made goes too


@pytest.mark.slow
def test_sigterm_leaves_no_partial_report_and_the_rerun_works(tmp_path):
    """A whole study takes a few seconds now: signal at several moments until one lands mid-run."""
    for delay in (1.0, 1.75, 2.5, 3.5):
        out = tmp_path / f"out_{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "score", str(DEMO), "--out", str(out),
                                 "--threads", "1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGTERM:
            # Still starting Python (a loaded machine): killed before the CLI took the signal over,
            # which leaves nothing behind either; try a later moment.
            assert not (out / "report.json").exists()
            continue
        if proc.returncode != 0:
            break
    else:
        pytest.skip("no signal landed mid-run: each came before the CLI started or after it finished")
    assert proc.returncode == 143 and err.strip().startswith("error:"), err
    assert not [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else True
    assert not list(out.glob("*.partial")) if out.exists() else True
    rerun = subprocess.run([sys.executable, "-m", "runtime.cli", "score", str(DEMO), "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr


def test_a_full_disk_is_an_output_error_and_leaves_nothing(monkeypatch, capsys, tmp_path):
    """A full disk mid-write was an "internal error ... report it" (exit 1), as if the program were at fault."""
    import errno

    from runtime import cli

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "out"
    assert cli.main(["score", str(DEMO), "--out", str(out)]) == 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out}/") and err[0].endswith(
        ": cannot be written (No space left on device)"), err
    assert not out.exists() or not list(out.iterdir())


def test_outputs_are_placed_on_a_filesystem_without_hard_links(monkeypatch, tmp_path):
    """FAT or exFAT (a USB disk) refuses os.link; a file that appeared meanwhile is still not replaced."""
    import errno

    from runtime.errors import OutputExists
    from runtime.output import OutputFolder

    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(os, "link", no_links)
    with OutputFolder(tmp_path / "out", ("report.json", "key.png")) as folder:
        folder.write("report.json", b"{}")
        (tmp_path / "out" / "key.png").write_bytes(b"someone else's")
        with pytest.raises(OutputExists, match="appeared while this run was writing"):
            folder.write("key.png", b"ours")
        folder.commit()
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == {"report.json": b"{}",
                                                                            "key.png": b"someone else's"}


def test_sigterm_inside_a_native_import_is_still_a_termination(monkeypatch, capsys, tmp_path):
    """A C extension's import turns the handler's exception into its own ImportError; the exit
    must still say terminated (143), not internal error (1)."""
    from runtime import cli

    def score_interrupted_while_importing(args):
        try:
            cli._terminated(signal.SIGTERM, None)
        except cli.Terminated:
            raise ImportError("initialization failed") from None
        return 0

    monkeypatch.setattr(cli, "_score", score_interrupted_while_importing)
    assert cli.main(["score", "--out", str(tmp_path / "out")]) == 143
    err = capsys.readouterr().err.strip()
    assert err == "error: terminated; nothing was written", err
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(cli, "_score", lambda args: (_ for _ in ()).throw(ImportError("broken wheel")))
    assert cli.main(["score", "--out", str(tmp_path / "out")]) == 1      # a real import failure stays one
    assert "internal error (ImportError: broken wheel)" in capsys.readouterr().err


def test_score_validates_a_study_object(scorer):
    from runtime.errors import NotAHead
    from runtime.read import Study
    flat = Study(hu=np.zeros((30, 128, 128), np.float32), affine=np.diag([1.0, 1.0, 5.0, 1.0]), source="api")
    with pytest.raises(NotAHead):
        scorer.score(flat)


@pytest.mark.slow
def test_tilted_and_untilted_encodings_give_the_same_calls(tmp_path, scorer):
    """The same anatomy written as a plain axial series and as a 12-degree gantry-tilted one: the same
    measurements, within what re-slicing the tilted series costs (up to 0.22 HU here), so the same
    calls wherever neither scoring reports a call borderline."""
    import SimpleITK as sitk

    from tests.dicom_util import write_series
    img = sitk.ReadImage(str(DEMO))
    img = sitk.Resample(img, [256, 256, img.GetSize()[2]], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        [img.GetSpacing()[0] * 2, img.GetSpacing()[1] * 2, img.GetSpacing()[2]],
                        img.GetDirection(), -1024.0)
    sx, sy, sz = img.GetSpacing()
    origin = np.array(img.GetOrigin())
    write_series(tmp_path / "plain", sitk.GetArrayFromImage(img), spacing=(sx, sy, sz), origin=tuple(origin))
    shear = np.tan(np.radians(12.0))
    tilted = []
    for k in range(img.GetSize()[2]):
        # Slice k of a tilted acquisition: the same plane orientation, its origin slid along y by z * tan(tilt).
        plane_origin = origin + np.array([0.0, k * sz * shear, k * sz])
        ref = sitk.Image([256, 256, 1], sitk.sitkFloat32)
        ref.SetSpacing((sx, sy, sz))
        ref.SetOrigin(tuple(plane_origin))
        ref.SetDirection(img.GetDirection())
        tilted.append(sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0))[0])
    write_series(tmp_path / "tilted", np.stack(tilted), spacing=(sx, sy, sz), origin=tuple(origin), tilt_deg=12.0)
    a, b = scorer.score(tmp_path / "plain"), scorer.score(tmp_path / "tilted")
    assert_same_calls(a, b, tolerance_hu=0.3)
    assert a.grid.spacing[2] == pytest.approx(b.grid.spacing[2], abs=1e-3)


@pytest.mark.slow
def test_a_scan_that_stops_short_is_not_a_firm_score(tmp_path):
    """The bundled head cut below the supraganglionic level (a short scan, or the wrong series of a
    split acquisition): M5 and M6 cannot be found. The score used to read 10, > 6, firm, with the
    regions that decide a large MCA infarct never looked at; now its range counts them as affected."""
    import json

    import SimpleITK as sitk
    img = sitk.ReadImage(str(DEMO))
    sitk.WriteImage(img[:, :, : img.GetSize()[2] // 2], str(tmp_path / "short.nii.gz"))
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "score", str(tmp_path / "short.nii.gz"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "out" / "report.json").read_text())
    unseen = [(c["region"], c["side"]) for c in doc["regions"] if not c["assessed"]]
    assert {("M5", "left"), ("M6", "left")} <= set(unseen), unseen
    per_side = max(sum(s == side for _, s in unseen) for side in ("left", "right"))
    assert doc["aspects_range"][0] <= doc["aspects"] - per_side
    assert "as the unassessed regions fall" in run.stdout and "regions not found" in run.stdout


def test_a_failed_write_keeps_the_users_own_folder(tmp_path, demo_result, monkeypatch):
    from runtime import output
    from runtime.report import write_report
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")

    def failing_link(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(output.os, "link", failing_link)
    with pytest.raises(KeyboardInterrupt):
        write_report(demo_result, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("tool, args, code", [
    ("export.evaluate", ["real", "--data", "{tmp}", "--reads", "{tmp}/reads.csv"], 3),
    ("export.ingest", ["{tmp}/my_data", "--out", "{tmp}/out"], 3),
    ("export.ctp_label", ["--cbf", "{tmp}/cbf.nii.gz", "--regions", "{tmp}/r.nii.gz", "--out", "{tmp}/o.json"], 3),
    ("export.train", ["segment", "--data", "{tmp}/cases"], 3),
    ("export.folds", ["{tmp}/trained", "{tmp}/fold"], 11),
    ("export.manifest", ["{tmp}/models"], 3),
    ("export.realtexture", ["--data", "{tmp}", "--out", "{tmp}/rt"], 3),
    ("export.dataset", ["--out", "{tmp}/ds", "--seeds", "5"], 2),
    ("export.dataset", ["--out", "{tmp}/ds", "--shared", "{tmp}/none"], 3),
    ("export.evaluate", ["studies", "--shared", "{tmp}/none", "--no-cards", "--out", "{tmp}/o"], 3),
    ("export.evaluate", ["calibrate", "--n", "0", "--out", "{tmp}/o"], 2),
    ("export.atlas", ["--shared", "{tmp}/none", "--out", "{tmp}/models"], 3),
    ("export.dataset", ["--out", "{tmp}/ds", "--workers", "0"], 2),
    # A zero once meant the default (400 iterations, lr 1e-3); a negative count trained nothing and
    # wrote a card; a stage name or checkpoint that is not there failed after hours of training.
    ("export.train", ["classify", "--data", "{tmp}/cases", "--iterations", "0"], 2),
    ("export.train", ["classify", "--data", "{tmp}/cases", "--lr", "0"], 2),
    ("export.train", ["segment", "--data", "{tmp}/cases", "--stages", "fine,foo"], 2),
    ("export.train", ["classify", "--data", "{tmp}/cases", "--out", "{tmp}/o", "--continue"], 2),
])
def test_the_build_tools_answer_bad_input_with_one_error_line(tmp_path, tool, args, code):
    """The `python -m export.*` tools take a user's own studies, reads and folders too: a missing one
    is a line saying so and an exit code, never a traceback, and nothing is written."""
    run = subprocess.run([sys.executable, "-m", tool, *(a.format(tmp=tmp_path) for a in args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == code, run.stderr
    assert "Traceback" not in run.stderr and (code == 2 or len(run.stderr.splitlines()) == 1)   # 2: argparse's usage
    last = run.stderr.splitlines()[-1]
    assert ": error: " in last or last.startswith("error: ") if code == 2 else \
        (last.startswith("error: ") and str(tmp_path) in last)
    assert list(tmp_path.iterdir()) == []
