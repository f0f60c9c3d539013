"""Run every benchmark module, then write the summary, the plots and (when asked) the
README's table.

    python -m benchmarks.run [--quick] [--only core,agents] [--out DIR] [--url URL]
                             [--loop auto|uvloop|asyncio] [--no-profile]
                             [--write-readme [--readme PATH]] [--report-only]

Each module (core, agents, events, memory, fleet, cluster, scaling, tasks, op_ids, transport)
runs on an event loop of its own — uvloop when it is installed (``pip install -e '.[bench]'``), else
asyncio — against a private redis-server on a free loopback port (or ``--url``; fleet,
cluster and scaling also start a local Redis Cluster of their own), and writes
``<out>/<module>.json`` and ``.md``, stamped with the loop that ran, the date, the machine
and the server. Then, from every
``<module>.json`` in ``<out>`` (also those of earlier runs):

- ``<out>/summary.md``: the machine, and one table of every scenario against each of its
  baselines (median ops/s, p50, p99, ratio), then the targets;
- ``<out>/<module>.png``: ops/s of each scenario next to its baseline;
- with ``--write-readme`` only: the README's performance table, between
  ``<!-- bench:start -->`` and ``<!-- bench:end -->`` (one row per scenario, against its
  first baseline), in README.md or the file ``--readme`` names. Without it no README is
  touched, full run or quick (``--no-readme``, the old opt-out, is accepted and changes
  nothing).

``--out`` defaults to benchmarks/results (committed). A ``--quick`` run (few operations: a
smoke run, meaningless figures) goes to a new directory under the system's temporary
directory unless ``--out`` is given. ``--report-only`` runs nothing and rebuilds the summary,
the plots (and with ``--write-readme`` the README's table) from the JSON already in ``<out>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from benchmarks._harness import (
    RESULTS,
    Comparison,
    raw_client,
    save,
    save_markdown,
    server_url,
    table,
)

MODULES: Final = (
    "core",
    "agents",
    "events",
    "memory",
    "fleet",
    "cluster",
    "scaling",
    "tasks",
    "op_ids",
    "transport",
)
README: Final = Path(__file__).resolve().parent.parent / "README.md"
START: Final = "<!-- bench:start -->"
END: Final = "<!-- bench:end -->"


# --- running the modules --------------------------------------------------------------------
@dataclass(frozen=True)
class ModuleRun:
    """What one module measured, in the form every module's results are saved in."""

    comparisons: list[Comparison]
    markdown: str
    extra: dict[str, Any] = field(default_factory=dict)


