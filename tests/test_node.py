"""`aspects serve`, on loopback only: DICOM in by C-STORE, results out by C-STORE, nothing lost.

- Real studies (converted to DICOM here) and the GE tilted head come back as SEG, SR and
  secondary captures that reference them.
- kill -9 mid-transfer and mid-scoring, then restart: every acknowledged study is scored
  exactly once.
- 20 studies from 4 concurrent associations: each scored once, nothing lost, in bounded time.
Every request loop here is bounded in count and time and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from runtime.cli import main
from runtime.node.config import Destination, NodeConfig, load_config
from runtime.node.server import Node, NothingNew, refuse_unless_better
from runtime.node.spool import Spool, read_record
from runtime.node.status import spool_status
from runtime.read import Study
from tests.conftest import DEMO_STUDY, SHARED_DATA
from tests.dicom_util import compress, edit_slices, write_series

pynetdicom = pytest.importorskip("pynetdicom", reason="pynetdicom is a base dependency; reinstall the project")

SEG, SR3D, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------- helpers

def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def associate(datasets: list, port: int, calling: str = "SCANNER"):
    """An association to the node with a presentation context for every dataset's class and syntax
    (one syntax each, as a PACS proposes a compressed syntax: the peer picks one syntax per context)."""
    from pynetdicom import AE
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop, ts in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop, ts)
    return ae.associate(LOOPBACK, port, ae_title="ASPECTS")


def send_folder(folder: Path, port: int, calling: str = "SCANNER", files: list[Path] | None = None) -> list[int]:
    """One association, every file of `folder` (or `files`) by C-STORE; the statuses returned."""
    paths = files if files is not None else sorted(p for p in folder.iterdir() if p.is_file())
    datasets = [pydicom.dcmread(p) for p in paths]
    assoc = associate(datasets, port, calling)
    if not assoc.is_established:
        return []
    try:
        return [getattr(assoc.send_c_store(d), "Status", -1) for d in datasets]
    finally:
        assoc.release()


class Receiver:
    """A PACS stand-in: a Storage SCP for SEG, SR and secondary captures that keeps what it gets."""

    def __init__(self, classes: tuple[str, ...] = (SEG, SR3D, SC), status: int = 0x0000, port: int = 0):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, evt
        self.received: list[pydicom.Dataset] = []
        self.status = status
        ae = AE(ae_title="PACS")
        for sop in classes:
            ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event):
        self.received.append(event.dataset)
        return self.status

    def close(self):
        self.server.shutdown()


class StalledReceiver(Receiver):
    """A PACS slow to answer: every C-STORE waits until `release` is set (60 s at most)."""

    def __init__(self):
        self.release = threading.Event()
        super().__init__()

    def _store(self, event):
        self.release.wait(60)
        return super()._store(event)


def wait_for(predicate, timeout_s: float, what: str):
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def outcomes(spool: Path) -> list[dict]:
    return [json.loads((d / "outcome.json").read_text()) for sub in ("done", "failed")
            for d in sorted((spool / sub).iterdir()) if (d / "outcome.json").exists()]


def small_head_series(folder: Path, patient: str) -> str:
    """The bundled head as a 256 x 256 DICOM series of its own study; returns the StudyInstanceUID."""
    img = sitk.ReadImage(str(DEMO_STUDY))
    sx, sy, sz = img.GetSpacing()
    hu = sitk.GetArrayFromImage(img)[:, ::2, ::2]
    study_uid = pydicom.uid.generate_uid()
    write_series(folder, hu, spacing=(sx * 2, sy * 2, sz), origin=img.GetOrigin(), patient_id=patient,
                 study_uid=study_uid)
    return study_uid


def real_series(folder: Path, name: str, patient: str) -> str:
    """A real NCCT study (NIfTI, LPS) written as the scanner would send it; its StudyInstanceUID."""
    img = sitk.DICOMOrient(sitk.ReadImage(str(SHARED_DATA / "real" / f"{name}.nii.gz")), "LPS")
    if not np.allclose(np.asarray(img.GetDirection()).reshape(3, 3), np.eye(3), atol=1e-3):
        pytest.skip(f"{name} is oblique; the test writer makes axial series only")
    study_uid = pydicom.uid.generate_uid()
    sx, sy, sz = img.GetSpacing()
    write_series(folder, sitk.GetArrayFromImage(img).astype(np.float32), spacing=(sx, sy, sz),
                 origin=img.GetOrigin(), patient_id=patient, study_uid=study_uid)
    return study_uid


def cta_of(folder: Path, into: Path) -> None:
    """The same study's CTA, sent with it as a stroke protocol does: twice the slices, its agent named."""
    into.mkdir()
    series_uid = pydicom.uid.generate_uid()
    for i, path in enumerate(sorted(folder.iterdir())):
        for half in (0, 1):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesDescription, ds.ContrastBolusAgent = series_uid, "CTA HEAD", "Iohexol"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
            ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + half * float(ds.SliceThickness) / 2
            ds.save_as(into / f"CTA{2 * i + half:04d}.dcm")


def dose_report_and_screenshot(folder: Path) -> None:
    """What a scanner sends with the images: a radiation dose SR and a screenshot of the dose page."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    like = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    for name, sop_class, modality in (("DOSE.dcm", "1.2.840.10008.5.1.4.1.1.88.67", "SR"),
                                      ("SCREEN.dcm", "1.2.840.10008.5.1.4.1.1.7", "OT")):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, pydicom.uid.generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = like.StudyInstanceUID, pydicom.uid.generate_uid()
        ds.PatientID, ds.Modality = like.PatientID, modality
        if modality == "OT":
            ds.Rows = ds.Columns = 8
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
            ds.PixelData = bytes(8 * 8 * 3)
        ds.save_as(folder / name, enforce_file_format=True)


# ---------------------------------------------------------------- configuration

def test_config_file_then_flags(tmp_path):
    from runtime.errors import UsageError
    cfg = tmp_path / "node.toml"
    cfg.write_text('ae_title = "STROKE"\nport = 4242\nallowed_calling_aes = ["CT1"]\nquiet_seconds = 3\n'
                   '[[destinations]]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\n')
    c = load_config(cfg, spool=tmp_path / "spool", port=5000, destinations=None)
    assert (c.ae_title, c.port, c.allowed_calling_aes, c.quiet_seconds) == ("STROKE", 5000, ("CT1",), 3)
    assert c.destinations == (Destination("PACS", "127.0.0.1", 104),)
    assert c.output == tmp_path / "spool" / "results"
    assert load_config(None, spool=tmp_path, destinations=["A@h:1"]).destinations == (Destination("A", "h", 1),)
    cfg.write_text('[[destinations]]\nae_title = "PACS"\nhost = "pacs"\nport = 2762\ntls = true\n')
    assert load_config(cfg, spool=tmp_path).destinations == (Destination("PACS", "pacs", 2762, tls=True),)
    assert Destination.parse("PACS@pacs:2762/tls") == Destination("PACS", "pacs", 2762, tls=True)
    v6 = Destination.parse("PACS@[fd00::5]:104")
    assert (v6.host, v6.port, v6.name) == ("fd00::5", 104, "PACS@[fd00::5]:104")
    for bad in ("PACS@fd00::5:104", "PACS@[pacs]:104", "PACS@pacs", "@pacs:104"):
        with pytest.raises(UsageError):
            Destination.parse(bad)


@pytest.mark.parametrize("text", ['port = "x"\n', 'colour = 1\n', 'ae_title = "THIS TITLE IS WAY TOO LONG"\n',
                                  'retain_days = -1\n',
                                  '[[destinations]]\nhost = "h"\n',
                                  '[[destinations]]\nae_title = "P"\nhost = "h"\nport = 1\ntls = "yes"\n'])
def test_bad_config_is_a_usage_error(tmp_path, text):
    from runtime.errors import UsageError
    cfg = tmp_path / "node.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError):
        load_config(cfg, spool=tmp_path / "spool")


def test_retention_removes_old_results_and_finished_jobs_only(tmp_path):
    """retain_days on a console's disk: what is finished and old goes; what is arriving or queued stays."""
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", retain_days=30)
    node = Node(config)
    spool = node.spool
    long_ago = time.time() - 40 * 86400
    made = {}
    for name, folder in (("old result", config.output / "1.2_1"), ("new result", config.output / "1.3_2"),
                         ("old done", spool.done / "1.2_1"), ("old failed", spool.failed / "1.4_3"),
                         ("new done", spool.done / "1.3_2"), ("old job", spool.jobs / "1.5_4"),
                         ("old incoming", spool.incoming / "1.6")):
        (folder / "dicom").mkdir(parents=True)
        made[name] = folder
    (spool.failures / "1.4_3.json").write_text("{}")
    for name, folder in made.items():
        if name.startswith("old"):
            os.utime(folder, (long_ago, long_ago))
    node.purge(time.time() - config.retain_days * 86400)
    assert {n for n, f in made.items() if f.exists()} == {"new result", "new done", "old job", "old incoming"}
    assert not (spool.failures / "1.4_3.json").exists()


def test_retention_runs_when_the_node_starts(tmp_path, scorer):
    """A node restarted after a long stop purges at once, not an hour later."""
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        retain_days=30, quiet_seconds=0.2)
    old = config.output / "1.2_1"
    old.mkdir(parents=True)
    long_ago = time.time() - 40 * 86400
    os.utime(old, (long_ago, long_ago))
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        wait_for(lambda: not old.exists(), 10, "the first retention pass")
    finally:
        node.stop()


