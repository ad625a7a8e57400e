"""Run specs and their execution: locally in processes, or on a Dask cluster.

A run is one (trace, policy, params, seed, machine); its ``run_id`` is a
stable hash of those, with the trace identified by a digest of its bytes
(not its path or mtime), so the same run has the same id on every machine
and a rerun of an interrupted batch skips what is already done.

Every run is a pure function of its spec: :func:`execute` replays it and
writes its result files (:mod:`pipeline.store`) itself, in whichever
process or Dask worker it lands, so no result data travels back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline import store
from traces.errors import PermtraceError, TraceError
from traces.io import read_metadata


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def trace_digest(path: str | os.PathLike) -> str:
    """blake2b-128 of the trace file's bytes (hex): the trace's identity in a run_id."""
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except FileNotFoundError:
        raise TraceError("no such file", file=str(path), hint="check the trace path") from None
    return h.hexdigest()


@dataclass(frozen=True)
class RunSpec:
    """One run, picklable (sent to worker processes and Dask workers).

    ``params`` is the policy's full parameter dict (defaults included, as
    ``policy.params()`` returns it) and ``machine`` is
    ``dataclasses.asdict(emulator.Machine)``, both as canonical JSON.
    """

    trace_path: str
    trace_digest: str
    policy: str
    params: str
    seed: int
    machine: str

    @property
    def run_id(self) -> str:
        """Stable 16-hex-digit hash of (trace digest, policy, params, seed, machine)."""
        key = _canonical({"trace": self.trace_digest, "policy": self.policy,
                          "params": json.loads(self.params), "seed": self.seed,
                          "machine": json.loads(self.machine)})
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    @property
    def trace(self) -> str:
        name = Path(self.trace_path).name
        return name[: -len(".parquet")] if name.endswith(".parquet") else name


def parse_params(pairs: Sequence[str], policies: Sequence[str]) -> dict[str, dict[str, str]]:
    """``-p key=value`` options -> {policy: {key: value}}.

    ``key=value`` applies to every selected policy; ``policy.key=value``
    only to that one.  Values stay strings; the policy parses them.
    """
    out: dict[str, dict[str, str]] = {p: {} for p in policies}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PermtraceError(f"-p {pair!r}: expected key=value (or policy.key=value), e.g. -p unmapped_cache=false")
        scope, dot, name = key.rpartition(".")
        if dot and scope not in out:
            raise PermtraceError(f"-p {pair!r}: policy {scope!r} is not among --policy {', '.join(policies)}")
        for p in ([scope] if dot else policies):
            out[p][name] = value
    return out


def parse_size(text: str) -> int:
    """``64G``, ``512M``, ``4K`` or plain bytes -> bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except ValueError:
        raise PermtraceError(f"bad size {text!r}: use bytes or a number with K, M, G or T (e.g. 64G)") from None


def expand(traces: Sequence[str | os.PathLike], policies: Sequence[str], params: Sequence[str] = (),
           seeds: int = 1, cpus: Sequence[int] | None = None, mem_bytes: int | None = None) -> list[RunSpec]:
    """Every (trace x policy x cpus x seed) run spec, in that nesting order, deduplicated.

    The machine comes from each trace's metadata
    (``emulator.Machine.from_metadata``), with ``nr_cpus``/``mem_bytes``
    overridden when given.  Seeds are ``0..seeds-1``.
    """
    from emulator import Machine, policies as registry

    if not traces:
        raise PermtraceError("no trace given: permtrace replay TRACE... --policy P --out DIR")
    if not policies:
        raise PermtraceError("no --policy given (see 'permtrace policies')")
    if seeds < 1:
        raise PermtraceError(f"--seeds {seeds}: need at least 1")
    per_policy = parse_params(params, policies)
    # make() validates names and parameters (PermtraceError); params() adds the defaults.
    resolved = {name: _canonical(registry.make(name, per_policy[name] or None).params()) for name in policies}
    specs: dict[str, RunSpec] = {}
    for trace in traces:
        path = str(Path(trace).resolve())
        meta, digest = read_metadata(path), trace_digest(path)
        for name in policies:
            for nr_cpus in (cpus or [None]):
                overrides = {k: v for k, v in (("nr_cpus", nr_cpus), ("mem_bytes", mem_bytes)) if v is not None}
                machine = _canonical(dataclasses.asdict(Machine.from_metadata(meta, path, **overrides)))
                for seed in range(seeds):
                    spec = RunSpec(path, digest, name, resolved[name], seed, machine)
                    specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("permtrace")
    except PackageNotFoundError:
        return "unknown"


