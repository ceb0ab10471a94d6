"""The node's settings: a TOML file, then command-line flags over it."""

from __future__ import annotations

import re
import ssl
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import UsageError
from ..report import OUTPUTS, check_outputs
from .tls import client_context, server_context

_AE = re.compile(r"^[\x20-\x7e]{1,16}$")


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the results are sent to (PACS, the scanner console)."""
    ae_title: str
    host: str
    port: int
    tls: bool = False                              # DICOM over TLS (runtime.node.tls)

    @classmethod
    def parse(cls, text: str) -> Destination:
        """AE@host:port, or AE@host:port/tls; an IPv6 address in brackets: AE@[fd00::5]:104"""
        m = re.fullmatch(r"([^@]{1,16})@(?:\[([0-9A-Fa-f:.]+)\]|([^:\[\]]+)):(\d{1,5})(/tls)?", text.strip())
        if not m:
            raise UsageError(f"destination {text!r}: write it as AE_TITLE@host:port (or AE_TITLE@host:port/tls; "
                             f"an IPv6 address in brackets)")
        return cls(m.group(1).strip(), m.group(2) or m.group(3), int(m.group(4)), tls=bool(m.group(5)))

    @property
    def name(self) -> str:
        """As it is written on the command line, so a failure record's `aspects send --to` works as given."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    spool: Path                                    # durable state: received images, jobs, outcomes
    output: Path                                   # one result folder per scored study
    ae_title: str = "ASPECTS"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()      # empty: any calling AE is accepted
    destinations: tuple[Destination, ...] = ()
    quiet_seconds: float = 10.0                    # a study is complete after this long without a new image
    workers: int = 1
    outputs: tuple[str, ...] = OUTPUTS
    keep_received: bool = False                    # keep a scored study's images in spool/done
    send_attempts: int = 3
    retain_days: float = 0.0                       # results and finished jobs older than this go (0: keep all)
    redeliver_hours: float = 24.0                  # results a destination did not take are re-sent this long
    min_free_mb: float = 2048.0                    # below this free on the spool's disk, images are refused
    tls_certificate: Path | None = None            # PEM: with tls_key, the node listens over TLS only,
    tls_port: int | None = None                    # or over TLS on this port and plain on `port`
    tls_key: Path | None = None
    tls_ca: Path | None = None                     # PEM: senders must present a certificate it signed;
                                                   # TLS destinations are checked against it

    def check(self) -> NodeConfig:
        for ae in (self.ae_title, *self.allowed_calling_aes, *(d.ae_title for d in self.destinations)):
            if not _AE.match(ae) or ae != ae.strip() or "\\" in ae:
                raise UsageError(f"AE title {ae!r}: 1-16 printable characters, no backslash or edge spaces")
        for port in (self.port, self.tls_port):
            if port is not None and not 0 <= port <= 65535:
                raise UsageError(f"port {port} is not a TCP port")
        if self.tls_port is not None and self.tls_certificate is None:
            raise UsageError("tls_port needs tls_certificate and tls_key")
        if (self.quiet_seconds < 0 or self.workers < 1 or self.send_attempts < 1 or not 0 <= self.retain_days < 1e6
                or not 0 <= self.redeliver_hours < 1e6 or not 0 <= self.min_free_mb < 1e12):
            raise UsageError("quiet_seconds, retain_days, redeliver_hours and min_free_mb must be >= 0, workers "
                             "and send_attempts >= 1")
        check_outputs(self.outputs)
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise UsageError("tls_certificate and tls_key go together: give both, or neither")
        self.server_tls()
        self.client_tls()                          # a file that cannot be loaded is said now, not at the first study
        return self

    def server_tls(self) -> ssl.SSLContext | None:
        if self.tls_certificate is None or self.tls_key is None:
            return None
        return server_context(self.tls_certificate, self.tls_key, self.tls_ca)

    def client_tls(self) -> ssl.SSLContext | None:
        if not any(d.tls for d in self.destinations):
            return None
        return client_context(self.tls_certificate, self.tls_key, self.tls_ca)


_KEYS = {f.name for f in fields(NodeConfig)}


def load_config(path: Path | None, *, tls: bool = True, **flags) -> NodeConfig:
    """The file's settings, then every flag that is not None over them. Without `tls`, the TLS files are
    left out, not loaded: `aspects status` needs none, and its user may not be allowed to read the key."""
    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"config {path}: {exc}") from None
        unknown = set(values) - _KEYS
        if unknown:
            raise UsageError(f"config {path}: unknown settings {', '.join(sorted(unknown))}")
    values.update({k: v for k, v in flags.items() if v is not None})
    if not str(values.get("spool") or "").strip():
        raise UsageError("the node needs a spool folder (--spool or spool = ... in the config)")
    dests = values.get("destinations", ())
    try:
        values["destinations"] = tuple(Destination.parse(d) if isinstance(d, str) else
                                       Destination(str(d["ae_title"]), str(d["host"]), int(d["port"]),
                                                   tls=_flag(d.get("tls", False))) for d in dests)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"destinations: each needs ae_title, host and port, and tls true or false where "
                         f"given ({exc})") from None
    if not tls:
        for key in ("tls_certificate", "tls_key", "tls_ca", "tls_port"):
            values.pop(key, None)
    for key in ("tls_certificate", "tls_key", "tls_ca"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    values["spool"] = Path(values["spool"])
    values["output"] = Path(values.get("output") or values["spool"] / "results")
    for key in ("allowed_calling_aes", "outputs"):
        if key in values:
            values[key] = tuple(values[key])
    try:
        return replace(NodeConfig(spool=values["spool"], output=values["output"]),
                       **{k: v for k, v in values.items() if k not in ("spool", "output")}).check()
    except TypeError as exc:
        raise UsageError(f"config: {exc}") from None


def _flag(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"tls = {value!r} is not true or false")
    return value