def test_spool_refuses_uids_that_are_not_uids(tmp_path):
    from runtime.node.spool import BadIdentifier
    spool = Spool(tmp_path)
    with pytest.raises(BadIdentifier):
        spool.store("../../etc", "1.2.3", b"x")
    assert spool.store("1.2.3", "1.2.3.4", b"x").read_bytes() == b"x"


def test_job_names_rise_when_the_clock_is_stepped_back(tmp_path):
    """A job's name orders it among its study's jobs (which failure a later score answers, which results
    are superseded) and in the queue, newest first. Made after the wall clock was stepped back an hour,
    a job was named older than the jobs made before the step, a restart between them or not."""
    from runtime.node.spool import started_ns
    made_before_the_step = f"1.2.3_{time.time_ns() + 3600 * 10**9}"
    (tmp_path / "done" / made_before_the_step).mkdir(parents=True)
    (tmp_path / "done" / "notes.txt").write_text("not a job")
    names = [made_before_the_step]
    for _ in range(2):                                            # the second: after a restart
        spool = Spool(tmp_path)
        for study in ("1.2.3", "1.2.4"):
            spool.store(study, "1.2.3.4", b"x")
            job = spool.promote(study)
            assert job is not None
            names.append(job)
            shutil.move(spool.jobs / job, spool.done / job)
    assert [started_ns(n) for n in names] == sorted(started_ns(n) for n in names) and len(set(names)) == 5


def test_a_studys_lock_is_kept_only_while_it_is_held_or_waited_for(tmp_path):
    """A node runs for months: one lock per study ever received was kept for good."""
    spool = Spool(tmp_path)
    for k in range(50):
        spool.store(f"1.2.3.{k}", f"1.2.3.{k}.1", b"x")
    assert spool._locks == {}
    entered, release = threading.Event(), threading.Event()

    def hold():
        with spool._study("1.2.3.0"):
            entered.set()
            release.wait(5)
    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    waiter = threading.Thread(target=spool.store, args=("1.2.3.0", "1.2.3.0.2", b"y"))
    waiter.start()
    wait_for(lambda: spool._locks.get("1.2.3.0", (None, 0))[1] == 2, 5, "the second user waiting")
    release.set()
    holder.join(5)
    waiter.join(5)
    assert spool._locks == {} and (tmp_path / "incoming" / "1.2.3.0").is_dir()


# ---------------------------------------------------------------- end to end

@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.mark.slow
def test_studies_sent_to_the_node_come_back_as_seg_sr_and_key_images(tmp_path, receiver):
    studies = {}
    if (SHARED_DATA / "dicom" / "ge_head_tilt").is_dir():
        ge = SHARED_DATA / "dicom" / "ge_head_tilt"
        studies[pydicom.dcmread(next(ge.iterdir()), stop_before_pixels=True).StudyInstanceUID] = ge
    if (SHARED_DATA / "real" / "sub003_im.nii.gz").exists():
        studies[real_series(tmp_path / "sub003", "sub003_im", "REAL-3")] = tmp_path / "sub003"
        # As a PACS forwards it: JPEG lossless, the syntax pydicom alone cannot decode.
        edit_slices(tmp_path / "sub003", lambda ds: compress(ds, pydicom.uid.JPEGLosslessSV1))
    if not studies:
        studies[small_head_series(tmp_path / "demo", "DEMO-1")] = tmp_path / "demo"
    # The last study comes as a stroke protocol, in one association: its CTA, with more images, must not
    # be the one scored; its dose report and a screenshot are acknowledged and not kept.
    last = list(studies.values())[-1]
    cta_of(last, tmp_path / "cta")
    dose_report_and_screenshot(tmp_path / "cta")
    whole = {last: sorted([*last.iterdir(), *(tmp_path / "cta").iterdir()])}
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        allowed_calling_aes=("SCANNER",), quiet_seconds=1.0, keep_received=True,
                        destinations=(Destination("PACS", LOOPBACK, receiver.port),))
    node = Node(config).start()
    try:
        from pynetdicom import AE
        echo = AE(ae_title="SCANNER")
        echo.add_requested_context("1.2.840.10008.1.1")
        assoc = echo.associate(LOOPBACK, node.port, ae_title="ASPECTS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assert send_folder(next(iter(studies.values())), node.port, calling="STRANGER") == []   # not allowed
        for folder in studies.values():
            assert _stored(send_folder(folder, node.port, files=whole.get(folder)))
        wait_for(lambda: len(outcomes(config.spool)) == len(studies), 600, "every study scored")
    finally:
        node.stop()
    for outcome in outcomes(config.spool):
        assert outcome["exit_code"] == 0, outcome
        assert outcome["sent_to"] == [f"PACS@{LOOPBACK}:{receiver.port}"]
    kept = {p.stem for p in (config.spool / "done").glob("*/dicom/*.dcm")}
    others = {pydicom.dcmread(tmp_path / "cta" / n).SOPInstanceUID for n in ("DOSE.dcm", "SCREEN.dcm")}
    assert kept and not kept & others
    for study_uid, folder in studies.items():
        sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.iterdir()}
        got = [d for d in receiver.received if d.StudyInstanceUID == study_uid]
        assert sorted(str(d.SOPClassUID) for d in got) == sorted([SEG, SR3D, SC, SC]), study_uid
        seg = next(d for d in got if d.SOPClassUID == SEG)
        refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
        assert refs <= sources and refs                 # the NCCT's images, never the CTA's
        for sc in (d for d in got if d.SOPClassUID == SC):
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID in sources


# ---------------------------------------------------------------- kill -9 and restart

def _serve(tmp_path: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runtime.cli", "--log-level", "INFO", "serve", "--spool", str(tmp_path / "spool"),
           "--host", LOOPBACK, "--port", str(port), "--quiet", "3", "--outputs", "json"]
    before = log.read_text().count("listening on") if log.exists() else 0
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    wait_for(lambda: log.read_text().count("listening on") > before or proc.poll() is not None, 120,
             "the node to listen")
    assert proc.poll() is None, log.read_text()
    return proc


def _stored(statuses: list[int]) -> bool:
    return bool(statuses) and all(s == 0 for s in statuses)


def _kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_mid_transfer_and_mid_scoring_then_restart_scores_each_study_once(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    uid_a, uid_b = small_head_series(a, "KILL-A"), small_head_series(b, "KILL-B")
    files_b = sorted(b.iterdir())
    port, log = _free_port(), tmp_path / "node.log"
    spool = tmp_path / "spool"

    node = _serve(tmp_path, port, log)
    assert _stored(send_folder(a, port))
    assert _stored(send_folder(b, port, files=files_b[:10]))                   # a third of study B ...
    _kill9(node)                                                               # ... then the node dies
    node = _serve(tmp_path, port, log)
    assert _stored(send_folder(b, port, files=files_b[10:]))                   # the rest after the restart
    wait_for(lambda: any((spool / "jobs").iterdir()), 60, "a job to start")
    _kill9(node)                                                               # killed while scoring
    leftovers = [p for p in (spool / "incoming").rglob("*") if p.name.startswith(".part-")]
    node = _serve(tmp_path, port, log)
    try:
        wait_for(lambda: len(outcomes(spool)) == 2, 300, "both studies scored after the restarts")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
    got = outcomes(spool)
    assert sorted(o["study_instance_uid"] for o in got) == sorted([uid_a, uid_b]), got
    assert all(o["exit_code"] == 0 for o in got), got
    results = sorted(p.name for p in (spool / "results").iterdir() if not p.name.startswith("."))
    assert len(results) == 2 and {r.rsplit("_", 1)[0] for r in results} == {uid_a, uid_b}
    report_b = json.loads((spool / "results" / next(r for r in results if r.startswith(uid_b)) / "report.json")
                          .read_text())
    assert report_b["study"]["slices"] == len(files_b)           # the images from before the kill are in it
    assert not list((spool / "jobs").iterdir()) and not list((spool / "incoming").iterdir())
    assert all(not p.exists() for p in leftovers)


def test_a_sender_pausing_longer_than_the_quiet_period_is_one_study(tmp_path):
    """A study is not complete while the association carrying it is open, however long the sender
    pauses between images; once it is released, the quiet period alone decides."""
    folder = tmp_path / "study"
    study_uid = small_head_series(folder, "PAUSE")
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=0.3, outputs=("json",), workers=1)
    node = Node(config).start()
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
        assoc = associate(datasets, node.port)
        assert assoc.is_established
        try:
            half = len(datasets) // 2
            statuses = [getattr(assoc.send_c_store(d), "Status", -1) for d in datasets[:half]]
            time.sleep(2.0)                                   # more than six quiet periods
            assert not list((config.spool / "jobs").iterdir()), "promoted while its association was open"
            statuses += [getattr(assoc.send_c_store(d), "Status", -1) for d in datasets[half:]]
        finally:
            assoc.release()
        assert statuses == [0] * len(datasets)
        wait_for(lambda: len(outcomes(config.spool)) == 1, 300, "the study scored")
        time.sleep(1.0)                                       # time for a second job, were there one
    finally:
        node.stop()
    got = outcomes(config.spool)
    assert [o["study_instance_uid"] for o in got] == [study_uid] and got[0]["exit_code"] == 0, got


def _set_times(folder: Path, when: float) -> None:
    for path in (folder, *folder.iterdir()):
        os.utime(path, (when, when))


