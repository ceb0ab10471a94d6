"""User-facing failures: each has a one-line message and its own exit code.

The CLI prints `error: <message>` and exits with `exit_code`; it never prints a
traceback for these. Codes are stable: scanner integrations branch on them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class AspectsError(Exception):
    exit_code = 1


class UsageError(AspectsError):
    """The command line itself is wrong (an empty path, ...)."""
    exit_code = 2


class UnreadableInput(AspectsError):
    """Path missing, file corrupt, or format not understood."""
    exit_code = 3


class NoSeries(AspectsError):
    """A folder with no readable image series in it."""
    exit_code = 4


class WrongModality(AspectsError):
    """Not a non-contrast CT series (MR, PET, a secondary capture, a CTA...)."""
    exit_code = 5


class TooFewSlices(AspectsError):
    """Not enough slices, or not enough head coverage, to score."""
    exit_code = 6


class InconsistentSeries(AspectsError):
    """Missing slices, mixed orientations or sizes, duplicated positions."""
    exit_code = 7


class NotAHead(AspectsError):
    """Empty volume, no skull or brain found, or body-sized anatomy."""
    exit_code = 8


class NotAHeadScan(NotAHead):
    """A series whose own header says it is of another part of the body (BodyPartExamined CHEST):
    refused before any compute, and ignored by the node, as a chest CT routed to it by a broad rule."""


class AbsurdSize(AspectsError):
    """Dimensions or voxel spacing outside anything a head CT can have."""
    exit_code = 9


class OutputExists(AspectsError):
    """The output would overwrite a file the user already has."""
    exit_code = 10


class ModelError(AspectsError):
    """A model file or card is missing, tampered with, or does not match its card."""
    exit_code = 11


class DeviceUnavailable(AspectsError):
    """The requested device (GPU / TensorRT) cannot run here."""
    exit_code = 12


class DeviceError(AspectsError):
    """The GPU started, then failed mid-study (a CUDA call or a TensorRT enqueue)."""
    exit_code = 13


class ParityFailure(AspectsError):
    """An engine or the GPU path disagrees with ONNX Runtime fp32 beyond the tolerances."""
    exit_code = 14


class OutputUnwritable(AspectsError):
    """The output folder cannot be created or written."""
    exit_code = 15


class DeliveryFailed(AspectsError):
    """The results were written, but a destination did not take them (aspects serve)."""
    exit_code = 16


def exit_code_of(main: Callable[[], object]) -> int:
    """For the `python -m export.*` tools: an AspectsError ends in its `error:` line and exit code."""
    try:
        main()
    except AspectsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


@contextmanager
def named(what: str) -> Iterator[None]:
    """An AspectsError raised inside names `what` (a study, a case of a batch), keeping its exit code."""
    try:
        yield
    except AspectsError as exc:
        raise type(exc)(f"{what}: {exc}") from None
