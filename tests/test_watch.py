"""`aspects watch`: every study dropped into a folder is scored once, failures recorded, the inbox untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading

import pytest

from runtime.errors import OutputExists, UnreadableInput
from runtime.watch import LEDGER, watch
from tests.conftest import DEMO_STUDY


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@contextlib.contextmanager
def _watching(inbox, out, scorer, **settings):
    """A watcher in a thread for the with-block's length: yields (stop, handled), handled holding the
    count it returned once the block is left."""
    stop, handled = threading.Event(), []
    t = threading.Thread(target=lambda: handled.append(watch(inbox, out, scorer, stop=stop, **settings)))
    t.start()
    try:
        yield stop, handled
    finally:
        stop.set()
        t.join(timeout=10)


def test_watch_scores_each_entry_once_and_records_failures(tmp_path, scorer):
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    shutil.copy(DEMO_STUDY, inbox / "demo.nii.gz")
    (inbox / "broken.nii.gz").write_bytes(b"not a volume")
    (inbox / ".arriving.nii.gz").write_bytes(b"hidden names are still being copied")
    before = _digest(inbox)

    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.05) == 2
    records = {r["input"].rsplit("/", 1)[1]: r for r in map(json.loads, (out / LEDGER).read_text().splitlines())}
    assert set(records) == {"demo.nii.gz", "broken.nii.gz"}
    assert records["demo.nii.gz"]["exit_code"] == 0 and (out / "demo" / "report.json").exists()
    assert records["broken.nii.gz"]["exit_code"] == 3 and records["broken.nii.gz"]["error"]
    assert _digest(inbox) == before                                    # the inbox is only read

    # A restarted watcher skips what is done; a changed entry is a new study.
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.05) == 0
    (inbox / "broken.nii.gz").write_bytes(b"still not a volume, but a new one")
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.05) == 1


def test_watch_waits_for_the_quiet_period(tmp_path, scorer):
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "broken.nii.gz").write_bytes(b"x")
    with _watching(inbox, out, scorer, quiet_s=60.0, poll_s=0.05) as (stop, handled):
        stop.wait(0.5)                          # several looks at an entry that is not yet quiet
        # A second watcher on the same reports (a service started twice) would score every study again.
        with pytest.raises(OutputExists, match="another aspects watch writes its reports here"):
            watch(inbox, out, scorer, quiet_s=0.0, once=True)
    assert handled == [0] and not (out / LEDGER).exists()
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True) == 1       # the first one gone, the folder is free


def test_quiet_is_timed_on_this_machines_clock_not_the_file_times(tmp_path, scorer):
    """An inbox on a network share: file times come from the server's clock, often minutes off. A server
    ahead kept finished studies waiting until the clocks agreed; a server behind made a study still
    being copied look finished at once."""
    import os
    import time
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    ahead, behind = inbox / "ahead.nii.gz", inbox / "behind.nii.gz"
    ahead.write_bytes(b"finished, its time an hour ahead")
    os.utime(ahead, (time.time() + 3600, time.time() + 3600))
    behind.write_bytes(b"the first part")
    os.utime(behind, (time.time() - 3600, time.time() - 3600))
    with _watching(inbox, out, scorer, quiet_s=1.0, poll_s=0.05) as (stop, handled):
        stop.wait(0.5)
        with open(behind, "ab") as f:                         # still being copied
            f.write(b", and the rest")
        os.utime(behind, (time.time() - 3600, time.time() - 3600))
        stop.wait(2.5)
    records = [json.loads(line) for line in (out / LEDGER).read_text().splitlines()]
    assert handled == [2] and sorted(r["input"].rsplit("/", 1)[1] for r in records) == ["ahead.nii.gz",
                                                                                       "behind.nii.gz"]
    scored_size = {r["input"].rsplit("/", 1)[1]: int(r["key"].rsplit(":", 1)[1]) for r in records}
    assert scored_size["behind.nii.gz"] == behind.stat().st_size, "scored before it was copied whole"


def test_an_entry_moved_away_while_looked_at_is_skipped(tmp_path, scorer, monkeypatch):
    """A user takes a study back out of the inbox while the watcher walks it: the watcher died."""
    import runtime.watch as watching
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "gone.nii.gz").write_bytes(b"x")
    (inbox / "broken.nii.gz").write_bytes(b"y")
    stamp = watching._stamp

    def vanishing(entry):
        if entry.name == "gone.nii.gz":
            raise FileNotFoundError(2, "No such file or directory", str(entry))
        return stamp(entry)
    monkeypatch.setattr(watching, "_stamp", vanishing)
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.05) == 1


def test_a_scored_entry_is_walked_again_only_every_recheck_period(tmp_path, scorer, monkeypatch):
    """IN keeps every study ever dropped there: walking each on every poll (a stat per file, slow on a
    share) made a busy inbox's next study wait that long to be seen, and kept a core busy meanwhile."""
    from collections import Counter

    import runtime.watch as watching
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "broken.nii.gz").write_bytes(b"y")
    stamp, walks = watching._stamp, Counter()

    def counted(entry):
        walks[entry.name] += 1
        return stamp(entry)
    monkeypatch.setattr(watching, "_stamp", counted)
    with _watching(inbox, out, scorer, quiet_s=0.0, poll_s=0.02) as (stop, handled):
        stop.wait(1.0)                                              # some 50 polls
        assert walks["broken.nii.gz"] <= 2
        monkeypatch.setattr(watching, "RECHECK_S", 0.2)             # a change is still seen, a period later
        (inbox / "broken.nii.gz").write_bytes(b"changed, sent again")
        (inbox / "later.nii.gz").write_bytes(b"z")                  # a new entry is seen at once
        stop.wait(1.5)
    records = [json.loads(line) for line in (out / LEDGER).read_text().splitlines()]
    assert handled == [3] and [r["input"].rsplit("/", 1)[1] for r in records].count("broken.nii.gz") == 2