def test_the_quiet_period_is_timed_on_the_nodes_own_clock_not_the_file_times(tmp_path, scorer):
    """File times follow the wall clock, which NTP or a person steps. Images written before the clock
    was stepped back an hour carry times an hour ahead: their study waited that hour to be scored.
    Stepped forward an hour between a sender's two associations, the first half was made a job at
    once and the rest came as late images of a scored series (a failure)."""
    back_uid = small_head_series(tmp_path / "back", "CLOCK-BACK")
    forward_uid = small_head_series(tmp_path / "forward", "CLOCK-FORWARD")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=3.0, outputs=("json",), workers=1)
    incoming = config.spool / "incoming"
    spooler = Node(config)                                     # received while the node was last up
    for f in sorted((tmp_path / "back").iterdir()):
        spooler.spool.store(back_uid, pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID, f.read_bytes())
    _set_times(incoming / back_uid, time.time() + 3600)       # the clock stepped back an hour since
    files = sorted((tmp_path / "forward").iterdir())
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        assert set(send_folder(tmp_path / "forward", node.port, files=files[:len(files) // 2])) == {0}
        _set_times(incoming / forward_uid, time.time() - 3600)  # the clock stepped forward an hour
        time.sleep(1.0)                            # more than the scheduler's poll, less than the quiet period
        assert set(send_folder(tmp_path / "forward", node.port, files=files[len(files) // 2:])) == {0}
        wait_for(lambda: len(outcomes(config.spool)) == 2, 120, "both studies scored")
        time.sleep(1.0)                                       # time for a third job, were there one
    finally:
        node.stop()
    got = {o["study_instance_uid"]: o for o in outcomes(config.spool)}
    assert set(got) == {back_uid, forward_uid} and all(o["exit_code"] == 0 for o in got.values()), got
    report = json.loads((Path(got[forward_uid]["output"]) / "report.json").read_text())
    assert report["study"]["slices"] == len(files), "scored half sent"


def test_images_are_refused_while_the_spool_disk_is_nearly_full(tmp_path, caplog):
    """Room is kept to score and write what was received: under min_free_mb every image is answered
    0xA700 (the sender keeps it and retries), nothing is spooled, and the log says so once, not once
    an image."""
    folder = tmp_path / "study"
    small_head_series(folder, "FULL")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        outputs=("json",), min_free_mb=1e11)
    node = Node(config, scorer_factory=lambda threads: MustNotScore()).start()    # type: ignore[arg-type,return-value]
    try:
        statuses = send_folder(folder, node.port)
    finally:
        node.stop()
    assert statuses and set(statuses) == {0xA700}
    assert not any((config.spool / "incoming").iterdir())
    assert len([r for r in caplog.records if "under min_free_mb" in r.getMessage()]) == 1


def test_each_association_is_logged_with_who_sent_what(tmp_path, caplog):
    """When a study is missing, the first question is whether the scanner sent it."""
    import logging
    caplog.set_level(logging.INFO, logger="aspects.node")
    study_uid = small_head_series(tmp_path / "study", "WHO")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=600)
    node = Node(config, scorer_factory=lambda threads: MustNotScore()).start()    # type: ignore[arg-type,return-value]
    try:
        n = len(send_folder(tmp_path / "study", node.port, calling="CT_ROOM1"))
        wait_for(lambda: "stored" in caplog.text, 10, "the association's log line")
    finally:
        node.stop()
    assert f"CT_ROOM1 at {LOOPBACK} stored {n} CT image(s) of 1 study(ies): {study_uid}" in caplog.text


# ---------------------------------------------------------------- load

@pytest.mark.slow
def test_twenty_studies_from_four_concurrent_associations(tmp_path):
    folders = {}
    for i in range(20):
        folder = tmp_path / f"s{i:02d}"
        folders[small_head_series(folder, f"LOAD-{i:02d}")] = folder
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=1.0, outputs=("json",), workers=2)
    node = Node(config).start()
    t0 = time.time()
    statuses: list[int] = []
    try:
        batches = [list(folders.values())[i::4] for i in range(4)]

        def sender(batch):
            for folder in batch:
                statuses.extend(send_folder(folder, node.port))

        threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(statuses) == sum(len(list(f.iterdir())) for f in folders.values()) and set(statuses) == {0}
        wait_for(lambda: len(outcomes(config.spool)) == 20, 600, "20 studies scored")
    finally:
        node.stop()
    elapsed = time.time() - t0
    got = outcomes(config.spool)
    assert sorted(o["study_instance_uid"] for o in got) == sorted(folders), "a study lost or scored twice"
    assert all(o["exit_code"] == 0 for o in got), [o for o in got if o["exit_code"]]
    assert len([p for p in config.output.iterdir() if not p.name.startswith(".")]) == 20
    print(f"20 studies, 4 associations, 2 workers: {elapsed:.0f} s")
    assert elapsed < 600


class MustNotScore:
    def score(self, source):
        raise AssertionError("a job was scored again")


def _spool_study(node: Node, folder: Path, study_uid: str) -> str:
    """Store a folder's images as the SCP does, and make them a job."""
    for f in sorted(folder.iterdir()):
        node.spool.store(study_uid, pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID, f.read_bytes())
    job = node.spool.promote(study_uid)
    assert job is not None
    return job


def test_a_study_sent_again_is_not_scored_again(tmp_path, scorer):
    """A technologist re-sends, or a scanner retries: the same images give no second result in PACS."""
    folder = tmp_path / "study"
    study_uid = small_head_series(folder, "RESEND")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json",))
    node = Node(config)
    first = node.run_job(scorer, _spool_study(node, folder, study_uid))
    assert first["exit_code"] == 0 and len(first["instances"]) == len(list(folder.iterdir()))
    again = node.run_job(MustNotScore(), _spool_study(node, folder, study_uid))   # type: ignore[arg-type]
    assert again["exit_code"] == 0 and again["same_as"] == first["job"] and again["sent_to"] == []
    assert again["aspects"] == first["aspects"] and again["output"] == first["output"]
    assert len([p for p in config.output.iterdir() if not p.name.startswith(".")]) == 1
    # One image the first job did not have (a late slice, another series): scored as its own job.
    assert node.spool.scored_with(f"{study_uid}_1", [*first["instances"], "1.2.3.4"]) is None


@pytest.mark.parametrize("finding, region, ml, add_hu, status_says", [
    ("bleed", "L", 5.0, 35.0, "hyperdense tissue"),
    ("clip", "I", 0.1, 3000.0, "metal inside the skull"),
])
def test_hyperdense_tissue_or_metal_is_said_in_the_outcome_the_log_and_status(tmp_path, scorer, demo_study,
                                                                              demo_result, caplog, capsys, finding,
                                                                              region, ml, add_hu, status_says):
    """A bleed scored as a bare ASPECTS 10 by an unattended node is the worst thing it can send, and a
    clip's streaks can make or unmake the calls near it: the outcome records each, the log says it as a
    WARNING in the words the console and `aspects watch` use, and `aspects status` shows it beside the
    score. Before, the node's log and status said nothing of metal."""
    from tests.test_hyperdense import _brighter_sphere
    changed = _brighter_sphere(demo_study, demo_result, region, "left", ml=ml, add_hu=add_hu)
    img = sitk.ReadImage(str(DEMO_STUDY))
    sx, sy, sz = img.GetSpacing()
    study_uid = pydicom.uid.generate_uid()
    write_series(tmp_path / finding, changed.hu[:, ::2, ::2], spacing=(sx * 2, sy * 2, sz), origin=img.GetOrigin(),
                 patient_id=finding.upper(), study_uid=study_uid)
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json", "sr"))
    node = Node(config)
    with caplog.at_level(logging.INFO, logger="aspects.node"):
        outcome = node.run_job(scorer, _spool_study(node, tmp_path / finding, study_uid))
    assert outcome["exit_code"] == 0, outcome
    if finding == "bleed":
        assert outcome["hyperdense_ml"] >= 2.0 and not outcome["metal_ml"], outcome
    else:
        assert 0 < outcome["metal_ml"] < 0.3 and not outcome["hyperdense_ml"], outcome
    report = json.loads((Path(outcome["output"]) / "report.json").read_text())
    first = report["warnings"][:1]
    assert first and first[0].startswith(status_says)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == \
        [f"job {outcome['job']}: {w}" for w in first]
    # After a crash between placing the results and recording the outcome, the same from report.json.
    os.rename(config.spool / "done" / outcome["job"], config.spool / "jobs" / outcome["job"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aspects.node"):
        again = node.run_job(MustNotScore(), outcome["job"])       # type: ignore[arg-type]
    assert {k: again[k] for k in ("aspects", "hyperdense_ml", "metal_ml")} == \
        {k: outcome[k] for k in ("aspects", "hyperdense_ml", "metal_ml")}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == \
        [f"job {outcome['job']}: {w}" for w in first]
    assert main(["status", "--spool", str(config.spool)]) == 0
    assert f"ASPECTS {outcome['aspects']}, {status_says}" in capsys.readouterr().out


def test_a_study_with_nothing_to_read_is_ignored_and_a_failed_one_kept(tmp_path, scorer, caplog):
    """A CTA filed as a study of its own (its own order and accession, as many sites do) has nothing
    this node reads. It failed (exit 5): one failure record per stroke, which teaches the staff to
    ignore failure records. It is ignored (said in the log), and its images are not kept: a gigabyte a
    stroke would fill the disk. A study that could not be read is a failure, kept to be looked into."""
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json",))
    node = Node(config)
    cta_uid = small_head_series(tmp_path / "cta", "LATE-CTA")
    edit_slices(tmp_path / "cta", lambda ds: setattr(ds, "ContrastBolusAgent", "Iohexol"))
    gap_uid = small_head_series(tmp_path / "gap", "GAP")
    sorted((tmp_path / "gap").iterdir())[10].unlink()
    chest_uid = small_head_series(tmp_path / "chest", "CHEST")          # a broad routing rule: every CT
    edit_slices(tmp_path / "chest", lambda ds: setattr(ds, "BodyPartExamined", "CHEST"))
    cta = node.run_job(scorer, _spool_study(node, tmp_path / "cta", cta_uid))
    gap = node.run_job(scorer, _spool_study(node, tmp_path / "gap", gap_uid))
    chest = node.run_job(scorer, _spool_study(node, tmp_path / "chest", chest_uid))
    assert (cta["exit_code"], gap["exit_code"], chest["exit_code"]) == (0, 7, 0)
    assert "acquired with contrast" in cta["ignored"] and "nothing this node reads" in caplog.text
    assert "BodyPartExamined CHEST" in chest["ignored"]
    assert not (config.spool / "done" / cta["job"] / "dicom").exists()
    assert not (config.spool / "done" / chest["job"] / "dicom").exists()
    assert len(list((config.spool / "failed" / gap["job"] / "dicom").iterdir())) == len(gap["instances"])
    assert {p.stem for p in (config.spool / "failures").iterdir()} == {gap["job"]}


def test_an_archive_without_seg_storage_gets_the_other_results(tmp_path, scorer):
    """Many archives take no Segmentation Storage, and many answer a store with a warning (0xB000,
    elements coerced): the SR and key images still go, the job succeeds, and the outcome says what was
    not taken. It was an internal error, and a warning was a failed delivery."""
    old_pacs = Receiver(classes=(SR3D, SC), status=0xB000)
    try:
        study_uid = small_head_series(tmp_path / "study", "NOSEG")
        config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results",
                            destinations=(Destination("PACS", LOOPBACK, old_pacs.port),))
        node = Node(config)
        outcome = node.run_job(scorer, _spool_study(node, tmp_path / "study", study_uid))
    finally:
        old_pacs.close()
    name = f"PACS@{LOOPBACK}:{old_pacs.port}"
    assert outcome["exit_code"] == 0 and outcome["sent_to"] == [name], outcome
    assert outcome["not_taken"] == {name: ["Segmentation Storage"]}
    assert sorted(str(d.SOPClassUID) for d in old_pacs.received) == sorted([SR3D, SC, SC])


def test_results_a_destination_missed_are_sent_again_once_it_is_back(tmp_path, scorer, caplog):
    """A PACS restarting during a stroke: the results went nowhere (three tries in six seconds) and
    stayed a failure record until someone re-sent the study. The outbox now sends them again, to the
    destinations that missed them, for redeliver_hours; a study delivered since by a newer job is not
    sent twice."""
    port = _free_port()
    name = f"PACS@{LOOPBACK}:{port}"
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json", "sr"),
                        destinations=(Destination("PACS", LOOPBACK, port),), send_attempts=1)
    node = Node(config)
    uids = {k: small_head_series(tmp_path / k, f"OUTBOX-{k}") for k in ("late", "stale", "resent")}
    jobs = {k: node.run_job(scorer, _spool_study(node, tmp_path / k, uid)) for k, uid in uids.items()}
    for outcome in jobs.values():
        assert outcome["exit_code"] == 16 and outcome["not_sent"] == [name], outcome
        assert "sent again every 60 s for 24 h" in outcome["error"]
    node.redeliver()                                          # still down: one more try recorded
    record = json.loads((config.spool / "failures" / f"{jobs['late']['job']}.json").read_text())
    assert record["redelivery_attempts"] == 1 and record["exit_code"] == 16

    pacs = Receiver(port=port)
    try:
        again = node.run_job(scorer, _spool_study(node, tmp_path / "resent", uids["resent"]))   # a re-send
        assert again["exit_code"] == 0 and again["sent_to"] == [name]
        stale = json.loads((config.spool / "failures" / f"{jobs['stale']['job']}.json").read_text())
        stale["finished_at"] -= 25 * 3600                     # past redeliver_hours
        node.spool.record_failure(stale)
        node.redeliver()
    finally:
        pacs.close()
    # One SR each for the re-sent study and the late one; none for the one past the window.
    assert sorted(str(d.StudyInstanceUID) for d in pacs.received) == sorted([uids["resent"], uids["late"]])
    late = json.loads((config.spool / "done" / jobs["late"]["job"] / "outcome.json").read_text())
    assert late["exit_code"] == 0 and late["sent_to"] == [name] and late["not_sent"] == [] and late["delivered_late"]
    assert not (config.spool / "done" / jobs["late"]["job"] / "dicom").exists()
    resent = json.loads((config.spool / "done" / jobs["resent"]["job"] / "outcome.json").read_text())
    assert resent["superseded_by"] == again["job"]
    assert sorted(p.stem for p in (config.spool / "failures").iterdir()) == [jobs["stale"]["job"]]
    given_up = json.loads((config.spool / "failures" / f"{jobs['stale']['job']}.json").read_text())
    assert given_up["redelivery_ended"] and f"send {given_up['output']} to {name} by hand" in given_up["error"]
    assert "not delivered to" in caplog.text and caplog.text.count("by hand") == 1
    node.redeliver()                                          # said once, not every minute after
    assert caplog.text.count("by hand") == 1 and node.spool.undelivered() == []
    # The command the record gives sends them, once the PACS is back.
    command = given_up["error"].rsplit("(", 1)[1].rstrip(")")
    assert command == f"aspects send {given_up['output']} --to {name}"
    pacs = Receiver(port=port)
    try:
        assert main(shlex.split(command)[1:]) == 0
    finally:
        pacs.close()
    assert [str(d.StudyInstanceUID) for d in pacs.received] == [uids["stale"]]


def test_the_outbox_tries_a_destination_once_a_pass(tmp_path, scorer, monkeypatch):
    """A hung PACS takes 30 s a try, and a pass tried it once for every job waiting for it: ten such
    jobs kept the first of them five minutes from a PACS that was back. A destination that fails a
    try is now passed over for the rest of the pass, while the others still get what they missed."""
    from collections import Counter

    from runtime.node import server
    from runtime.node.send import SendFailed
    pacs, viewer = Destination("PACS", LOOPBACK, 104), Destination("VIEWER", LOOPBACK, 105)
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json", "sr"),
                        destinations=(pacs, viewer), send_attempts=1)
    node = Node(config)
    tried: Counter[str] = Counter()
    up: set[str] = set()

    def send_files(calling_ae, dest, files, tls=None):
        tried[dest.ae_title] += 1
        if dest.ae_title not in up:
            raise SendFailed(f"{dest.name} refused or did not answer")
        return []
    monkeypatch.setattr(server, "send_files", send_files)
    jobs = [node.run_job(scorer, _spool_study(node, tmp_path / k, small_head_series(tmp_path / k, k)))["job"]
            for k in ("one", "two", "three")]
    assert tried == {"PACS": 3, "VIEWER": 3}

    def not_sent() -> list[list[str]]:
        return [read_record(config.spool / "failures" / f"{job}.json")["not_sent"] for job in jobs]
    tried.clear()
    up.add("VIEWER")
    node.redeliver()
    assert tried == {"PACS": 1, "VIEWER": 3}
    assert not_sent() == [[pacs.name]] * 3
    tried.clear()
    up.add("PACS")
    node.redeliver()
    assert tried == {"PACS": 3} and node.spool.undelivered() == []


def test_a_slow_destination_does_not_hold_the_next_study(tmp_path, scorer):
    """Results were sent from the worker that scored them: a PACS slow to answer, hung (30 s a try) or
    down behind a firewall (10 s a try), three tries a study, kept the next stroke study waiting to be
    scored. Each study's results are now sent from a thread of their own."""
    first = small_head_series(tmp_path / "first", "FIRST")
    second = small_head_series(tmp_path / "second", "SECOND")
    pacs = StalledReceiver()
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=0.3, outputs=("json", "sr"), workers=1,
                        destinations=(Destination("PACS", LOOPBACK, pacs.port),))

    def placed(study_uid: str) -> bool:
        return any(p.name.startswith(study_uid) for p in config.output.iterdir())
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        assert set(send_folder(tmp_path / "first", node.port)) == {0}
        wait_for(lambda: placed(first), 60, "the first study scored")
        assert set(send_folder(tmp_path / "second", node.port)) == {0}
        wait_for(lambda: placed(second), 20, "the second study scored while the first's results were sent")
        assert not outcomes(config.spool), "a job recorded before its results were sent"
        assert [w.sending for w in spool_status(config).waiting] == [True, True]     # as `aspects status` says
        pacs.release.set()
        wait_for(lambda: len(outcomes(config.spool)) == 2, 60, "both studies' results sent")
    finally:
        pacs.release.set()
        node.stop()
        pacs.close()
    got = outcomes(config.spool)
    assert all(o["exit_code"] == 0 and o["sent_to"] == ["PACS@" + f"{LOOPBACK}:{pacs.port}"] for o in got), got
    assert len(pacs.received) == 2


def test_stopping_the_node_does_not_wait_out_the_back_off(tmp_path, scorer, caplog, monkeypatch):
    """A service stop (an update, a reboot) waited for every try and back-off left to a destination
    that is down; systemd kills a service that takes more than 90 s to stop. The results stay
    recorded as not sent, for the outbox."""
    from runtime.node import server
    monkeypatch.setattr(server, "SEND_BACKOFF_S", 10.0)
    caplog.set_level(logging.WARNING, logger="aspects.node")
    small_head_series(tmp_path / "study", "STOPPING")
    down = Destination("PACS", LOOPBACK, _free_port())
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=0.3, outputs=("json", "sr"), workers=1, send_attempts=3, destinations=(down,))
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        assert set(send_folder(tmp_path / "study", node.port)) == {0}
        wait_for(lambda: "attempt 1" in caplog.text, 60, "the first try to fail")
    finally:
        t0 = time.monotonic()
        node.stop()
        stopped_in = time.monotonic() - t0
    assert stopped_in < 5, f"stop took {stopped_in:.0f} s: it waited out the back-off (10 s, then 20 s)"
    (got,) = outcomes(config.spool)
    assert got["exit_code"] == 16 and got["not_sent"] == [down.name], got


