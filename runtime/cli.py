"""`aspects` command line. Bad input ends in one `error:` line and a distinct exit code."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .engine import CPU_ENGINES
from .errors import AspectsError, DeviceUnavailable, UsageError
from .logs import configure_logging, quiet_native_stderr
from .modelcard import DEFAULT_MODEL_DIR, DensityRuleCard, load_model_set
from .score import BORDERLINE_HU, BORDERLINE_LOGIT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aspects", description="ASPECTS from a non-contrast head CT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score one study and write report.json + key-slice PNGs")
    p.add_argument("path", nargs="*", help="DICOM study folder or .zip, enhanced CT file, NIfTI, MHA or NRRD; "
                                           "several for a batch (default: the bundled synthetic demo study)")
    p.add_argument("--out", required=True, type=_path,
                   help="output folder (created; existing reports are never overwritten); a batch writes one "
                        "sub-folder per study and batch.json")
    p.add_argument("--outputs", default=None, metavar="LIST",
                   help="comma list of json, png, seg, sr, sc (default: all for a DICOM input; json and png for "
                        "a volume file, whose DICOM outputs get new UIDs and reference a CT series made from it)")
    p.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu,gpu:N}",
                   help="cpu (default), gpu (the first NVIDIA GPU) or gpu:N")
    p.add_argument("--models", type=_path, default=DEFAULT_MODEL_DIR, help="folder of ONNX models and cards")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="CPU cores for every stage (default: $ASPECTS_THREADS, else the cores this process may use)")
    p.add_argument("--engine", choices=CPU_ENGINES, default=None,
                   help="CPU inference engine (default: $ASPECTS_ENGINE, else onnxruntime; openvino needs the "
                        "openvino extra)")

    n = sub.add_parser("serve", help="a DICOM node: receive CT studies (C-STORE), score each once it is complete, "
                                     "send SEG, SR and key images on")
    n.add_argument("--config", type=_path, default=None, help="TOML file with the settings below (flags win)")
    n.add_argument("--spool", type=_path, default=None, help="folder for received images, jobs and outcomes")
    n.add_argument("--output", type=_path, default=None, help="result folders, one per study (default: SPOOL/results)")
    n.add_argument("--ae-title", default=None, help="this node's AE title (default ASPECTS)")
    n.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0)")
    n.add_argument("--port", type=int, default=None, help="TCP port (default 11112)")
    n.add_argument("--allow", action="append", default=None, metavar="AE",
                   help="accept associations only from this calling AE title (repeatable; default: any)")
    n.add_argument("--send", action="append", default=None, metavar="AE@HOST:PORT",
                   help="send the DICOM results here by C-STORE (repeatable; AE@HOST:PORT/tls: over TLS; "
                        "IPv6: AE@[ADDRESS]:PORT)")
    n.add_argument("--tls-certificate", type=_path, default=None, metavar="PEM",
                   help="this node's certificate chain: with --tls-key, it listens over TLS only")
    n.add_argument("--tls-key", type=_path, default=None, metavar="PEM", help="the certificate's private key")
    n.add_argument("--tls-port", type=int, default=None,
                   help="listen over TLS on this port and plain on --port (default: TLS only, on --port)")
    n.add_argument("--tls-ca", type=_path, default=None, metavar="PEM",
                   help="CA bundle: senders must present a certificate it signed, and TLS destinations are "
                        "checked against it (default for destinations: the system's CAs)")
    n.add_argument("--quiet", type=_seconds, default=None, dest="quiet_seconds",
                   help="seconds without a new image before a study counts as complete (default 10)")
    n.add_argument("--workers", type=at_least(1), default=None, help="studies scored at once (default 1)")
    n.add_argument("--outputs", default=None, metavar="LIST",
                   help="comma list of json, png, seg, sr, sc (default: all)")
    n.add_argument("--retain-days", type=number_from(0), default=None, metavar="DAYS",
                   help="delete result folders and finished jobs older than this (default 0: keep all)")
    n.add_argument("--min-free-mb", type=number_from(0), default=None, metavar="MB",
                   help="refuse images (0xA700, the sender retries) while the spool's disk has less free "
                        "(default 2048)")
    n.add_argument("--redeliver-hours", type=number_from(0), default=None, metavar="HOURS",
                   help="re-send results a destination did not take, every minute, for this long (default 24; "
                        "0: never)")

    s = sub.add_parser("send", help="send a results folder's DICOM objects (SEG, SR, key images) by C-STORE: "
                                    "what the node's outbox leaves to a person once it stops")
    s.add_argument("folder", type=_path, help="a results folder (one study's)")
    _sending_flags(s)

    ec = sub.add_parser("echo", help="check the destinations before a stroke does: C-ECHO in an association "
                                     "that proposes the result classes, and which of them each takes")
    _sending_flags(ec)

    st = sub.add_parser("status", help="what a node's spool holds: studies arriving, jobs waiting, failures and "
                                       "their redelivery, recent scores (read only; the node may be running)")
    st.add_argument("--spool", type=_path, default=None, help="the node's spool folder")
    st.add_argument("--config", type=_path, default=None, help="the node's TOML file (its spool, min_free_mb, "
                                                               "redeliver_hours)")
    st.add_argument("--json", action="store_true", help="one JSON document, for monitoring")

    w = sub.add_parser("watch", help="score every study dropped into a folder, once each, newest first")
    w.add_argument("inbox", type=_path, help="folder to watch (only read, never changed)")
    w.add_argument("--out", required=True, type=_path, help="one report folder per study, and watch.jsonl")
    w.add_argument("--quiet", type=_seconds, default=10.0, help="seconds an entry must be unchanged (default 10)")
    w.add_argument("--once", action="store_true", help="handle what is there now, then exit")
    w.add_argument("--outputs", default=None, metavar="LIST")
    w.add_argument("--threads", type=at_least(1), default=None)
    w.add_argument("--engine", choices=CPU_ENGINES, default=None)

    m = sub.add_parser("models", help="list the models: role, version, file hash and what each was trained on")
    m.add_argument("--models", type=_path, default=DEFAULT_MODEL_DIR)
    m.add_argument("--json", action="store_true", help="one JSON line per model with its whole card")

    e = sub.add_parser("engines", help="TensorRT engines for this GPU: build them, or check them against ONNX")
    e.add_argument("action", choices=("build", "parity"),
                   help="build: (re)build every engine into the cache; parity: compare each engine with "
                        "ONNX Runtime fp32 and the GPU score with the CPU score on the bundled study")
    e.add_argument("--models", type=_path, default=DEFAULT_MODEL_DIR)
    e.add_argument("--rebuild", action="store_true", help="build even when a valid cached engine exists")
    e.add_argument("--engine", choices=("tensorrt", "openvino"), default="tensorrt",
                   help="parity: check TensorRT on the GPU (default) or the OpenVINO CPU engine")

    parser.add_argument("--log-level", default="ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log to stderr from this level (default ERROR: stderr carries only the error line)")
    parser.add_argument("--log-json", type=_path, default=None,
                        help="also log as JSON lines here (this program's records from INFO, libraries' from "
                             "WARNING; all at --log-level DEBUG); reopened when logrotate moves it")

    args = parser.parse_args(argv)
    _TERM_RECEIVED.clear()
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        configure_logging(args.log_level, args.log_json)
        with quiet_native_stderr():
            if args.command == "score":
                return _score(args)
            if args.command == "engines":
                return _engines(args)
            if args.command == "serve":
                return _serve(args)
            if args.command == "watch":
                return _watch(args)
            if args.command == "send":
                return _send(args)
            if args.command == "status":
                return _status(args)
            if args.command == "echo":
                return _echo(args)
            return _models(args)
    except AspectsError as exc:
        message = str(exc)
        if isinstance(exc, DeviceUnavailable):
            message += " (the CPU path needs none of this: --device cpu)"
        print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:            # `aspects models | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")
        return 0
    except Terminated:
        print("error: terminated; nothing was written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # last line of defence: a one-line message, never a traceback
        if _TERM_RECEIVED.is_set():
            # The signal landed inside a C extension's import, which reports it as its own failure
            # (ImportError: initialization failed): still a termination, not an internal error.
            print("error: terminated; nothing was written", file=sys.stderr)
            return 143
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _sending_flags(p: argparse.ArgumentParser) -> None:
    """Where results go and as whom: `aspects send` and `aspects echo` alike."""
    p.add_argument("--to", action="append", default=None, metavar="AE@HOST:PORT",
                   help="destination (repeatable; AE@HOST:PORT/tls: over TLS; default: the config's destinations)")
    p.add_argument("--config", type=_path, default=None,
                   help="the node's TOML file: its AE title, destinations, outputs and TLS files")
    p.add_argument("--ae-title", default=None, help="calling AE title (default: the config's, else ASPECTS)")
    p.add_argument("--tls-certificate", type=_path, default=None, metavar="PEM",
                   help="this node's certificate, presented to /tls destinations that ask for one")
    p.add_argument("--tls-key", type=_path, default=None, metavar="PEM", help="the certificate's private key")
    p.add_argument("--tls-ca", type=_path, default=None, metavar="PEM",
                   help="the only CA a /tls destination's certificate may be signed by (default: the system's)")


def _path(text: str) -> Path:
    """An empty path (an unset shell variable, say) would mean the working folder: refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder or file")
    return Path(text)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `low` (threads, workers, study counts)."""
    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"{n}: at least {low}")
        return n
    return count


def number_from(low: float, *, inclusive: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite number >= `low` (> `low` when not inclusive): rates, HU offsets."""
    def number(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (x >= low if inclusive else x > low) or x == float("inf"):
            raise argparse.ArgumentTypeError(f"{text}: {'at least' if inclusive else 'more than'} {low:g}")
        return x
    return number


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= s < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: 0 or more seconds")
    return s


def _device(text: str) -> str:
    if text in ("cpu", "gpu") or (text.startswith("gpu:") and text[4:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use cpu, gpu or gpu:N")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so every `with` block cleans up on the way out."""


_TERM_RECEIVED = threading.Event()


def _terminated(signum, frame):
    _TERM_RECEIVED.set()
    raise Terminated()


def _score(args) -> int:
    from .pipeline import make_scorer
    from .shipped import DEFAULT_STUDY

    if any(not p.strip() for p in args.path):
        raise UsageError("a study path is empty; give a DICOM folder or a volume file, or no path for the demo")
    paths = [Path(p) for p in args.path] or [DEFAULT_STUDY]
    if not args.path:
        print(f"no study given: scoring the bundled synthetic demo study {DEFAULT_STUDY.name}")
    outputs = _outputs_arg(args.outputs)
    if len(paths) == 1:
        return _score_one(paths[0], args.out, outputs, lambda: make_scorer(args.models, backend=args.device,
                                                                           threads=args.threads, engine=args.engine))
    return _score_batch(paths, args, outputs)


def _score_one(path: Path, out: Path, outputs, scorer_factory) -> int:
    from .report import OUTPUTS, output_folder, write_report

    with output_folder(out, outputs or OUTPUTS) as folder:      # claimed and checked before any compute
        scorer = scorer_factory()
        scorer.on_stage = _progress(path) if sys.stdout.isatty() else None
        try:
            result = scorer.score(path)
        finally:
            if scorer.on_stage is not None:
                print("\r\033[K", end="", flush=True)               # clear the progress line
            scorer.on_stage = None
        written = write_report(result, folder, outputs)
    _print_result(result, written)
    return 0


def _progress(path: Path):
    """One line on a terminal, rewritten as each stage starts: `study.nii.gz: [3/7] preprocess`."""
    from .result import STAGES
    stages = [s for s in STAGES if s != "total"]

    def show(stage: str) -> None:
        print(f"\r\033[K{path.name}: [{stages.index(stage) + 1}/{len(stages)}] {stage}", end="", flush=True)
    return show


def _score_batch(paths: list[Path], args, outputs) -> int:
    """Several studies, models loaded once; one sub-folder each, and batch.json: every study's outcome,
    failures included (input, exit code, message). The exit code is the first failure's, else 0."""
    from .output import OutputFolder
    from .pipeline import make_scorer

    names = _batch_names(paths)
    with OutputFolder(args.out, ("batch.json",)) as summary:
        scorer = make_scorer(args.models, backend=args.device, threads=args.threads, engine=args.engine)
        records: list[dict] = []
        first_failure = 0
        for path, name in zip(paths, names):
            print(f"[{len(records) + 1}/{len(paths)}] {path}")
            try:
                _score_one(path, args.out / name, outputs, lambda: scorer)
                records.append({"input": str(path), "output": name, "exit_code": 0, "error": None})
            except AspectsError as exc:
                print(f"error: {exc}", file=sys.stderr)
                records.append({"input": str(path), "output": name, "exit_code": exc.exit_code, "error": str(exc)})
                first_failure = first_failure or exc.exit_code
        summary.write("batch.json", (json.dumps({"studies": records}, indent=2) + "\n").encode())
        summary.commit()
    return first_failure


def _batch_names(paths: list[Path]) -> list[str]:
    """A sub-folder name per input: its own name without volume suffixes, numbered where two collide."""
    from .output import study_stem

    names: list[str] = []
    for p in paths:
        stem = study_stem(p)
        name = stem
        while name in names:
            name = f"{stem}_{len(names) + 1}"
        names.append(name)
    return names


def _print_result(result, paths) -> None:
    s = result.score
    side = f" ({s.symptomatic_side} hemisphere)" if s.symptomatic_side else ""
    print(f"ASPECTS {s.aspects}{side}: {'>6' if s.above_cut else '<=6'}; "
          f"affected: {', '.join(s.affected) or 'none'}")
    near = [c for c in s.calls if c.borderline]
    if near:
        names = ", ".join(f"{c.side} {c.region} ({'called' if c.affected else 'not called'})" for c in near)
        print(f"borderline (the call flips within {BORDERLINE_HU} HU or {BORDERLINE_LOGIT} in the DA-Net's "
              f"logit): {names}")
    if near or s.not_assessed:
        verdict = "holds" if s.dichotomy_firm else "could change"
        which = " and ".join(w for w, some in (("borderline", near), ("unassessed", s.not_assessed)) if some)
        print(f"  as the {which} regions fall, ASPECTS {s.lowest}-{s.highest}: the > 6 / <= 6 decision {verdict}")
    for w in result.warnings:
        print(f"warning: {w}")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings)
    print(f"timings: {stages}")
    print(f"report: {paths.get('report') or ', '.join(str(p) for p in paths.values())}")


def _serve(args) -> int:
    from .node.config import load_config
    from .node.server import Node

    outputs = _outputs_arg(args.outputs)
    config = load_config(args.config, spool=args.spool, output=args.output, ae_title=args.ae_title, host=args.host,
                         port=args.port, allowed_calling_aes=args.allow, destinations=args.send,
                         quiet_seconds=args.quiet_seconds, workers=args.workers, outputs=outputs,
                         retain_days=args.retain_days, redeliver_hours=args.redeliver_hours,
                         min_free_mb=args.min_free_mb, tls_certificate=args.tls_certificate,
                         tls_key=args.tls_key, tls_ca=args.tls_ca, tls_port=args.tls_port)
    node = Node(config).start()
    print(f"{config.ae_title} listening on {config.host}:{node.listening}; spool {config.spool}, "
          f"results {config.output}", flush=True)
    try:
        node.stopping.wait()
    except (Terminated, KeyboardInterrupt):
        print("stopping: studies in progress finish, queued ones stay in the spool", flush=True)
    finally:
        node.stop()
    return 0


def _sending_config(args):
    from .node.config import load_config

    flags = dict(ae_title=args.ae_title, destinations=args.to, tls_certificate=args.tls_certificate,
                 tls_key=args.tls_key, tls_ca=args.tls_ca)
    # Only the sending settings are used: without a node's config there is no spool, and none is touched.
    config = load_config(args.config, **flags) if args.config else load_config(None, spool=Path("."), **flags)
    if not config.destinations:
        raise UsageError(f"{args.command}: no destination (--to AE@HOST:PORT, or destinations in --config)")
    return config


def _send(args) -> int:
    from .node.send import send_results

    config = _sending_config(args)
    for name, not_taken in send_results(args.folder, config.ae_title, config.destinations,
                                        config.client_tls()).items():
        print(f"sent to {name}" + (f" (it does not take {', '.join(not_taken)})" if not_taken else ""))
    return 0


def _status(args) -> int:
    from dataclasses import asdict

    from .node.config import load_config
    from .node.status import format_status, spool_status

    config = load_config(args.config, tls=False, spool=args.spool)
    status = spool_status(config)
    if args.json:
        print(json.dumps(asdict(status), indent=2))
    else:
        print("\n".join(format_status(status, config.min_free_mb)))
    return 0


def _echo(args) -> int:
    from .errors import DeliveryFailed
    from .node.send import SendFailed, check_destination

    config = _sending_config(args)
    missed = []
    for dest in config.destinations:
        try:
            answer = check_destination(config.ae_title, dest, config.outputs,
                                       config.client_tls() if dest.tls else None)
        except (SendFailed, OSError) as exc:
            missed.append(str(exc))
            continue
        refused = f"; it does not take {', '.join(answer.not_taken)}" if answer.not_taken else ""
        print(f"{answer.name}: answered in {answer.milliseconds:.0f} ms{refused}")
    if missed:
        raise DeliveryFailed("; ".join(missed))
    return 0


def _watch(args) -> int:
    from .pipeline import make_scorer
    from .watch import watch

    if not args.inbox.is_dir():
        raise UsageError(f"{args.inbox}: not a folder to watch")
    if args.out.resolve().is_relative_to(args.inbox.resolve()):
        raise UsageError(f"{args.out} is inside the watched folder {args.inbox}: the inbox is only read, and its "
                         f"watcher would take its own reports for studies")
    outputs = _outputs_arg(args.outputs)
    scorer = make_scorer(threads=args.threads, engine=args.engine)
    print(f"watching {args.inbox} (quiet {args.quiet:g} s); reports in {args.out}", flush=True)
    watch(args.inbox, args.out, scorer, args.quiet, outputs, once=args.once)
    return 0


def _outputs_arg(text: str | None) -> tuple[str, ...] | None:
    from .report import check_outputs
    return check_outputs(tuple(o.strip() for o in text.split(","))) if text else None


def _engines(args) -> int:
    from .gpu.device import CudaDevice
    from .gpu.engine_cache import engine_key, get_plan, plan_path

    if args.action == "parity":
        from .parity import main as parity_main
        return parity_main(args.models, args.engine)
    device = CudaDevice()
    for card in load_model_set(args.models).cards:
        get_plan(card, device.name, device.compute_capability, args.models, rebuild=args.rebuild)
        key = engine_key(card, device.name, device.compute_capability)
        print(f"{card.role}: {plan_path(card, key, args.models)}")
    return 0


def _models(args) -> int:
    """A table a person can read (what runs, which file, trained on what); --json for programs."""
    cards = load_model_set(args.models).all_cards
    if args.json:
        for card in cards:
            print(json.dumps({**card.raw, "card_sha256": card.card_sha256}))
        return 0
    print(f"models in {args.models}")
    for card in cards:
        file = "no file: the card is the model" if isinstance(card, DensityRuleCard) else \
            f"{card.onnx.name} (sha256 {card.sha256[:12]})"
        print(f"\n{card.role}: {card.name} {card.version}, {file}")
        provenance = str(card.raw.get("provenance", "")).strip()
        if provenance:
            print(f"  {provenance.split('. ')[0].rstrip('.')}.")
    print("\nwhole cards, with their metrics: aspects models --json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
