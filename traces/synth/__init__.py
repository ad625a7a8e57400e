"""Synthetic workloads: one module per scenario, found by file name.

A scenario module ``traces/synth/<name>.py`` (CLI name: ``_`` -> ``-``)
defines ``SUMMARY`` (one line), ``DEFAULTS`` (``nr_cpus``, ``mem``,
``duration``, ``events``) and ``build(params, ids, owners) -> list of
sources`` (see :mod:`traces.synth._common`); its docstring states the
generative model.  Modules whose name starts with ``_`` are helpers.
Adding a scenario is adding one file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pyarrow as pa

from traces.errors import PermtraceError
from traces.io import write_trace
from traces.synth._common import Ids, Owners, Params, fresh_direct_map, parse_duration, parse_size, run


def scenarios() -> dict[str, ModuleType]:
    """Scenario name -> module, in name order."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            found[info.name.replace("_", "-")] = importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(found.items()))


def _scenario(name: str) -> ModuleType:
    known = scenarios()
    if name not in known:
        raise PermtraceError(f"unknown scenario {name!r} (fix: use one of {', '.join(known)}; "
                             "'permtrace trace synth --list' describes them)")
    return known[name]


def params_for(name: str, *, seed: int = 0, nr_cpus: int | None = None, mem: str | int | None = None,
               duration: str | float | None = None, events: int | None = None) -> Params:
    """The scenario's parameters: its DEFAULTS overridden by what is given."""
    d = _scenario(name).DEFAULTS
    p = Params(
        seed=seed,
        nr_cpus=nr_cpus if nr_cpus is not None else d["nr_cpus"],
        mem_total_bytes=parse_size(mem if mem is not None else d["mem"]),
        duration_ns=parse_duration(duration if duration is not None else d["duration"]),
        events=events if events is not None else d["events"],
    )
    if p.nr_cpus < 1 or p.mem_total_bytes < (64 << 20) or p.duration_ns <= 0 or (p.events is not None and p.events < 0):
        raise PermtraceError(f"bad synth parameters {p} (fix: --cpus >= 1, --mem >= 64M, --duration > 0, --events >= 0)")
    return p


def generate(name: str, params: Params) -> tuple[dict[str, object], Iterator[pa.RecordBatch]]:
    """Trace metadata and a stream of record batches for scenario ``name``."""
    mod = _scenario(name)
    ids, owners = Ids(), Owners()
    sources = mod.build(params, ids, owners)
    meta = {
        "source": f"synthetic:{name}:seed={params.seed}",
        "nr_cpus": params.nr_cpus,
        "mem_total_bytes": params.mem_total_bytes,
        **fresh_direct_map(params.mem_total_bytes),
    }
    return meta, run(sources, params, owners)


def synthesize(name: str, out: str | os.PathLike, *, seed: int = 0, nr_cpus: int | None = None,
               mem: str | int | None = None, duration: str | float | None = None,
               events: int | None = None) -> Path:
    """Write scenario ``name`` to ``out`` (atomically); same arguments -> same bytes."""
    params = params_for(name, seed=seed, nr_cpus=nr_cpus, mem=mem, duration=duration, events=events)
    meta, batches = generate(name, params)
    return write_trace(out, batches, meta)