def test_a_slow_destination_does_not_hold_the_others(tmp_path, scorer):
    """The destinations were sent to one after the other: a PACS hung or down (30 or 10 s a try, three
    tries) kept the results from the stroke team's viewer listed after it for up to 96 s."""
    study_uid = small_head_series(tmp_path / "study", "TWO-DESTINATIONS")
    pacs, viewer = StalledReceiver(), Receiver()
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=0.3, outputs=("json", "sr"), workers=1,
                        destinations=(Destination("PACS", LOOPBACK, pacs.port),
                                      Destination("VIEWER", LOOPBACK, viewer.port)))
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        assert set(send_folder(tmp_path / "study", node.port)) == {0}
        wait_for(lambda: len(viewer.received) == 1, 60, "the viewer's results while the PACS held its own")
        assert not pacs.received
        pacs.release.set()
        wait_for(lambda: len(outcomes(config.spool)) == 1, 60, "the job recorded")
    finally:
        pacs.release.set()
        node.stop()
        pacs.close()
        viewer.close()
    (got,) = outcomes(config.spool)
    assert got["study_instance_uid"] == study_uid and got["exit_code"] == 0, got
    assert got["sent_to"] == [f"PACS@{LOOPBACK}:{pacs.port}", f"VIEWER@{LOOPBACK}:{viewer.port}"]