async def _core(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import core  # noqa: PLC0415 - a module is imported only when it runs

    comparisons = await core.run(url, quick=quick)
    title = "core: zen_async Keyspace vs raw redis-py (same server, same run)"
    return ModuleRun(comparisons, table(title, comparisons), {"batch": core.BATCH})


async def _agents(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import agents  # noqa: PLC0415 - a module is imported only when it runs

    outcome = await agents.run(url, quick=quick)
    if profile and not quick:
        outcome.profiles = await agents.profiles(url, outcome.checks)
    extra = {"batch": agents.BATCH, **outcome.extra()}
    return ModuleRun(outcome.comparisons, outcome.markdown(), extra)


async def _events(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import events  # noqa: PLC0415 - a module is imported only when it runs

    outcome = await events.run(url, quick=quick)
    if profile and not quick:
        outcome.profiles = await events.profiles(url, outcome)
    extra = {"batch": events.BATCH, **outcome.extra()}
    return ModuleRun(outcome.comparisons, outcome.markdown(), extra)


async def _memory(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import memory  # noqa: PLC0415 - a module is imported only when it runs

    results = await memory.run(url, quick=quick)
    comparisons = [results["store"], *results["searches"]]
    if results["embedding"] is not None:
        comparisons.append(results["embedding"])
    extra = {"blas_threads": 1, "crossover": [vars(c) for c in results["crossover"]]}
    return ModuleRun(comparisons, memory.report(results), extra)


async def _fleet(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import fleet  # noqa: PLC0415 - a module is imported only when it runs

    made = await fleet.run(url, quick=quick)
    if profile and not quick:
        made.outcome.profiles = await fleet.profiles(url)
    return ModuleRun(made.comparisons, made.markdown(), made.extra())


async def _cluster(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import cluster  # noqa: PLC0415 - a module is imported only when it runs

    outcome = await cluster.run(url, quick=quick)
    return ModuleRun(outcome.comparisons, outcome.markdown(), outcome.extra())


async def _scaling(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import scaling  # noqa: PLC0415 - a module is imported only when it runs

    made = await scaling.run(url, quick=quick)
    return ModuleRun(made.comparisons, made.markdown(), made.extra())


async def _tasks(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import tasks  # noqa: PLC0415 - a module is imported only when it runs

    outcome = await tasks.run(url, quick=quick)
    if profile and not quick:
        outcome.profiles = await tasks.profiles(url, outcome.checks)
    return ModuleRun(outcome.comparisons, outcome.markdown(), outcome.extra())


async def _op_ids(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import op_ids  # noqa: PLC0415 - a module is imported only when it runs

    made = await op_ids.run(url, quick=quick)
    return ModuleRun(made.comparisons, made.markdown(), made.extra())


async def _transport(url: str, *, quick: bool, profile: bool) -> ModuleRun:
    from benchmarks import transport  # noqa: PLC0415 - a module is imported only when it runs

    made = await transport.run(url, quick=quick)
    if profile and not quick:
        made.outcome.profiles = await transport.profiles(url, made.outcome.checks)
    return ModuleRun(made.comparisons, made.markdown(), made.extra())


Runner = Callable[..., Awaitable[ModuleRun]]
RUNNERS: Final[dict[str, Runner]] = {
    "core": _core,
    "agents": _agents,
    "events": _events,
    "memory": _memory,
    "fleet": _fleet,
    "cluster": _cluster,
    "scaling": _scaling,
    "tasks": _tasks,
    "op_ids": _op_ids,
    "transport": _transport,
}


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop to measure on: ``(factory, name)``; uvloop when ``choice`` is
    ``auto`` and it is installed.

    Raises:
        SystemExit: ``uvloop`` was asked for and is not installed.
    """
    if choice != "asyncio" and importlib.util.find_spec("uvloop") is not None:
        import uvloop  # noqa: PLC0415 - optional

        return uvloop.new_event_loop, f"uvloop {importlib.metadata.version('uvloop')}"
    if choice == "uvloop":
        raise SystemExit("benchmarks.run: --loop uvloop, but uvloop is not installed")
    return None, "asyncio"


def running_loop_name() -> str:
    """Which loop runs the calling coroutine: ``uvloop <version>`` or ``asyncio``."""
    module = type(asyncio.get_running_loop()).__module__
    if module.startswith("uvloop"):
        return f"uvloop {importlib.metadata.version('uvloop')}"
    return "asyncio"


async def server_version(url: str) -> str:
    """``<name> <version>`` of the server at ``url`` (from INFO server)."""
    client = raw_client(url, db=0, max_connections=1)
    try:
        info = await client.info("server")
    finally:
        await client.aclose(close_connection_pool=True)
    return f"{info.get('server_name', 'redis')} {info.get('redis_version', '?')}"


async def _measure(name: str, url: str, *, quick: bool, profile: bool) -> dict[str, Any]:
    stamp: dict[str, Any] = {
        "loop": running_loop_name(),
        "server": await server_version(url),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    measured = await RUNNERS[name](url, quick=quick, profile=profile)
    stamp["seconds"] = round(time.perf_counter() - started, 1)
    return {"run": measured, **stamp}


def run_module(
    name: str,
    *,
    url: str | None,
    quick: bool,
    profile: bool,
    factory: Callable[[], asyncio.AbstractEventLoop] | None,
    out: Path,
) -> Path:
    """Run one module on a loop of its own and save its JSON and markdown in ``out``."""
    with server_url(url) as target, asyncio.Runner(loop_factory=factory) as runner:
        done = runner.run(_measure(name, target, quick=quick, profile=profile))
    measured: ModuleRun = done.pop("run")
    meta = {**done, "quick": quick, "machine": machine()}
    header = (
        f"_{meta['date']} · loop {meta['loop']} · {meta['server']} · "
        f"{'quick (smoke) mode' if quick else 'full mode'} · {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores · Python {meta['machine']['python']}_\n\n"
    )
    save_markdown(name, header + measured.markdown, out_dir=out)
    return save(name, measured.comparisons, {**measured.extra, **meta}, out_dir=out)


def machine() -> dict[str, Any]:
    """CPU model (from /proc/cpuinfo), core count, Python, platform."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


# --- reports --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Results:
    """One module's saved results."""

    module: str
    data: dict[str, Any]

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.data["results"]
        return rows

    def meta(self, key: str) -> str:
        value = self.data.get(key)
        return "unknown" if value is None else str(value)


def load_results(out: Path) -> list[Results]:
    """Every module's results in ``out``, in module order.

    Raises:
        ValueError: a results file that is not a benchmark's JSON.
    """
    found = []
    for name in MODULES:
        path = out / f"{name}.json"
        if not path.exists():
            continue
        data = orjson.loads(path.read_bytes())
        if not isinstance(data, dict) or not isinstance(data.get("results"), list):
            raise ValueError(f"{path} is not a benchmark result (no 'results' list)")  # noqa: TRY004 - bad file content, not a bad argument
        found.append(Results(name, data))
    return found


def _row(module: str, r: dict[str, Any]) -> str:
    s, b = r["scenario"], r["baseline"]
    return (
        f"| {module} | {s['name']} | {s['ops_per_s']:,.0f} | {s['p50_ms']:.3f} | "
        f"{s['p99_ms']:.3f} | {b['name']} | {b['ops_per_s']:,.0f} | {r['ratio']:.2f}x |"
    )


_HEADER: Final = (
    "| module | scenario | ops/s (median) | p50 ms | p99 ms | baseline | baseline ops/s | ratio |\n"
    "|---|---|---:|---:|---:|---|---:|---:|"
)


def _cpus(results: Sequence[Results], host: dict[str, Any]) -> str:
    """The CPUs the results were measured on (a module re-run on another machine keeps the
    others' figures: the header must not claim one machine for all)."""
    cpus = {str(r.data.get("machine", {}).get("cpu") or host["cpu"]) for r in results}
    return " / ".join(sorted(cpus))


def summary_markdown(results: Sequence[Results], host: dict[str, Any]) -> str:
    """summary.md: the machine, each module's run, every comparison, every target."""
    lines = [
        "# Benchmark summary",
        "",
        "Generated by `python -m benchmarks.run` (`make bench`) from the JSON results beside "
        "this file. Every scenario ran next to its baselines on the same server in the same "
        "run; ops/s is the median over rounds, p50/p99 the latency of one call.",
        "",
        f"Machines: {_cpus(results, host)}, {host['cores']} cores, {host['platform']}, "
        f"Python {host['python']}.",
        "",
        "| module | date | mode | event loop | server | Python |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        quick = r.data.get("quick")
        mode = "unknown" if quick is None else "quick" if quick else "full"
        lines.append(
            f"| {r.module} | {r.meta('date')} | {mode} | {r.meta('loop')} | "
            f"{r.meta('server')} | {r.meta('python')} |"
        )
    lines += ["", _HEADER]
    lines += [_row(r.module, row) for r in results for row in r.rows]
    checks = [(r.module, c) for r in results for c in r.data.get("checks") or []]
    if checks:
        lines += ["", "## Targets", "", "| module | verdict | target | measured | limit |"]
        lines.append("|---|---|---|---:|---:|")
        for module, c in checks:
            sign = "<=" if c["kind"] == "max" else ">="
            verdict = "PASS" if c["passed"] else "**MISS**"
            lines.append(
                f"| {module} | {verdict} | {c['target']} | {_figure(c['measured'], c['unit'])} "
                f"| {sign} {_figure(c['limit'], c['unit'])} |"
            )
    return "\n".join(lines) + "\n"


def _figure(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "ms":
        return f"{value:.3f} ms"
    return f"{value:,.0f} {unit}"


def readme_block(results: Sequence[Results], host: dict[str, Any]) -> str:
    """The README's performance table: one row per scenario, against its first baseline."""
    dates = sorted({r.meta("date")[:10] for r in results})
    loops = sorted({r.meta("loop") for r in results})
    servers = sorted({r.meta("server") for r in results})
    quick = any(r.data.get("quick") for r in results)
    lines = [
        f"Generated by `make bench BENCH_ARGS=--write-readme` from benchmarks/results/*.json: "
        f"{_cpus(results, host)}, "
        f"{host['cores']} cores, Python {host['python']}, {', '.join(servers)}, event loop "
        f"{', '.join(loops)}; measured {', '.join(dates)}"
        + (" (QUICK smoke figures, not measurements)" if quick else "")
        + ". Every baseline of each scenario and the targets: benchmarks/results/summary.md.",
        "",
        _HEADER,
    ]
    for r in results:
        seen: set[str] = set()
        for row in r.rows:
            if row["scenario"]["name"] not in seen:
                seen.add(row["scenario"]["name"])
                lines.append(_row(r.module, row))
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with what lies between the bench markers replaced by ``block``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(
            f"the README needs one {START!r} line before one {END!r} line around the "
            "performance table"
        )
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}\n{END}{tail}"


def plot(results: Results, out: Path) -> Path:
    """``<out>/<module>.png``: ops/s of each scenario next to its baseline (log scale)."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - slow import, only for reports

    rows = results.rows
    labels = [f"{r['scenario']['name']}\nvs {r['baseline']['name']}" for r in rows]
    ours = [r["scenario"]["ops_per_s"] for r in rows]
    theirs = [r["baseline"]["ops_per_s"] for r in rows]
    fig = Figure(figsize=(11, 1.0 + 0.62 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(rows)))
    ax.barh([y - 0.2 for y in ys], ours, height=0.4, label="zen_async", color="#1f77b4")
    ax.barh([y + 0.2 for y in ys], theirs, height=0.4, label="baseline", color="#bbbbbb")
    for y, value, row in zip(ys, ours, rows, strict=True):
        ax.annotate(
            f" {row['ratio']:.2f}x",
            (value, y - 0.2),
            va="center",
            fontsize=8,
        )
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    low, high = min(ours + theirs), max(ours + theirs)
    if low > 0 and high / low > 50:  # figures over several decades: log, from a decade below
        ax.set_xscale("log")
        ax.set_xlim(left=10 ** math.floor(math.log10(low)), right=high * 3)
        ax.set_xlabel("operations/s (median over rounds, log scale)")
    else:
        ax.set_xlim(left=0, right=high * 1.12)
        ax.set_xlabel("operations/s (median over rounds)")
    mode = " (quick smoke run)" if results.data.get("quick") else ""
    known = [
        v
        for v in (results.meta("date")[:10], results.meta("loop"), results.meta("server"))
        if v != "unknown"
    ]
    ax.set_title(f"{results.module}: zen_async vs baseline{mode} — {', '.join(known)}", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    path = out / f"{results.module}.png"
    fig.savefig(path, dpi=100)
    return path


def write_reports(out: Path, readme: Path | None) -> list[Path]:
    """summary.md, a PNG per module and (when ``readme``) the README's table, from the JSON
    in ``out``. Returns the files written.

    Raises:
        ValueError: no results in ``out``, or a README without the markers.
    """
    results = load_results(out)
    if not results:
        raise ValueError(f"no benchmark results (<module>.json) in {out}")
    host = machine()
    written = [out / "summary.md"]
    written[0].write_text(summary_markdown(results, host), encoding="utf-8")
    written += [plot(r, out) for r in results]
    if readme is not None:
        text = readme.read_text(encoding="utf-8")
        readme.write_text(replace_block(text, readme_block(results, host)), encoding="utf-8")
        written.append(readme)
    return written


# --- command line ---------------------------------------------------------------------------
def _modules(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected a comma-separated list of {', '.join(MODULES)}"
        )
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="each module's quick (smoke) mode")
    parser.add_argument(
        "--only", type=_modules, default=list(MODULES), help="modules, e.g. core,agents"
    )
    parser.add_argument(
        "--out", type=Path, help="results directory (default benchmarks/results; quick: a temp dir)"
    )
    parser.add_argument("--url", help="measure against this server instead of a private one")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy profiles of missed targets"
    )
    readme = parser.add_mutually_exclusive_group()
    readme.add_argument(
        "--write-readme",
        action="store_true",
        help="also write the performance table into the README (never done otherwise)",
    )
    readme.add_argument(
        "--no-readme", action="store_true", help="leave every README alone (the default)"
    )
    parser.add_argument(
        "--readme", type=Path, help=f"the README --write-readme updates (default {README})"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild summary and plots (and README) from the JSON in --out",
    )
    return parser


@contextlib.contextmanager
def _out_dir(given: Path | None, *, quick: bool) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
    elif quick:  # smoke figures never land beside the committed results
        yield Path(tempfile.mkdtemp(prefix="zen-bench-quick-"))
    else:
        yield RESULTS


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks as ``argv`` says; 0 on success, 1 when a module failed, 2 on a
    usage or report error. Call it outside any running event loop."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.readme is not None and not args.write_readme:
        parser.error("--readme names the README that --write-readme updates: add --write-readme")
    readme: Path | None = (args.readme or README) if args.write_readme else None
    factory, loop = loop_factory(args.loop)
    failed: list[str] = []
    with _out_dir(args.out, quick=args.quick) as out:
        if not args.report_only:
            for name in args.only:
                mode = "quick" if args.quick else "full"
                print(f"benchmarks: {name} ({mode} mode, {loop}) ...", flush=True)
                try:
                    path = run_module(
                        name,
                        url=args.url,
                        quick=args.quick,
                        profile=not args.no_profile,
                        factory=factory,
                        out=out,
                    )
                except Exception as exc:  # one broken module must not lose the others' results
                    print(f"benchmarks: {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
                    failed.append(name)
                    continue
                print(f"benchmarks: {name} -> {path}", flush=True)
        try:
            written = write_reports(out, readme)
        except ValueError as exc:
            print(f"benchmarks: {exc}", file=sys.stderr)
            return 1 if failed else 2
        for path in written:
            print(f"benchmarks: wrote {path}")
        print((out / "summary.md").read_text(encoding="utf-8"))
    return 1 if failed else 0


if __name__ == "__main__":
    from zen_async.logs import configure_logging

    configure_logging("warning")  # zen's logs to stderr; stdout carries the reports
    sys.exit(main())
