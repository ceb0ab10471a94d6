"""C-STORE SCU: the result objects (SEG, SR, secondary captures) to a destination."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .config import Destination


class SendFailed(RuntimeError):
    pass


def send_files(calling_ae: str, destination: Destination, paths: list[Path], timeout_s: float = 30.0) -> int:
    """One association; every file must be stored with status 0x0000. Returns how many were sent."""
    from pynetdicom import AE

    if not paths:
        return 0
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(sop_class, sorted({syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian}))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendFailed(f"{destination.ae_title}@{destination.host}:{destination.port} refused or did not answer")
    try:
        for path, ds in zip(paths, datasets):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise SendFailed(f"{destination.ae_title} answered C-STORE of {path.name} with status "
                                 f"{'none' if code is None else hex(code)}")
    finally:
        assoc.release()
    return len(paths)