def test_the_newest_study_is_scored_first_and_one_arriving_mid_backlog_is_next(tmp_path, scorer, monkeypatch):
    """A watcher first pointed at an archive scored it in name order, one study at a time, and a stroke
    study sent meanwhile waited for all of them (some 5 s each)."""
    import os
    import time

    import runtime.watch as watching
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    for age_h, name in enumerate(["c_new.nii.gz", "a_older.nii.gz", "b_oldest.nii.gz"]):
        (inbox / name).write_bytes(b"an old study")
        os.utime(inbox / name, (time.time() - 3600 * (age_h + 1),) * 2)
    score, order = watching._score, []

    def scoring(entry, *args):
        order.append(entry.name)
        if len(order) == 1:                        # sent while the backlog is being scored
            (inbox / "z_acute.nii.gz").write_bytes(b"the stroke")
        return score(entry, *args)
    monkeypatch.setattr(watching, "_score", scoring)
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.02) == 4
    assert order == ["c_new.nii.gz", "z_acute.nii.gz", "a_older.nii.gz", "b_oldest.nii.gz"]

    # With a quiet period, the new study is not ready when it is first seen: the backlog's pass ends
    # when it may have become quiet, not after the whole backlog.
    inbox, out, order[:] = tmp_path / "inbox2", tmp_path / "reports2", []
    inbox.mkdir()
    for k in range(8):
        (inbox / f"old{k}.nii.gz").write_bytes(b"an old study")
        os.utime(inbox / f"old{k}.nii.gz", (time.time() - 3600 * (k + 1),) * 2)

    def slow(entry, *args):
        time.sleep(0.15)
        return scoring(entry, *args)
    monkeypatch.setattr(watching, "_score", slow)
    assert watch(inbox, out, scorer, quiet_s=0.3, once=True, poll_s=0.02) == 9
    assert order.index("z_acute.nii.gz") <= 4, order


