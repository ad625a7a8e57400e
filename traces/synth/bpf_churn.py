"""bpf-churn: BPF programs loaded and released on a host running systemd, a CNI and observability agents.

Generative model (rates per second, lifetimes LogNormal(median, sigma)):

- JIT image sizes, every program: LogNormal(median 500 B, sigma 2.09) clipped
  to [25 B, 1 MiB], so 50% < 500 B, 75% < 2 KiB and a tail into hundreds of
  KiB (Song Liu, execmem_alloc v5 cover letter, Nov 2022; see
  ``_common.BPF_JIT_*``).
- Boot (uniform over 2-30 s), never released: systemd 10-20 cgroup programs
  (``sd_devices``, ``sd_fw_*``), the CNI 40-80 (``cil_*``/``tail_*`` tc and
  socket programs), agents 20-60 (kprobe/tracepoint programs).
- Pods (CNI endpoint regeneration): 1/min, each 4-8 programs loaded
  together and released with the pod, lifetime LogNormal(30 min, 1.5).
- systemd units with ``IPAddressDeny=``/``DeviceAllow=``: 0.2/s, 1-2
  programs, LogNormal(10 min, 1.5).
- Agent one-shots (bpftrace, profilers): 0.05/s, 1-10 programs,
  LogNormal(30 s, 1.0).
- Packet captures (tcpdump/libpcap ``SO_ATTACH_FILTER``): 0.01/s, one
  classic-BPF filter, LogNormal(5 min, 1.5).
- An eBPF load allocates 3 plain vmalloc areas, 2 freed at once, the
  program's own area vfree'd after its release; a classic one 1 area
  (groundtruth/REPORT.md, "What a load does"; ``_common.bpf_load_events``).

Defaults: 16 CPUs, 64 GiB, 1 h (about 20k events).
"""

from __future__ import annotations

import numpy as np

from traces.synth._common import (FOREVER, MS, NS_PER_S, Events, Ids, Owners, Params, arrivals,
                                  bpf_jit_sizes, bpf_load_events, concat, lognormal)

SUMMARY = "BPF programs of systemd, a CNI and agents loaded and released over time (eBPF, 3 vmalloc areas per load)"
DEFAULTS = {"nr_cpus": 16, "mem": "64G", "duration": "1h", "events": None}

SYSTEMD = ("sd_devices", "sd_fw_egress", "sd_fw_ingress", "restrict_filesystems", "sd_bind")
CNI = ("cil_from_container", "cil_to_container", "cil_from_netdev", "cil_to_host", "cil_sock4_connect",
       "tail_handle_ipv4", "tail_ipv4_ct_egress", "tail_ipv4_policy", "tail_nodeport_nat")
AGENT = ("kprobe_tcp_connect", "tp_sched_process_exec", "kprobe_vfs_read", "tp_sys_enter", "uprobe_ssl_read",
         "profile_cpu", "kretprobe_tcp_sendmsg")

#: (owner prefix, names, arrivals/s, programs per arrival [lo, hi], lifetime median ns, sigma, classic BPF)
CHURN = (
    ("cilium", CNI, 1 / 60, (4, 8), 30 * 60 * NS_PER_S, 1.5, False),       # pods
    ("systemd", SYSTEMD, 0.2, (1, 2), 10 * 60 * NS_PER_S, 1.5, False),     # units
    ("agent", AGENT, 0.05, (1, 10), 30 * NS_PER_S, 1.0, False),            # one-shots
    ("pcap", ("tcpdump",), 0.01, (1, 1), 5 * 60 * NS_PER_S, 1.5, True),    # packet captures
)
#: (owner prefix, names, programs at boot [lo, hi])
BOOT = (("systemd", SYSTEMD, (10, 20)), ("cilium", CNI, (40, 80)), ("agent", AGENT, (20, 60)))
#: Events per program loaded and released: eBPF 3 vmalloc, 3 vfree, load, free; classic 1 + 1 + 2.
EVENTS_PER_PROG = {False: 8, True: 4}


def owner_codes(owners: Owners, prefix: str, names) -> np.ndarray:
    return np.array([owners.code(f"{prefix}:{n}") for n in names], dtype=np.int32)


class BpfBoot:
    """Programs loaded at boot and never released."""

    def __init__(self, ids: Ids, owners: Owners, rng: np.random.Generator) -> None:
        parts = []
        for prefix, names, (lo, hi) in BOOT:
            n = int(rng.integers(lo, hi + 1))
            ts = np.sort(rng.integers(2 * NS_PER_S, 30 * NS_PER_S, size=n)).astype(np.uint64)
            parts.append(bpf_load_events(ids, ts, bpf_jit_sizes(rng, n), FOREVER,
                                         rng.choice(owner_codes(owners, prefix, names), size=n), classic=False))
        ev = concat(parts)
        order = np.argsort(ev["ts"], kind="stable")
        self.script = {c: v[order] for c, v in ev.items()}

    def window(self, t0: int, t1: int) -> Events:
        lo, hi = np.searchsorted(self.script["ts"], [t0, t1])
        return {c: v[lo:hi] for c, v in self.script.items()}


class BpfChurn:
    """Groups of programs arriving as a Poisson process, loaded and released together."""

    def __init__(self, ids: Ids, owners: Owners, rng: np.random.Generator, *, prefix: str, names,
                 rate: float, per_arrival: tuple[int, int], life_median: int, life_sigma: float,
                 classic: bool = False, scale: float = 1.0) -> None:
        self.ids, self.rng, self.rate, self.per, self.classic = ids, rng, rate * scale, per_arrival, classic
        self.life = (life_median, life_sigma)
        self.codes = owner_codes(owners, prefix, names)
        self.events_per_s = self.rate * sum(per_arrival) / 2 * EVENTS_PER_PROG[classic]

    def window(self, t0: int, t1: int) -> Events:
        rng = self.rng
        t = arrivals(rng, self.rate, t0, t1)
        k = rng.integers(self.per[0], self.per[1] + 1, size=len(t))
        life = lognormal(rng, *self.life, len(t), lo=MS)
        # the programs of one arrival load back to back (1 ms apart) and die together
        nth = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
        ts = np.repeat(t, k) + (nth * MS).astype(np.uint64)
        n = len(ts)
        return bpf_load_events(self.ids, ts, bpf_jit_sizes(rng, n), np.repeat(life, k),
                               rng.choice(self.codes, size=n), classic=self.classic)


def churn_sources(params: Params, ids: Ids, owners: Owners, scale: float = 1.0, stream: int = 10) -> list:
    return [BpfChurn(ids, owners, np.random.default_rng([params.seed, stream + i]), prefix=prefix, names=names,
                     rate=rate, per_arrival=per, life_median=med, life_sigma=sig, classic=classic, scale=scale)
            for i, (prefix, names, rate, per, med, sig, classic) in enumerate(CHURN)]


def build(params: Params, ids: Ids, owners: Owners) -> list:
    return [BpfBoot(ids, owners, np.random.default_rng([params.seed, 2])), *churn_sources(params, ids, owners)]
