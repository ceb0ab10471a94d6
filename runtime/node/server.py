"""The node: a Storage SCP into the spool, a scheduler that turns quiet studies into jobs, and
workers that score each job once, place its results and send them on.

Exactly once: a job's results are written into output/.staging/<job> and renamed into
output/<job> in one step, so that folder exists only whole; a job found in the spool
on restart whose results folder exists is not scored again, only its sending and its
record are repeated.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ..errors import (
    AbsurdSize,
    AspectsError,
    DeliveryFailed,
    InconsistentSeries,
    NoSeries,
    NotAHead,
    NotAHeadScan,
    TooFewSlices,
    UnreadableInput,
    UsageError,
    WrongModality,
)
from ..hyperdense import look_first
from ..output import make_folder
from ..pipeline import Scorer, make_scorer
from ..read import Study, read_study
from ..read.images import CT_IMAGE_SOPS
from ..report import write_report
from ..threads import available_cores
from .config import Destination, NodeConfig
from .send import VERIFICATION, Answered, SendFailed, check_destination, send_files
from .spool import BadIdentifier, Spool, check_uid, fsync_dir, started_ns
from .tls import certificate_expiry

log = logging.getLogger("aspects.node")


class NothingNew(NoSeries):
    """A later series of a scored study that would not improve on its result (never a failure)."""


def refuse_unless_better(study: Study, scored: dict) -> None:
    """A study has one result in PACS. A later series of a scored study (a thin or bone recon, an MPR)
    is scored only when it is a better kind by the chooser's criteria than the series scored (a soft
    reconstruction after a bone one), never for more slices alone. A criterion newer than the scored
    job's record counts as met by it, so an upgrade does not send a study's result twice."""
    new = study.metadata.get("series_criteria") or {}
    old = scored.get("series_criteria") or {}
    if tuple(new.values()) <= tuple(bool(old.get(name, bool(old))) for name in new):
        raise NothingNew(f"series '{study.metadata.get('series_description', '')}' is no better a non-contrast "
                         f"head series than the one job {scored['job']} scored")


@dataclass(frozen=True)
class ScoredJob:
    """A job scored (or refused, or found done before) whose outcome is not yet recorded."""
    job: str
    outcome: dict
    to_send: Path | None          # the placed results still to be sent; None: nothing to send
    started: float                # time.monotonic() when the job was taken


def _failed(outcome: dict, exc: Exception) -> None:
    """A job's failure into its outcome and the log: one of ours with its exit code, anything else as
    an internal error (a failure record, never silence)."""
    job, study = outcome["job"], outcome["study_instance_uid"]
    if isinstance(exc, AspectsError):
        outcome.update(exit_code=exc.exit_code, error=str(exc))
        log.error("job %s (study %s) failed: %s", job, study, exc)
    else:
        outcome.update(exit_code=1, error=f"internal error ({type(exc).__name__}: {exc})")
        log.exception("job %s (study %s): internal error", job, study)


class LateImages(InconsistentSeries):
    """Images of the very series a job scored, arriving after it: that score may have missed them (a
    failure, never ignored as other refusals after a scored job are)."""


def completes_scored_series(by_series: dict[str, set[str]], scored: dict) -> bool:
    """What a later job brings of the very series an earlier job scored:
    - none of its images that the score lacked: False (the job is judged as any later series is);
    - that series whole, with the images the score lacked: True (scored in its turn; what the late
      images' failure asks for);
    - only images the score lacked: raises LateImages. A sender that paused longer than quiet_seconds
      inside the series split it, and the score was made without them: a failure to look into (and a
      setting to change), never a series to pass over quietly."""
    sent = by_series.get(scored.get("series_uid") or "", set())
    if not sent - set(scored.get("instances", ())):
        return False
    had = set(scored.get("series_instances") or ()) or set(scored.get("instances", ())) & sent
    if had and had <= sent:
        return True
    raise LateImages(f"images of series {scored['series_uid']} arrived after job {scored['job']} scored it, "
                     "so that score may lack them: send the study again, and set quiet_seconds above the "
                     "sender's longest pause")


def _sr_of(outcome: dict) -> tuple:
    """The SR header of a job's results, where it is still there to refer to (retention may have gone)."""
    try:
        return (pydicom.dcmread(Path(outcome["output"]) / "sr.dcm", stop_before_pixels=True),)
    except (OSError, InvalidDicomError, KeyError):
        return ()


# What a series can be refused for before any scoring: after a scored NCCT of the same study, such a job
# is recorded as ignored, not failed (a failure record for every CTA would teach staff to ignore them).
INPUT_REFUSALS = (UnreadableInput, NoSeries, WrongModality, TooFewSlices, InconsistentSeries,
                  NotAHead, AbsurdSize)

TRANSFER_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless,
                     JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]
