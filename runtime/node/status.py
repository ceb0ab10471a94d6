"""What a node's spool holds now, read without a running node and without changing anything.

The first questions when a stroke study is missing from PACS: did it arrive, is it waiting, did it
fail, were its results sent? `aspects status` answers them from the spool alone (spool.py's layout).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnreadableInput, UsageError
from ..output import folder_held
from .config import NodeConfig
from .spool import read_record, started_ns, study_identity

RECENT_S = 24 * 3600          # finished jobs counted and listed: those of the last day
LISTED = 5                    # the newest finished jobs shown by name


@dataclass(frozen=True)
class Arriving:
    """Images of a study still coming in (not yet quiet for quiet_seconds)."""
    study: str
    patient_id: str
    accession_number: str
    images: int
    last_image_s: float       # seconds since its newest image


@dataclass(frozen=True)
class Waiting:
    """A complete study waiting for a worker, being scored, or scored with its results being sent."""
    job: str
    patient_id: str
    accession_number: str
    images: int
    waiting_s: float
    sending: bool             # scored and placed: its results are being sent (a slow or absent PACS)


@dataclass(frozen=True)
class Failure:
    job: str
    patient_id: str           # empty in records written before the node recorded it
    accession_number: str
    exit_code: int
    error: str
    finished_s: float         # seconds since it failed
    redelivery: str           # "": not a delivery failure; "until <time>": the outbox sends it again; "ended"


@dataclass(frozen=True)
class Finished:
    job: str
    patient_id: str
    accession_number: str
    aspects: int | None
    finished_s: float
    sent_to: tuple[str, ...]
    note: str                 # ignored (a CTA after its NCCT), the same images as an earlier job, delivered late
    hyperdense_ml: float      # runtime.hyperdense: 0 when none was found (or the job predates the check)
    metal_ml: float           # the same for metal inside the skull
    ignored: bool             # not scored, and not a failure: nothing this node reads


@dataclass(frozen=True)
class SpoolStatus:
    spool: str
    node_running: bool        # an `aspects serve` holds the spool (Spool.claim)
    free_mb: float
    refusing_images: bool     # under min_free_mb: the SCP answers every C-STORE with 0xA700
    arriving: tuple[Arriving, ...]
    waiting: tuple[Waiting, ...]
    failures: tuple[Failure, ...]
    finished_last_day: int    # scored, or ignored (nothing this node reads, nothing better than the score)
    ignored_last_day: int
    newest_finished: tuple[Finished, ...]


def spool_status(config: NodeConfig, now: float | None = None) -> SpoolStatus:
    root = config.spool
    missing = [d for d in ("incoming", "jobs", "done", "failed", "failures") if not (root / d).is_dir()]
    if missing:
        raise UsageError(f"{root} is not a node's spool (no {', '.join(f'{d}/' for d in missing)}); "
                         f"give the spool `aspects serve` was started with")
    try:
        return _read(config, time.time() if now is None else now)
    except PermissionError as exc:             # a spool the node's user alone may read
        raise UnreadableInput(f"{root}: cannot read the spool ({exc.strerror}: {exc.filename}); run this as "
                              f"the node's user") from None


def _read(config: NodeConfig, now: float) -> SpoolStatus:
    root = config.spool
    free_mb = shutil.disk_usage(root).free / 2**20
    arriving = tuple(Arriving(folder.name, **study_identity(folder), images=len(images),
                              last_image_s=round(now - newest, 1))
                     for folder, images, newest in _folders(root / "incoming", "*.dcm"))
    waiting = tuple(Waiting(folder.name, **study_identity(folder / "dicom"), images=len(images),
                            waiting_s=round(now - started_ns(folder.name) / 1e9, 1),
                            sending=(config.output / folder.name).is_dir())
                    for folder, images, _ in _folders(root / "jobs", "dicom/*.dcm"))
    records = [(record, read_record(record)) for record in (root / "failures").glob("*.json")]
    failures = tuple(sorted((_failure(record, outcome, config, now) for record, outcome in records if outcome),
                            key=lambda f: -f.finished_s))
    recent = sorted((folder for folder in _entries(root / "done") if now - _mtime(folder) <= RECENT_S),
                    key=lambda folder: started_ns(folder.name), reverse=True)
    finished = [s for s in (_finished(folder / "outcome.json", now) for folder in recent) if s]
    return SpoolStatus(str(root), folder_held(root), round(free_mb, 1), free_mb < config.min_free_mb, arriving, waiting,
                       failures, len(recent), sum(s.ignored for s in finished),
                       tuple(finished[:LISTED]))


def format_status(status: SpoolStatus, min_free_mb: float) -> list[str]:
    """Lines a person reads at the console: newest last in each part, ages rather than timestamps."""
    lines = [f"spool {status.spool}: " + ("a node is running on it" if status.node_running else
                                          "no node is running on it: nothing arriving is received or scored")]
    lines.append(f"{status.free_mb:.0f} MB free" + (f", under min_free_mb {min_free_mb:g}: images are refused "
                                                    "(0xA700) until there is room" if status.refusing_images else ""))
    lines.append(f"arriving: {len(status.arriving)} stud{'y' if len(status.arriving) == 1 else 'ies'}")
    lines += [f"  {a.study}: {_who(a)}{a.images} image(s), the last {_age(a.last_image_s)} ago"
              for a in status.arriving]
    lines.append(f"waiting, being scored or being sent: {len(status.waiting)} job(s)")
    lines += [f"  {w.job}: {_who(w)}{w.images} image(s), complete {_age(w.waiting_s)} ago"
              + (", scored: its results are being sent" if w.sending else "") for w in status.waiting]
    lines.append(f"failures: {len(status.failures)}")
    for f in status.failures:
        state = {"": "", "ended": "; the outbox has stopped: send by hand"}.get(
            f.redelivery, f"; sent again every minute {f.redelivery}")
        lines.append(f"  {f.job}: {_who(f)}exit {f.exit_code}, {_age(f.finished_s)} ago: {f.error}{state}")
    lines.append(f"finished in the last 24 h: {status.finished_last_day}"
                 + (f" ({status.ignored_last_day} ignored)" if status.ignored_last_day else ""))
    for s in status.newest_finished:
        score = "not scored" if s.aspects is None else f"ASPECTS {s.aspects}"
        if s.hyperdense_ml:
            score += f", hyperdense tissue {s.hyperdense_ml:.1f} mL: look at the images"
        if s.metal_ml:
            score += ", metal inside the skull: look at the images near it"
        sent = f", sent to {', '.join(s.sent_to)}" if s.sent_to else ""
        lines.append(f"  {s.job}: {_who(s)}{score}, {_age(s.finished_s)} ago{sent}"
                     + (f" ({s.note})" if s.note else ""))
    return lines


def _entries(folder: Path) -> list[Path]:
    """Sub-folders, without the ones mid-rename (`.new-*`) or that vanished while we looked."""
    try:
        return [p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()]
    except FileNotFoundError:
        return []


def _folders(folder: Path, images: str) -> list[tuple[Path, list[Path], float]]:
    """Each sub-folder with its images and its newest change, oldest first."""
    found = []
    for sub in _entries(folder):
        files = list(sub.glob(images))
        found.append((sub, files, max([_mtime(sub), *(_mtime(f) for f in files)])))
    return sorted(found, key=lambda entry: entry[2])


def _failure(record: Path, outcome: dict, config: NodeConfig, now: float) -> Failure:
    finished = float(outcome.get("finished_at", _mtime(record)))
    redelivery = ""
    if outcome.get("not_sent"):
        if outcome.get("redelivery_ended") or not config.redeliver_hours:
            redelivery = "ended"
        else:
            until = finished + config.redeliver_hours * 3600
            redelivery = f"until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}"
    return Failure(str(outcome.get("job", record.stem)), *_identity(outcome), int(outcome.get("exit_code", 1)),
                   str(outcome.get("error", "")), round(now - finished, 1), redelivery)


def _finished(path: Path, now: float) -> Finished | None:
    outcome = read_record(path)
    if not outcome:
        return None
    note = ("ignored: " + outcome["ignored"] if "ignored" in outcome
            else f"the same images as {outcome['same_as']}, not scored again" if "same_as" in outcome
            else f"delivered by {outcome['superseded_by']}" if "superseded_by" in outcome
            else "delivered on a later try" if outcome.get("delivered_late")
            else f"supersedes {outcome['supersedes']}" if "supersedes" in outcome else "")
    return Finished(str(outcome.get("job", path.parent.name)), *_identity(outcome), outcome.get("aspects"),
                    round(now - float(outcome.get("finished_at", _mtime(path))), 1),
                    tuple(outcome.get("sent_to", ())), note, float(outcome.get("hyperdense_ml") or 0.0),
                    float(outcome.get("metal_ml") or 0.0), "ignored" in outcome)


def _identity(outcome: dict) -> tuple[str, str]:
    return str(outcome.get("patient_id", "")), str(outcome.get("accession_number", ""))


def _who(entry: Arriving | Waiting | Failure | Finished) -> str:
    parts = [f"patient {entry.patient_id}" if entry.patient_id else "",
             f"accession {entry.accession_number}" if entry.accession_number else ""]
    return "".join(f"{p}, " for p in parts if p)


def _mtime(path: Path) -> float:
    """0 for a file the node moved or removed while we looked: it drops out as old."""
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
