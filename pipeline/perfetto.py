"""``permtrace export perfetto``: the sampled timelines as Chrome trace-event JSON.

ui.perfetto.dev (and chrome://tracing) open the file as is.  Layout, in the
JSON Object Format of the Trace Event Format spec:

- one *process* per policy (``process_name`` metadata event, ``pid`` =
  1-based position of the policy in name order), one *thread* per trace;
- a *counter* track (``ph: "C"``) per (trace, counter) with every sampled
  value of the run (shootdowns, splits, direct-map sizes, waste, ...);
- an *instant* event (``ph: "i"``, thread scope) at each sample where the
  number of shootdowns or direct-map splits grew, naming the increase.

One run per (policy, trace, CPU count): the lowest seed (timelines of other
seeds have the same shape; their spread is in the report).  Timestamps are
the trace's ``ts_ns`` in microseconds, as the format requires.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline import metrics, store

#: Counters whose growth becomes an instant event.
MARKED: dict[str, str] = {"emu_shootdowns": "shootdowns", "direct_map_level2_splits": "L2 splits",
                          "direct_map_level3_splits": "L3 splits"}


def trace_events(out: str | Path) -> dict:
    """The trace-event JSON object for a result dataset."""
    runs = metrics.runs(out).collect()
    first = (runs.sort("seed").group_by("policy", "trace", "nr_cpus", maintain_order=True).first()
             .sort("policy", "nr_cpus", "trace"))
    multi_cpu = first["nr_cpus"].n_unique() > 1
    tl = (store.scan(out, "timeline").filter(pl.col("run_id").is_in(first["run_id"].to_list()))
          .sort("run_id", "counter", "event_index").collect())
    policies = sorted(first["policy"].unique().to_list())
    pid = {p: i + 1 for i, p in enumerate(policies)}
    events: list[dict] = []
    for p in policies:
        events.append({"ph": "M", "name": "process_name", "pid": pid[p], "tid": 0, "args": {"name": p}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid[p], "tid": 0,
                       "args": {"sort_index": pid[p]}})
    for tid, run in enumerate(first.iter_rows(named=True), start=1):
        p = pid[run["policy"]]
        thread = run["trace"] + (f" @{run['nr_cpus']} CPUs" if multi_cpu else "")
        events.append({"ph": "M", "name": "thread_name", "pid": p, "tid": tid,
                       "args": {"name": f"{thread} (seed {run['seed']})"}})
        rows = tl.filter(pl.col("run_id") == run["run_id"])
        for (name,), group in rows.group_by("counter", maintain_order=True):
            ts = (group["ts_ns"].cast(pl.Float64) / 1e3).to_list()
            values = group["value"].to_list()
            events += [{"ph": "C", "name": f"{thread}: {name}", "pid": p, "tid": tid, "ts": t,
                        "args": {name: v}} for t, v in zip(ts, values, strict=True)]
            if name in MARKED:
                events += [{"ph": "i", "s": "t", "name": f"+{v - prev} {MARKED[name]}", "pid": p, "tid": tid,
                            "ts": t, "args": {"total": v}}
                           for t, v, prev in zip(ts[1:], values[1:], values[:-1], strict=True) if v > prev]
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "metadata": {"source": "permtrace", "results": str(Path(out).resolve())}}


def export(out: str | Path, path: str | Path) -> Path:
    """Write :func:`trace_events` of ``out`` to ``path`` atomically; return ``path``."""
    from traces.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.chmod(0o644)
        tmp.write_text(json.dumps(trace_events(out), separators=(",", ":")))
    return path