STATUS_STORED, STATUS_OUT_OF_RESOURCES, STATUS_CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
SEND_BACKOFF_S = 2.0
PURGE_EVERY_S = 3600.0
REDELIVER_EVERY_S = 60.0
TLS_CHECK_EVERY_S = 60.0
TLS_SETTLE_S = 10.0           # TLS files changed this recently may be half-renewed (a certificate before its key)
EXPIRY_WARNING_DAYS = 14
# An association silent this long is dropped (pynetdicom's own default, made explicit), which also
# ends the hold its studies had: a hung sender delays a study by at most this, never forever.
IDLE_ASSOCIATION_S = 60.0


class Node:
    def __init__(self, config: NodeConfig, scorer_factory: Callable[[int], Scorer] | None = None):
        """`scorer_factory(threads)`: one scorer per worker, models loaded once (default: the CPU path)."""
        self.config = config
        self.spool = Spool(config.spool)
        self.output = config.output
        self.staging = make_folder(make_folder(self.output) / ".staging")
        # Newest job first: the acute study is the one just sent, and after an outage (the node down, a
        # PACS forwarding what it held) it must not wait for every study queued before it.
        self.jobs: queue.PriorityQueue[tuple[int, str]] = queue.PriorityQueue()
        self.stopping = threading.Event()
        self._factory = scorer_factory or (lambda threads: make_scorer(threads=threads))
        self._threads: list[threading.Thread] = []
        self._servers: dict[str, Any] = {}             # "plain" and/or "tls": the listening SCPs
        self._load_error: Exception | None = None
        # Studies that an open association has stored images of: not complete while it stays open,
        # however long the sender pauses between images.
        self._receiving: dict[object, set[str]] = {}
        self._images_stored: dict[object, int] = {}      # per association, for its closing log line
        # When each arriving study last got an image, on this process's monotonic clock: file times
        # follow the wall clock, which NTP or a person may step by an hour. Stepped back, a stroke
        # study waited that hour; stepped forward, a study between two associations was made a job
        # half sent. A study found in incoming/ without a time (received before a restart, when no
        # sender could finish) gets a full quiet period from when it is first seen.
        self._last_image: dict[str, float] = {}
        self._receiving_lock = threading.Lock()
        # Studies with a job queued or being scored. Their newer images wait in incoming/ until that
        # job is finished: two workers on one study would score a re-sent study twice, or fail the CTA
        # that follows an NCCT whose score is not yet recorded.
        self._in_hand: set[str] = set()
        self._in_hand_lock = threading.Lock()
        self._senders: set[threading.Thread] = set()     # jobs whose results are being sent
        self._senders_lock = threading.Lock()
        self._low_disk_logged = -1e9
        self._client_tls = config.client_tls()
        self._tls_stamp = self._tls_files_stamp()
        self._expiry_said = -1e18

    @property
    def port(self) -> int:
        """The plain listener's port; the TLS one's when the node listens over TLS only."""
        server = self._servers.get("plain") or self._servers.get("tls")
        return server.server_address[1] if server else self.config.port

    @property
    def tls_port(self) -> int | None:
        server = self._servers.get("tls")
        return server.server_address[1] if server else None

    def start(self) -> Node:
        self.spool.claim()                          # before anything is queued: a second node stops here
        for job in self.spool.recover():
            log.info("resuming job %s from the spool", job)
            self._in_hand.add(self.spool.study_of(job))
            self._queue(job)
        per_worker = max(1, available_cores() // self.config.workers)
        ready = threading.Barrier(self.config.workers + 1)
        for i in range(self.config.workers):
            self._threads.append(threading.Thread(target=self._work, args=(per_worker, ready), daemon=True,
                                                  name=f"aspects-worker-{i}"))
        for t in self._threads:
            t.start()
        try:
            ready.wait()                     # models loaded: only now accept studies
        except threading.BrokenBarrierError:
            self.stop()
            raise self._load_error or RuntimeError("a worker could not start") from None
        try:
            self._servers = self._start_scp()
        except BaseException:
            self.stop()                             # the workers, and the spool for the next try
            raise
        self.check_tls()
        if self.config.destinations:              # in the background: a destination may take seconds to time out
            threading.Thread(target=self.check_destinations, daemon=True, name="aspects-destinations").start()
        scheduler = threading.Thread(target=self._schedule, daemon=True, name="aspects-scheduler")
        scheduler.start()
        self._threads.append(scheduler)
        if self.config.destinations and self.config.redeliver_hours:
            outbox = threading.Thread(target=self._outbox, daemon=True, name="aspects-outbox")
            outbox.start()
            self._threads.append(outbox)
        log.info("%s listening on %s:%s (spool %s, output %s)", self.config.ae_title, self.config.host,
                 self.listening, self.config.spool, self.output)
        return self

    def stop(self) -> None:
        """Stop accepting, let each worker finish the study in hand and each sender its sending; queued
        jobs stay in the spool."""
        self.stopping.set()
        for server in self._servers.values():
            server.shutdown()
        for t in self._threads:
            t.join()
        with self._senders_lock:
            senders = list(self._senders)
        for t in senders:
            t.join()
        self.spool.release()

    # ------------------------------------------------------------ receiving

    @property
    def listening(self) -> str:
        """'11112', '2762 over TLS', or '11112 and 2762 over TLS': for the log and the console."""
        ports = [str(self.port)] if "plain" in self._servers else []
        ports += [f"{self.tls_port} over TLS"] if "tls" in self._servers else []
        return " and ".join(ports)

    def _start_scp(self) -> dict[str, Any]:
        """One SCP, plain or TLS; both on two ports with tls_port (a scanner console that cannot do
        TLS beside senders that must)."""
        from pynetdicom import AE, StoragePresentationContexts, evt

        from .listener import start_server

        ae = AE(ae_title=self.config.ae_title)
        ae.network_timeout = IDLE_ASSOCIATION_S
        # Every storage class, not only CT: a scanner sends the whole study (dose report, screenshots,
        # presentation states), and one it cannot place is a failed transfer that it sends again.
        for context in StoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), TRANSFER_SYNTAXES)
        ae.add_supported_context(VERIFICATION)
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_CLOSE, self._on_close)]
        tls = self.config.server_tls()
        servers: dict[str, Any] = {}
        listen: dict[str, tuple[int, ssl.SSLContext | None]] = {}
        if tls is None or self.config.tls_port is not None:
            listen["plain"] = (self.config.port, None)
        if tls is not None:
            listen["tls"] = (self.config.port if self.config.tls_port is None else self.config.tls_port, tls)
        for kind, (port, ssl_context) in listen.items():
            try:
                servers[kind] = start_server(ae, (self.config.host, port), ssl_context, handlers)
            except OSError as exc:
                for server in servers.values():
                    server.shutdown()
                raise UsageError(f"cannot listen on {self.config.host}:{port} ({exc.strerror}): another node or "
                                 f"DICOM service has it, or the address is not this machine's; choose another "
                                 f"port or host") from None
        return servers

    def check_tls(self, now: float | None = None) -> None:
        """Certificates are renewed every year, or every few weeks, and a node that needs a restart for
        each is one day found refusing the scanner. Renewed files are loaded for new associations once
        they have settled; files that do not load keep the previous ones in use, said once. An expiry
        within EXPIRY_WARNING_DAYS is logged daily, and once past it, as an error."""
        now = time.time() if now is None else now
        stamp = self._tls_files_stamp()
        if stamp != self._tls_stamp and now - max(mtime for _, mtime, _ in stamp) >= TLS_SETTLE_S:
            self._tls_stamp = stamp
            self._expiry_said = -1e18                       # the new certificate's expiry is said now
            try:
                server, client = self.config.server_tls(), self.config.client_tls()
            except UsageError as exc:
                log.error("TLS files changed and cannot be loaded; the previous ones stay in use: %s", exc)
            else:
                if "tls" in self._servers:
                    self._servers["tls"].ssl_context = server
                self._client_tls = client
                log.info("TLS files changed: loaded for new associations")
        certificate = self.config.tls_certificate
        if certificate is None or now - self._expiry_said < 86400:
            return
        try:
            expires = certificate_expiry(certificate)
        except UsageError as exc:
            log.error("%s", exc)
            return
        self._expiry_said = now
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
        if expires <= now:
            log.error("the node's TLS certificate %s expired on %s: TLS senders and destinations refuse it; put a "
                      "renewed one in its place (loaded without a restart)", certificate, when)
        elif expires - now < EXPIRY_WARNING_DAYS * 86400:
            log.warning("the node's TLS certificate %s expires on %s, in %.0f day(s); put a renewed one in its "
                        "place (loaded without a restart)", certificate, when, (expires - now) / 86400)

    def check_destinations(self) -> list[Answered]:
        """Once at start: a destination with a wrong port, AE title or certificate, or one that takes no
        SEG, is said in the log when the node is set up, not found at the first stroke."""
        answered = []
        for dest in self.config.destinations:
            try:
                answer = check_destination(self.config.ae_title, dest, self.config.outputs,
                                           self._client_tls if dest.tls else None)
            except (SendFailed, OSError) as exc:
                again = "kept and sent again" if self.config.redeliver_hours else "kept (redeliver_hours is 0)"
                log.warning("destination %s did not answer at start (%s): check its AE title, address, port and "
                            "TLS; results it misses are %s", dest.name, exc, again)
                continue
            answered.append(answer)
            log.info("destination %s answered in %.0f ms", dest.name, answer.milliseconds)
            if answer.not_taken:
                log.warning("destination %s does not take %s: it gets the other results", dest.name,
                            ", ".join(answer.not_taken))
        return answered

    def _tls_files_stamp(self) -> tuple[tuple[str, float, int], ...]:
        """(path, mtime, inode) of each TLS file; a renewal that renames a new file into place changes it."""
        stamp = []
        for path in (self.config.tls_certificate, self.config.tls_key, self.config.tls_ca):
            if path is None:
                continue
            try:
                st = os.stat(path)
                stamp.append((str(path), st.st_mtime, st.st_ino))
            except FileNotFoundError:                       # mid-renewal: it counts as just changed
                stamp.append((str(path), time.time(), 0))
        return tuple(stamp)

    def _on_store(self, event) -> int:
        sop_class = event.request.AffectedSOPClassUID
        if sop_class not in CT_IMAGE_SOPS:
            log.info("%s sent a %s: acknowledged, not kept (only CT images are scored)",
                     event.assoc.requestor.ae_title, getattr(sop_class, "name", sop_class))
            return STATUS_STORED
        free_mb = shutil.disk_usage(self.config.spool).free / 2**20
        if free_mb < self.config.min_free_mb:
            # Refused while there is room left to score and write the studies already received; the
            # sender keeps the image and retries. A full disk would fail them all.
            if time.monotonic() - self._low_disk_logged > 60:      # one line a minute, not one an image
                self._low_disk_logged = time.monotonic()
                log.error("the spool's disk has %.0f MB free, under min_free_mb %.0f: images are refused "
                          "(0xA700) until there is room", free_mb, self.config.min_free_mb)
            return STATUS_OUT_OF_RESOURCES
        try:
            study = check_uid(event.dataset.StudyInstanceUID)      # as the spool names its folder
            with self._receiving_lock:
                self._receiving.setdefault(event.assoc, set()).add(study)
            self.spool.store(study, event.request.AffectedSOPInstanceUID, event.encoded_dataset())
            with self._receiving_lock:
                self._images_stored[event.assoc] = self._images_stored.get(event.assoc, 0) + 1
                self._last_image[study] = time.monotonic()
        except (AttributeError, KeyError, BadIdentifier) as exc:
            log.error("refused an image from %s: %s", event.assoc.requestor.ae_title, exc)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("cannot spool an image (%s): the sender is told to retry", exc)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_STORED

    def _on_close(self, event) -> None:
        """Released, aborted or timed out: the association's studies wait only for their quiet period.
        Who sent what is logged once per association: the first thing to ask when a study is missing."""
        with self._receiving_lock:
            studies = self._receiving.pop(event.assoc, set())
            images = self._images_stored.pop(event.assoc, 0)
        if images:
            requestor = event.assoc.requestor
            log.info("%s at %s stored %d CT image(s) of %d study(ies): %s", requestor.ae_title, requestor.address,
                     images, len(studies), ", ".join(sorted(studies)))

    def _being_received(self) -> set[str]:
        with self._receiving_lock:
            return set().union(*self._receiving.values())

    # ------------------------------------------------------------ jobs

    def _schedule(self) -> None:
        poll = min(1.0, max(0.05, self.config.quiet_seconds / 4))
        # Intervals on the monotonic clock, as the quiet period: a wall clock stepped back would pause them.
        purged, tls_checked = float("-inf"), time.monotonic()   # retention at once; TLS was checked at start
        while not self.stopping.wait(poll):
            try:
                if self.config.retain_days and time.monotonic() - purged > PURGE_EVERY_S:
                    self.purge(time.time() - self.config.retain_days * 86400)
                    purged = time.monotonic()
                if time.monotonic() - tls_checked > TLS_CHECK_EVERY_S:
                    self.check_tls()
                    tls_checked = time.monotonic()
                held = self._being_received()
                for study in self._quiet_studies():
                    with self._in_hand_lock:
                        if study in held or study in self._in_hand:
                            continue
                        job = self.spool.promote(study)
                        if job is None:
                            continue
                        self._in_hand.add(study)
                    log.info("study %s complete: job %s", study, job)
                    self._queue(job)
            except OSError as exc:              # the spool's disk: log it and look again next round
                log.error("scheduler: %s", exc)

    def _quiet_studies(self) -> list[str]:
        """Arriving studies with no new image for quiet_seconds, by this process's monotonic clock. A
        study's time is forgotten once it is a job: images after that start a new arriving study."""
        now, quiet = time.monotonic(), []
        arriving = self.spool.arriving()
        with self._receiving_lock:
            for study in arriving:
                if now - self._last_image.setdefault(study, now) >= self.config.quiet_seconds:
                    quiet.append(study)
            for study in set(self._last_image) - set(arriving):
                del self._last_image[study]
        return quiet

    def _queue(self, job: str) -> None:
        self.jobs.put((-started_ns(job), job))

    def purge(self, before: float) -> None:
        """retain_days: a node on a scanner's console must not fill its disk. Result folders and finished
        jobs older than the limit go; a study still arriving or waiting to be scored is never touched."""
        jobs = self.spool.purge(before)
        results = [p for p in self.output.iterdir() if not p.name.startswith(".") and p.stat().st_mtime < before]
        for folder in results:
            shutil.rmtree(folder, ignore_errors=True)
        if jobs or results:
            log.info("retention: removed %d finished job(s) and %d result folder(s)", len(jobs), len(results))

    def _work(self, threads: int, ready: threading.Barrier) -> None:
        try:
            scorer = self._factory(threads)
        except Exception as exc:  # e.g. ModelError: start() re-raises it
            self._load_error = exc
            ready.abort()
            return
        ready.wait()
        while not self.stopping.is_set():
            try:
                _, job = self.jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                scored = self.score_job(scorer, job)
            except BaseException:
                self._release(job)
                raise
            if scored.to_send is not None and self.config.destinations:
                # Sending waits on the network (a PACS down or hung holds each try 10-30 s): in a thread
                # of its own, so that the next study is scored meanwhile.
                sender = threading.Thread(target=self._deliver_and_release, args=(scored,), daemon=True,
                                          name=f"aspects-send-{job}")
                with self._senders_lock:
                    self._senders.add(sender)
                sender.start()
            else:
                self._deliver_and_release(scored)

    def _deliver_and_release(self, scored: ScoredJob) -> None:
        try:
            self.deliver(scored)
        finally:
            self._release(scored.job)
            with self._senders_lock:
                self._senders.discard(threading.current_thread())

    def _release(self, job: str) -> None:
        """The job is recorded: the next job of its study may be taken."""
        with self._in_hand_lock:
            self._in_hand.discard(self.spool.study_of(job))

    def run_job(self, scorer: Scorer, job: str) -> dict:
        """Score a job, send its results and record its outcome, all in this thread."""
        return self.deliver(self.score_job(scorer, job))

    def score_job(self, scorer: Scorer, job: str) -> ScoredJob:
        """Everything but sending: read, score and place the results (or find them placed before a crash,
        or the same images scored before), or record why not in the outcome."""
        study = self.spool.study_of(job)
        placed = self.output / job
        to_send: Path | None = None
        t0 = time.monotonic()
        outcome: dict = {"job": job, "study_instance_uid": study, "output": str(placed)}
        scored: list[dict] = []
        try:
            outcome.update(self.spool.identity(job), instances=self.spool.instances(job))
            scored = [] if placed.is_dir() else self.spool.scored(job)
            earlier = None if placed.is_dir() else self.spool.scored_with(job, outcome["instances"])
            if earlier is not None:
                outcome.update(aspects=earlier.get("aspects"), output=earlier["output"], same_as=earlier["job"],
                               sent_to=[])
                log.info("job %s: the same %d image(s) as job %s, already scored and sent: not scored again",
                         job, len(outcome["instances"]), earlier["job"])
            else:
                if placed.is_dir():             # placed before a crash: the score is in its report, if any
                    report = placed / "report.json"
                    doc = json.loads(report.read_text()) if report.exists() else {"study": {}}
                    metal = doc.get("metal") or {}
                    outcome.update(aspects=doc.get("aspects"), series_uid=doc["study"].get("series_uid"),
                                   series_criteria=doc["study"].get("series_criteria"),
                                   hyperdense_ml=round(sum(f["volume_ml"] for f in doc.get("hyperdense", ())), 2),
                                   metal_ml=float(metal.get("volume_ml", 0.0)))
                    # runtime.result puts look_first's lines first: one per focus, one for metal
                    look = list(doc.get("warnings", ()))[:len(doc.get("hyperdense", ())) + bool(metal)]
                else:
                    folder = self.spool.jobs / job / "dicom"
                    source: Path | Study = folder
                    if scored and completes_scored_series(self.spool.series_instances(job), scored[0]):
                        outcome["supersedes"] = scored[0]["job"]
                        log.info("job %s: the series job %s scored, sent again with the images it lacked: "
                                 "scored and sent as well", job, scored[0]["job"])
                    elif scored:                # read first: only a better series is scored again
                        source = read_study(folder)
                        refuse_unless_better(source, scored[0])
                        outcome["supersedes"] = scored[0]["job"]
                        log.info("job %s: a better series than job %s scored: scored and sent as well",
                                 job, scored[0]["job"])
                    staging = self.staging / job
                    shutil.rmtree(staging, ignore_errors=True)
                    result = scorer.score(source)
                    replaces = _sr_of(scored[0]) if "supersedes" in outcome else ()
                    write_report(result, staging, self.config.outputs, replaces=replaces)
                    os.rename(staging, placed)
                    fsync_dir(self.output)
                    outcome.update(aspects=result.score.aspects, series_uid=result.metadata.get("series_uid"),
                                   series_criteria=result.metadata.get("series_criteria"),
                                   series_instances=result.metadata.get("identity", {}).get("SOPInstanceUIDs"),
                                   hyperdense_ml=result.hyperdense.volume_ml, metal_ml=result.hyperdense.metal_ml)
                    look = look_first(result.hyperdense)
                log.info("job %s: ASPECTS %s, results in %s", job, outcome["aspects"], placed)
                for line in look:           # a bleed or a clip: the score may not hold (as `aspects watch` says)
                    log.warning("job %s: %s", job, line)
                to_send = placed
            outcome["exit_code"] = 0
        except LateImages as exc:                        # a failure, never ignored as the refusals below
            _failed(outcome, exc)
        except INPUT_REFUSALS as exc:
            if scored and "supersedes" not in outcome:   # a CTA, an MPR, a bone series after the scored NCCT
                outcome.update(exit_code=0, ignored=str(exc), after=scored[0]["job"])
                log.info("job %s: nothing to score after job %s (%s)", job, scored[0]["job"], exc)
            elif isinstance(exc, (WrongModality, NotAHeadScan)):
                # A CTA or perfusion filed as a study of its own (its own order and accession, as many
                # sites do), an MR or a chest CT routed here: nothing this node reads. A failure record
                # for each would be one per stroke, and teach the staff to ignore failure records; and
                # their images, kept to be looked into, would fill the disk under a broad routing rule.
                outcome.update(exit_code=0, ignored=str(exc))
                log.warning("job %s (study %s): nothing this node reads, not scored: %s", job, study, exc)
            else:
                _failed(outcome, exc)
        except Exception as exc:  # a failure record, never silence
            _failed(outcome, exc)
        return ScoredJob(job, outcome, to_send, t0)

    def deliver(self, scored: ScoredJob) -> dict:
        """Send the placed results, if any, and record the job's outcome."""
        job, outcome = scored.job, scored.outcome
        if scored.to_send is not None:
            try:
                self._send(scored.to_send, outcome)
                self._answer_failures(job)
            except Exception as exc:  # a failure record, never silence
                _failed(outcome, exc)
        outcome["seconds"] = round(time.monotonic() - scored.started, 2)
        outcome["finished_at"] = round(time.time(), 3)
        self.spool.finish(job, outcome, self._keep_images(outcome))
        return outcome

    def _keep_images(self, outcome: dict) -> bool:
        """A failure keeps its images to be looked into; a job scored or ignored, only with keep_received
        (a contrast study or an MR kept each time would fill the disk)."""
        return outcome["exit_code"] != 0 or self.config.keep_received

    def _send(self, placed: Path, outcome: dict, destinations=None, attempts: int | None = None) -> None:
        """Every destination gets the DICOM results, retried with back-off, all destinations at once: one
        down or hung (10-30 s a try) does not hold the results back from the others. Classes a
        destination does not take at all (an archive without SEG storage) are recorded in the outcome,
        not retried. Those a destination missed are `not_sent`, and the outbox sends them again."""
        files = sorted(placed.glob("*.dcm"))
        attempts = attempts or self.config.send_attempts
        dests = list(self.config.destinations if destinations is None else destinations)
        outcome.setdefault("sent_to", [])
        missed = []
        with ThreadPoolExecutor(max_workers=max(1, len(dests)), thread_name_prefix="aspects-send") as pool:
            answers = list(pool.map(lambda dest: self._send_to(dest, files, placed.name, attempts), dests))
        for dest, (not_taken, why) in zip(dests, answers):
            if not_taken is None:
                missed.append((dest.name, why))
                continue
            outcome["sent_to"].append(dest.name)
            if not_taken:
                outcome.setdefault("not_taken", {})[dest.name] = not_taken
        outcome["not_sent"] = [name for name, _ in missed]
        if missed:
            again = (f"; sent again every {REDELIVER_EVERY_S:.0f} s for {self.config.redeliver_hours:g} h"
                     if self.config.redeliver_hours else "")
            raise DeliveryFailed(f"results are in {placed} but "
                                 + "; ".join(f"{name} did not take them ({why})" for name, why in missed) + again)

    def _send_to(self, dest: Destination, files: list[Path], job: str, attempts: int) -> tuple[list[str] | None, str]:
        """(classes the destination does not take, "") once it has the results; (None, why) after the
        last try, or after a failed one once the node is stopping."""
        for attempt in range(1, attempts + 1):
            try:
                not_taken = send_files(self.config.ae_title, dest, files, tls=self._client_tls if dest.tls else None)
            except (SendFailed, OSError) as exc:
                log.warning("sending %s to %s, attempt %d: %s", job, dest.ae_title, attempt, exc)
                # The last try, or the node stopping during the back-off: the outbox sends them again.
                if attempt == attempts or self.stopping.wait(SEND_BACKOFF_S * attempt):
                    return None, str(exc)
                continue
            if not_taken:
                log.warning("%s does not take %s: sent the other results", dest.name, ", ".join(not_taken))
            return not_taken, ""
        return None, "no attempt"

    # ------------------------------------------------------------ outbox

    def _outbox(self) -> None:
        while not self.stopping.wait(REDELIVER_EVERY_S):
            try:
                self.redeliver()
            except OSError as exc:
                log.error("outbox: %s", exc)

    def redeliver(self, now: float | None = None) -> None:
        """One pass: each job whose results a destination did not take (a PACS restarting, a network
        down) is sent to those destinations again, one attempt each, until `redeliver_hours` after it
        finished. Delivered everywhere, it moves to done/ and its failure record goes. A destination
        that fails a try is not tried again in the same pass: a hung PACS takes 30 s a try, and a
        pass through ten jobs waiting for it would keep the first of them five minutes from a PACS
        that is back."""
        now = time.time() if now is None else now
        by_name = {d.name: d for d in self.config.destinations}
        down: set[str] = set()
        for outcome in self.spool.undelivered():
            if now - outcome.get("finished_at", now) > self.config.redeliver_hours * 3600:
                self._give_up(outcome, now)
                continue
            job = outcome["job"]
            newer = [o["job"] for o in self.spool.scored(job) if started_ns(o["job"]) > started_ns(job)]
            if newer:                           # sent again by the scanner, scored and delivered since
                outcome.update(exit_code=0, superseded_by=newer[0])
                outcome.pop("error", None)
                self.spool.redelivered(outcome, self.config.keep_received)
                log.info("job %s: not sent again, job %s delivered this study since", job, newer[0])
                continue
            waiting = [name for name in outcome["not_sent"] if name in down]
            missing = [by_name[name] for name in outcome["not_sent"] if name in by_name and name not in down]
            if waiting and not missing:
                continue                        # its record stands until the next pass
            try:
                self._send(Path(outcome["output"]), outcome, missing, attempts=1)
            except DeliveryFailed as exc:
                down.update(outcome["not_sent"])
                outcome.update(not_sent=outcome["not_sent"] + waiting, error=str(exc),
                               redelivery_attempts=outcome.get("redelivery_attempts", 0) + 1)
                self.spool.record_failure(outcome)
                continue
            if waiting:                         # delivered to the others
                outcome.update(not_sent=waiting, error=f"results are in {outcome['output']} but "
                                                       f"{', '.join(waiting)} did not take them yet")
                self.spool.record_failure(outcome)
                continue
            outcome.update(exit_code=0, delivered_late=round(now, 3))
            outcome.pop("error", None)
            self.spool.redelivered(outcome, self.config.keep_received)
            log.info("job %s: results delivered to %s on a later try", job, ", ".join(outcome["sent_to"]))
            self._answer_failures(job)

    def _answer_failures(self, job: str) -> None:
        """The job's study is scored and its results delivered: its earlier jobs' failures are answered."""
        for earlier in self.spool.resolve(job, self.config.keep_received):
            log.info("job %s: answers the failure of job %s (exit %s)", job, earlier["job"], earlier.get("exit_code"))

    def _give_up(self, outcome: dict, now: float) -> None:
        """Past the window the results stay in their folder for someone to send by hand: said once,
        with the command, in the log and the failure record; never dropped in silence."""
        tls = {d.name for d in self.config.destinations if d.tls}
        command = " ".join(["aspects send", outcome["output"],
                            *(f"--to {name}{'/tls' if name in tls else ''}" for name in outcome["not_sent"])])
        outcome.update(redelivery_ended=round(now, 3),
                       error=f"{outcome.get('error', 'results not delivered')}; not sent again after "
                             f"{self.config.redeliver_hours:g} h: send {outcome['output']} to "
                             f"{', '.join(outcome['not_sent'])} by hand ({command})")
        self.spool.record_failure(outcome)
        log.error("job %s: results not delivered to %s in %g h; send them by hand: %s", outcome["job"],
                  ", ".join(outcome["not_sent"]), self.config.redeliver_hours, command)
