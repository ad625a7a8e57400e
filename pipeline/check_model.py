"""``permtrace check-model``: how close the emulator comes to a real kernel.

A trace from a real kernel (recorded, imported, or made by ``permtrace
groundtruth``) has ``<name>.observed.parquet`` beside it: what the kernel
did, charged to the op that triggered it.  We replay the trace from its
recorded starting state (``emulator.Machine.from_metadata``) under one
policy for several seeds and compare, per counter and per op kind.

Splits depend on where pages land, so they are compared as a range: the
observed count must fall within the predicted min..max over seeds.  The
kernel's own run is one more draw: if the model is right, it falls outside
the min..max of ``n`` seeds with probability ``2 / (n + 1)``, hence
:data:`DEFAULT_SEEDS` (a 95% prediction interval).  Flushes
and purges are deterministic *given* the splits (kernel-model.md D): every
direct-map split does its own ``flush_tlb_all`` (``__split_large_page``,
arch/x86/mm/pat/set_memory.c), so the predicted ``emu_flush_tlb_all`` of a
seed is first corrected by ``observed splits - predicted splits`` of that
seed, and must then match the observation exactly on every seed.  The same
holds for a ``vm_reset_perms`` that found nothing queued (another CPU's
purge took its area): it flushes its pages' direct-map range alone, full
or ranged by how far apart the pages lie.  The model does not place an
area's pages as scattered as the kernel's per-CPU lists do, so those full
flushes (``vm_reset_flush_all``) are shown, not checked, and the predicted
full and ranged flushes are corrected by ``observed - predicted`` of them.

Rows per op kind are checked the same way, except where splits are
involved: vmstat is read between workload steps, so one reading's delta may
mix ops; those rows are shown, not checked.  Trace metadata
``warmup_events`` marks leading events that only rebuild the starting state;
their own predicted cost is subtracted (replayed alone, same seed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from traces.errors import PermtraceError
from traces.importers.ftrace import observed_path
from traces.io import read_metadata

#: Seeds by default: min..max of 39 seeds holds one more run of a right model 95% of the time.
DEFAULT_SEEDS = 39

#: Observation kind -> emulator counter (``ReplayResult.counters``).
COUNTERS: dict[str, str] = {
    "flush_tlb_all": "emu_flush_tlb_all",
    "flush_tlb_kernel_range": "emu_flush_tlb_kernel_range",
    "cpa_flush": "emu_cpa_flush",
    "vmap_purge": "emu_vmap_purges",
    "sync_core": "emu_sync_core_ipis",
    "direct_map_level2_splits": "direct_map_level2_splits",
    "direct_map_level3_splits": "direct_map_level3_splits",
    "direct_map_level2_collapses": "direct_map_level2_collapses",
    "direct_map_level3_collapses": "direct_map_level3_collapses",
    "vm_reset_flush_all": "emu_vm_reset_flush_all",
}
#: Compared as a range over seeds (they depend on physical placement).
RANGE_KINDS = ("direct_map_level2_splits", "direct_map_level3_splits",
               "direct_map_level2_collapses", "direct_map_level3_collapses")
SPLITS = ("direct_map_level2_splits", "direct_map_level3_splits")
#: Each split costs one flush of this kind.
SPLIT_FLUSH = "flush_tlb_all"
#: Placement decides which of the two flushes a reset that found nothing queued does.
RESET_FULL, RESET_FLUSHES = "vm_reset_flush_all", {"flush_tlb_all": 1, "flush_tlb_kernel_range": -1}
ALL = "all"

FRAME_SCHEMA = {
    "counter": pl.String, "op": pl.String, "observed": pl.Int64,
    "predicted_mean": pl.Float64, "predicted_min": pl.Int64, "predicted_max": pl.Int64,
    "error": pl.Float64, "deterministic": pl.Boolean, "ok": pl.Boolean,
}


class ModelMismatch(PermtraceError):
    """The model disagrees with the kernel: exit code 1 (pipeline.cli)."""

    exit_code = 1


@dataclass
class CheckResult:
    """One check: ``frame`` has a row per (counter, op); ``op`` = ``"all"`` for totals.

    ``ok`` column: True/False where checked, null where it cannot be
    (the kind was not observable, or flushes whose split share is unknown).
    """

    trace: str
    policy: str
    seeds: int
    frame: pl.DataFrame

    @property
    def ok(self) -> bool:
        return not self.frame.filter(pl.col("ok") == False).height  # noqa: E712

    def table(self) -> str:
        """Plain-text table, one row per (counter, op)."""
        head = ("counter", "op", "observed", "predicted", "min..max", "error", "check")
        lines = []
        for r in self.frame.iter_rows(named=True):
            check = {True: "ok", False: "OFF", None: "-"}[r["ok"]]
            if r["ok"] is not None:
                check += " (exact)" if r["deterministic"] else " (range)"
            lines.append((r["counter"], r["op"], "-" if r["observed"] is None else str(r["observed"]),
                          f"{r['predicted_mean']:.2f}", f"{r['predicted_min']}..{r['predicted_max']}",
                          "-" if r["error"] is None else f"{r['error']:+.2f}", check))
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()
                         for row in [head, *lines])


def load_observed(trace: str | os.PathLike) -> pl.DataFrame:
    """The observations beside ``trace``; raises PermtraceError when there are none."""
    path = observed_path(trace)
    if not path.is_file():
        raise PermtraceError(f"{trace}: no observations beside it ({path.name} missing); "
                             "check-model needs a trace from 'permtrace record', 'permtrace import ftrace' "
                             "or 'permtrace groundtruth'")
    df = pl.read_parquet(path)
    if "op" not in df.columns:
        df = df.with_columns(pl.lit(None, pl.String).alias("op"))
    return df


def observable_kinds(meta: dict[str, str], observed: pl.DataFrame) -> set[str]:
    """Kinds the source could observe (metadata ``observed_kinds``, else those present)."""
    if meta.get("observed_kinds"):
        return set(meta["observed_kinds"].split(","))
    return set(observed["kind"].unique().to_list())


def compare(observed: pl.DataFrame, kinds: set[str], predictions: list[dict[str | None, dict[str, int]]],
            nr_cpus: int = 2) -> pl.DataFrame:
    """Observed vs predicted rows.

    ``predictions``: per seed, ``{op or None (whole run): {counter: value}}``
    (``ReplayResult.per_op`` plus ``None: counters``).  ``sync_core``
    observations are IPI rounds; the emulator counts IPIs, so observed rounds
    are multiplied by ``nr_cpus - 1``.
    """
    obs: dict[tuple[str, str | None], int] = {}
    attributed_splits: dict[str | None, int] = {}
    for kind, op, value in observed.group_by("kind", "op").agg(pl.col("value").sum()).iter_rows():
        if kind in COUNTERS:
            if kind == "sync_core":
                value *= max(nr_cpus - 1, 1)
            obs[(kind, op)] = value
            obs[(kind, ALL)] = obs.get((kind, ALL), 0) + value
            if kind in SPLITS:
                attributed_splits[op] = attributed_splits.get(op, 0) + value
    ops = sorted({op for seed in predictions for op in seed if op is not None}
                 | {op for _, op in obs if op not in (None, ALL)})
    split_ops = {op for seed in predictions for op, c in seed.items()
                 if op is not None and any(c.get(COUNTERS[k], 0) for k in SPLITS)}
    if attributed_splits.get(None) and len(split_ops) == 1:
        # Whole-run vmstat deltas (record, case JSON): when the model splits
        # in one op kind only, show the kernel's splits charged to it too.
        (only,) = split_ops
        for k in SPLITS:
            if (k, None) in obs:
                obs[(k, only)] = obs.get((k, only), 0) + obs.pop((k, None))
    obs_splits_all = sum(v for (k, op), v in obs.items() if k in SPLITS and op == ALL)
    splits_observable = SPLITS[0] in kinds

    def predicted(seed: dict, op: str, counter: str) -> int:
        return int((seed.get(None if op == ALL else op) or {}).get(counter, 0))

    rows = []
    for kind, counter in COUNTERS.items():
        for op in [ALL, *ops]:
            seeds = [predicted(s, op, counter) for s in predictions]
            o = obs.get((kind, op), 0) if kind in kinds else None
            if op != ALL and kind in kinds and (kind, op) not in obs and not any(seeds):
                continue                                  # nothing seen, nothing predicted
            deterministic = kind not in RANGE_KINDS and kind != RESET_FULL
            if kind in RESET_FLUSHES and RESET_FULL in kinds:
                sign = RESET_FLUSHES[kind]
                o_reset = obs.get((RESET_FULL, op), 0)
                seeds = [p + sign * (o_reset - predicted(s, op, COUNTERS[RESET_FULL]))
                         for p, s in zip(seeds, predictions)]
            if kind == SPLIT_FLUSH and deterministic:
                pred_splits = [sum(predicted(s, op, COUNTERS[k]) for k in SPLITS) for s in predictions]
                if op == ALL:
                    known = splits_observable
                    obs_split = obs_splits_all
                else:
                    # Per op only when no split is involved: vmstat is read between workload
                    # steps, so a reading's delta may mix ops (a module's load and its init free).
                    obs_split = attributed_splits.get(op, 0)
                    known = splits_observable and not any(pred_splits) and not obs_split
                if known:
                    seeds = [p - ps + obs_split for p, ps in zip(seeds, pred_splits)]
                else:
                    deterministic = False
            lo, hi = min(seeds), max(seeds)
            mean = sum(seeds) / len(seeds)
            if o is None:
                ok = None
            elif kind in RANGE_KINDS:
                ok = lo <= o <= hi if op == ALL else None      # per op: shown, not checked (see above)
            elif kind == RESET_FULL:
                ok = None                                      # placement the model does not have
            else:
                ok = (lo == hi == o) if deterministic else None
            if o is None and not any(seeds):
                continue
            rows.append({"counter": counter, "op": op, "observed": o, "predicted_mean": mean,
                         "predicted_min": lo, "predicted_max": hi,
                         "error": None if o is None else mean - o,
                         "deterministic": deterministic, "ok": ok})
    return pl.DataFrame(rows, schema=FRAME_SCHEMA)


def check_model(trace: str | os.PathLike, policy: str, seeds: int = DEFAULT_SEEDS, *,
                params: dict[str, object] | None = None, first_seed: int = 0,
                machine_overrides: dict | None = None) -> CheckResult:
    """Replay ``trace`` under ``policy`` for ``seeds`` seeds and compare with its observations."""
    import emulator
    from emulator import policies

    if seeds < 1:
        raise PermtraceError(f"--seeds must be at least 1, got {seeds}")
    observed = load_observed(trace)
    meta = read_metadata(trace)
    machine = emulator.Machine.from_metadata(meta, str(trace), **(machine_overrides or {}))
    predictions = []
    for seed in range(first_seed, first_seed + seeds):
        result = emulator.replay(trace, policies.make(policy, params), machine, seed)
        predictions.append(minus_warmup(trace, meta, {None: result.counters, **result.per_op},
                                        lambda t, s=seed: emulator.replay(t, policies.make(policy, params),
                                                                          machine, s)))
    frame = compare(observed, observable_kinds(meta, observed), predictions, machine.nr_cpus)
    return CheckResult(str(trace), policy, seeds, frame)


def minus_warmup(trace, meta: dict[str, str], prediction: dict, replay) -> dict:
    """Subtract what the model did for the trace's starting-state events (metadata
    ``warmup_events``: programs alive when recording began), replayed alone with the same seed."""
    n = int(meta.get("warmup_events") or 0)
    if not n:
        return prediction
    from traces.io import read_trace
    pre = replay(read_trace(trace).slice(0, n))
    pre = {None: pre.counters, **pre.per_op}
    return {op: {c: v - pre.get(op, {}).get(c, 0) for c, v in counters.items()}
            for op, counters in prediction.items()}


def report_section(results_dir: str | os.PathLike) -> tuple[str, pl.DataFrame] | None:
    """The check-model comparison for every run set in ``results_dir`` whose trace has observations.

    Uses the stored per-op counters of each seed (no replay).  Returns
    ``(title, frame)`` with columns ``trace``, ``policy``, ``seeds`` and the
    :func:`compare` columns, or ``None`` when no trace has observations.
    """
    from pipeline import store

    try:
        runs = store.scan(results_dir, "runs").select("run_id", "trace_path", "policy", "nr_cpus").collect()
    except PermtraceError:
        return None
    frames = []
    for (trace_path, policy), group in runs.group_by("trace_path", "policy", maintain_order=True):
        if not observed_path(trace_path).is_file() or not Path(trace_path).is_file():
            continue
        ids = group["run_id"].to_list()
        counters = (store.scan(results_dir, "counters").filter(pl.col("run_id").is_in(ids))
                    .collect())
        observed = load_observed(trace_path)
        meta = read_metadata(trace_path)
        predictions = []
        for rid, seed_no, policy_params, machine_json in runs_of(results_dir, ids):
            seed: dict[str | None, dict[str, int]] = {}
            for op, counter, value in counters.filter(pl.col("run_id") == rid).select(
                    "op", "counter", "value").iter_rows():
                seed.setdefault(op, {})[counter] = value
            predictions.append(minus_warmup(trace_path, meta, seed, lambda t, s=seed_no, p=policy_params,
                                            m=machine_json: _replay_stored(t, policy, p, m, s)))
        frame = compare(observed, observable_kinds(meta, observed), predictions,
                        int(group["nr_cpus"][0]))
        frames.append(frame.select(pl.lit(Path(trace_path).stem).alias("trace"),
                                   pl.lit(policy).alias("policy"),
                                   pl.lit(len(ids)).alias("seeds"), pl.all()))
    if not frames:
        return None
    return "Model check: observed (real kernel) vs predicted", pl.concat(frames)


def runs_of(results_dir, ids: list[str]) -> list[tuple[str, int, str, str]]:
    """(run_id, seed, params JSON, machine JSON) of the given runs, by run_id."""
    from pipeline import store

    rows = (store.scan(results_dir, "runs").filter(pl.col("run_id").is_in(ids))
            .select("run_id", "seed", "params", "machine").sort("run_id").collect())
    return list(rows.iter_rows())


def _replay_stored(table, policy: str, params_json: str, machine_json: str, seed: int):
    """Replay ``table`` exactly as a stored run was replayed (its params and machine)."""
    import json

    import emulator
    from emulator import policies

    return emulator.replay(table, policies.make(policy, json.loads(params_json)),
                           emulator.Machine(**json.loads(machine_json)), seed)
