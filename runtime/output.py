"""The output folder: claimed before any compute, written all-or-nothing.

- A run holds an exclusive lock on the folder (flock on the folder itself: the
  kernel drops it when the process dies, so a killed run never blocks the next).
  A second run, from this or another process, is refused instead of mixing its
  files with ours.
- Every file is written under a temporary name, flushed to disk, then linked to
  its final name; link() never replaces an existing name, never follows a
  symlink, and cannot leave a half-written file under a final name.
- If the run fails or is interrupted before the last file, the files it already
  placed are removed again: a folder holds a whole report or none of it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import tempfile
from pathlib import Path

from .errors import OutputExists, OutputUnwritable
from .read.volume import VOLUME_SUFFIXES


def make_folder(path: Path) -> Path:
    """Create a folder to write into (an output, a watcher's reports, a node's spool). A file in its
    place, or a place that cannot be written, is the user's to fix: an output error, not a crash."""
    if os.path.lexists(path) and not path.is_dir():
        raise OutputExists(f"{path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritable(f"{path}: cannot create the folder ({exc.strerror})") from None
    return path


def hold_folder(path: Path, held_by_another: str) -> int:
    """An exclusive flock on a folder, or OutputExists(held_by_another) at once: the descriptor to
    close to let go. The kernel drops it when the process dies, so a killed run never blocks the next."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputUnwritable(f"{path}: cannot open the folder ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputExists(f"{path}: {held_by_another}") from None
    return fd


def folder_held(path: Path) -> bool:
    """Whether another process holds `hold_folder`'s lock on a folder: a shared lock is tried and dropped
    at once, so this never blocks the holder. (A holder starting in that same instant would be refused,
    once; a service manager starts it again.)"""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def study_stem(path: Path) -> str:
    """A report folder name for an input: its own name without a volume suffix."""
    stem = path.name
    for suffix in (*VOLUME_SUFFIXES, ".zip"):
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)] or "study"
    return stem or "study"


def _place(tmp: Path, final: Path) -> None:
    """A hard link never replaces a file that appeared meanwhile. A filesystem without hard links (FAT
    or exFAT on a USB disk) refuses it: there a rename after a look, inside the folder this run holds."""
    try:
        os.link(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(final)) from None
        os.rename(tmp, final)


class OutputFolder:
    """Use as a context manager around the whole run: `with OutputFolder(out, names) as folder:`."""

    def __init__(self, path: str | os.PathLike, names: tuple[str, ...]):
        self.path = Path(path)
        self.names = names
        self._fd: int | None = None
        self._placed: list[Path] = []
        self._done = False
        self._created = False

    def __enter__(self) -> OutputFolder:
        self.claim()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self._undo()
        self.release()

    def claim(self) -> None:
        """Create, lock and check the folder; raises before any compute is spent."""
        self._created = not os.path.lexists(self.path)
        make_folder(self.path)
        self._fd = hold_folder(self.path, "another aspects run is writing to this folder; use a folder of its own")
        clashes = [n for n in self.names if os.path.lexists(self.path / n)]
        if clashes:
            self.release()
            raise OutputExists(f"{self.path}: already holds {', '.join(clashes)}; choose an empty or new output folder")
        try:
            probe, probe_path = tempfile.mkstemp(prefix=".aspects-probe-", dir=self.path)
            os.close(probe)
            os.unlink(probe_path)
        except OSError as exc:
            self.release()
            raise OutputUnwritable(f"{self.path}: cannot write in the output folder ({exc.strerror})") from None

    def write(self, name: str, data: bytes) -> Path:
        """Place one file under its final name, atomically and without replacing anything."""
        if name not in self.names:
            raise ValueError(f"{name} is not one of this run's outputs {self.names}")
        final = self.path / name
        tmp = self.path / f".{name}.{secrets.token_hex(6)}.partial"
        # O_EXCL | O_NOFOLLOW: a fresh file of our own, never through a link; 0o666 less the umask.
        # A full disk, a quota or a share gone mid-write is the output's fault, not the program's: it
        # is said as one (exit 15), and what this run placed is taken back (OutputFolder.__exit__).
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise OutputUnwritable(f"{final}: cannot be written ({exc.strerror or exc})") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _place(tmp, final)
        except FileExistsError:
            raise OutputExists(f"{final}: appeared while this run was writing; not overwritten") from None
        except OSError as exc:
            raise OutputUnwritable(f"{final}: cannot be written ({exc.strerror or exc})") from None
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self._placed.append(final)
        return final

    def commit(self) -> None:
        """Every file is in place: keep them."""
        if self._fd is not None:
            os.fsync(self._fd)
        self._done = True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)         # closing the descriptor drops the lock
            self._fd = None

    def _undo(self) -> None:
        for p in self._placed:
            try:
                p.unlink()
            except OSError:
                pass
        self._placed.clear()
        if self._created:              # a folder this run made and left empty goes too
            try:
                self.path.rmdir()
            except OSError:
                pass
