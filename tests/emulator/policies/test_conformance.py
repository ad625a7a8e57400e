"""Conformance suite: every registered policy (built-in, alias or entry point) must pass these.

- no mapping is ever writable and executable at once;
- after everything is freed and purged (and shrinkers run) the address space is whole again;
- two replays with the same seed give identical results;
- every scenario of the synthetic generators replays without error.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from emulator import Machine, policies, replay
from emulator.errors import ReplayError

NAMES = sorted(policies.available())
#: Parameter sets beyond the defaults that change code paths.
VARIANTS = [(name, {}) for name in NAMES] + [
    ("perm_alloc", {"cache_mappings": True}),
    ("perm_alloc", {"module_2m_mappings": True}),
    ("perm_alloc", {"unmapped_cache": False, "text_poke_load": False}),
    ("perm_alloc", {"text_poke_load": False}),
]
IDS = [name + "".join(f"[{k}={v}]" for k, v in params.items()) for name, params in VARIANTS]
SMALL = Machine(nr_cpus=4, mem_bytes=4 << 30)


def workload(trace, mod, n=60, seed=0):
    """Every op kind, interleaved, and everything freed at the end (then a big mem_pressure)."""
    rng = np.random.default_rng(seed)
    ev = []
    for i in range(n):
        ev += [("vmalloc", 10_000 + i, int(rng.integers(1, 200_000))),
               ("bpf_prog_load", 20_000 + i, int(rng.integers(20, 40_000))),
               {"op": "exec_alloc", "id": 30_000 + i, "size": int(rng.integers(1, 9000)), "owner": "kprobes"}]
        if i % 6 == 0:
            ev.append(mod(40_000 + i, text=int(rng.integers(4096, 300_000)), data=9000, rodata=5000,
                          ro_after_init=300, init_text=3000, init_data=700, init_rodata=200, patch_sites=40))
            ev.append(("module_init_free", 40_000 + i, 0))
        if i % 4 == 3:
            j = i - 3
            ev += [("vfree", 10_000 + j, 0), ("bpf_prog_free", 20_000 + j, 0), ("exec_free", 30_000 + j, 0)]
        if i % 10 == 9:
            ev.append({"op": "text_patch", "id": 0, "patch_sites": 300})
    freed = {10_000 + j for j in range(0, n, 4) if j + 3 < n}
    ev += [("vfree", 10_000 + i, 0) for i in range(n) if 10_000 + i not in freed]
    ev += [("bpf_prog_free", 20_000 + i, 0) for i in range(n) if 10_000 + i not in freed]
    ev += [("exec_free", 30_000 + i, 0) for i in range(n) if 10_000 + i not in freed]
    ev += [("module_unload", 40_000 + i, 0) for i in range(0, n, 6)]
    ev.append(("mem_pressure", 0, 1 << 40))
    return trace(ev)


@pytest.mark.parametrize("name, params", VARIANTS, ids=IDS)
def test_never_writable_and_executable(trace, mod, name, params):
    r = replay(workload(trace, mod), policies.make(name, params), SMALL, seed=3)
    assert r.counters["emu_wx_pages"] == 0


@pytest.mark.parametrize("name, params", VARIANTS, ids=IDS)
def test_everything_freed_and_purged_leaves_the_address_space_whole(trace, mod, name, params):
    policy = policies.make(name, params)
    replay(workload(trace, mod), policy, SMALL, seed=1)
    k = policy.k
    k.vm.purge_vmap_area_lazy()
    assert k.vm.is_whole()
    assert k.pages.pages_in_use == 0
    assert sum(k.waste_live[:3]) == 0          # no pack, cache or rounding waste left


@pytest.mark.parametrize("name, params", VARIANTS, ids=IDS)
def test_same_seed_same_result(trace, mod, name, params):
    t = workload(trace, mod, seed=7)
    a = replay(t, policies.make(name, params), SMALL, seed=5, timeline_points=17)
    b = replay(t, policies.make(name, params), SMALL, seed=5, timeline_points=17)
    assert a.counters == b.counters and a.per_op == b.per_op
    assert a.timeline.keys() == b.timeline.keys()
    assert all(np.array_equal(a.timeline[c], b.timeline[c]) for c in a.timeline)
    assert np.array_equal(a.direct_map, b.direct_map)
    assert len(a.timeline["event_index"]) == 17 and a.timeline["event_index"][-1] == a.n_events - 1


@pytest.mark.parametrize("name", NAMES)
def test_unknown_id_is_a_replay_error_naming_the_event(trace, name):
    t = trace([("vmalloc", 1, 100), ("bpf_prog_free", 77, 0)])
    with pytest.raises(ReplayError) as e:
        replay(t, policies.make(name), SMALL)
    assert (e.value.row, e.value.op, e.value.id, e.value.ts_ns) == (1, "bpf_prog_free", 77, 2_000_000)
    assert "row 1" in str(e.value) and "bpf_prog_free" in str(e.value)


def _scenarios():
    synth = pytest.importorskip("traces.synth")
    return synth, sorted(synth.scenarios())


@pytest.mark.parametrize("name", NAMES)
def test_every_synthetic_scenario_replays(name):
    synth, scenarios = _scenarios()
    for scenario in scenarios:
        mod = synth.scenarios()[scenario]
        kw = {"events": 3000} if mod.DEFAULTS.get("events") else {"duration": "2m"}
        params = synth.params_for(scenario, seed=2, **kw)
        meta, batches = synth.generate(scenario, params)
        t = pa.Table.from_batches(list(batches))
        r = replay(t, policies.make(name), Machine.from_metadata({k: str(v) for k, v in meta.items()}))
        assert r.n_events == t.num_rows
        assert r.counters["emu_wx_pages"] == 0
