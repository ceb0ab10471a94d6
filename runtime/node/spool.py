"""The node's durable state, all of it on disk, so a kill -9 at any moment loses nothing.

    incoming/<study>/<sop>.dcm   an image, written and fsync'ed before its C-STORE is acknowledged
    jobs/<job>/dicom/            a study that has been quiet long enough: waiting for, or in, scoring
    done/<job>/outcome.json      scored (and sent); its images too with keep_received
    failed/<job>/outcome.json    could not be scored; the same record also in failures/<job>.json;
                                 its images too, unless it held nothing this node reads (exit 5)

A study moves between these folders by rename, which is atomic. On start, half-written
images (never acknowledged) are removed and every job left in jobs/ is queued again:
a job whose results were already placed is not scored a second time (server.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from ..output import hold_folder, make_folder

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_JOB_NS = re.compile(r"^(?:\.new-)?[0-9.]+_([0-9]+)$")
PART = ".part-"


def started_ns(job: str) -> int:
    """When a job was made (time_ns): its name is <StudyInstanceUID>_<time_ns> (promote)."""
    return int(job.rsplit("_", 1)[1])


class BadIdentifier(ValueError):
    """A UID that cannot be a file name here (not digits and dots, or too long)."""


def check_uid(uid: str) -> str:
    uid = str(uid).strip().rstrip("\0")
    if len(uid) > 64 or not _UID.match(uid):
        raise BadIdentifier(f"{uid!r} is not a DICOM UID")
    return uid


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.incoming, self.jobs = self.root / "incoming", self.root / "jobs"
        self.done, self.failed, self.failures = self.root / "done", self.root / "failed", self.root / "failures"
        make_folder(self.root)
        for d in (self.incoming, self.jobs, self.done, self.failed, self.failures):
            make_folder(d)
        self._locks: dict[str, tuple[threading.Lock, int]] = {}     # study -> (lock, holders and waiters)
        self._guard = threading.Lock()
        self._claim: int | None = None
        # Job names order a study's jobs (which failure a later job answers, which results are superseded)
        # and the queue (newest first), so they must rise even when the wall clock is stepped back: never
        # below the newest job name in the spool, a restart included.
        self._last_ns = max((int(m.group(1)) for d in (self.jobs, self.done, self.failed) for p in d.iterdir()
                             if (m := _JOB_NS.search(p.name))), default=0)

    def claim(self) -> None:
        """One node per spool. A second one (a service started twice, a test instance pointed at the
        production spool) would queue the first's jobs again and score and send them twice. flock on the
        spool folder: the kernel drops it when the node dies, so a killed node never blocks its restart."""
        self._claim = hold_folder(self.root, "another aspects serve is using this spool; stop it, or give this "
                                             "node a spool of its own")

    def release(self) -> None:
        if self._claim is not None:
            os.close(self._claim)                   # closing the descriptor drops the lock
            self._claim = None

    @contextmanager
    def _study(self, study: str):
        """One study's lock, kept only while someone holds or waits for it: a node runs for months."""
        with self._guard:
            lock, users = self._locks.get(study, (threading.Lock(), 0))
            self._locks[study] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                users = self._locks[study][1] - 1
                if users:
                    self._locks[study] = (lock, users)
                else:
                    del self._locks[study]

    # ------------------------------------------------------------ receiving

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably place one received image: temp name, fsync, rename, fsync the folder. Only then may
        the sender be told it is stored. A second copy of the same SOP instance replaces the first."""
        study, sop = check_uid(study_uid), check_uid(sop_uid)
        with self._study(study):
            folder = self.incoming / study
            folder.mkdir(exist_ok=True)
            final = folder / f"{sop}.dcm"
            part = folder / f"{PART}{sop}-{threading.get_ident()}"
            with open(part, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, final)
            fsync_dir(folder)
        return final

    # ------------------------------------------------------------ jobs

    def arriving(self) -> list[str]:
        """The studies in incoming/: images received and not yet made a job."""
        return sorted(p.name for p in self.incoming.iterdir())

    def promote(self, study: str) -> str | None:
        """incoming/<study> becomes jobs/<job>/dicom, in two renames: a crash between them leaves a
        .new job folder that recover() finishes. Images arriving later start a new incoming study."""
        with self._study(study):
            source = self.incoming / study
            if not source.is_dir():
                return None
            with self._guard:
                self._last_ns = max(time.time_ns(), self._last_ns + 1)
                job = f"{study}_{self._last_ns}"
            staging = self.jobs / f".new-{job}"
            staging.mkdir()
            os.rename(source, staging / "dicom")
            os.rename(staging, self.jobs / job)
            fsync_dir(self.jobs)
            fsync_dir(self.incoming)
        return job

    def pending(self) -> list[str]:
        return sorted(p.name for p in self.jobs.iterdir() if not p.name.startswith("."))

    def recover(self) -> list[str]:
        """After a crash: drop images that were never acknowledged, finish interrupted promotions, and
        return every job still to be done, oldest first."""
        for folder in self.incoming.iterdir():
            for part in folder.glob(f"{PART}*"):
                part.unlink()
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        for staging in self.jobs.glob(".new-*"):
            if (staging / "dicom").is_dir():
                os.rename(staging, self.jobs / staging.name[len(".new-"):])
            else:
                staging.rmdir()
        return sorted(self.pending(), key=started_ns)

    def finish(self, job: str, outcome: dict, keep_images: bool) -> Path:
        """Record the outcome and move the job to done/ or failed/ (a failure also gets a record in
        failures/), its images with it or not. The record is on disk before the move, so a crash here
        repeats nothing."""
        folder = self.jobs / job
        failed = outcome.get("exit_code", 0) != 0
        _write_json(folder / "outcome.json", outcome)
        if failed:
            _write_json(self.failures / f"{job}.json", outcome)
        if not keep_images:
            shutil.rmtree(folder / "dicom", ignore_errors=True)
        target = (self.failed if failed else self.done) / job
        os.rename(folder, target)
        fsync_dir(self.jobs)
        return target

    def undelivered(self) -> list[dict]:
        """Outcomes of scored jobs whose results some destination did not take (`not_sent`), oldest
        first; not those the outbox has stopped sending (`redelivery_ended`)."""
        outcomes = []
        for record in sorted(self.failures.glob("*.json"), key=lambda p: started_ns(p.stem)):
            outcome = read_record(record)
            if (outcome and outcome.get("not_sent") and not outcome.get("redelivery_ended")
                    and (self.failed / outcome["job"]).is_dir()):
                outcomes.append(outcome)
        return outcomes

    def record_failure(self, outcome: dict) -> None:
        """A failed job's outcome, updated in place (a later try that failed again)."""
        _write_json(self.failed / outcome["job"] / "outcome.json", outcome)
        _write_json(self.failures / f"{outcome['job']}.json", outcome)

    def redelivered(self, outcome: dict, keep_images: bool) -> None:
        """A failed job whose results have now reached every destination: recorded, moved to done/, its
        failure record removed (in that order: a crash in between leaves a record that says so)."""
        job = outcome["job"]
        _write_json(self.failed / job / "outcome.json", outcome)
        if not keep_images:
            shutil.rmtree(self.failed / job / "dicom", ignore_errors=True)
        os.rename(self.failed / job, self.done / job)
        fsync_dir(self.failed)
        (self.failures / f"{job}.json").unlink(missing_ok=True)
        fsync_dir(self.failures)

    def resolve(self, job: str, keep_images: bool) -> list[dict]:
        """A job of a study has been scored and sent: the failure records of its earlier jobs (a CTA
        sent before its NCCT, a series with a gap that was sent again whole) are answered. Each says so
        (`resolved_by`) and leaves failures/, so what is listed there still needs a person. Delivery
        failures are the outbox's (`superseded_by`). Returns the outcomes resolved."""
        resolved = []
        for record in self.failures.glob(f"{self.study_of(job)}_*.json"):
            outcome = read_record(record)
            if not outcome or outcome.get("not_sent") or started_ns(record.stem) > started_ns(job):
                continue
            outcome["resolved_by"] = job
            if (self.failed / record.stem).is_dir():
                _write_json(self.failed / record.stem / "outcome.json", outcome)
                if not keep_images:
                    shutil.rmtree(self.failed / record.stem / "dicom", ignore_errors=True)
            record.unlink()
            resolved.append(outcome)
        if resolved:
            fsync_dir(self.failures)
        return resolved

    def series_instances(self, job: str) -> dict[str, set[str]]:
        """SeriesInstanceUID -> the SOP instance UIDs of a job's images in it (headers only; each image
        is stored under its SOP instance UID)."""
        by_series: dict[str, set[str]] = {}
        for path in (self.jobs / job / "dicom").glob("*.dcm"):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except (OSError, InvalidDicomError):
                continue
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), set()).add(path.stem)
        return by_series

    def identity(self, job: str) -> dict[str, str]:
        """Whom a job is of, as the staff ask after a study: patient ID and accession number."""
        return study_identity(self.jobs / job / "dicom")

    def instances(self, job: str) -> list[str]:
        """The SOP instance UIDs a job holds (its images are stored under them)."""
        return sorted(p.stem for p in (self.jobs / job / "dicom").glob("*.dcm"))

    def scored(self, job: str) -> list[dict]:
        """The outcomes of the study's earlier jobs that were scored and sent, newest first."""
        outcomes = []
        for folder in sorted(self.done.glob(f"{self.study_of(job)}_*"), reverse=True):
            earlier = read_record(folder / "outcome.json")
            if earlier and earlier.get("exit_code") == 0 and "ignored" not in earlier:
                outcomes.append(earlier)
        return outcomes

    def scored_with(self, job: str, instances: list[str]) -> dict | None:
        """The outcome of an earlier job of the same study that was scored and sent with every one of
        these images: a study sent again (by a technologist, or a scanner retrying) is not scored twice."""
        return next((o for o in self.scored(job) if set(instances) <= set(o.get("instances", ()))), None)

    def purge(self, before: float) -> list[str]:
        """Remove finished jobs (outcome, failure record, kept images) last changed before `before`
        (epoch seconds); the jobs removed. Received images and jobs still to run are never touched."""
        gone = []
        for folder in [*self.done.iterdir(), *self.failed.iterdir()]:
            if folder.stat().st_mtime < before:
                shutil.rmtree(folder, ignore_errors=True)
                (self.failures / f"{folder.name}.json").unlink(missing_ok=True)
                gone.append(folder.name)
        return gone

    def study_of(self, job: str) -> str:
        return job.rsplit("_", 1)[0]


def study_identity(folder: Path) -> dict[str, str]:
    """PatientID and AccessionNumber from the first readable image header in `folder` (empty where none)."""
    for path in sorted(folder.glob("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "AccessionNumber"])
        except (OSError, InvalidDicomError):
            continue
        return {"patient_id": str(ds.get("PatientID", "")), "accession_number": str(ds.get("AccessionNumber", ""))}
    return {"patient_id": "", "accession_number": ""}


def read_record(path: Path) -> dict | None:
    """An outcome or failure record, or None where it is unreadable, being replaced, or was removed
    while we looked."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
