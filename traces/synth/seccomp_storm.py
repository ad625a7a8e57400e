"""seccomp-storm: many small classic-BPF seccomp filters attached at container and process starts.

Generative model:

- Container starts: Poisson, 2/s (a CI runner or FaaS node); each lives
  LogNormal(20 s, 1.2).  The runtime (runc) installs the container's profile
  with ``seccomp(SECCOMP_SET_MODE_FILTER)``: one classic-BPF filter whose
  JIT image is LogNormal(3 KiB, 0.3) (an allow-list of ~350 syscalls as in
  Docker's default profile; size an assumption), released with the
  container.
- Processes started inside: Poisson(3) per container, spread over its
  life, each installing its own smaller filter (systemd
  ``SystemCallFilter=``, sandboxed daemons): LogNormal(400 B, 0.6), living
  LogNormal(2 s, 1.5).  Forked children share their parent's filter (a
  reference, no new load), so only installs are events.
- Classic BPF: ``bpf_prog_create_from_user`` allocates one plain vmalloc area
  (the program) and nothing else (measured on 6.18, groundtruth/REPORT.md);
  the JIT image follows (``_common.bpf_load_events(classic=True)``).

Defaults: 16 CPUs, 64 GiB, 10 min (about 20k events).
"""

from __future__ import annotations

import numpy as np

from traces.synth._common import (MS, NS_PER_S, KiB, Events, Ids, Owners, Params, arrivals, bpf_load_events,
                                  concat, lognormal)

SUMMARY = "container and process starts attaching small classic-BPF seccomp filters with short lifetimes"
DEFAULTS = {"nr_cpus": 16, "mem": "64G", "duration": "10m", "events": None}

#: Events per filter: vmalloc, bpf_prog_load, bpf_prog_free, vfree.
EVENTS_PER_FILTER = 4


class SeccompStorm:
    def __init__(self, ids: Ids, owners: Owners, rng: np.random.Generator, *, rate: float = 2.0,
                 procs_per_container: float = 3.0, scale: float = 1.0) -> None:
        self.ids, self.rng, self.rate, self.procs = ids, rng, rate * scale, procs_per_container
        self.container = owners.code("seccomp:runc-default")
        self.process = owners.code("seccomp:process")
        self.events_per_s = self.rate * (1 + procs_per_container) * EVENTS_PER_FILTER

    def window(self, t0: int, t1: int) -> Events:
        rng = self.rng
        t = arrivals(rng, self.rate, t0, t1)
        n = len(t)
        life = lognormal(rng, 20 * NS_PER_S, 1.2, n, lo=10 * MS)
        containers = bpf_load_events(self.ids, t, lognormal(rng, 3 * KiB, 0.3, n), life,
                                     self.container, classic=True)
        k = rng.poisson(self.procs, size=n)
        start = np.repeat(t, k) + (rng.random(k.sum()) * np.repeat(life, k)).astype(np.uint64)
        m = len(start)
        procs = bpf_load_events(self.ids, start, lognormal(rng, 400, 0.6, m, lo=64),
                                lognormal(rng, 2 * NS_PER_S, 1.5, m, lo=MS), self.process, classic=True)
        return concat([containers, procs])


def build(params: Params, ids: Ids, owners: Owners) -> list:
    return [SeccompStorm(ids, owners, np.random.default_rng([params.seed, 3]))]
