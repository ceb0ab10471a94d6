"""`aspects` command line. Bad input ends in one `error:` line and a distinct exit code."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .errors import AspectsError, DeviceUnavailable, UsageError
from .logs import configure_logging, quiet_native_stderr
from .modelcard import DEFAULT_MODEL_DIR, load_model_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aspects", description="ASPECTS from a non-contrast head CT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="score one study and write report.json + key-slice PNGs")
    p.add_argument("path", nargs="?", help="DICOM series folder, NIfTI, MHA or NRRD "
                                           "(default: the bundled synthetic demo study)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (created; existing reports are never overwritten)")
    p.add_argument("--outputs", default=None, metavar="LIST",
                   help="comma list of json, png, seg, sr, sc (default: all that the input allows; DICOM "
                        "SEG, SR and secondary captures need a DICOM input)")
    p.add_argument("--device", type=_device, default="cpu", metavar="{cpu,gpu,gpu:N}",
                   help="cpu (default), gpu (the first NVIDIA GPU) or gpu:N")
    p.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR, help="folder of ONNX models and cards")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores for every stage (default: $ASPECTS_THREADS, else the cores this process may use)")

    m = sub.add_parser("models", help="list the models and their cards")
    m.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)

    e = sub.add_parser("engines", help="TensorRT engines for this GPU: build them, or check them against ONNX")
    e.add_argument("action", choices=("build", "parity"),
                   help="build: (re)build every engine into the cache; parity: compare each engine with "
                        "ONNX Runtime fp32 and the GPU score with the CPU score on the bundled study")
    e.add_argument("--models", type=Path, default=DEFAULT_MODEL_DIR)
    e.add_argument("--rebuild", action="store_true", help="build even when a valid cached engine exists")

    parser.add_argument("--log-level", default="ERROR", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log to stderr from this level (default ERROR: stderr carries only the error line)")
    parser.add_argument("--log-json", type=Path, default=None, help="also log every record as JSON lines here")

    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with quiet_native_stderr():
            if args.command == "score":
                return _score(args)
            if args.command == "engines":
                return _engines(args)
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
        if args.debug:
            raise
        print(f"error: internal error ({type(exc).__name__}: {exc}); rerun with --debug and report it",
              file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device(text: str) -> str:
    if text in ("cpu", "gpu") or (text.startswith("gpu:") and text[4:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: use cpu, gpu or gpu:N")


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so every `with` block cleans up on the way out."""


def _terminated(signum, frame):
    raise Terminated()


def _score(args) -> int:
    from .pipeline import make_scorer
    from .report import OUTPUTS, check_outputs, output_folder, write_report
    from .shipped import DEFAULT_STUDY

    if args.path is not None and not args.path.strip():
        raise UsageError("the study path is empty; give a DICOM folder or a volume file, or no path for the demo")
    path = DEFAULT_STUDY if args.path is None else Path(args.path)
    if args.path is None:
        print(f"no study given: scoring the bundled synthetic demo study {path.name}")
    outputs = check_outputs(tuple(o.strip() for o in args.outputs.split(","))) if args.outputs else None
    with output_folder(args.out, outputs or OUTPUTS) as folder:      # claimed and checked before any compute
        result = make_scorer(args.models, backend=args.device, threads=args.threads).score(path)
        paths = write_report(result, folder, outputs)
    s = result.score
    side = f" ({s.symptomatic_side} hemisphere)" if s.symptomatic_side else ""
    print(f"ASPECTS {s.aspects}{side}: {'>6' if s.above_cut else '<=6'}; "
          f"affected: {', '.join(s.affected) or 'none'}")
    for w in result.warnings:
        print(f"warning: {w}")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings)
    print(f"timings: {stages}")
    print(f"report: {paths.get('report') or ', '.join(str(p) for p in paths.values())}")
    return 0


def _engines(args) -> int:
    from .gpu.device import CudaDevice
    from .gpu.engine_cache import engine_key, get_plan, plan_path

    if args.action == "parity":
        from .parity import main as parity_main
        return parity_main(args.models)
    device = CudaDevice()
    for card in load_model_set(args.models).cards:
        get_plan(card, device.name, device.compute_capability, args.models, rebuild=args.rebuild)
        key = engine_key(card, device.name, device.compute_capability)
        print(f"{card.role}: {plan_path(card, key, args.models)}")
    return 0


def _models(args) -> int:
    models = load_model_set(args.models)
    for card in models.all_cards:
        print(json.dumps({"role": card.role, "name": card.name, "version": card.version,
                          "file": card.onnx.name if hasattr(card, "onnx") else None,
                          "sha256": getattr(card, "sha256", None), "metrics": card.raw.get("metrics", {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
