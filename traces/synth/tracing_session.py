"""tracing-session: kprobes, ftrace and BPF-trampoline tracing switched on and off.

Generative model: sessions arrive as a Poisson process, one a minute on
average, each lasting LogNormal(60 s, 1.0); at its end everything it set up
is torn down.  A session is one of:

- kprobes (40%): ``k ~ Geometric(0.15)`` probes (mean 6.7, at most 200).  Their
  instruction slots live in executable pages from ``alloc_insn_page``
  (``exec_alloc`` owner ``kprobes``, one 4 KiB page per 128 slots, an
  approximation of ``kprobe_insn_slots``); arming and disarming each patches
  one site (``arch_arm_kprobe`` -> ``text_poke``): ``text_patch`` with k
  sites at start and end.  Empty slot pages are freed by the slot garbage
  collector (``collect_garbage_slots``), modelled as 1 s after the end.
  bpftrace-style sessions also load 1-3 eBPF programs, released at the end.
- ftrace (20%): the function tracer.  Half the sessions trace every
  function (40k-60k ``__fentry__`` sites on a distribution kernel), half a
  filter of Geometric(0.02) functions; enabling and disabling patch all
  of them (``ftrace_replace_code``), and the ops gets a dynamic trampoline
  (``create_trampoline``: ``exec_alloc`` owner ``ftrace`` of ~400 B), freed
  after ``synchronize_rcu_tasks`` (modelled as 10 ms after the end).
- fentry/fexit (40%): ``f ~ Geometric(0.3)`` functions (at most 50), each with one
  eBPF program, one BPF trampoline image (``exec_alloc`` owner
  ``bpf_trampoline``, LogNormal(300 B, 0.5)) and its ``__fentry__`` site
  patched (``bpf_arch_text_poke``) at attach and detach.

Defaults: 8 CPUs, 32 GiB, 30 min (about 30 sessions, ~700 events).
"""

from __future__ import annotations

import numpy as np

from traces.synth._common import (MS, NS_PER_S, US, Events, Ids, Owners, Params, arrivals,
                                  bpf_jit_sizes, bpf_load_events, concat, lognormal, make_events,
                                  object_events)

SUMMARY = "kprobe/ftrace/BPF trampolines and text_patch bursts as tracing sessions switch on and off"
DEFAULTS = {"nr_cpus": 8, "mem": "32G", "duration": "30m", "events": None}

KPROBE_SLOTS_PER_PAGE = 128
#: Mean events per session (measured over 10 seeds x 300 sessions; for mixed-fleet's scaling).
EVENTS_PER_SESSION = 23


class TracingSessions:
    def __init__(self, ids: Ids, owners: Owners, rng: np.random.Generator, *, rate: float = 1 / 60,
                 scale: float = 1.0) -> None:
        self.ids, self.rng, self.rate = ids, rng, rate * scale
        self.own = {k: owners.code(k) for k in ("kprobes", "ftrace", "bpf_trampoline")}
        self.prog = owners.code("bpftrace:probe")
        self.events_per_s = self.rate * EVENTS_PER_SESSION

    def window(self, t0: int, t1: int) -> Events:
        rng = self.rng
        parts = []
        for t in arrivals(rng, self.rate, t0, t1).tolist():
            life = int(lognormal(rng, 60 * NS_PER_S, 1.0, 1, lo=NS_PER_S)[0])
            end = t + life
            session = (self._kprobes, self._ftrace, self._fentry)[rng.choice(3, p=[0.4, 0.2, 0.4])]
            parts.append(session(rng, t, end))
        return concat(parts)

    def _kprobes(self, rng, t: int, end: int) -> Events:
        k = min(int(rng.geometric(0.15)), 200)
        pages = -(-k // KPROBE_SLOTS_PER_PAGE)
        ts = t + np.arange(pages, dtype=np.uint64) * np.uint64(US)
        n_progs = int(rng.integers(1, 4))
        return concat([
            object_events(ts, end + NS_PER_S - ts.astype(np.int64), "exec_alloc", self.ids.take(pages),
                          size=4096, owner=self.own["kprobes"]),
            make_events([t + 100 * US], "text_patch", patch_sites=k),
            bpf_load_events(self.ids, t + 200 * US + np.arange(n_progs, dtype=np.uint64) * np.uint64(MS),
                            bpf_jit_sizes(rng, n_progs), life_until(end, t, n_progs), self.prog, classic=False),
            make_events([end + 100 * US], "text_patch", patch_sites=k),
        ])

    def _ftrace(self, rng, t: int, end: int) -> Events:
        sites = int(rng.integers(40_000, 60_001)) if rng.random() < 0.5 else int(rng.geometric(0.02))
        return concat([
            object_events([t], [end + 10 * MS - t], "exec_alloc", self.ids.take(1),
                          size=int(lognormal(rng, 400, 0.2, 1)[0]), owner=self.own["ftrace"]),
            make_events([t + 100 * US], "text_patch", patch_sites=sites),
            make_events([end], "text_patch", patch_sites=sites),
        ])

    def _fentry(self, rng, t: int, end: int) -> Events:
        f = min(int(rng.geometric(0.3)), 50)
        ts = t + np.arange(f, dtype=np.uint64) * np.uint64(MS)
        life = life_until(end, t, f)
        return concat([
            bpf_load_events(self.ids, ts, bpf_jit_sizes(rng, f), life, self.prog, classic=False),
            object_events(ts + np.uint64(100 * US), life, "exec_alloc", self.ids.take(f),
                          size=lognormal(rng, 300, 0.5, f, lo=64), owner=self.own["bpf_trampoline"]),
            make_events(ts + np.uint64(200 * US), "text_patch", patch_sites=1),
            make_events(np.full(f, end, dtype=np.uint64) + np.uint64(300 * US), "text_patch", patch_sites=1),
        ])


def life_until(end: int, t: int, n: int) -> np.ndarray:
    """Lifetimes so that ``n`` objects started 1 ms apart from ``t`` all end at ``end``."""
    return np.maximum(end - (t + np.arange(n) * MS), MS).astype(np.int64)


def build(params: Params, ids: Ids, owners: Owners) -> list:
    return [TracingSessions(ids, owners, np.random.default_rng([params.seed, 4]))]
