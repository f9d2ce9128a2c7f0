"""Run Skyward's benchmarks and write ``docs/performance.md``.

    python bench/run.py                 # everything, full size -> docs/performance.md
    python bench/run.py --quick         # same code paths, < 2 min -> bench/results/
    python bench/run.py --only latency,bulk --out /tmp/perf.md

Run it with ``bench/.venv/bin/python`` (``make bench-env`` builds that environment: Ray,
Dask, joblib, moto and py-spy next to an editable Skyward). It needs root, like the test
suite, for the SSH test hosts (``tests/ssh_hosts.py``); set ``SKYWARD_BENCH_SSH_HOSTS`` to
a JSON file naming hosts that already run to use those instead (see bench/hosts.py).
Raw results go to ``bench/results/`` (not committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/run.py` puts bench/, not the root, first
    sys.path.insert(0, str(ROOT))

from bench import benchmarks  # noqa: E402
from bench.common import RESULTS, machine_info, versions  # noqa: E402
from bench.report import SECTIONS, render, target_rows  # noqa: E402

NEEDS_HOSTS = {"latency", "bulk", "scale"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated benchmarks to run (of: {', '.join(benchmarks.BENCHMARKS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: docs/performance.md for a full run of "
        "everything, bench/results/performance-<mode>.md otherwise)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit non-zero when any tool could not run (CI: never skip a tool silently)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    names = [n.strip() for n in options.only.split(",") if n.strip()] or list(benchmarks.BENCHMARKS)
    unknown = [n for n in names if n not in benchmarks.BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    settings = benchmarks.Settings.make(options.quick)
    mode = "quick" if options.quick else "full"
    partial = names != list(benchmarks.BENCHMARKS)
    out = options.out
    if out is None:
        if options.quick or partial:
            out = RESULTS / f"performance-{mode}.md"
        else:
            out = ROOT / "docs" / "performance.md"
    logs = RESULTS / "logs" / mode
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    hosts = None
    state = Path(tempfile.mkdtemp(prefix="skyward-bench-"))
    try:
        host_list = []
        if NEEDS_HOSTS & set(names):
            from bench.hosts import Hosts

            wanted = settings.hosts_needed if "scale" in names else 1
            print(f"[bench] starting {wanted} SSH test host(s)", flush=True)
            hosts = Hosts(wanted, state)
            host_list = hosts.hosts
        for name in names:
            print(f"[bench] {SECTIONS[name]} ...", flush=True)
            began = time.monotonic()
            try:
                result = benchmarks.BENCHMARKS[name](settings, list(host_list), logs)
            except Exception:
                result = {"error": traceback.format_exc()}
            result["seconds"] = time.monotonic() - began
            results[name] = result
            failed = result.get("failed") or {}
            status = "failed" if "error" in result else "done"
            stages = result.get("stages") or {}
            detail = ", ".join(f"{k} {v:.0f}s" for k, v in stages.items())
            print(
                f"[bench]   {status} in {result['seconds']:.0f}s"
                + (f" ({detail})" if detail else "")
                + (f"; tools that did not run: {', '.join(failed)}" if failed else ""),
                flush=True,
            )
    finally:
        if hosts is not None:
            hosts.stop()
        shutil.rmtree(state, ignore_errors=True)
    data = {
        "mode": mode,
        "machine": machine_info(),
        "versions": versions(),
        "settings": benchmarks.settings_dict(settings),
        "benchmarks": results,
        "seconds": time.monotonic() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"results-{mode}.json").write_text(json.dumps(data, indent=1, default=str))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data))
    print(f"[bench] wrote {out} ({data['seconds']:.0f}s in all)")
    for row in target_rows(results):
        verdict = {None: "not measured", True: "met", False: "MISSED"}[row["met"]]
        print(f"[bench]   {row['target']}: {row['measured']} -> {verdict}")
    errors = [n for n, r in results.items() if "error" in r]
    skipped = [f"{n}/{t}" for n, r in results.items() for t in (r.get("failed") or {})]
    if errors:
        print(f"[bench] benchmarks that failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    if skipped and options.strict:
        print(f"[bench] tools that did not run: {', '.join(skipped)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