def execute(spec: RunSpec, out: str) -> str:
    """Replay one run and write its result files; return its run_id.

    Runs in a worker process or on a Dask worker.
    """
    import emulator
    from emulator import Machine, policies as registry

    machine = Machine(**json.loads(spec.machine))
    policy = registry.make(spec.policy, json.loads(spec.params))
    t0 = time.perf_counter()
    result = emulator.replay(spec.trace_path, policy, machine, seed=spec.seed)
    wall_s = time.perf_counter() - t0
    run = {
        "run_id": spec.run_id, "trace": spec.trace, "trace_path": spec.trace_path,
        "trace_digest": spec.trace_digest, "policy": spec.policy, "params": spec.params,
        "seed": spec.seed, "nr_cpus": machine.nr_cpus, "mem_bytes": machine.mem_bytes,
        "machine": spec.machine, "n_events": int(result.n_events), "wall_s": wall_s,
        "version": _version(),
    }
    store.write_run(out, run, result)
    return spec.run_id


def pending(specs: Iterable[RunSpec], out: str | os.PathLike) -> list[RunSpec]:
    """The specs whose results are not complete in ``out`` yet."""
    return [s for s in specs if not store.is_complete(out, s.policy, s.run_id)]


def run_all(specs: Sequence[RunSpec], out: str | os.PathLike, *, jobs: int | None = None,
            scheduler: str | None = None, on_done: Callable[[], None] | None = None) -> list[str]:
    """Execute the pending ``specs``; return the run_ids executed.

    Local: a ``ProcessPoolExecutor`` (forkserver context) with ``jobs``
    workers (default: the core count); ``jobs=1`` runs in this process.
    ``scheduler`` (``tcp://host:port``): a Dask distributed cluster runs
    :func:`execute` instead; its workers write the result files, so ``out``
    must be on a filesystem they share (same path).  A failing run does not stop the others (their
    results stay, for the rerun); the first failure is re-raised at the end.
    ``on_done()`` is called after each run (a progress bar).
    """
    out = str(Path(out).resolve())
    todo = pending(specs, out)
    done: list[str] = []
    errors: list[BaseException] = []

    def finish(spec: RunSpec, fut_result: Callable[[], str]) -> None:
        try:
            done.append(fut_result())
        except Exception as e:  # noqa: BLE001 - collected, re-raised below
            e.add_note(f"in run {spec.run_id}: trace {spec.trace_path}, policy {spec.policy}, seed {spec.seed}")
            errors.append(e)
        if on_done:
            on_done()

    if not todo:
        return done
    if scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise PermtraceError("--scheduler needs Dask: pip install 'permtrace[dask]'") from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as e:
            raise PermtraceError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        with client:
            futures = {client.submit(execute, s, out, key=f"permtrace-{s.run_id}", pure=False): s for s in todo}
            for fut in as_completed(futures):
                finish(futures[fut], fut.result)
    elif (jobs or os.cpu_count() or 1) <= 1 or len(todo) == 1:
        for s in todo:
            finish(s, lambda s=s: execute(s, out))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed as cf_completed

        ctx = multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")
        with ProcessPoolExecutor(max_workers=min(jobs or os.cpu_count() or 1, len(todo)), mp_context=ctx) as pool:
            futures = {pool.submit(execute, s, out): s for s in todo}
            for fut in cf_completed(futures):
                finish(futures[fut], fut.result)
    if errors:
        raise errors[0]
    return done
