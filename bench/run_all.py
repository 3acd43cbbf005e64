"""Every benchmark in one command, each against its baseline in the same run.

    .venv/bin/python bench/run_all.py            # all figures; writes docs/benchmarks.md and its chart
    .venv/bin/python bench/run_all.py --quick    # smaller runs, for a first look

Each script prints its own report and a last line ``RESULT <name> <value> <target> <met|missed>``;
this runner collects them, keeps every script's full output under ``docs/benchmarks/``, draws
``docs/benchmarks/targets.png`` (each figure as a share of its target) and rewrites the results
table in ``docs/benchmarks.md``. It exits non-zero when a script fails; a missed target is
reported, not hidden.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
OUTPUT = DOCS / "benchmarks"

#: (script arguments, quick-mode arguments, what it measures)
BENCHMARKS: list[tuple[list[str], list[str], str]] = [
    (["intake_latency.py"], ["intake_latency.py", "--requests", "1000"], "single POSTs against a bare endpoint of the same framework"),
    (["batch_intake.py"], ["batch_intake.py"], "batches of 100 against single requests"),
    (["dispatch_throughput.py"], ["dispatch_throughput.py", "--notifications", "200"], "sends against the ACS quickstart pattern, 100 ms latency"),
    (["report_ingest.py"], ["report_ingest.py", "--batches", "3"], "delivery reports per second, 1,000-event batches, embedded ledger"),
    (["report_ingest.py", "--backend", "table", "--batches", "2"], ["report_ingest.py", "--backend", "table", "--batches", "1", "--batch-size", "200"],
     "delivery reports per second, 1,000-event batches, Table Storage (Azurite)"),
    (["reconciliation_scale.py"], ["reconciliation_scale.py", "--large", "100000"], "reconciliation report at 1 million against 10 thousand rows"),
    (["dashboard_buckets.py"], ["dashboard_buckets.py", "--rows", "100000", "--window-rows", "100000"],
     "dashboard figures for 24 hours, a million rows in them"),
    (["memory_flat.py"], ["memory_flat.py", "--notifications", "10000"], "dispatcher resident memory growth over 50,000 notifications"),
]

RESULT = re.compile(r"^RESULT (\S+) (\S+) (\S+) (met|missed)$")


@dataclass
class Figure:
    name: str
    value: float
    target: str
    met: bool
    what: str
    command: str
    seconds: float


def run(args: list[str], what: str) -> Figure | None:
    script = ROOT / "bench" / args[0]
    if not script.exists():
        print(f"skipped {args[0]}: not in this checkout", flush=True)
        return None
    command = " ".join([".venv/bin/python", f"bench/{args[0]}", *args[1:]])
    print(f"\n$ {command}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), *args[1:]], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    print(result.stdout, end="", flush=True)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    label = "-".join(a.lstrip("-") for a in args).replace(".py", "")
    (OUTPUT / f"{label}.txt").write_text(f"$ {command}\n{output}")
    if result.returncode != 0:
        print(result.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{command} failed with exit code {result.returncode}")
    lines = [RESULT.match(line.strip()) for line in result.stdout.splitlines()]
    found = [m for m in lines if m]
    if not found:
        raise SystemExit(f"{command} printed no RESULT line")
    name, value, target, verdict = found[-1].groups()
    return Figure(name, float(value), target, verdict == "met", what, command, seconds)


def share_of_target(figure: Figure) -> float:
    """How far the figure goes towards its target: 1.0 is exactly on target, more is better."""
    bound = float(figure.target.lstrip("<>="))
    if figure.target.startswith("<"):
        return bound / figure.value if figure.value else float("inf")
    return figure.value / bound


def chart(figures: list[Figure], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [min(share_of_target(f), 20.0) for f in figures]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(figures) + 1.5))
    colours = ["#2e7d32" if f.met else "#c62828" for f in figures]
    ax.barh([f.name for f in figures], shares, color=colours)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("measured / target (log scale; right of the dashed line meets the target)")
    ax.invert_yaxis()
    for y, (share, figure) in enumerate(zip(shares, figures)):
        ax.text(share, y, f"  {figure.value:g} (target {figure.target})", va="center", fontsize=8)
    ax.set_title(f"Benchmarks on {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_doc(figures: list[Figure], quick: bool) -> None:
    doc = DOCS / "benchmarks.md"
    machine = f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = [
        f"Measured {when} on {machine}{' (quick mode: smaller runs)' if quick else ''} with `.venv/bin/python bench/run_all.py`.",
        "",
        "| figure | measures | result | target | met | command |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        table.append(f"| `{f.name}` | {f.what} | {f.value:g} | {f.target} | {'yes' if f.met else '**no**'} | `{f.command}` |")
    table += ["", "![Each figure as a share of its target](benchmarks/targets.png)", ""]
    block = "\n".join(table)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n<!-- results -->\n<!-- /results -->\n"
    start, end = "<!-- results -->", "<!-- /results -->"
    if start in text and end in text:
        text = text[: text.index(start) + len(start)] + "\n" + block + "\n" + text[text.index(end):]
    else:
        text += f"\n{start}\n{block}\n{end}\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--only", help="run only scripts whose name contains this")
    args = parser.parse_args()
    figures = []
    for full, quick, what in BENCHMARKS:
        chosen = quick if args.quick else full
        if args.only and args.only not in " ".join(chosen):
            continue
        figure = run(chosen, what)
        if figure:
            figures.append(figure)
    print("\nfigure".ljust(44) + "value".rjust(12) + "  target".ljust(12) + "  met")
    for f in figures:
        print(f"{f.name:<43}{f.value:>12g}  {f.target:<10}  {'yes' if f.met else 'NO'}")
    if not args.only:
        chart(figures, OUTPUT / "targets.png")
        write_doc(figures, args.quick)
        print(f"\nwrote {DOCS / 'benchmarks.md'} and {OUTPUT / 'targets.png'}")


if __name__ == "__main__":
    main()
