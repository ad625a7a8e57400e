"""traces.synth: every scenario is valid, deterministic and shaped as its model says."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from traces.io import read_metadata, read_trace, scan_trace
from traces.schema import EXEC_OWNERS, OP_CODE, SECTION_COLUMNS
from traces.synth import generate, params_for, scenarios, synthesize
from traces.synth._common import (BATCH_ROWS, Ids, bpf_jit_sizes, bpf_load_events, concat, fresh_direct_map,
                                  parse_duration, parse_size)
from traces.validate import validate_trace

SCENARIOS = ("boot-modules", "bpf-churn", "mixed-fleet", "seccomp-storm", "tracing-session")


def frame(path) -> pl.DataFrame:
    return pl.from_arrow(read_trace(path))


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return {name: synthesize(name, out / f"{name}.parquet", seed=7) for name in SCENARIOS}


def test_registry_finds_every_scenario_by_module():
    found = scenarios()
    assert tuple(found) == SCENARIOS
    for mod in found.values():
        assert mod.SUMMARY and "\n" not in mod.SUMMARY and mod.__doc__
        assert set(mod.DEFAULTS) == {"nr_cpus", "mem", "duration", "events"}


def test_a_new_scenario_is_one_file(tmp_path, monkeypatch):
    import traces.synth as synth
    (tmp_path / "my_storm.py").write_text(
        '"""my-storm: one vmalloc a second."""\n'
        "import numpy as np\n"
        "from traces.synth._common import NS_PER_S, arrivals, object_events\n"
        "SUMMARY = 'one vmalloc a second'\n"
        "DEFAULTS = {'nr_cpus': 2, 'mem': '1G', 'duration': '10s', 'events': None}\n"
        "class S:\n"
        "    def __init__(s, ids, rng): s.ids, s.rng = ids, rng\n"
        "    def window(s, t0, t1):\n"
        "        t = arrivals(s.rng, 1.0, t0, t1)\n"
        "        return object_events(t, NS_PER_S // 2, 'vmalloc', s.ids.take(len(t)), size=4096)\n"
        "def build(params, ids, owners):\n"
        "    return [S(ids, np.random.default_rng(params.seed))]\n")
    monkeypatch.setattr(synth, "__path__", [*synth.__path__, str(tmp_path)])
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "my-storm" in scenarios()
    path = synthesize("my-storm", tmp_path / "t.parquet", seed=1)
    assert validate_trace(path) == [] and set(frame(path)["op"]) <= {"vmalloc", "vfree"}


@pytest.mark.parametrize("name", SCENARIOS)
def test_round_trip_valid_with_metadata(traces, name):
    path = traces[name]
    assert validate_trace(path) == []
    meta = read_metadata(path)
    p = params_for(name, seed=7)
    assert meta["source"] == f"synthetic:{name}:seed=7"
    assert meta["schema_version"] == "1"
    assert int(meta["nr_cpus"]) == p.nr_cpus and int(meta["mem_total_bytes"]) == p.mem_total_bytes
    dm = fresh_direct_map(p.mem_total_bytes)
    assert {k: int(meta[k]) for k in dm} == dm
    df = frame(path)
    assert df.height > 100
    assert df["cpu"].max() < p.nr_cpus
    assert df["ts_ns"].max() < p.duration_ns
    assert (df["seq"].to_numpy() == np.arange(df.height)).all()


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_seed_same_bytes_other_seed_other_trace(tmp_path, traces, name):
    again = synthesize(name, tmp_path / "again.parquet", seed=7)
    assert again.read_bytes() == traces[name].read_bytes()
    other = synthesize(name, tmp_path / "other.parquet", seed=8)
    assert not frame(other).equals(frame(traces[name]))


def test_options_are_honoured(tmp_path):
    path = synthesize("bpf-churn", tmp_path / "t.parquet", seed=1, nr_cpus=3, mem="8G", duration="10m", events=500)
    df, meta = frame(path), read_metadata(path)
    assert df.height == 500 and df["cpu"].max() < 3
    assert meta["nr_cpus"] == "3" and meta["mem_total_bytes"] == str(8 << 30)
    short = frame(synthesize("bpf-churn", tmp_path / "s.parquet", seed=1, duration="40s"))
    assert short["ts_ns"].max() < 40e9


def test_batches_are_bounded():
    params = params_for("mixed-fleet", seed=1, events=200_000)
    _, batches = generate("mixed-fleet", params)
    sizes = [b.num_rows for b in batches]
    assert sum(sizes) == 200_000 and max(sizes) == BATCH_ROWS and all(s == BATCH_ROWS for s in sizes[:-1])


def test_mixed_fleet_events_fill_the_day(tmp_path):
    path = synthesize("mixed-fleet", tmp_path / "t.parquet", seed=2, events=300_000)
    df = frame(path)
    assert df.height == 300_000
    # rates are scaled so N events take about --duration (24 h, 10% headroom)
    assert 0.8 * 86400e9 < df["ts_ns"].max() < 86400e9
    assert set(df["op"]) == {op for op in OP_CODE}
    assert validate_trace(path) == []


def test_fresh_direct_map_matches_this_host():
    # this host after boot: DirectMap4k 28672 kB, 2M 2068480 kB, 1G the rest (26 GiB mapped)
    assert fresh_direct_map(26 << 30) == {"DirectMap4k": 28672, "DirectMap2M": 2068480, "DirectMap1G": 25165824}
    assert fresh_direct_map(1 << 30) == {"DirectMap4k": 28672, "DirectMap2M": 1019904, "DirectMap1G": 0}
    small = fresh_direct_map((3 << 30) + (3 << 20))  # 3 GiB + 3 MiB: the tail is one 2M page and 1 MiB of 4K
    assert small == {"DirectMap4k": 28672 + 1024, "DirectMap2M": 2068480 + 2048, "DirectMap1G": 1 << 20}
    for mem in (64 << 20, 5 << 30, 1 << 40):
        assert sum(fresh_direct_map(mem).values()) * 1024 == mem


def test_parse_size_and_duration():
    assert parse_size("64G") == 64 << 30 and parse_size("4k") == 4096 and parse_size("1T") == 1 << 40
    assert parse_size("512MiB") == 512 << 20 and parse_size("123") == 123
    assert parse_duration("24h") == 86400 * 10**9 and parse_duration("250ms") == 250 * 10**6
    assert parse_duration("1.5s") == 1_500_000_000 and parse_duration("30m") == 1800 * 10**9
    from traces.errors import PermtraceError
    for bad in ("64X", "", "-1G"):
        with pytest.raises(PermtraceError):
            parse_size(bad)
    with pytest.raises(PermtraceError):
        parse_duration("soon")


def test_bpf_jit_sizes_follow_the_published_figures():
    # Song Liu, execmem_alloc v5 (2022): 50% < 500 B, 75% < 2 KiB; a tail into hundreds of KiB
    s = bpf_jit_sizes(np.random.default_rng(0), 100_000)
    assert 0.49 < (s < 500).mean() < 0.51
    assert 0.74 < (s < 2048).mean() < 0.76
    assert (s > 100 << 10).sum() > 100 and s.max() <= 1 << 20 and s.min() >= 25


def ops_of(ev):
    order = np.argsort(ev["ts"], kind="stable")
    from traces.schema import OPS
    return [OPS[c] for c in ev["op"][order]]


def test_one_ebpf_load_is_three_vmalloc_areas_two_freed_at_once():
    # GIVEN one eBPF load of a 28683 B image living 1 s (groundtruth/REPORT.md "What a load does")
    ev = bpf_load_events(Ids(), np.array([0], np.uint64), [28683], 10**9, 5, classic=False)
    # THEN prog, aux, tag areas; tag and aux freed before the program goes live; the prog area after release
    assert ops_of(ev) == ["vmalloc", "vmalloc", "vmalloc", "vfree", "vfree", "bpf_prog_load",
                          "bpf_prog_free", "vfree"]
    load = ev["op"] == OP_CODE["bpf_prog_load"]
    assert ev["size"][load].tolist() == [28683] and ev["owner"][load].tolist() == [5]
    assert ev["size"][ev["op"] == OP_CODE["vmalloc"]].tolist() == [40960, 4780 * 80, 4780 * 8]  # prog: round_up(72 + 8 * insns, 4K)


def test_one_classic_load_is_one_vmalloc_area():
    ev = bpf_load_events(Ids(), np.array([0, 5], np.uint64), [400, 400], -1, 1, classic=True)
    assert ops_of(ev) == ["vmalloc", "vmalloc", "bpf_prog_load", "bpf_prog_load"]  # -1: never released


def test_boot_modules_model(traces):
    df = frame(traces["boot-modules"])
    loads = df.filter(pl.col("op") == "module_load")
    unloads = df.filter(pl.col("op") == "module_unload")
    assert 100 <= loads.height - unloads.height // 2 <= 200 + 3
    assert 2 <= unloads.height <= 6
    # every load's init sections are freed once, after the load
    init = df.filter(pl.col("op") == "module_init_free")
    assert sorted(init["id"]) == sorted(loads["id"])
    j = loads.join(init, on="id", suffix="_init")
    assert (j["seq_init"] > j["seq"]).all()
    # sizes are anchored on real modules: every load has text, sizes within 4x the largest anchor
    assert (loads["text_size"] > 0).all() and loads["text_size"].max() < 4 * 1011712
    assert loads["size"].to_list() == loads.select(pl.sum_horizontal(SECTION_COLUMNS))["text_size"].to_list()
    # heavy-tailed patch sites: most modules few, some hundreds (xfs 1308, btrfs 529, ext4 382)
    assert loads["patch_sites"].median() < 30 and loads["patch_sites"].max() > 200
    # the loader's .ko copy: one plain vmalloc per load, vfree'd right after it
    assert df.filter(pl.col("op") == "vmalloc").height == loads.height


def test_bpf_churn_model(traces):
    df = frame(traces["bpf-churn"])
    n = df.group_by("op").len().to_dict(as_series=False)
    counts = dict(zip(n["op"], n["len"]))
    loads = df.filter(pl.col("op") == "bpf_prog_load")
    classic = loads.filter(pl.col("owner").str.starts_with("pcap:")).height
    assert classic > 0 and counts["vmalloc"] == 3 * (loads.height - classic) + classic
    assert 0 < counts["bpf_prog_free"] < counts["bpf_prog_load"]  # long- and short-lived
    assert set(loads["owner"].str.split(":").list.first()) == {"systemd", "cilium", "agent", "pcap"}


def test_seccomp_storm_model(traces):
    df = frame(traces["seccomp-storm"])
    loads = df.filter(pl.col("op") == "bpf_prog_load")
    assert df.filter(pl.col("op") == "vmalloc").height == loads.height  # classic BPF: 1 area
    assert loads["size"].median() < 2048 and loads.height > 1000
    frees = df.filter(pl.col("op") == "bpf_prog_free")
    life = loads.join(frees, on="id", suffix="_free")
    assert ((life["ts_ns_free"] - life["ts_ns"]).median()) < 60e9  # short lifetimes


def test_tracing_session_model(traces):
    df = frame(traces["tracing-session"])
    ex = df.filter(pl.col("op") == "exec_alloc")
    assert set(ex["owner"]) <= set(EXEC_OWNERS) and ex.height > 0
    patches = df.filter(pl.col("op") == "text_patch")
    assert patches.height >= 2 and (patches["patch_sites"] > 0).all()
    # switched on and off: each on has its off with the same sites (only sessions still on at the end differ)
    on_off = patches["patch_sites"].value_counts()
    assert (on_off["count"] % 2 == 0).mean() > 0.8
    assert df.filter(pl.col("op") == "exec_free").height > 0


def test_scan_trace_streams_synthetic_traces(traces):
    assert sum(b.num_rows for b in scan_trace(traces["mixed-fleet"], 4096)) == 30_000


def test_concat_of_nothing_is_empty():
    assert len(concat([])["ts"]) == 0
