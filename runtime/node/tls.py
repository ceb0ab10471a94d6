"""DICOM over TLS (PS3.15 Annex B, the BCP 195 profile): many hospital networks require it for patient
images between a scanner, this node and PACS. Both sides' contexts are built here, from PEM files."""

from __future__ import annotations

import base64
import re
import ssl
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UsageError


def server_context(certificate: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """The listening side. With a CA bundle, every sender must present a certificate it signed (mutual
    TLS, what the DICOM profile asks for); without one, any sender that speaks TLS is accepted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate, key)
    if ca is not None:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(certificate: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """The sending side: the destination's certificate is checked against the CA bundle alone (a
    hospital's own CA; without one, the system's CAs) and its host name or address; this node's own
    certificate goes with it where set."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH) if ca is None else ssl.SSLContext(
        ssl.PROTOCOL_TLS_CLIENT)            # verifies and checks host names, with no CA loaded yet
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        _load_ca(context, ca)
    if certificate is not None and key is not None:
        _load_chain(context, certificate, key)
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"tls_certificate {certificate} with tls_key {key}: cannot be loaded ({exc})") from None


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"tls_ca {ca}: cannot be loaded ({exc})") from None


def certificate_expiry(certificate: Path) -> float:
    """notAfter of the first certificate in a PEM file, in epoch seconds. The ssl module decodes a
    certificate only from a live connection, so this reads the DER itself: Certificate >
    tbsCertificate > validity > notAfter (RFC 5280, 4.1)."""
    try:
        pem = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", Path(certificate).read_text(),
                        re.S)
        if pem is None:
            raise ValueError("no PEM certificate in it")
        der = base64.b64decode("".join(pem.group(1).split()))
        _, start, end = _elements(der, 0, len(der))[0]                     # Certificate
        _, start, end = _elements(der, start, end)[0]                      # tbsCertificate
        fields = _elements(der, start, end)
        validity = fields[4 if fields[0][0] == 0xA0 else 3]              # after [0] version, serial, alg, issuer
        tag, start, end = _elements(der, validity[1], validity[2])[1]      # notBefore, notAfter
        text = der[start:end].decode("ascii")
        when = datetime.strptime(text, "%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ")  # UTCTime, GeneralizedTime
    except (OSError, ValueError, IndexError) as exc:
        raise UsageError(f"tls_certificate {certificate}: cannot read its expiry ({exc})") from None
    return when.replace(tzinfo=timezone.utc).timestamp()


def _elements(der: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The DER elements between start and end: (tag, value start, value end) each."""
    out = []
    i = start
    while i < end:
        tag, length = der[i], der[i + 1]
        i += 2
        if length & 0x80:                                                  # long form: the length's byte count
            n = length & 0x7F
            length = int.from_bytes(der[i:i + n], "big")
            i += n
        out.append((tag, i, i + length))
        i += length
    return out