def test_aspects_send_refuses_with_one_error_line(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    assert main(["send", str(results), "--to", f"PACS@{LOOPBACK}:{_free_port()}"]) == 2     # nothing to send
    (results / "sr.dcm").write_bytes(b"a file that is not DICOM")
    assert main(["send", str(results), "--to", f"PACS@{LOOPBACK}:{_free_port()}"]) == 3     # not DICOM
    write_series(tmp_path / "ct", np.zeros((3, 32, 32)))
    shutil.copy(sorted((tmp_path / "ct").iterdir())[0], results / "sr.dcm")
    assert main(["send", str(results)]) == 2                                                 # nowhere to send
    assert main(["send", str(results), "--to", f"PACS@{LOOPBACK}:{_free_port()}"]) == 16    # nobody answers
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(f'spool = "{tmp_path / "spool"}"\nae_title = "STROKE"\n'
                         f'destinations = ["ARCHIVE@{LOOPBACK}:{_free_port()}"]\n')
    assert main(["send", str(results), "--config", str(node_toml)]) == 16                   # the node's own
    errors = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in errors] == ["error"] * 5, errors
    assert "no DICOM results" in errors[0] and "not a DICOM file" in errors[1]
    assert "no destination" in errors[2] and "not delivered to PACS@" in errors[3]
    assert "not delivered to ARCHIVE@" in errors[4] and not (tmp_path / "spool").exists()


