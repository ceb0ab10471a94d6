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
    if level == "ERROR":
        console.addFilter(_ours)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    if json_path is not None:
        try:
            # Reopened when logrotate (or a person) moves the file away: a node logs for months.
            handler = logging.handlers.WatchedFileHandler(json_path)
        except OSError as exc:
            raise OutputUnwritable(f"--log-json {json_path}: cannot write it ({exc.strerror})") from None
        handler.setFormatter(JsonLines())
        root.addHandler(handler)


def _ours(record: logging.LogRecord) -> bool:
    """At the default level the console shows this program's records only. A library's own errors
    (pynetdicom's "connection refused" before our "PACS did not answer") would break the promise of one
    `error:` line; they still reach --log-json, and any lower --log-level shows them."""
    return record.name == "aspects" or record.name.startswith("aspects.")


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
