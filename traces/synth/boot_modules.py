"""boot-modules: a distribution boot loading 100-200 modules.

Generative model (all times from trace start, ns):

- ``n`` modules, ``n ~ U{100..200}`` (a Debian/Fedora desktop or server
  loads 100-200 modules at boot; ``lsmod | wc -l``).
- Each module is modelled on one of the 46 real Debian 6.1 modules in
  ``traces/data/module_anchors.csv`` (anchor drawn uniformly), scaled by a
  common factor ``s ~ LogNormal(0, 0.5)``: every section's page count is
  multiplied by ``s`` (a present section keeps at least one page) and its
  byte size drawn uniformly inside its last page (the anchors are
  page-granular); ``patch_sites`` (jump labels and static calls patched at
  load: xfs 1308, ext4 382, most 0-40) and the ``.ko`` copy scale with ``s``.
- Loads: udev coldplug, start times uniform over ``[1.5 s, 7.5 s)``; the
  module loader first vmallocs a copy of the ``.ko`` (``load_module`` ->
  ``copy_module_from_user``), the module goes live after relocation
  (0.5 ms + 1 ms per MiB; ``module_load`` = ``complete_formation``), the
  copy is vfree'd 5 us later (``free_copy``), ``module_init`` when the
  module's init returns (``do_init_module``: ro_after_init made read-only,
  whose purge flushes the copy), and the init sections are freed after an
  RCU grace period (``do_free_init``): init time LogNormal(median 1 ms,
  sigma 1.5, at least 10 us, at most 2 s), init free 10 ms after it.
- A few unloads (``U{2..6}`` modules, uniform over the rest of the trace)
  and half of them reloaded 0.5-5 s later (a new id; the kernel frees the
  old ``struct module`` on rmmod).

Defaults: 8 CPUs, 16 GiB, 60 s.  Loads are not ordered by dependencies
(sizes, not symbol resolution, matter to the memory model).
"""

from __future__ import annotations

import numpy as np

from traces.schema import OP_CODE, SECTION_COLUMNS
from traces.synth._anchors import PAGE_SIZE, load_module_anchors
from traces.synth._common import (MS, NS_PER_S, US, Events, Ids, Owners, Params, concat, lognormal,
                                  make_events, take)

SUMMARY = "a distribution boot: 100-200 modules with real section sizes, init freed after init, a few unloads/reloads"
DEFAULTS = {"nr_cpus": 8, "mem": "16G", "duration": "60s", "events": None}

COLDPLUG_START, COLDPLUG_LEN = 1_500 * MS, 6 * NS_PER_S


class ModuleBoot:
    """The boot's module loads, precomputed as one script (a few hundred events)."""

    def __init__(self, params: Params, ids: Ids, owners: Owners, rng: np.random.Generator) -> None:
        a = load_module_anchors()
        n = int(rng.integers(100, 201))
        pick = rng.integers(0, len(a["module"]), size=n)
        scale = np.exp(0.5 * rng.standard_normal(n))
        sections = {}
        for c in SECTION_COLUMNS:
            pages = a[c][pick] // PAGE_SIZE
            scaled = np.where(pages > 0, np.maximum(np.rint(pages * scale), 1), 0).astype(np.int64)
            sections[c] = np.where(scaled > 0, scaled * PAGE_SIZE - rng.integers(0, PAGE_SIZE, size=n), 0)
        seen: dict[str, int] = {}
        names = []
        for name in a["module"][pick]:
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}~{seen[name]}")
        self.mods = {
            **sections,
            "owner": np.array([owners.code(x) for x in names], dtype=np.int32),
            "patch_sites": np.rint(a["patch_sites"][pick] * scale).astype(np.int64),
            "ko": np.maximum(np.rint(a["ko_vmalloc_bytes"][pick] * scale), PAGE_SIZE).astype(np.int64),
        }
        start = np.sort(rng.integers(COLDPLUG_START, COLDPLUG_START + COLDPLUG_LEN, size=n))
        parts = [self._loads(ids, rng, start, np.arange(n))]

        # a few unloads, half of them reloaded
        end = params.duration_ns
        first = COLDPLUG_START + COLDPLUG_LEN + 5 * NS_PER_S
        if end > first:
            k = int(rng.integers(2, 7))
            victims = rng.choice(n, size=k, replace=False)
            t_unload = np.sort(rng.integers(first, end, size=k))
            ids_of = parts[0]["id"][parts[0]["op"] == OP_CODE["module_load"]]
            parts.append(make_events(t_unload, "module_unload", id=ids_of[victims],
                                     owner=self.mods["owner"][victims]))
            again = victims[: k // 2]
            t_reload = t_unload[: k // 2] + rng.integers(500 * MS, 5 * NS_PER_S, size=k // 2).astype(np.uint64)
            parts.append(self._loads(ids, rng, t_reload, again))
        script = concat(parts)
        self.script = take(script, np.argsort(script["ts"], kind="stable"))

    def _loads(self, ids: Ids, rng: np.random.Generator, t, idx) -> Events:
        """vmalloc(.ko copy) -> module_load -> vfree(copy) -> module_init -> module_init_free, per module ``idx``."""
        m = {k: v[idx] for k, v in self.mods.items()}
        n = len(idx)
        t = np.asarray(t, dtype=np.uint64)
        total = sum(m[c] for c in SECTION_COLUMNS)
        t_live = t + (500 * US + total * MS // (1 << 20)).astype(np.uint64)
        init_ns = lognormal(rng, 1 * MS, 1.5, n, 10 * US, 2 * NS_PER_S)
        copy, mod = ids.take(n), ids.take(n)
        return concat([
            make_events(t, "vmalloc", id=copy, size=m["ko"]),
            make_events(t_live, "module_load", id=mod, size=total, owner=m["owner"],
                        patch_sites=m["patch_sites"], **{c: m[c] for c in SECTION_COLUMNS}),
            make_events(t_live + np.uint64(5 * US), "vfree", id=copy),
            make_events(t_live + init_ns.astype(np.uint64), "module_init", id=mod, owner=m["owner"]),
            make_events(t_live + (init_ns + 10 * MS).astype(np.uint64), "module_init_free", id=mod,
                        owner=m["owner"]),
        ])

    def window(self, t0: int, t1: int) -> Events:
        ts = self.script["ts"]
        lo, hi = np.searchsorted(ts, [t0, t1])
        return take(self.script, slice(lo, hi))


def build(params: Params, ids: Ids, owners: Owners) -> list:
    return [ModuleBoot(params, ids, owners, np.random.default_rng([params.seed, 1]))]