def test_aspects_status_tells_what_the_spool_holds_and_changes_nothing(tmp_path, scorer, capsys, monkeypatch):
    """A study missing from PACS: did it arrive, is it waiting, did it fail, is its delivery being
    retried? Answered from the spool, while the node runs, without touching it."""
    spool = tmp_path / "spool"
    down = f"PACS@{LOOPBACK}:{_free_port()}"
    uids = {k: small_head_series(tmp_path / k, f"STATUS-{k}")
            for k in ("cta", "scored", "gap", "unsent", "queued", "coming")}
    sorted((tmp_path / "gap").iterdir())[10].unlink()
    edit_slices(tmp_path / "cta", lambda ds: setattr(ds, "ContrastBolusAgent", "Iohexol"))
    quiet = Node(NodeConfig(spool=spool, output=tmp_path / "results", outputs=("json",)))
    cta = quiet.run_job(scorer, _spool_study(quiet, tmp_path / "cta", uids["cta"]))
    scored = quiet.run_job(scorer, _spool_study(quiet, tmp_path / "scored", uids["scored"]))
    node = Node(NodeConfig(spool=spool, output=tmp_path / "results", outputs=("json", "sr"), send_attempts=1,
                           destinations=(Destination.parse(down),)))
    gap = node.run_job(scorer, _spool_study(node, tmp_path / "gap", uids["gap"]))
    unsent = node.run_job(scorer, _spool_study(node, tmp_path / "unsent", uids["unsent"]))
    queued = _spool_study(node, tmp_path / "queued", uids["queued"])
    for f in sorted((tmp_path / "coming").iterdir())[:5]:
        node.spool.store(uids["coming"], pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID, f.read_bytes())
    assert (scored["exit_code"], gap["exit_code"], unsent["exit_code"]) == (0, 7, 16)
    before = sorted((p, p.stat().st_mtime_ns) for p in spool.rglob("*"))

    assert main(["status", "--spool", str(spool)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"spool {spool}: no node is running on it")
    # The staff ask after a patient or an accession number, not a UID: each line names both.
    assert f"arriving: 1 study\n  {uids['coming']}: patient STATUS-coming, accession ASTATUS-coming, 5 image(s)" in text
    assert f"waiting, being scored or being sent: 1 job(s)\n  {queued}: patient STATUS-queued, " \
           f"accession ASTATUS-queued, 32 image(s)" in text
    assert f"{gap['job']}: patient STATUS-gap, accession ASTATUS-gap, exit 7" in text and "slices missing" in text
    assert f"{unsent['job']}: patient STATUS-unsent, accession ASTATUS-unsent, exit 16" in text
    assert "did not take them" in text and "sent again every minute until" in text
    assert f"finished in the last 24 h: 2 (1 ignored)\n  {scored['job']}: patient STATUS-scored, accession " \
           f"ASTATUS-scored, ASPECTS {scored['aspects']}" in text
    assert f"{cta['job']}: patient STATUS-cta, accession ASTATUS-cta, not scored" in text and "(ignored: " in text

    config = tmp_path / "node.toml"
    config.write_text(f'spool = "{spool}"\nmin_free_mb = 1e11\nredeliver_hours = 0\ntls_key = "/root/unreadable.key"\n')
    assert main(["status", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["refusing_images"] and doc["finished_last_day"] == 2 and doc["ignored_last_day"] == 1
    assert [w["job"] for w in doc["waiting"]] == [queued] and [a["images"] for a in doc["arriving"]] == [5]
    assert {f["job"]: (f["exit_code"], f["redelivery"]) for f in doc["failures"]} == {gap["job"]: (7, ""),
                                                                                     unsent["job"]: (16, "ended")}
    assert sorted((p, p.stat().st_mtime_ns) for p in spool.rglob("*")) == before, "status changed the spool"
    running = Node(NodeConfig(spool=spool, output=tmp_path / "results", host=LOOPBACK, port=0),
                   scorer_factory=lambda threads: MustNotScore()).start()    # type: ignore[arg-type,return-value]
    try:
        assert main(["status", "--spool", str(spool), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["node_running"]
    finally:
        running.stop()

    assert main(["status", "--spool", str(tmp_path / "results")]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not (tmp_path / "results" / "incoming").exists()
    # Run as a user who may not read the node's spool (the tests run as root, whom no mode stops).
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr("runtime.node.status.os.scandir", denied)
    monkeypatch.setattr("pathlib.Path.iterdir", denied)
    assert main(["status", "--spool", str(spool)]) == 3
    assert capsys.readouterr().err.startswith(f"error: {spool}: cannot read the spool (Permission denied: ")


def test_a_cta_sent_after_its_scored_ncct_is_ignored_not_failed(tmp_path, scorer):
    """Every stroke protocol sends its CTA minutes after the NCCT: a failure record each time would
    teach the staff to ignore failure records."""
    study_uid = small_head_series(tmp_path / "ncct", "STROKE")
    cta_of(tmp_path / "ncct", tmp_path / "cta")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json",))
    node = Node(config)
    ncct = node.run_job(scorer, _spool_study(node, tmp_path / "ncct", study_uid))
    cta = node.run_job(scorer, _spool_study(node, tmp_path / "cta", study_uid))
    assert ncct["exit_code"] == 0 and "ignored" not in ncct
    assert cta["exit_code"] == 0 and cta["after"] == ncct["job"] and "no non-contrast CT series" in cta["ignored"]
    assert not list((config.spool / "failures").iterdir())
    assert not (config.spool / "done" / cta["job"] / "dicom").exists()
    assert len([p for p in config.output.iterdir() if not p.name.startswith(".")]) == 1


def test_a_later_scored_job_answers_the_failures_of_its_study(tmp_path, scorer):
    """A series with a gap, sent again whole; a CTA that reached the node before its NCCT (a PACS
    forwarding series out of order) and was refused on its own. Their records stayed in failures/
    after the study was scored, and `aspects status` listed them as needing a person."""
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json",))
    node = Node(config)
    study = small_head_series(tmp_path / "ncct", "OUT-OF-ORDER")
    cta_of(tmp_path / "ncct", tmp_path / "cta")
    shutil.copytree(tmp_path / "ncct", tmp_path / "gap")
    sorted((tmp_path / "gap").iterdir())[10].unlink()
    cta = node.run_job(scorer, _spool_study(node, tmp_path / "cta", study))
    gap = node.run_job(scorer, _spool_study(node, tmp_path / "gap", study))
    assert (cta["exit_code"], gap["exit_code"]) == (0, 7) and "ignored" in cta
    other = small_head_series(tmp_path / "other", "OTHER")
    sorted((tmp_path / "other").iterdir())[10].unlink()
    unrelated = node.run_job(scorer, _spool_study(node, tmp_path / "other", other))
    assert unrelated["exit_code"] == 7

    ncct = node.run_job(scorer, _spool_study(node, tmp_path / "ncct", study))
    assert ncct["exit_code"] == 0 and "ignored" not in ncct
    assert sorted(p.stem for p in (config.spool / "failures").iterdir()) == [unrelated["job"]]
    record = json.loads((config.spool / "failed" / gap["job"] / "outcome.json").read_text())
    assert record["resolved_by"] == ncct["job"] and record["exit_code"] == 7
    assert not (config.spool / "failed" / gap["job"] / "dicom").exists()
    assert (config.spool / "failed" / unrelated["job"] / "dicom").is_dir()


def test_results_delivered_late_answer_their_studys_failures_too(tmp_path, scorer):
    port = _free_port()
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json", "sr"),
                        destinations=(Destination("PACS", LOOPBACK, port),), send_attempts=1)
    node = Node(config)
    study = small_head_series(tmp_path / "ncct", "LATE-PACS")
    shutil.copytree(tmp_path / "ncct", tmp_path / "gap")
    sorted((tmp_path / "gap").iterdir())[10].unlink()
    gap = node.run_job(scorer, _spool_study(node, tmp_path / "gap", study))
    ncct = node.run_job(scorer, _spool_study(node, tmp_path / "ncct", study))      # the PACS is down
    assert (gap["exit_code"], ncct["exit_code"]) == (7, 16)
    assert sorted(p.stem for p in (config.spool / "failures").iterdir()) == sorted([gap["job"], ncct["job"]])
    pacs = Receiver(port=port)
    try:
        node.redeliver()
    finally:
        pacs.close()
    assert len(pacs.received) == 1 and not list((config.spool / "failures").iterdir())
    record = json.loads((config.spool / "failed" / gap["job"] / "outcome.json").read_text())
    assert record["resolved_by"] == ncct["job"]


def test_the_study_sent_again_after_late_images_is_scored(tmp_path, scorer):
    """A sender paused longer than quiet_seconds inside a series: the first part was scored, the rest
    failed as late images, and the record said "send the study again". Sent again, the whole series
    failed the same way, and so did a re-send that only added another series. The new result's SR
    names the one it replaces (Predecessor Documents Sequence): PACS shows one current ASPECTS."""
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json", "sr"))
    node = Node(config)
    study = small_head_series(tmp_path / "whole", "PAUSED")
    images = sorted((tmp_path / "whole").iterdir())
    for part, chosen in (("first", images[:-4]), ("rest", images[-4:])):
        (tmp_path / part).mkdir()
        for path in chosen:
            shutil.copy(path, tmp_path / part / path.name)
    first = node.run_job(scorer, _spool_study(node, tmp_path / "first", study))
    rest = node.run_job(scorer, _spool_study(node, tmp_path / "rest", study))
    assert first["exit_code"] == 0 and rest["exit_code"] == 7 and "arrived after job" in rest["error"]

    again = node.run_job(scorer, _spool_study(node, tmp_path / "whole", study))
    assert again["exit_code"] == 0 and again["supersedes"] == first["job"], again
    assert len(again["instances"]) == len(images)
    assert not list((config.spool / "failures").iterdir())                  # the late images' failure answered
    old, new = (pydicom.dcmread(Path(o["output"]) / "sr.dcm") for o in (first, again))
    assert "PredecessorDocumentsSequence" not in old
    replaced = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (replaced.ReferencedSOPInstanceUID, replaced.ReferencedSOPClassUID) == (old.SOPInstanceUID, old.SOPClassUID)

    # The same images once more, with a thin recon added: nothing late, nothing better; ignored.
    another_series_of(tmp_path / "whole", tmp_path / "thin", "HEAD THIN")
    (tmp_path / "both").mkdir()
    for series in ("whole", "thin"):
        for path in (tmp_path / series).iterdir():
            shutil.copy(path, tmp_path / "both" / f"{series}-{path.name}")
    resent = node.run_job(MustNotScore(), _spool_study(node, tmp_path / "both", study))  # type: ignore[arg-type]
    assert resent["exit_code"] == 0 and resent["after"] == again["job"] and "ignored" in resent, resent


def test_a_criterion_the_scored_record_predates_counts_as_met():
    """A job scored before an upgrade added a criterion has no value for it: the same kind of series
    arriving after the upgrade must not look better and be sent a second time."""
    def study(**criteria):
        return Study(hu=np.zeros((1, 1, 1), np.float32), affine=np.eye(4), source="x",
                     metadata={"series_criteria": criteria, "series_description": "HEAD"})
    before_upgrade = {"job": "j_1", "series_criteria": {"axial": True, "soft": True}}
    with pytest.raises(NothingNew):
        refuse_unless_better(study(axial=True, **{"covers the head": True}, soft=True), before_upgrade)
    refuse_unless_better(study(axial=True, **{"covers the head": True}, soft=True),
                         {"job": "j_1", "series_criteria": {"axial": True, "covers the head": False, "soft": True}})
    refuse_unless_better(study(axial=True, soft=False), {"job": "j_1"})     # no record: anything scores


def another_series_of(folder: Path, into: Path, description: str, edit=None) -> None:
    """The same study's images again as another series (a recon the scanner sends minutes later)."""
    shutil.copytree(folder, into)
    series_uid = pydicom.uid.generate_uid()

    def renumber(ds):
        ds.SeriesInstanceUID, ds.SeriesDescription = series_uid, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if edit is not None:
            edit(ds)
    edit_slices(into, renumber)


def test_a_later_series_of_a_scored_study_is_scored_only_if_it_is_a_better_kind(tmp_path, scorer):
    """Scanners send a study's recons minutes apart: each later job was scored again and sent, two
    ASPECTS in PACS for one head (a thin recon), or failed (a coronal MPR, exit 7). A later series is now
    ignored unless it is a better kind by the chooser's criteria: a soft recon after a bone one."""
    study_uid = small_head_series(tmp_path / "ncct", "RECONS")
    def bone(ds):
        ds.ConvolutionKernel = "BONE"

    def soft(ds):
        ds.ConvolutionKernel = "STANDARD"

    def coronal(ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    another_series_of(tmp_path / "ncct", tmp_path / "thin", "HEAD 1.25mm")
    another_series_of(tmp_path / "ncct", tmp_path / "bone", "HEAD BONE", bone)
    another_series_of(tmp_path / "ncct", tmp_path / "coronal", "COR MPR", coronal)
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("json",))
    node = Node(config)
    first = node.run_job(scorer, _spool_study(node, tmp_path / "ncct", study_uid))
    assert first["exit_code"] == 0 and first["series_criteria"]["soft"], first
    for name, why in (("thin", "no better a non-contrast head series"), ("bone", "no better"),
                      ("coronal", "no axial CT series")):
        later = node.run_job(MustNotScore(), _spool_study(node, tmp_path / name, study_uid))  # type: ignore[arg-type]
        assert later["exit_code"] == 0 and later["after"] == first["job"] and why in later["ignored"], later
    assert not list((config.spool / "failures").iterdir())
    assert len([p for p in config.output.iterdir() if not p.name.startswith(".")]) == 1

    # Images of the very series scored, after it (a sender pausing longer than quiet_seconds): a failure
    # to look into, not a series passed over.
    (tmp_path / "late").mkdir()
    for path in sorted((tmp_path / "ncct").iterdir())[:3]:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / "late" / path.name)
    late = node.run_job(MustNotScore(), _spool_study(node, tmp_path / "late", study_uid))  # type: ignore[arg-type]
    assert late["exit_code"] == 7 and "arrived after job" in late["error"] and "quiet_seconds" in late["error"]

    # The other way round: a bone recon scored first (all that had come), then the soft one arrives.
    bone_uid = small_head_series(tmp_path / "b2", "BONE-FIRST")
    edit_slices(tmp_path / "b2", bone)
    another_series_of(tmp_path / "b2", tmp_path / "soft", "HEAD SOFT", soft)
    worse = node.run_job(scorer, _spool_study(node, tmp_path / "b2", bone_uid))
    better = node.run_job(scorer, _spool_study(node, tmp_path / "soft", bone_uid))
    assert worse["exit_code"] == 0 and not worse["series_criteria"]["soft"]
    assert better["exit_code"] == 0 and better["supersedes"] == worse["job"] and better["series_criteria"]["soft"]


class HeldFirstScore:
    """The first study scored is held until released: a second job of the same study arrives while it is
    in hand, as a stroke protocol's CTA does when the NCCT takes longer to score than the quiet period."""

    def __init__(self, inner):
        self.inner, self.started, self.release = inner, threading.Event(), threading.Event()
        self._first = threading.Lock()

    def score(self, source):
        if self._first.acquire(blocking=False):
            self.started.set()
            assert self.release.wait(120), "never released"
        return self.inner.score(source)


def test_a_study_is_one_job_at_a_time_with_two_workers(tmp_path, scorer):
    """With two workers the CTA was taken by the second worker while the first still scored the NCCT:
    no scored NCCT was recorded yet, so the CTA failed (exit 5). Its images now wait in incoming/ until
    the study's job in hand is finished, then are ignored after it."""
    study_uid = small_head_series(tmp_path / "ncct", "TWO-WORKERS")
    cta_of(tmp_path / "ncct", tmp_path / "cta")
    held = HeldFirstScore(scorer)
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        quiet_seconds=0.3, outputs=("json",), workers=2)
    node = Node(config, scorer_factory=lambda threads: held).start()
    try:
        assert set(send_folder(tmp_path / "ncct", node.port)) == {0}
        assert held.started.wait(60), "the NCCT was never scored"
        assert set(send_folder(tmp_path / "cta", node.port)) == {0}
        time.sleep(1.5)                                       # five quiet periods
        assert len(list((config.spool / "jobs").iterdir())) == 1, "a second job of a study in hand"
        assert (config.spool / "incoming" / study_uid).is_dir()
        held.release.set()
        wait_for(lambda: len(outcomes(config.spool)) == 2, 300, "both jobs finished")
    finally:
        held.release.set()
        node.stop()
    ncct, cta = sorted(outcomes(config.spool), key=lambda o: o["job"])
    assert ncct["exit_code"] == 0 and "ignored" not in ncct, ncct
    assert cta["exit_code"] == 0 and cta["after"] == ncct["job"], cta
    assert not list((config.spool / "failures").iterdir())


def test_the_newest_job_is_scored_first_after_an_outage(tmp_path, scorer):
    """Jobs were taken oldest first: after the node was down, or a PACS forwarded what it held, the study
    just sent waited for every one queued before it (some 5 s each)."""
    uids = [small_head_series(tmp_path / name, name.upper()) for name in ("first", "second", "third")]
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        outputs=("json",), workers=1)
    spooler = Node(config)                                     # the three arrived while the node was down
    jobs = [_spool_study(spooler, tmp_path / name, uid) for name, uid in zip(("first", "second", "third"), uids)]
    taken: list[str] = []

    class Recording:
        def score(self, source):
            taken.append(Path(source).parent.name)
            return scorer.score(source)
    node = Node(config, scorer_factory=lambda threads: Recording()).start()     # resumes the three
    try:
        wait_for(lambda: len(outcomes(config.spool)) == 3, 300, "three jobs finished")
    finally:
        node.stop()
    assert taken == jobs[::-1]


def test_a_job_without_json_output_is_scored_once_and_its_score_recorded(tmp_path, scorer):
    """The results folder itself marks a placed job (report.json is optional in `outputs`)."""
    folder = tmp_path / "study"
    study_uid = small_head_series(folder, "NOJSON")
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("sr",))
    node = Node(config)
    job = _spool_study(node, folder, study_uid)
    outcome = node.run_job(scorer, job)
    assert outcome["exit_code"] == 0 and isinstance(outcome["aspects"], int), outcome
    assert sorted(p.name for p in (config.output / job).iterdir()) == ["sr.dcm"]

    # As after a crash between placing the results and recording the outcome: the job is back in jobs/.
    os.rename(config.spool / "done" / job, config.spool / "jobs" / job)
    again = node.run_job(MustNotScore(), job)            # type: ignore[arg-type]
    assert again["exit_code"] == 0 and again["aspects"] is None


# ---------------------------------------------------------------- DICOM over TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A hospital's CA with a certificate for the node, the PACS and a scanner (each for 127.0.0.1),
    and a scanner certificate signed by nobody the node trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Hospital test CA")
    for name in ("node", "pacs", "scanner"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
        "-subj", "/CN=rogue", "-addext", "subjectAltName=IP:127.0.0.1")
    return {p.stem if p.suffix == ".pem" else p.name: p for p in d.iterdir()}


def _echo(port: int, tls: tuple | None) -> bool:
    from pynetdicom import AE
    ae = AE(ae_title="SCANNER")
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(LOOPBACK, port, ae_title="ASPECTS", tls_args=tls)
    if not assoc.is_established:
        return False
    try:
        return getattr(assoc.send_c_echo(), "Status", None) == 0
    finally:
        assoc.release()


def test_a_tls_node_takes_only_senders_with_a_certificate_its_ca_signed(tmp_path, scorer, pki):
    from runtime.node.tls import client_context
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        tls_certificate=pki["node"], tls_key=pki["node.key"], tls_ca=pki["ca"])
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        scanner = client_context(pki["scanner"], pki["scanner.key"], pki["ca"])
        rogue = client_context(pki["rogue"], pki["rogue.key"], pki["ca"])
        no_certificate = client_context(None, None, pki["ca"])
        assert _echo(node.port, (scanner, LOOPBACK))
        assert not _echo(node.port, None)                        # plain DICOM
        assert not _echo(node.port, (rogue, LOOPBACK))           # a certificate the CA did not sign
        assert not _echo(node.port, (no_certificate, LOOPBACK))  # none at all
        assert _echo(node.port, (scanner, LOOPBACK))             # failed handshakes leave it listening
    finally:
        node.stop()


