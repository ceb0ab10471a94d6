"""C-STORE SCU: the result objects (SEG, SR, secondary captures) to a destination."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from ..errors import DeliveryFailed, UnreadableInput, UsageError
from .config import Destination

# The storage class each DICOM output is sent as (runtime.dicom_out writes them).
RESULT_CLASSES = {"seg": SegmentationStorage, "sr": Comprehensive3DSRStorage, "sc": SecondaryCaptureImageStorage}
VERIFICATION = UID("1.2.840.10008.1.1")
# The TCP connect alone. Without it a destination whose firewall drops packets (a PACS down behind
# one) held each attempt for the kernel's SYN retries, about 130 s, and the node's worker with it:
# three attempts kept the next stroke study waiting almost seven minutes. A LAN or WAN PACS
# answers a connect in well under a second.
CONNECT_TIMEOUT_S = 10.0


class SendFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Answered:
    """A destination that took an association proposing the result classes."""
    name: str
    milliseconds: float
    not_taken: tuple[str, ...]      # result classes it refuses (an archive without SEG storage)


def stored(code: int | None) -> bool:
    """Success, or a warning (0x0001, 0xBxxx: coerced elements, elements discarded...): the archive has
    the object. Many archives coerce a patient name on every store."""
    return code is not None and (code in (0x0000, 0x0001) or 0xB000 <= code <= 0xBFFF)


def send_files(calling_ae: str, destination: Destination, paths: list[Path], timeout_s: float = 30.0,
               tls: ssl.SSLContext | None = None) -> list[str]:
    """One association (over TLS with a context); every file the destination takes a class of must be
    stored with status 0x0000. Returns the classes it does not take at all (an archive without SEG
    storage still gets the SR and key images): a refusal of everything, or a failed store, raises
    SendFailed."""
    from pynetdicom import AE

    if not paths:
        return []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(sop_class, sorted({syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    assoc = _associate(ae, destination, tls)
    try:
        taken = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if not taken & {str(ds.SOPClassUID) for ds in datasets}:
            raise SendFailed(f"{destination.ae_title} takes none of the result classes")
        for path, ds in zip(paths, datasets):
            if str(ds.SOPClassUID) not in taken:
                continue
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if not stored(code):
                raise SendFailed(f"{destination.ae_title} answered C-STORE of {path.name} with status "
                                 f"{'none' if code is None else hex(code)}")
    finally:
        assoc.release()
    return sorted({ds.SOPClassUID.name for ds in datasets if str(ds.SOPClassUID) not in taken})


def check_destination(calling_ae: str, destination: Destination, outputs: tuple[str, ...],
                      tls: ssl.SSLContext | None, timeout_s: float = 10.0) -> Answered:
    """A C-ECHO in an association that proposes the result classes the node sends: a wrong port, AE
    title or certificate is found when the node is set up, not at the first stroke, and an archive
    that takes no SEG is named before it is sent one."""
    from pynetdicom import AE

    classes = [RESULT_CLASSES[o] for o in outputs if o in RESULT_CLASSES]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(VERIFICATION)
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    t0 = time.monotonic()
    assoc = _associate(ae, destination, tls)
    try:
        taken = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        if classes and not taken & set(classes):
            raise SendFailed(f"{destination.name} takes none of the result classes")
        if VERIFICATION in taken:                   # some archives take stores and no C-ECHO
            code = getattr(assoc.send_c_echo(), "Status", None)
            if code != 0x0000:
                raise SendFailed(f"{destination.name} answered C-ECHO with status "
                                 f"{'none' if code is None else hex(code)}")
        milliseconds = (time.monotonic() - t0) * 1000
    finally:
        assoc.release()
    return Answered(destination.name, round(milliseconds, 1), tuple(c.name for c in classes if c not in taken))


def _associate(ae, destination: Destination, tls: ssl.SSLContext | None):
    ae.connection_timeout = CONNECT_TIMEOUT_S
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=(tls, destination.host) if tls is not None else None)
    if not assoc.is_established:
        over_tls = (" over TLS (or its certificate is not signed by tls_ca, or names another host than "
                    f"{destination.host})") if tls is not None else ""
        raise SendFailed(f"{destination.name} refused or did not answer{over_tls}")
    return assoc


def send_results(folder: Path, calling_ae: str, destinations: tuple[Destination, ...],
                 tls: ssl.SSLContext | None) -> dict[str, list[str]]:
    """A results folder's DICOM objects to each destination, by hand (`aspects send`): what the outbox
    leaves to a person once it stops. Returns, per destination reached, the classes it did not take;
    raises DeliveryFailed naming every destination that did not take them."""
    paths = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
    if not paths:
        raise UsageError(f"{folder}: no DICOM results (*.dcm) to send")
    for path in paths:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise UnreadableInput(f"{path}: not a DICOM file that can be sent ({exc})") from None
    reached, missed = {}, []
    for dest in destinations:
        try:
            reached[dest.name] = send_files(calling_ae, dest, paths, tls=tls if dest.tls else None)
        except (SendFailed, OSError) as exc:
            missed.append(f"{dest.name}: {exc}")
    if missed:
        raise DeliveryFailed(f"{folder}: not delivered to " + "; ".join(missed)
                             + (f" (delivered to {', '.join(reached)})" if reached else ""))
    return reached
