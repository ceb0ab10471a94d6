"""Logging through the standard library, and a muzzle for native libraries.

stderr is the error channel: on failure it holds one `error:` line and nothing
else. Native code (GDCM, ITK, JPEG decoders) writes warnings straight to file
descriptor 2; `quiet_native_stderr` catches those and passes them to the logger
instead, where --log-level / --log-json decide what is shown.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

from .errors import OutputUnwritable

log = logging.getLogger("aspects")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                           "level": record.levelname, "logger": record.name, "message": record.getMessage()})


def configure_logging(level: str = "ERROR", json_path: Path | None = None) -> None:
    logging.captureWarnings(True)      # library warnings are log records, not stray stderr lines
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
    # A stream of its own on a copy of fd 2, so quiet_native_stderr does not swallow our own records.
    console = logging.StreamHandler(os.fdopen(os.dup(2), "w", buffering=1))
    console.setLevel(level)
    console.addFilter(Keep(logging.getLevelName(level)))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    if json_path is not None:
        try:
            # Reopened when logrotate (or a person) moves the file away: a node logs for months.
            handler = logging.handlers.WatchedFileHandler(json_path)
        except OSError as exc:
            raise OutputUnwritable(f"--log-json {json_path}: cannot write it ({exc.strerror})") from None
        handler.addFilter(Keep(logging.DEBUG if level == "DEBUG" else logging.INFO))
        handler.setFormatter(JsonLines())
        root.addHandler(handler)


class Keep(logging.Filter):
    """What a handler keeps: this program's records from `level`; libraries' from WARNING, all of them
    only at DEBUG. pynetdicom and highdicom log every received image and copied attribute (2,300
    records for a 28-image study, 4 of them ours), which would bury the node's own lines and fill its
    disk. At ERROR, libraries' records are not kept at all: pynetdicom's "connection refused" before
    our "PACS did not answer" would break the promise of one `error:` line."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "aspects" or record.name.startswith("aspects."):
            return record.levelno >= self.level
        if self.level <= logging.DEBUG:
            return True
        return self.level < logging.ERROR and record.levelno >= max(self.level, logging.WARNING)


@contextmanager
def quiet_native_stderr():
    """Route what native libraries print on fd 2 to the logger (at WARNING) instead of the terminal."""
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        # Python's own writes (error lines of a batch) still reach the terminal; only fd 2 is caught.
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
        try:
            yield
        finally:
            sys.stderr.close()
            sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.warning("native library: %s", line.strip()[:300])