def test_a_silent_connection_does_not_stop_the_tls_listener(tmp_path, scorer, pki, monkeypatch):
    """pynetdicom does the TLS handshake in its accept loop, with no time limit: one client that
    connected and sent nothing (a modality that lost power mid-handshake, a probe holding the port)
    kept every further TLS association out, the scanner's too, for as long as it stayed."""
    from runtime.node import listener
    from runtime.node.tls import client_context
    monkeypatch.setattr(listener, "TLS_HANDSHAKE_S", 2.0)
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        tls_certificate=pki["node"], tls_key=pki["node.key"], tls_ca=pki["ca"])
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        scanner = (client_context(pki["scanner"], pki["scanner.key"], pki["ca"]), LOOPBACK)
        with socket.create_connection((LOOPBACK, node.port), timeout=30) as silent:
            time.sleep(0.5)                                   # accepted, and saying nothing
            assert _echo(node.port, scanner), "a silent connection kept the scanner out"
            assert silent.recv(1) == b"", "the silent connection was never let go"
    finally:
        node.stop()


def test_tls_port_listens_over_tls_beside_the_plain_port(tmp_path, scorer, pki):
    """Many scanner consoles cannot do TLS while other senders must: plain on `port`, TLS on
    `tls_port`, one node and one spool."""
    from runtime.node.tls import client_context
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0, tls_port=0,
                        tls_certificate=pki["node"], tls_key=pki["node.key"], tls_ca=pki["ca"])
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    try:
        scanner = client_context(pki["scanner"], pki["scanner.key"], pki["ca"])
        assert node.tls_port is not None and node.tls_port != node.port
        assert node.listening == f"{node.port} and {node.tls_port} over TLS"
        assert _echo(node.port, None) and _echo(node.tls_port, (scanner, LOOPBACK))
        assert not _echo(node.tls_port, None) and not _echo(node.port, (scanner, LOOPBACK))
    finally:
        node.stop()


class TlsReceiver(Receiver):
    def __init__(self, pki: dict[str, Path], certificate: str):
        from pynetdicom import AE, evt

        from runtime.node.tls import server_context
        self.received, self.status = [], 0x0000
        ae = AE(ae_title="PACS")
        ae.add_supported_context(SR3D, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
        context = server_context(pki[certificate], pki[f"{certificate}.key"], pki["ca"])
        self.server = ae.start_server((LOOPBACK, 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)],
                                      ssl_context=context)
        self.port = self.server.server_address[1]


def test_results_go_to_a_tls_destination_whose_certificate_the_ca_signed(tmp_path, scorer, pki):
    pacs, impostor = TlsReceiver(pki, "pacs"), TlsReceiver(pki, "rogue")
    try:
        config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", outputs=("sr",), send_attempts=1,
                            tls_certificate=pki["node"], tls_key=pki["node.key"], tls_ca=pki["ca"],
                            destinations=(Destination.parse(f"PACS@{LOOPBACK}:{pacs.port}/tls"),
                                          Destination("PACS", LOOPBACK, impostor.port, tls=True)))
        node = Node(config)
        uid = small_head_series(tmp_path / "study", "TLS-1")
        outcome = node.run_job(scorer, _spool_study(node, tmp_path / "study", uid))
        by_hand = main(["send", outcome["output"], "--to", f"PACS@{LOOPBACK}:{pacs.port}/tls", "--tls-certificate",
                        str(pki["node"]), "--tls-key", str(pki["node.key"]), "--tls-ca", str(pki["ca"])])
    finally:
        pacs.close()
        impostor.close()
    assert by_hand == 0                                       # `aspects send` over TLS, as the node does
    assert [str(d.StudyInstanceUID) for d in pacs.received] == [uid, uid] and impostor.received == []
    assert outcome["sent_to"] == [f"PACS@{LOOPBACK}:{pacs.port}"]
    assert outcome["not_sent"] == [f"PACS@{LOOPBACK}:{impostor.port}"] and "over TLS" in outcome["error"]


@pytest.mark.parametrize("settings, words", [
    ({"tls_certificate": "node"}, "tls_certificate and tls_key go together"),
    ({"tls_certificate": "node", "tls_key": "ca.key"}, "cannot be loaded"),
    ({"tls_certificate": "node", "tls_key": "node.key", "tls_ca": "nowhere.pem"}, "tls_ca .*nowhere.pem"),
    ({"tls_port": 2762}, "tls_port needs tls_certificate"),
])
def test_tls_files_that_cannot_work_are_usage_errors_at_start(tmp_path, pki, settings, words):
    """Said when the node starts, not at the first study a scanner sends."""
    from runtime.errors import UsageError
    with pytest.raises(UsageError, match=words):
        load_config(None, spool=tmp_path / "spool",
                    **{k: pki.get(v, tmp_path / v) if isinstance(v, str) else v for k, v in settings.items()})


