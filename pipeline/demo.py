"""``permtrace demo``: the main job on built-in workloads, no arguments needed.

Synthesizes every built-in scenario (``traces.synth``, seed 0, default
sizes) into ``<out>/traces/``, replays each under every built-in policy
(not the release aliases) with seeds 0-2 on the scenario's own machine,
writes ``<out>/report.html`` and ``summary.md``, and returns the headline
table.  Rerunning into the same directory resumes (finished runs are
skipped); a directory holding anything else is left alone unless
``--force``, which clears its result tables first.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from traces.errors import PermtraceError

SEEDS = 3
TRACE_SEED = 0


def builtin_policies() -> list[str]:
    """Built-in policy names (file names in emulator/policies/), aliases left out."""
    from emulator.policies import available

    return sorted(n for n, info in available().items() if info.base is None and info.source == "builtin")


def _clear_foreign(out: Path, expected: set[str], force: bool) -> None:
    """Refuse (or with ``force`` clear) result tables holding runs that are not this demo's."""
    from pipeline import store

    foreign = store.completed_run_ids(out) - expected
    if foreign and not force:
        raise PermtraceError(f"{out} holds {len(foreign)} runs of other traces or policies; "
                             "pass --force to replace its results, or choose another --out")
    if foreign:
        for table in store.TABLES:
            shutil.rmtree(out / table, ignore_errors=True)


def run(out: str | Path, *, jobs: int | None = None, force: bool = False) -> tuple[Path, str, float]:
    """Run the demo into ``out``; return (report path, headline table text, seconds taken)."""
    from pipeline import runs
    from pipeline.cmd_results import replay_batch, write_report
    from traces.synth import scenarios, synthesize

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PermtraceError(f"--out {out} is a file; give a directory")
    ours = (out / "runs").is_dir() or (out / "traces").is_dir()
    if out.exists() and any(out.iterdir()) and not ours and not force:
        raise PermtraceError(f"{out} holds files that are not demo results; pass --force or choose another --out")
    # Synthesis is deterministic (same arguments -> same bytes), so rewriting a trace is a no-op.
    traces = [synthesize(name, out / "traces" / f"{name}.parquet", seed=TRACE_SEED) for name in scenarios()]
    specs = runs.expand(traces, builtin_policies(), seeds=SEEDS)
    _clear_foreign(out, {s.run_id for s in specs}, force)
    replay_batch(specs, out, jobs=jobs, scheduler=None)
    report, table = write_report(out, out / "report.html",
                                 title="permtrace demo: built-in workloads under every built-in policy")
    return report, table, time.perf_counter() - t0