def test_a_slow_walk_beside_a_copy_in_progress_still_scores(tmp_path, scorer, monkeypatch):
    """The pass ends early once an entry still settling may be quiet; on a slow share, where one walk
    outlasts the quiet period and a copy keeps changing, that must not end every pass before the first."""
    import itertools
    import time

    import runtime.watch as watching
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "copying").mkdir()
    (inbox / "ready.nii.gz").write_bytes(b"y")
    stamp, growing = watching._stamp, itertools.count()

    def slow(entry):
        time.sleep(0.05)
        return (0, next(growing)) if entry.name == "copying" else stamp(entry)
    monkeypatch.setattr(watching, "_stamp", slow)
    with _watching(inbox, out, scorer, quiet_s=0.02, poll_s=0.02) as (stop, handled):
        stop.wait(1.5)
    assert handled == [1]


def test_an_inbox_that_cannot_be_read_for_a_while_is_waited_for(tmp_path, scorer, monkeypatch, caplog):
    """A network share drops out for a minute: the watcher died with an internal error, and nothing
    was scored again until someone restarted it."""
    import logging
    from pathlib import Path

    caplog.set_level(logging.INFO, logger="aspects.watch")
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "broken.nii.gz").write_bytes(b"y")
    listing, outage = Path.iterdir, {"left": 5}

    def flaky(path):
        if path == inbox and outage["left"] > 0:
            outage["left"] -= 1
            raise OSError(116, "Stale file handle")
        return listing(path)
    monkeypatch.setattr(Path, "iterdir", flaky)
    with pytest.raises(UnreadableInput, match="the inbox cannot be read"):
        watch(inbox, out, scorer, quiet_s=0.0, once=True)            # --once: said, not waited for
    with _watching(inbox, out, scorer, quiet_s=0.0, poll_s=0.02) as (stop, handled):
        stop.wait(1.0)
    assert handled == [1] and outage["left"] == 0
    assert caplog.text.count("cannot be read") == 1 and "can be read again" in caplog.text


def test_an_outcome_that_cannot_be_recorded_is_scored_again_later(tmp_path, scorer, monkeypatch, caplog):
    """The reports folder on a share that drops out: the ledger write failed and ended the watcher."""
    import runtime.watch as watching
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    (inbox / "broken.nii.gz").write_bytes(b"y")
    append, failures = watching._append, {"left": 1}

    def flaky(ledger, record):
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(5, "Input/output error")
        append(ledger, record)
    monkeypatch.setattr(watching, "_append", flaky)
    assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.02) == 1
    assert len((out / LEDGER).read_text().splitlines()) == 1 and "cannot be recorded" in caplog.text


def test_a_study_with_hyperdense_tissue_is_recorded_and_warned_about(tmp_path, scorer, demo_study, demo_result,
                                                                      caplog):
    """A watched folder has no one reading the console: the ledger and the log say it."""
    import logging

    import SimpleITK as sitk

    from tests.test_hyperdense import _brighter_sphere
    inbox, out = tmp_path / "inbox", tmp_path / "reports"
    inbox.mkdir()
    demo = sitk.ReadImage(str(DEMO_STUDY))
    bled = sitk.GetImageFromArray(_brighter_sphere(demo_study, demo_result, "L", "right", ml=5.0).hu)
    bled.CopyInformation(demo)
    sitk.WriteImage(bled, str(inbox / "bleed.nii.gz"))
    with caplog.at_level(logging.INFO, logger="aspects"):
        assert watch(inbox, out, scorer, quiet_s=0.0, once=True, poll_s=0.05) == 1
    record = json.loads((out / LEDGER).read_text())
    assert record["exit_code"] == 0 and record["hyperdense_ml"] >= 2.0 and record["metal_ml"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "bleed.nii.gz: " + w for w in json.loads((out / "bleed" / "report.json").read_text())["warnings"][:1]]
