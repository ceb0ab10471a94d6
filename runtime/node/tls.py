"""DICOM over TLS (PS3.15 Annex B, the BCP 195 profile): many hospital networks require it for patient
images between a scanner, this node and PACS. Both sides' contexts are built here, from PEM files."""

from __future__ import annotations

import ssl
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