def _presented_certificate(port: int, context) -> str:
    """The common name of the certificate the node presents to a TLS sender."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
        subject = dict(item for rdn in tls.getpeercert()["subject"] for item in rdn)
    return subject["commonName"]


def test_renewed_tls_files_are_loaded_without_a_restart(tmp_path, scorer, pki, caplog):
    """Certificates are renewed yearly or every few weeks; a node that needs a restart for each is one
    day found refusing the scanner. A half-renewed pair (the certificate before its key) keeps the
    previous one in use; an expiry that comes near is logged."""
    from runtime.node.server import TLS_SETTLE_S
    from runtime.node.tls import certificate_expiry, client_context
    caplog.set_level(logging.INFO, logger="aspects.node")
    certificate, key, ca = tmp_path / "node.pem", tmp_path / "node.key", tmp_path / "ca.pem"
    settled = time.time() - 2 * TLS_SETTLE_S
    for source, target in ((pki["node"], certificate), (pki["node.key"], key), (pki["ca"], ca)):
        shutil.copy(source, target)
        os.utime(target, (settled, settled))
    config = NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results", host=LOOPBACK, port=0,
                        tls_certificate=certificate, tls_key=key, tls_ca=ca)
    node = Node(config, scorer_factory=lambda threads: scorer).start()
    scanner = client_context(pki["scanner"], pki["scanner.key"], pki["ca"])
    try:
        assert _presented_certificate(node.port, scanner) == "node"
        assert "expires on" in caplog.text                      # the test CA's certificates last two days
        shutil.copy(pki["pacs"], certificate)                   # the renewed certificate, its key not yet
        node.check_tls()
        assert _presented_certificate(node.port, scanner) == "node", "loaded before it settled"
        os.utime(certificate, (settled + 1, settled + 1))       # settled, and not the time it had before
        node.check_tls()
        assert "cannot be loaded; the previous ones stay in use" in caplog.text
        assert _presented_certificate(node.port, scanner) == "node" and _echo(node.port, (scanner, LOOPBACK))
        shutil.copy(pki["pacs.key"], key)
        os.utime(key, (settled + 1, settled + 1))
        node.check_tls()
        assert "loaded for new associations" in caplog.text
        assert _presented_certificate(node.port, scanner) == "pacs" and _echo(node.port, (scanner, LOOPBACK))
        caplog.clear()
        node.check_tls(now=certificate_expiry(certificate) + 60)
        assert "expired on" in caplog.text
    finally:
        node.stop()


def test_certificate_expiry_is_read_from_the_certificate(tmp_path, pki):
    """UTCTime until 2049, GeneralizedTime after (RFC 5280): both against what openssl itself reads."""
    from datetime import datetime, timezone

    from runtime.errors import UsageError
    from runtime.node.tls import certificate_expiry
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "long.key", "-out",
                    "long.pem", "-days", "12000", "-subj", "/CN=long"], cwd=tmp_path, check=True, capture_output=True)
    for pem in (pki["node"], pki["ca"], tmp_path / "long.pem"):
        said = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", str(pem)], check=True,
                              capture_output=True, text=True).stdout.strip().removeprefix("notAfter=")
        expected = datetime.strptime(" ".join(said.split()), "%b %d %H:%M:%S %Y GMT").replace(tzinfo=timezone.utc)
        assert certificate_expiry(pem) == expected.timestamp(), pem
    with pytest.raises(UsageError, match="cannot read its expiry"):
        certificate_expiry(pki["node.key"])


def test_a_destination_that_drops_connections_is_given_up_in_seconds(tmp_path, monkeypatch):
    """A PACS down behind a firewall that drops packets: each connect waited for the kernel's SYN
    retries (133 s measured here), three attempts a job, and the next stroke study waited behind them.
    Here a listener whose accept queue is full drops the SYNs, as such a firewall does; the connect
    timeout is made 1 s to keep the test short."""
    from runtime.node import send
    from runtime.node.send import SendFailed, check_destination, send_files
    monkeypatch.setattr(send, "CONNECT_TIMEOUT_S", 1.0)
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(0)
    port, queued = silent.getsockname()[1], []
    try:
        for _ in range(8):                                   # fill the accept queue: then SYNs are dropped
            probe = socket.socket()
            probe.settimeout(0.5)
            try:
                probe.connect((LOOPBACK, port))
            except OSError:
                probe.close()
                break
            queued.append(probe)
        small_head_series(tmp_path / "study", "SILENT")
        destination = Destination("PACS", LOOPBACK, port)
        for attempt in (lambda: check_destination("ASPECTS", destination, ("sr",), None),
                        lambda: send_files("ASPECTS", destination, sorted((tmp_path / "study").iterdir())[:1])):
            t0 = time.monotonic()
            with pytest.raises(SendFailed, match="refused or did not answer"):
                attempt()
            assert time.monotonic() - t0 < 10
    finally:
        for probe in queued:
            probe.close()
        silent.close()


def test_destinations_are_checked_before_a_stroke_needs_them(tmp_path, scorer, caplog):
    """A wrong port or an archive without SEG storage was first seen when a stroke's results did not
    arrive. `aspects echo` checks each destination with the classes the node sends, and the node
    checks them once at start."""
    caplog.set_level(logging.INFO, logger="aspects.node")
    archive = Receiver(classes=("1.2.840.10008.1.1", SR3D, SC))         # C-ECHO, no Segmentation Storage
    full = Receiver()                                                   # stores everything, no C-ECHO
    down = f"PACS@{LOOPBACK}:{_free_port()}"
    try:
        node = Node(NodeConfig(spool=tmp_path / "spool", output=tmp_path / "results",
                               destinations=tuple(Destination.parse(d) for d in (
                                   f"ARCHIVE@{LOOPBACK}:{archive.port}", f"PACS@{LOOPBACK}:{full.port}", down))))
        answered = node.check_destinations()
        assert [(a.name, a.not_taken) for a in answered] == [(f"ARCHIVE@{LOOPBACK}:{archive.port}",
                                                              ("Segmentation Storage",)),
                                                             (f"PACS@{LOOPBACK}:{full.port}", ())]
        assert f"destination {down} did not answer at start" in caplog.text
        assert "does not take Segmentation Storage: it gets the other results" in caplog.text
        # By hand, with the node's outputs: without SEG among them, nothing is missing at the archive.
        node_toml = tmp_path / "node.toml"
        node_toml.write_text(f'spool = "{tmp_path / "spool"}"\noutputs = ["json", "sr", "sc"]\n'
                             f'destinations = ["ARCHIVE@{LOOPBACK}:{archive.port}"]\n')
        command = [sys.executable, "-m", "runtime.cli", "echo"]
        ok = subprocess.run([*command, "--config", str(node_toml)], capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and ok.stdout.startswith(f"ARCHIVE@{LOOPBACK}:{archive.port}: answered in ")
        assert "does not take" not in ok.stdout, ok.stdout
        both = subprocess.run([*command, "--to", f"ARCHIVE@{LOOPBACK}:{archive.port}", "--to", down],
                              capture_output=True, text=True, timeout=60)
    finally:
        archive.close()
        full.close()
    assert both.returncode == 16 and "it does not take Segmentation Storage" in both.stdout
    # One error line: pynetdicom's own "connection refused" records stay off the console.
    assert both.stderr.splitlines() == [f"error: {down} refused or did not answer"], both.stderr


def test_an_ipv6_destination_is_written_in_brackets_and_reached(tmp_path):
    from pynetdicom import AE

    from runtime.node.send import check_destination
    try:
        socket.socket(socket.AF_INET6).bind(("::1", 0))
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    pacs = AE(ae_title="PACS")
    for sop in ("1.2.840.10008.1.1", SR3D, SC):
        pacs.add_supported_context(sop)
    server = pacs.start_server(("::1", 0), block=False)
    try:
        answer = check_destination("ASPECTS", Destination.parse(f"PACS@[::1]:{server.server_address[1]}"),
                                   ("sr", "sc"), None)
    finally:
        server.shutdown()
    assert answer.name == f"PACS@[::1]:{server.server_address[1]}" and answer.not_taken == ()


def test_one_node_per_spool_and_a_port_in_use_is_said(tmp_path, scorer, capsys):
    """A service started twice, or a test node pointed at the production spool, queued the first
    node's jobs again and scored and sent them twice. A port in use was an internal error."""
    spool = tmp_path / "spool"
    first = Node(NodeConfig(spool=spool, output=tmp_path / "results", host=LOOPBACK, port=0),
                 scorer_factory=lambda threads: scorer).start()
    try:
        assert main(["serve", "--spool", str(spool), "--host", LOOPBACK, "--port", "0"]) == 10
        assert "another aspects serve is using this spool" in capsys.readouterr().err
        assert main(["serve", "--spool", str(tmp_path / "other"), "--host", LOOPBACK,
                     "--port", str(first.port)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot listen on {LOOPBACK}:{first.port}") and len(err.splitlines()) == 1
    finally:
        first.stop()
    # Stopped (or killed: the kernel drops the lock), the spool takes a node again.
    again = Node(NodeConfig(spool=spool, output=tmp_path / "results", host=LOOPBACK, port=0),
                 scorer_factory=lambda threads: scorer).start()
    assert again.port > 0
    again.stop()
