"""CPU benchmark: this checkout against a baseline commit, in one run, on one machine.

    python benchmarks/cpu_benchmark.py --baseline cdc936b       # writes benchmarks/cpu_results.json
                                                                # and the table in benchmarks/RESULTS.md

For the bundled study (512 x 512 x 32, 5 mm) and a 512 x 512 x 216 thin-slice study
made from it (as one .nii.gz, and as 216 DICOM files), and for each CPU engine (ONNX
Runtime; OpenVINO where installed): the median wall clock per stage and file to score,
models loaded and warmed up, and the peak resident memory of the process. Each (code,
study, engine) runs in its own process, so memory and caches do not leak between them.
The baseline runs from a git worktree of the given commit with the same Python and
packages; absolute times drift between sessions on shared machines, so the targets are
ratios to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "benchmarks" / "cpu_results.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
TABLE_START, TABLE_END = "<!-- cpu-benchmark:start -->", "<!-- cpu-benchmark:end -->"


def worker(study: str, engine: str, repeats: int) -> dict:
    """Runs in a child process whose `runtime` package is the code under test."""
    import resource
    import statistics

    import runtime
    from runtime.cpu import CpuScorer

    scorer = CpuScorer() if engine == "onnxruntime" else CpuScorer(engine=engine)
    scorer.score(study)                                   # warm-up: first-call allocations, lazy imports
    runs = [dict(scorer.score(study).timings) for _ in range(repeats)]
    stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"runtime": str(Path(runtime.__file__).parent), "stages_s": stages,
            "total_s": stages["total"], "runs_total_s": [r["total"] for r in runs],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(tree: Path, study: Path, engine: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (f"import json, sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT / 'benchmarks')!r});"
            f"from cpu_benchmark import worker; print(json.dumps(worker({str(study)!r}, {engine!r}, {repeats})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["runtime"]).resolve() != (tree / "runtime").resolve():
        raise RuntimeError(f"the child imported {result['runtime']}, not {tree / 'runtime'}")
    return result


def engines_here() -> list[str]:
    try:
        import openvino  # noqa: F401
        return ["onnxruntime", "openvino"]
    except ImportError:
        return ["onnxruntime"]


def machine() -> dict:
    from runtime.threads import available_cores
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores_available": available_cores(), "python": platform.python_version(),
            "platform": platform.platform()}


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))          # the tests' DICOM writer makes the DICOM study
    from studies import make_thin_dicom, make_thin_study

    from runtime.shipped import DEFAULT_STUDY

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="git commit to compare with (e.g. the current main)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS_JSON)
    p.add_argument("--no-table", action="store_true", help="do not rewrite the table in benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.baseline], cwd=ROOT,
                       capture_output=True, check=True)
        try:
            thin = make_thin_study(Path(tmp) / "thin.nii.gz")
            studies = {"bundled_512x512x32": DEFAULT_STUDY, "thin_512x512x216": thin,
                       "thin_dicom_512x512x216": make_thin_dicom(thin, Path(tmp) / "thin_dicom")}
            rows = []
            for name, path in studies.items():
                for code, tree, engines in (("baseline", base_tree, ["onnxruntime"]), ("this", ROOT, engines_here())):
                    for engine in engines:
                        print(f"{name}: {code} {engine} ...", flush=True)
                        rows.append({"study": name, "code": code, "engine": engine,
                                     **run_child(tree, path, engine, args.repeats)})
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    for row in rows:
        base = next(r for r in rows if r["study"] == row["study"] and r["code"] == "baseline")
        row["ratio_to_baseline"] = row["total_s"] / base["total_s"]
        before = _previous_row(previous, row)
        row["ratio_to_previous_run"] = row["total_s"] / before["total_s"] if before else None
    doc = {"date": datetime.date.today().isoformat(), "machine": machine(), "baseline": args.baseline,
           "this": commit + ("+uncommitted" if dirty else ""), "repeats": args.repeats, "rows": rows,
           "previous_run": previous and {"date": previous["date"], "this": previous["this"]}}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    table = markdown(doc)
    print(table)
    if not args.no_table:
        text = RESULTS_MD.read_text()
        a, b = text.index(TABLE_START) + len(TABLE_START), text.index(TABLE_END)
        RESULTS_MD.write_text(text[:a] + "\n" + table + "\n" + text[b:])
    return 0


def _previous_row(previous: dict | None, row: dict) -> dict | None:
    if not previous:
        return None
    return next((r for r in previous["rows"] if (r["study"], r["code"], r["engine"]) ==
                 (row["study"], "this", row["engine"])), None)


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"Run {doc['date']} on {m['cpu']}, {m['cores_available']} cores available, Python {m['python']}; "
             f"this checkout {doc['this']} against baseline {doc['baseline']}, medians of {doc['repeats']} runs "
             f"after a warm-up (`benchmarks/cpu_results.json`).", ""]
    stages = list(doc["rows"][0]["stages_s"])
    lines.append("| study | code | engine | " + " | ".join(stages) + " | peak MB | x baseline | x previous run |")
    lines.append("|" + " --- |" * (len(stages) + 6))
    for r in doc["rows"]:
        prev = f"{r['ratio_to_previous_run']:.2f}" if r["ratio_to_previous_run"] else "-"
        cells = [f"{r['stages_s'][s]:.2f}" for s in stages]
        cells[-1] = f"**{cells[-1]}**"
        lines.append(f"| {r['study']} | {r['code']} | {r['engine']} | " + " | ".join(cells) +
                     f" | {r['peak_rss_mb']:.0f} | {r['ratio_to_baseline']:.2f} | {prev} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
