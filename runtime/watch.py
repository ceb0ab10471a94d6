"""`aspects watch IN --out OUT`: score every study dropped into a folder, once each.

An entry of IN (a DICOM folder, a .zip or a volume file; names starting with "." are
ignored, so a copy can land under a hidden name and be renamed) is scored once it has
been seen unchanged for the quiet period, into OUT/<name>/. OUT/watch.jsonl records every
outcome, failures included, one JSON line each, written before the next study starts:
a restarted watcher skips what it has already done. An entry that changes after it was
scored (a study sent again with more images) is a new study, seen within RECHECK_S.
The newest entry is scored first. IN is only ever read.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from .errors import AspectsError, UnreadableInput
from .hyperdense import look_first
from .output import hold_folder, make_folder, study_stem
from .pipeline import Scorer
from .report import write_report

log = logging.getLogger("aspects.watch")
LEDGER = "watch.jsonl"
# How often an entry already scored is walked again to see whether it changed. IN is only read, so it
# keeps every study ever dropped there; walking them all on every poll (a stat per file, slow on a
# network share) would delay noticing the next stroke study by as much.
RECHECK_S = 60.0


def watch(inbox: Path, out: Path, scorer: Scorer, quiet_s: float = 10.0, outputs: tuple[str, ...] | None = None,
          once: bool = False, poll_s: float = 1.0, stop: threading.Event | None = None) -> int:
    """Runs until `stop` is set (or, with `once`, until everything now in IN has been handled).
    Returns the number of studies scored or failed in this run."""
    stop = stop or threading.Event()
    make_folder(out)
    # One watcher per report folder: a second (a service started twice) would score every study again.
    held = hold_folder(out, "another aspects watch writes its reports here; stop it, or give this one a "
                            "folder of its own")
    try:
        return _watch(inbox, out, scorer, quiet_s, outputs, once, poll_s, stop)
    finally:
        os.close(held)


def _watch(inbox: Path, out: Path, scorer: Scorer, quiet_s: float, outputs: tuple[str, ...] | None, once: bool,
           poll_s: float, stop: threading.Event) -> int:
    """Quiet is timed on this machine's clock from when an entry was last seen to change, not from its
    file times: on a network share those come from the server's clock, often minutes off, and a study
    still being copied must not look finished (nor a finished one wait for the clocks to agree).

    The newest entry is scored first, and a pass through a backlog ends as soon as something new
    arrives or an entry waiting for quiet may have become quiet: the acute study is the one just
    sent, and it must not queue behind an inbox of old ones (a watcher first pointed at an archive)."""
    ledger = out / LEDGER
    done = _done(ledger)
    seen: dict[str, tuple[tuple[int, int], float]] = {}     # name -> (stamp, monotonic time it was first seen)
    checked: dict[str, float] = {}                           # name of a scored entry -> when it was last walked
    handled = 0
    unreadable: str | None = None                            # the inbox's error while it lasts, said once
    while not stop.is_set():
        try:
            entries = sorted(inbox.iterdir())
        except OSError as exc:                               # a network share gone for a while
            if once:
                raise UnreadableInput(f"{inbox}: the inbox cannot be read ({exc.strerror or exc})") from None
            if str(exc) != unreadable:
                log.error("the inbox %s cannot be read (%s): looking again every %g s", inbox, exc, poll_s)
            unreadable = str(exc)
            stop.wait(poll_s)
            continue
        if unreadable is not None:
            log.info("the inbox %s can be read again", inbox)
            unreadable = None
        names = {entry.name for entry in entries}            # forget what was taken out of IN
        seen = {name: v for name, v in seen.items() if name in names}
        checked = {name: t for name, t in checked.items() if name in names}
        ready: list[tuple[tuple[int, int], Path]] = []
        quiet_at = math.inf                                  # when the first entry still settling is quiet
        for entry in entries:
            if entry.name.startswith(".") or (entry.name in checked
                                              and time.monotonic() - checked[entry.name] < RECHECK_S):
                continue
            try:
                stamp = _stamp(entry)
            except FileNotFoundError:                        # moved away while we looked
                continue
            if _key(entry, stamp) in done:
                checked[entry.name] = time.monotonic()
                continue
            checked.pop(entry.name, None)
            first = seen.get(entry.name)
            if first is None or first[0] != stamp:           # new, or changed since we last looked
                first = seen[entry.name] = (stamp, time.monotonic())
            if time.monotonic() - first[1] < quiet_s:
                quiet_at = min(quiet_at, first[1] + quiet_s)
            else:
                ready.append((stamp, entry))
        left = unrecorded = False
        handled_before = handled                             # one study at least per pass, however slow the walk
        for stamp, entry in sorted(ready, key=lambda r: r[0][0], reverse=True):     # newest first
            if stop.is_set():
                break
            if handled_before < handled and (time.monotonic() >= quiet_at or _arrived(inbox, names)):
                left = True                                  # look again: the next one may be more urgent
                break
            try:
                now_stamp = _stamp(entry)
            except FileNotFoundError:
                continue
            if now_stamp != stamp:                           # changed since the pass began: not quiet
                seen[entry.name] = (now_stamp, time.monotonic())
                quiet_at = min(quiet_at, time.monotonic() + quiet_s)
                continue
            record = _score(entry, out, scorer, outputs)
            record["key"] = _key(entry, stamp)
            try:
                _append(ledger, record)
            except OSError as exc:                           # the reports folder's share dropped out
                log.error("%s: its outcome cannot be recorded in %s (%s): it is scored again once it can",
                          entry.name, ledger, exc)
                unrecorded = True
                break
            done.add(record["key"])
            checked[entry.name] = time.monotonic()
            seen.pop(entry.name, None)
            handled += 1
        if left:
            continue
        if once and quiet_at == math.inf and not unrecorded:     # everything there is handled
            break
        stop.wait(poll_s)
    return handled


def _key(entry: Path, stamp: tuple[int, int]) -> str:
    return f"{entry.name}:{stamp[0]}:{stamp[1]}"


def _arrived(inbox: Path, names: set[str]) -> bool:
    """Whether IN holds a name it did not hold when the pass began (one directory read, no walk)."""
    try:
        return any(not n.startswith(".") and n not in names for n in os.listdir(inbox))
    except OSError:
        return False


def _score(entry: Path, out: Path, scorer: Scorer, outputs) -> dict:
    name = study_stem(entry)
    target, n = out / name, 1
    while target.exists():
        n += 1
        target = out / f"{name}_{n}"
    record: dict = {"input": str(entry), "output": str(target), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        result = scorer.score(entry)
        write_report(result, target, outputs)
        record.update(exit_code=0, aspects=result.score.aspects, error=None,
                      hyperdense_ml=result.hyperdense.volume_ml, metal_ml=result.hyperdense.metal_ml)
        log.info("%s: ASPECTS %d -> %s", entry.name, result.score.aspects, target)
        for line in look_first(result.hyperdense):      # a bleed or a clip: the score may not hold
            log.warning("%s: %s", entry.name, line)
    except AspectsError as exc:
        record.update(exit_code=exc.exit_code, error=str(exc))
        log.error("%s: %s", entry.name, exc)
    return record


def _stamp(entry: Path) -> tuple[int, int]:
    """(newest modification time in ns, total bytes) of a file or of everything under a folder."""
    if entry.is_file():
        st = entry.stat()
        return st.st_mtime_ns, st.st_size
    newest, size = entry.stat().st_mtime_ns, 0
    for root, dirs, files in os.walk(entry):
        for name in dirs + files:
            st = os.stat(os.path.join(root, name), follow_symlinks=False)
            newest = max(newest, st.st_mtime_ns)
            size += st.st_size if name in files else 0
    return newest, size


def _done(ledger: Path) -> set[str]:
    if not ledger.exists():
        return set()
    keys = set()
    for line in ledger.read_text().splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError):
            continue                      # a line cut by a crash: that study is scored again
    return keys


def _append(ledger: Path, record: dict) -> None:
    with open(ledger, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
