"""mixed-fleet: a day on a busy production host.

Generative model: everything at once, on one clock.

- boot-modules at the start (100-200 modules, a few unloads and reloads
  during the day; :mod:`traces.synth.boot_modules`);
- bpf-churn: the boot programs and the pod / unit / one-shot churn
  (:mod:`traces.synth.bpf_churn`);
- seccomp-storm: container and process seccomp filters
  (:mod:`traces.synth.seccomp_storm`), at 1/4 of its standalone rate;
- tracing-session: an operator's tracing sessions
  (:mod:`traces.synth.tracing_session`), one per 30 min;
- background plain vmalloc traffic, Poisson at 20/s: half are 16 KiB
  kernel stacks (``alloc_thread_stack_node`` with CONFIG_VMAP_STACK; only
  the forks that miss the per-CPU stack cache), living LogNormal(5 s, 2);
  half ``kvmalloc`` buffers of LogNormal(64 KiB, 1.5) bytes (at most 64 MiB),
  living LogNormal(1 s, 2.5); 2% are long-lived (per-cgroup and driver
  buffers), living LogNormal(1 h, 1) -- bounded, so the live set is
  stationary and a longer trace does not grow it;
- memory pressure (``mem_pressure``): Poisson, one per 30 min, asking the
  shrinkers for LogNormal(256 MiB, 1) bytes (at most 1/4 of memory).

``--events N`` sets the size: the churn rates (BPF, seccomp, background
vmalloc; not boot, tracing or pressure) are scaled by one factor so that
N events fill about ``--duration`` (estimated, with 10% headroom; the
trace stops at N events, or at ``--duration`` if that comes first).  Windows of ~65k events are
generated and written one at a time, so 10 million events need no more
memory than one window plus the objects still to be freed.

Defaults: 32 CPUs, 64 GiB, 24 h, 30 000 events.
"""

from __future__ import annotations

import numpy as np

from traces.synth import boot_modules, bpf_churn, seccomp_storm, tracing_session
from traces.synth._common import (KiB, MiB, NS_PER_S, Events, Ids, Owners, Params, arrivals, lognormal,
                                  make_events, object_events)

SUMMARY = "a day on a busy host: boot modules, BPF churn, seccomp, tracing, background vmalloc, memory pressure"
DEFAULTS = {"nr_cpus": 32, "mem": "64G", "duration": "24h", "events": 30_000}


class BackgroundVmalloc:
    """Plain vmalloc/vfree traffic: kernel stacks and kvmalloc buffers."""

    def __init__(self, ids: Ids, owners: Owners, rng: np.random.Generator, *, rate: float = 20.0,
                 scale: float = 1.0) -> None:
        self.ids, self.rng, self.rate = ids, rng, rate * scale
        self.owner = (owners.code("vmap_stack"), owners.code("kvmalloc"))
        self.events_per_s = self.rate * 2

    def window(self, t0: int, t1: int) -> Events:
        rng = self.rng
        t = arrivals(rng, self.rate, t0, t1)
        n = len(t)
        stack = rng.random(n) < 0.5
        size = np.where(stack, 16 * KiB, lognormal(rng, 64 * KiB, 1.5, n, lo=1, hi=64 * MiB))
        life = np.where(stack, lognormal(rng, 5 * NS_PER_S, 2.0, n, lo=1000),
                        lognormal(rng, NS_PER_S, 2.5, n, lo=1000))
        long_lived = rng.random(n) < 0.02
        life[long_lived] = lognormal(rng, 3600 * NS_PER_S, 1.0, int(long_lived.sum()), lo=1000)
        owner = np.where(stack, *self.owner).astype(np.int32)
        return object_events(t, life, "vmalloc", self.ids.take(n), size=size, owner=owner)


class MemPressure:
    def __init__(self, params: Params, rng: np.random.Generator, *, rate: float = 1 / 1800) -> None:
        self.rng, self.rate, self.cap = rng, rate, params.mem_total_bytes // 4

    def window(self, t0: int, t1: int) -> Events:
        t = arrivals(self.rng, self.rate, t0, t1)
        return make_events(t, "mem_pressure", size=lognormal(self.rng, 256 * MiB, 1.0, len(t), hi=self.cap))


def build(params: Params, ids: Ids, owners: Owners) -> list:
    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([params.seed, 100 + stream])

    def scalable(scale: float) -> list:
        return [*bpf_churn.churn_sources(params, ids, owners, scale, stream=110),
                seccomp_storm.SeccompStorm(ids, owners, rng(1), scale=scale / 4),
                BackgroundVmalloc(ids, owners, rng(3), scale=scale)]

    fixed = [boot_modules.ModuleBoot(params, ids, owners, rng(4)),
             bpf_churn.BpfBoot(ids, owners, rng(5)),
             tracing_session.TracingSessions(ids, owners, rng(2), rate=1 / 1800),
             MemPressure(params, rng(6))]
    scale = 1.0
    if params.events:
        # one factor for the churn rates so that params.events fill about the duration
        seconds = params.duration_ns / NS_PER_S
        fixed_events = len(fixed[0].script["ts"]) + len(fixed[1].script["ts"]) + \
            (fixed[2].events_per_s + fixed[3].rate) * seconds
        base = sum(s.events_per_s for s in scalable(1.0)) * seconds
        scale = max(1.1 * params.events - fixed_events, 1.0) / base
    return [*fixed, *scalable(scale)]
