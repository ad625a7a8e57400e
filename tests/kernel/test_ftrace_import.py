"""The ftrace importer, small exact cases: line formats, the GT protocols, attribution."""

from __future__ import annotations

import json

import polars as pl
import pytest

from traces.errors import TraceError
from traces.importers.ftrace import import_ftrace, observed_path
from traces.io import read_metadata
from traces.schema import SECTION_COLUMNS

EXEC = "vstart=0xffffffffc0000000 vend=0xffffffffff000000"
VMAL = "vstart=0xffffc90000000000 vend=0xffffe8ffffffffff"


def run(tmp_path, lines, **kw):
    out = tmp_path / "t.parquet"
    summary = import_ftrace(lines, out, **kw)
    trace = pl.read_parquet(out)
    obs = pl.read_parquet(observed_path(out))
    return summary, trace, obs


def by_op(obs: pl.DataFrame) -> dict[tuple[str, str | None], int]:
    return {(k, op): v for k, op, v in obs.group_by("kind", "op").agg(pl.col("value").sum()).iter_rows()}


@pytest.mark.parametrize("prefix", [
    "          python3-8489    [001] ...1.  1265.840168:",          # tracefs, 5-char flags
    "          python3-8489    [001] ...1  1265.840168:",           # older kernels, 4-char flags
    "          python3-8489  [001]  1265.840168:",                  # trace-cmd report, no flags
    "          python3-8489    (   8489) [001] ...1.  1265.840168:",  # record-tgid
    "  Web Content-x-8489 [001] d..2. 1265.840168:",                # spaces and dashes in the name
    "            <...>-8489    [001] .....  1265.840168:",          # unknown comm
])
def test_line_formats_all_parse(tmp_path, prefix):
    # GIVEN one vmalloc allocation in each of the line formats tracers produce
    lines = ["cpus=2", f"{prefix} alloc_vmap_area: va_start: 18446683600598831104 size=40960 "
                       f"align=1 {VMAL} failed=0"]
    # WHEN imported
    summary, trace, _ = run(tmp_path, lines)
    # THEN it is one vmalloc event of 36 KiB (the guard page removed), on CPU 1, at 1265.840168 s
    assert summary.used == {"alloc_vmap_area": 1} and summary.n_malformed == 0
    assert trace.select("op", "size", "cpu", "ts_ns").rows() == [("vmalloc", 36864, 1, 1265840168000)]
    assert summary.metadata["nr_cpus"] == "2"


def test_thread_align_vmallocs_are_thread_stacks(tmp_path):
    # GIVEN a 16 KiB-aligned vmalloc (alloc_thread_stack_node), as the 6.12 tracepoint and the
    # 6.1 kprobes print it, and a page-aligned one
    lines = [f"p-1 [000] ..... 1.0: alloc_vmap_area: va_start: 4096 size=20480 align=16384 {VMAL} failed=0",
             f"p-1 [000] ..... 1.1: alloc_va: (alloc_vmap_area+0x0/0x880) size=20480 align=16384 {VMAL}",
             "p-1 [000] ..... 1.2: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000010000 "
             "va_end=0xffffc90000015000",
             f"p-1 [000] ..... 1.3: alloc_vmap_area: va_start: 131072 size=20480 align=4096 {VMAL} failed=0"]
    # WHEN imported THEN the aligned ones are owned by thread_stack (the emulator aligns them)
    _, trace, _ = run(tmp_path, lines)
    assert trace.select("op", "size", "owner").rows() == [
        ("vmalloc", 16384, "thread_stack"), ("vmalloc", 16384, "thread_stack"), ("vmalloc", 16384, None)]


def test_vmalloc_layout_before_tracing_becomes_vmalloc_busy(tmp_path):
    # GIVEN two areas traced at 64 KiB and 128 KiB into the vmalloc range (base 0xffffc90000000000)
    lines = [f"p-1 [000] ..... 1.0: alloc_vmap_area: va_start: {0xffffc90000010000} size=20480 align=4096 "
             f"{VMAL} failed=0",
             f"p-1 [000] ..... 1.1: alloc_vmap_area: va_start: {0xffffc90000020000} size=12288 align=4096 "
             f"{VMAL} failed=0"]
    # WHEN imported THEN what no traced area took below the highest one was in use at the start:
    # pages [0, 16) and [21, 32), which Machine.from_metadata hands to the emulated vmalloc range
    summary, _, _ = run(tmp_path, lines)
    assert summary.metadata["vmalloc_busy"] == "0+16,21+11"
    # AND an area allocated before tracing (pages [2, 6) with its guard) freed during it: its
    # stand-in vmalloc (id 3) is named on its block, cut out of the gap around it
    lines.append("p-1 [000] ..... 1.2: free_va: (free_vmap_area_noflush+0x0/0x340) "
                 "va_start=0xffffc90000002000 va_end=0xffffc90000006000")
    summary, trace, _ = run(tmp_path, lines)
    assert summary.metadata["vmalloc_busy"] == "0+2,2+4@3,6+10,21+11"
    assert trace.select("op", "id", "size").rows()[-2:] == [("vmalloc", 3, 12288), ("vfree", 3, 0)]


def test_hex_and_decimal_addresses_join(tmp_path):
    # GIVEN an area allocated with its address in decimal (6.18) and freed in hex
    lines = ["p-1 [000] ..... 1.000000: alloc_vmap_area: va_start: 18446683600598831104 size=8192 "
             f"align=1 {VMAL} failed=0",
             "p-1 [000] ..... 1.000001: free_vmap_area_noflush: va_start=0xffffc90001b79000 nr_lazy=2 "
             "nr_lazy_max=16384"]
    # WHEN imported THEN the free matches the allocation
    _, trace, _ = run(tmp_path, lines)
    assert trace.select("op", "id").rows() == [("vmalloc", 1), ("vfree", 1)]
    assert 18446683600598831104 == 0xFFFFC90001B79000


def test_malformed_lines_are_counted_with_line_numbers(tmp_path):
    # GIVEN a good line, a truncated event line, and a known event with a bad field
    good = f"p-1 [000] ..... 1.000000: alloc_vmap_area: va_start: 4096 size=8192 align=1 {VMAL} failed=0"
    lines = [good, "p-1 [000] ..... 1.0000", f"p-1 [000] ..... 1.1: alloc_vmap_area: va_start: x1 size=8192 "
                                             f"align=1 {VMAL} failed=0", "random kernel log line"]
    # WHEN imported
    summary, trace, _ = run(tmp_path, lines)
    # THEN lines 2 and 3 are malformed (with numbers and reasons), line 4 is unused, nothing raised
    assert summary.n_malformed == 2
    assert [(n, why.split(":")[0]) for n, why, _ in summary.malformed] == [
        (2, "event line does not parse"), (3, "alloc_vmap_area")]
    assert summary.unused["not a trace line"] == 1
    assert trace.height == 1
    assert "line 2" in str(summary)


def test_no_trace_lines_is_a_clear_error(tmp_path):
    with pytest.raises(TraceError, match="no trace events found"):
        import_ftrace(["hello", "world"], tmp_path / "t.parquet")


def host_bpf_case() -> list[str]:
    """gt_bpf.py on 6.18: one program opens a new pack (2 splits), then its pack is freed."""
    me = "python3-100 [001] ..... "
    kw = "kworker/0:1-9 [000] ..... "
    return [
        f"{me}1.000000: tracing_mark_write: GT start",
        f"{me}1.000001: tracing_mark_write: GT load 0",
        f"{me}1.000002: alloc_vmap_area: va_start: 4096 size=40960 align=1 {VMAL} failed=0",
        f"{me}1.000003: alloc_vmap_area: va_start: 1048576 size=364544 align=1 {VMAL} failed=0",
        f"{me}1.000004: free_vmap_area_noflush: va_start=0x100000 nr_lazy=89 nr_lazy_max=16384",
        f"{me}1.000005: alloc_vmap_area: va_start: 18446744072635809792 size=2101248 align=1 {EXEC} failed=0",
        f"{me}1.000006: purge_vmap_area_lazy: start=0xffffc90000100000 end=0xffffc90000159000 num_purged=1",
        f"{me}1.000007: csd_queue_cpu: cpu=0 callsite=on_each_cpu_cond_mask+0x20/0x60 func=do_flush_tlb_all csd=1",
        f"{me}1.000008: ipi_send_cpu: cpu=0 callsite=on_each_cpu_cond_mask+0x20/0x60 callback=x+0x0/0x10",
        f"{me}1.000009: csd_queue_cpu: cpu=0 callsite=on_each_cpu_cond_mask+0x20/0x60 func=do_flush_tlb_all csd=1",
        f"{me}1.000010: csd_queue_cpu: cpu=0 callsite=on_each_cpu_cond_mask+0x20/0x60 func=do_flush_tlb_all csd=1",
        f"{me}1.000011: csd_queue_cpu: cpu=0 callsite=on_each_cpu_cond_mask+0x20/0x60 func=do_flush_tlb_all csd=1",
        "other-7 [000] ..... 1.000012: alloc_vmap_area: va_start: 65536 size=8192 align=1 "
        f"{VMAL} failed=0",
        f"{me}1.500000: tracing_mark_write: GT close 0",
        f"{kw}1.600000: free_vmap_area_noflush: va_start=0x1000 nr_lazy=10 nr_lazy_max=16384",
        f"{kw}1.600001: free_vmap_area_noflush: va_start=0xffffffffc0000000 nr_lazy=523 nr_lazy_max=16384",
        f"{kw}1.600002: purge_vmap_area_lazy: start=0xffff888100000000 end=0xffffffffc0201000 num_purged=2",
        f"{kw}1.600003: csd_queue_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 func=do_flush_tlb_all csd=2",
        f"{me}2.000000: tracing_mark_write: GT end",
    ]


def test_host_bpf_protocol(tmp_path):
    # GIVEN a gt_bpf.py trace and its case JSON (28683-byte program, splits 7 -> 9)
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"progs": [{"fd": 3, "jited_len": 28683}],
                                "snap_before": {"direct_map_level2_splits": 7, "direct_map_level3_splits": 0,
                                                "DirectMap4k": 1024, "DirectMap2M": 4096, "DirectMap1G": 0},
                                "delta_total": {"direct_map_level2_splits": 2}}))
    # WHEN imported
    summary, trace, obs = run(tmp_path, host_bpf_case(), bpf_progs=case)
    # THEN the workload is the program and its 2 plain vmalloc areas (the exec area is the kernel's)
    assert trace.select("op", "id", "size").rows() == [
        ("vmalloc", 1, 36864), ("vmalloc", 2, 360448), ("vfree", 2, 0), ("bpf_prog_load", 0, 28683),
        ("bpf_prog_free", 0, 0), ("vfree", 1, 0)]
    # AND the load's purge and 4 full flushes (2 splits + purge + CPA) are charged to it, the pack
    # free's purge + flush (by a kworker) to the program's release, the other task's alloc is noise
    assert by_op(obs) == {
        ("exec_area_alloc", "bpf_prog_load"): 1,
        ("vmap_purge", "bpf_prog_load"): 1, ("flush_tlb_all", "bpf_prog_load"): 4,
        ("vmap_purge", "bpf_prog_free"): 1, ("flush_tlb_all", "bpf_prog_free"): 1,
        ("direct_map_level2_splits", None): 2,
    }
    assert summary.unused["vmalloc by another task"] == 1
    meta = read_metadata(tmp_path / "t.parquet")
    assert (meta["DirectMap4k"], meta["observed.flush_tlb_all"]) == ("1024", "5")
    assert "direct_map_level3_splits" in meta["observed_kinds"].split(",")


def test_csd_rounds_group_remote_cpus(tmp_path):
    # GIVEN one flush_tlb_all to 3 remote CPUs, then a second one (4 CPUs)
    lines = [f"p-1 [000] ..... 1.{i:06d}: csd_queue_cpu: cpu={c} callsite=x func=do_flush_tlb_all csd=1"
             for i, c in enumerate([1, 2, 3, 1, 2, 3])]
    lines.insert(0, "p-1 [000] ..... 0.5: tracing_mark_write: GT start")
    lines.insert(1, f"p-1 [000] ..... 0.6: alloc_vmap_area: va_start: 4096 size=8192 align=1 {VMAL} failed=0")
    # WHEN imported THEN that is 2 rounds, not 6 CSDs
    _, _, obs = run(tmp_path, lines)
    assert by_op(obs) == {("flush_tlb_all", "vmalloc"): 2}


def guest_module_case() -> list[str]:
    """init.sh on 6.1 (kprobes): crc32c_generic loaded (copied from the shared serial log), init freed,
    unloaded."""
    i = "insmod-125 [001] ..... "
    return [
        "GT init-uptime 2.89 kernel 6.1.0-56-amd64 cpus 2",
        "GT vmstat-before direct_map_level2_splits 1",
        "GT meminfo-before DirectMap4k:       26496 kB",
        "init-1 [000] ..... 4.550497: tracing_mark_write: GT insmod kernel/crypto/crc32c_generic.ko",
        f"{i}4.552160: alloc_va: (alloc_vmap_area+0x0/0x880) size=16384 align=1 {VMAL}",
        f"{i}4.552191: alloc_va_ret: (__get_vm_area_node+0xb1/0x150 <- alloc_vmap_area) "
        "va_start=0xffffc900003dd000 va_end=0xffffc900003e1000",
        f"{i}4.562242: alloc_va: (alloc_vmap_area+0x0/0x880) size=20480 align=4096 {EXEC}",
        f"{i}4.562258: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffffffc0203000 va_end=0xffffffffc0208000",
        f"{i}4.562396: alloc_va: (alloc_vmap_area+0x0/0x880) size=16384 align=4096 {EXEC}",
        f"{i}4.562404: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffffffc0208000 va_end=0xffffffffc020c000",
        f"{i}4.570371: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0203000 npages=1",
        f"{i}4.570393: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffffffffffffffff end=0x0",
        f"{i}4.570416: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0xffffc90000400000 end=0xffffc9000041d000",
        f"{i}4.570466: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_kernel_range_flush+0x0/0x30",
        f"{i}4.570634: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_flush_tlb_all+0x0/0x30",
        f"{i}4.570831: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0204000 npages=1",
        f"{i}4.570841: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffffffffffffffff end=0x0",
        f"{i}4.570937: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0208000 npages=1",
        f"{i}4.571026: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0209000 npages=0",
        f"{i}4.571062: set_nx: (set_memory_nx+0x0/0x50) addr=0xffffffffc0204000 npages=1",
        f"{i}4.571083: set_nx: (set_memory_nx+0x0/0x50) addr=0xffffffffc0205000 npages=0",
        f"{i}4.571092: set_nx: (set_memory_nx+0x0/0x50) addr=0xffffffffc0205000 npages=2",
        f"{i}4.571101: set_nx: (set_memory_nx+0x0/0x50) addr=0xffffffffc0209000 npages=0",
        f"{i}4.571111: set_nx: (set_memory_nx+0x0/0x50) addr=0xffffffffc0209000 npages=2",
        f"{i}4.571142: set_x: (set_memory_x+0x0/0x50) addr=0xffffffffc0203000 npages=1",
        f"{i}4.571153: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=__cpa_flush_tlb+0x0/0x70",
        f"{i}4.571222: set_x: (set_memory_x+0x0/0x50) addr=0xffffffffc0208000 npages=1",
        f"{i}4.571500: text_poke_bp_batch: (text_poke_bp_batch+0x0/0x2a0) nr=3",
        f"{i}4.571501: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_sync_core+0x0/0x30",
        f"{i}4.573018: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc900003dd000 "
        "va_end=0xffffc900003e1000",
        f"{i}4.573099: module_load: crc32c_generic ",
        # do_init_module: module_enable_ro(mod, true); its purge flushes the freed copy
        f"{i}4.573200: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0203000 npages=1",
        f"{i}4.573210: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffffffffffffffff end=0x0",
        f"{i}4.573220: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0xffffc900003dd000 "
        "end=0xffffc900003e1000",
        f"{i}4.573230: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_kernel_range_flush+0x0/0x30",
        "init-1 [000] ..... 4.591352: tracing_mark_write: GT vmstat direct_map_level2_splits 2 "
        "direct_map_level3_splits 0 ",
        "kworker/1:2-54 [001] ..... 4.6: free_va: (free_vmap_area_noflush+0x0/0x340) "
        "va_start=0xffffffffc0208000 va_end=0xffffffffc020c000",
        "kworker/1:2-54 [001] ..... 4.60001: purge: (__purge_vmap_area_lazy+0x0/0x750) "
        "start=0xffff888000000000 end=0xffffffffc020c000",
        "kworker/1:2-54 [001] ..... 4.60002: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0x1 end=0x2",
        "kworker/1:2-54 [001] ..... 4.60003: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) "
        "func=do_flush_tlb_all+0x0/0x30",
        "rmmod-130 [000] ..... 9.0: module_free: crc32c_generic",
        "rmmod-130 [000] ..... 9.1: free_va: (free_vmap_area_noflush+0x0/0x340) "
        "va_start=0xffffffffc0203000 va_end=0xffffffffc0208000",
        "rmmod-130 [000] ..... 9.2: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffff888000010000 "
        "end=0xffff888000014000",
        "rmmod-130 [000] ..... 9.3: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0xffff888000010000 "
        "end=0xffffffffc0208000",
        "rmmod-130 [000] ..... 9.4: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_flush_tlb_all+0x0/0x30",
    ]


def test_guest_module_protocol(tmp_path):
    # WHEN the 6.1 guest's kprobe trace of one module is imported
    summary, trace, obs = run(tmp_path, guest_module_case())
    # THEN the module's two module_alloc areas became one module_load with its 6.1 section sizes,
    # placed where load_module allocated them: before its patching and the vfree of its .ko copy,
    # and do_init_module's first CPA after the module_load tracepoint became a module_init
    ops = trace["op"].to_list()
    # (first, the two areas queued before tracing that the load's first purge shows at either
    # end of its range, 0x400 to 0x41d pages: nothing traced was queued there)
    assert ops == ["vmalloc", "vfree", "vmalloc", "vfree",
                   "vmalloc", "module_load", "text_patch", "vfree", "module_init", "module_init_free",
                   "module_unload"]
    load = trace.filter(pl.col("op") == "module_load").row(0, named=True)
    assert load["owner"] == "crc32c_generic"
    assert {c: load[c] for c in SECTION_COLUMNS} == {
        "text_size": 4096, "data_size": 8192, "rodata_size": 4096, "ro_after_init_size": 0,
        "init_text_size": 4096, "init_data_size": 8192, "init_rodata_size": 0}
    assert trace.filter(pl.col("op") == "text_patch")["patch_sites"].to_list() == [3]
    # AND the kernel's work is charged to the op that caused it; only the purge followed by a
    # flush counts as a purge
    assert by_op(obs) == {
        ("exec_area_alloc", "module_load"): 2,
        ("vmap_purge", "module_load"): 1, ("flush_tlb_kernel_range", "module_load"): 1,
        ("flush_tlb_all", "module_load"): 1, ("cpa_flush", "module_load"): 1,
        ("sync_core", "text_patch"): 1,
        ("direct_map_level2_splits", "module_load"): 1,
        # do_init_module's purge flushes the copy; the init free's vm_reset_perms flushes in full
        ("vmap_purge", "module_init"): 1, ("flush_tlb_kernel_range", "module_init"): 1,
        ("vmap_purge", "module_init_free"): 1, ("flush_tlb_all", "module_init_free"): 1,
        ("vmap_purge", "module_unload"): 1, ("flush_tlb_all", "module_unload"): 1,
    }
    assert summary.metadata["kernel_release"] == "6.1.0-56-amd64"
    assert summary.metadata["DirectMap4k"] == "26496"


def test_starting_state_becomes_warmup_events(tmp_path):
    # GIVEN a 6.18 trace whose first lazy free (a 10-page area incl. guard) reports 110 queued
    # pages, and a case JSON saying the first program landed 0x25ba4 bytes into its pack
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"progs": [{"jited_len": 28683, "jit_addr": "0xffffffffc0025ba4"}],
                                "snap_before": {"DirectMap4k": 4}}))
    lines = ["# entries-in-buffer/entries-written: 2/2   #P:2",
             f"p-1 [000] ..... 1.0: alloc_vmap_area: va_start: 4096 size=40960 align=1 {VMAL} failed=0",
             "p-1 [000] ..... 1.1: free_vmap_area_noflush: va_start=0x1000 nr_lazy=110 nr_lazy_max=16384"]
    # WHEN imported
    summary, trace, _ = run(tmp_path, lines, bpf_progs=case)
    # THEN three starting-state events come first: the pack's used bytes as one program, and one
    # lazily freed area of the 100 queued pages (99 + the guard page the emulator adds)
    assert summary.metadata["warmup_events"] == "3" and summary.metadata["nr_cpus"] == "2"
    assert trace.select("op", "size").rows() == [
        ("bpf_prog_load", 0x25b80), ("vmalloc", 99 * 4096), ("vfree", 0), ("vmalloc", 36864), ("vfree", 0)]
    assert trace["ts_ns"].to_list()[:3] == [1_000_000_000] * 3


def test_bpftool_json_sizes_follow_load_order(tmp_path):
    # GIVEN bpftool's list for two programs (IDs in load order) and a trace loading both
    progs = tmp_path / "bpftool.json"
    progs.write_text(json.dumps([{"id": 12, "type": "socket_filter", "name": "b", "bytes_jited": 200},
                                 {"id": 11, "type": "socket_filter", "name": "a", "bytes_jited": 100}]))
    lines = [f"p-5 [000] ..... 1.{i}: tracing_mark_write: GT {what}" for i, what in
             enumerate(["start", "load 0", "load 1", "close 0", "close 1"], 1)]
    # WHEN imported THEN the first load is ID 11 (100 bytes), the second ID 12 (200 bytes)
    _, trace, _ = run(tmp_path, lines, bpf_progs=progs)
    assert trace.select("op", "id", "size", "owner").rows() == [
        ("bpf_prog_load", 0, 100, "a"), ("bpf_prog_load", 1, 200, "b"),
        ("bpf_prog_free", 0, 0, None), ("bpf_prog_free", 1, 0, None)]


def test_bad_bpf_progs_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1, "bytes_jited": -5}]')
    with pytest.raises(TraceError, match="bytes_jited=-5"):
        import_ftrace(host_bpf_case(), tmp_path / "t.parquet", bpf_progs=bad)


def test_reset_fallback_flush_is_not_a_purge(tmp_path):
    # GIVEN 6.1's vm_reset_perms path finding nothing to purge: _vm_unmap_aliases then flushes
    # exactly the direct-map range it passed (flush_tlb_kernel_range fallback)
    k = "kworker/0:1-17 [000] ..... "
    lines = [f"p-1 [000] ..... 1.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=8192 align=1 {VMAL}",
             "p-1 [000] ..... 1.1: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000001000 va_end=0x1",
             f"{k}2.0: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffff888105f91000 end=0xffff888105f98000",
             f"{k}2.1: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0xffff888105f91000 end=0xffff888105f98000",
             f"{k}2.2: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_kernel_range_flush+0x0/0x30"]
    # WHEN imported THEN the flush is observed, the purge is not
    _, _, obs = run(tmp_path, lines)
    assert obs["kind"].to_list() == ["flush_tlb_kernel_range"]


def execmem_module_case() -> list[str]:
    """init.sh on 6.12 (kprobes on execmem_alloc/execmem_free): mbcache's calls from the shared
    serial log, with one more data area that do_init_module makes read-only (ro_after_init)."""
    i = "insmod-229 [000] ..... "
    k = "kworker/0:0-9 [000] ..... "

    def area(t, typ, size, va):
        end = va + size + 4096
        return [f"{i}{t}0: module_alloc: (execmem_alloc+0x4/0xe0) type={typ} size={size}",
                f"{i}{t}1: alloc_va: (alloc_vmap_area+0x0/0xe00) size={size + 4096} align=4096 {EXEC}",
                f"{i}{t}2: alloc_va_ret: (x <- alloc_vmap_area) va_start={va:#x} va_end={end:#x}",
                f"{i}{t}3: module_alloc_ret: (load_module+0x75a/0x1e90 <- execmem_alloc) ret={va:#x}"]
    return [
        "GT init-uptime 3.1 kernel 6.12.117+deb13-amd64 cpus 2",
        "init-1 [000] ..... 12.150000: tracing_mark_write: GT insmod kernel/fs/mbcache.ko",
        f"{i}12.151000: alloc_va: (alloc_vmap_area+0x0/0xe00) size=12288 align=1 {VMAL}",
        f"{i}12.151001: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc9000006d000 va_end=0xffffc90000070000",
        *area("12.15210", 0, 4096, 0xffffffffc0244000),      # MOD_TEXT
        *area("12.15220", 4, 8192, 0xffffffffc0246000),      # MOD_DATA
        *area("12.15230", 4, 4096, 0xffffffffc0249000),      # MOD_RODATA (set_ro before load)
        *area("12.15240", 4, 4096, 0xffffffffc024b000),      # MOD_RO_AFTER_INIT (set_ro after load)
        *area("12.15250", 0, 4096, 0xffffffffc024d000),      # MOD_INIT_TEXT
        *area("12.15260", 4, 8192, 0xffffffffc024f000),      # MOD_INIT_DATA
        f"{i}12.153047: set_ro: (set_memory_ro+0x4/0x40) addr=0xffffffffc0249000 npages=1",
        f"{i}12.153297: set_nx: (set_memory_nx+0x4/0x50) addr=0xffffffffc0246000 npages=2",
        f"{i}12.153350: set_nx: (set_memory_nx+0x4/0x50) addr=0xffffffffc0249000 npages=1",
        f"{i}12.153351: set_nx: (set_memory_nx+0x4/0x50) addr=0xffffffffc024b000 npages=1",
        f"{i}12.153362: set_nx: (set_memory_nx+0x4/0x50) addr=0xffffffffc024f000 npages=2",
        f"{i}12.153377: set_rox: (set_memory_rox+0x4/0x50) addr=0xffffffffc0244000 npages=1",
        f"{i}12.153472: set_rox: (set_memory_rox+0x4/0x50) addr=0xffffffffc024d000 npages=1",
        f"{i}12.156000: free_va: (free_vmap_area_noflush+0x0/0x1b0) va_start=0xffffc9000006d000 "
        "va_end=0xffffc90000070000",
        f"{i}12.156250: module_load: mbcache ",
        f"{i}12.156504: set_ro: (set_memory_ro+0x4/0x40) addr=0xffffffffc0249000 npages=1",
        f"{i}12.156510: set_ro: (set_memory_ro+0x4/0x40) addr=0xffffffffc024b000 npages=1",
        f"{k}12.170000: module_memfree: (execmem_free+0x4/0x50) addr=0xffffffffc024d000",
        f"{k}12.170001: free_va: (free_vmap_area_noflush+0x0/0x1b0) va_start=0xffffffffc024d000 "
        "va_end=0xffffffffc024f000",
        f"{k}12.170002: on_each_cpu: (smp_call_function_many_cond+0x0/0x4c0) func=do_flush_tlb_all+0x0/0x10",
        f"{k}12.170003: module_memfree: (execmem_free+0x4/0x50) addr=0xffffffffc024f000",
        f"{k}12.170004: free_va: (free_vmap_area_noflush+0x0/0x1b0) va_start=0xffffffffc024f000 "
        "va_end=0xffffffffc0252000",
        f"{k}12.170005: on_each_cpu: (smp_call_function_many_cond+0x0/0x4c0) func=do_flush_tlb_all+0x0/0x10",
        f"{k}12.170006: module_memfree: (execmem_free+0x4/0x50) addr=0x0",
    ]


def test_6_4_module_areas_get_their_mod_mem_type(tmp_path):
    # WHEN a 6.4+ module load (one execmem area per non-empty mod_mem_type) is imported
    summary, trace, obs = run(tmp_path, execmem_module_case())
    # THEN each area's size lands in its type's column: text areas in enum order, the first
    # data area MOD_DATA, the one made read-only before the load MOD_RODATA, the writable one
    # made read-only by do_init_module MOD_RO_AFTER_INIT, the last MOD_INIT_DATA
    load = trace.filter(pl.col("op") == "module_load").row(0, named=True)
    assert {c: load[c] for c in SECTION_COLUMNS} == {
        "text_size": 4096, "data_size": 8192, "rodata_size": 4096, "ro_after_init_size": 4096,
        "init_text_size": 4096, "init_data_size": 8192, "init_rodata_size": 0}
    # AND the load sits before the vfree of its .ko copy, do_init_module's set_memory_ro is the
    # module_init; do_free_init's two areas make one init free
    assert trace["op"].to_list() == ["vmalloc", "module_load", "vfree", "module_init", "module_init_free"]
    assert by_op(obs)[("flush_tlb_all", "module_init_free")] == 2


def test_tracer_setup_before_gt_start_is_not_workload(tmp_path):
    # GIVEN an init.sh log: events enabled, the kprobe optimizer's batch before "GT start"
    # (its sync rounds partly unseen), then one batch of the workload
    lines = [
        "GT enabled: csd:csd_queue_cpu gt:text_poke_bp_batch gt:on_each_cpu",
        "init-1 [000] ..... 1.0: text_poke_bp_batch: (text_poke_bp_batch+0x0/0x300) nr=1",
        "init-1 [000] ..... 1.1: csd_queue_cpu: cpu=1 callsite=x func=do_sync_core csd=0",
        "init-1 [000] ..... 2.0: tracing_mark_write: GT start",
        "init-1 [000] ..... 3.0: text_poke_bp_batch: (text_poke_bp_batch+0x0/0x300) nr=2",
        *[f"init-1 [000] ..... 3.{j}: csd_queue_cpu: cpu=1 callsite=x func=do_sync_core csd=0" for j in (1, 2, 3)],
    ]
    summary, trace, obs = run(tmp_path, lines)
    # THEN only the workload's batch and its 3 sync rounds are kept; the setup is counted as unused
    assert trace["op"].to_list() == ["text_patch"] and trace["patch_sites"].to_list() == [2]
    assert by_op(obs) == {("sync_core", "text_patch"): 3}
    assert summary.unused["tracer setup before GT start"] == 2


def test_7_2_batch_finish_with_nothing_queued_is_no_batch(tmp_path):
    # GIVEN 7.2's probe on smp_text_poke_batch_finish (no nr): one call with sync rounds, one without
    p = "insmod-9 [000] ..... "
    lines = [f"{p}1.0: text_poke_bp_batch: (smp_text_poke_batch_finish+0x4/0x5f0)",
             *[f"{p}1.{j}: csd_queue_cpu: cpu=1 callsite=x func=do_sync_core csd=0" for j in (1, 2, 3)],
             f"{p}2.0: text_poke_bp_batch: (smp_text_poke_batch_finish+0x4/0x5f0)",
             f"{p}3.0: module_load: m"]
    summary, trace, obs = run(tmp_path, lines)
    # THEN the empty call (smp_text_poke_batch_flush did nothing) is not a text_patch event
    assert trace.filter(pl.col("op") == "text_patch")["patch_sites"].to_list() == [1]
    assert by_op(obs)[("sync_core", "text_patch")] == 3
    assert summary.unused["empty text_poke batch (nothing queued)"] == 1


def test_6_4_writable_area_made_read_only_after_init_is_ro_after_init(tmp_path):
    # GIVEN a module without init text: text, data, and a writable area that may be
    # MOD_RO_AFTER_INIT or MOD_INIT_DATA until do_init_module's set_memory_ro tells
    i = "insmod-5 [000] ..... "
    lines = []
    for n, (typ, va) in enumerate(((0, 0xffffffffc0244000), (4, 0xffffffffc0246000), (4, 0xffffffffc0248000))):
        lines += [f"{i}1.{n}0: module_alloc: (execmem_alloc+0x4/0xe0) type={typ} size=4096",
                  f"{i}1.{n}1: alloc_va: (alloc_vmap_area+0x0/0xe00) size=8192 align=4096 {EXEC}",
                  f"{i}1.{n}2: alloc_va_ret: (x <- alloc_vmap_area) va_start={va:#x} va_end={va + 8192:#x}",
                  f"{i}1.{n}3: module_alloc_ret: (load_module+0x75a/0x1e90 <- execmem_alloc) ret={va:#x}"]
    lines += [f"{i}2.0: module_load: m", f"{i}2.1: set_ro: (set_memory_ro+0x4/0x40) addr=0xffffffffc0248000 npages=1"]
    _, trace, _ = run(tmp_path, lines)
    # THEN the load's sections are back-patched: the area is MOD_RO_AFTER_INIT
    load = trace.filter(pl.col("op") == "module_load").row(0, named=True)
    assert (load["text_size"], load["data_size"], load["ro_after_init_size"], load["init_data_size"]) == (
        4096, 4096, 4096, 0)


def test_kernel_state_before_the_workload_is_replayed(tmp_path):
    # GIVEN an init.sh 6.1 log: during the tracer's setup a 4-page stack is allocated and another
    # area freed (5 pages, still queued at "GT start"); then a kworker frees the stack and an
    # area allocated before tracing (kprobe va_end known) while insmod relocates, before its first CPA
    i, k = "insmod-7 [000] ..... ", "kworker/0:1-9 [000] ..... "
    lines = [
        "GT enabled: gt:alloc_va gt:alloc_va_ret gt:free_va",
        f"init-3 [000] ..... 1.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=16384 align=16384 {VMAL}",
        "init-3 [000] ..... 1.1: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000010000 "
        "va_end=0xffffc90000014000",
        "init-3 [000] ..... 1.2: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc90000020000 "
        "va_end=0xffffc90000025000",
        "init-1 [000] ..... 2.0: tracing_mark_write: GT start",
        f"{i}3.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=8192 align=4096 {EXEC}",
        f"{i}3.1: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffffffc0203000 va_end=0xffffffffc0205000",
        f"{k}3.2: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc90000010000 va_end=0xffffc90000014000",
        f"{k}3.3: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc90000030000 va_end=0xffffc90000032000",
        f"{i}3.4: set_ro: (set_memory_ro+0x0/0x30) addr=0xffffffffc0203000 npages=1",
        f"{i}3.5: module_load: m",
    ]
    summary, trace, _ = run(tmp_path, lines)
    # THEN the 5 pages queued at the start are one warmup vmalloc + vfree, each area freed by the
    # kworker is a vmalloc + vfree of its size, and the load sits at its first CPA, after them
    assert summary.metadata["warmup_events"] == "2"
    assert trace.select("op", "size").rows() == [
        ("vmalloc", 4 * 4096), ("vfree", 0),                         # warmup: 5 pages incl. guard
        ("vmalloc", 3 * 4096), ("vfree", 0), ("vmalloc", 4096), ("vfree", 0),
        ("module_load", 4096)]


def bpf_free_case(frees: list[str]) -> list[str]:
    """bpfload.c on 7.2 (init.sh kprobes): programs 0 and 1 share a pack that program 0 opened;
    each load keeps its struct bpf_prog (vmalloc); both fds are closed, then ``frees`` follow."""
    b = "bpfload-181 [000] ..... "

    def alloc(t: str, va: int, pages: int, rng: str = VMAL) -> list[str]:
        return [f"{b}{t}0: alloc_va: (alloc_vmap_area+0x0/0xde0) size={pages * 4096} align=1 {rng}",
                f"{b}{t}1: alloc_va_ret: (x <- alloc_vmap_area) va_start={va:#x} "
                f"va_end={va + pages * 4096:#x}"]
    return [
        "GT bpf N=2 K=2 loaded=2 load_s=0.010 jited_len=30 xlated_len=16",
        f"{b}1.0: tracing_mark_write: GT case N=2 K=2",
        f"{b}1.1: tracing_mark_write: GT bpfL 0",
        *alloc("1.2", 0xFFFFC90000075000, 2),
        *alloc("1.3", 0xFFFFFFFFC0400000, 513, EXEC),
        f"{b}1.4: tracing_mark_write: GT bpfL 1",
        *alloc("1.5", 0xFFFFC9000007D000, 2),
        f"{b}2.0: tracing_mark_write: GT bpfF 0",
        f"{b}2.1: tracing_mark_write: GT bpfF 1",
        *frees,
    ]


def test_bpf_prog_free_sits_at_its_deferred_free(tmp_path):
    # GIVEN the kernel's order (serial_72_bpf.log): bpf_prog_free_deferred's kworker frees program
    # 0 (its struct bpf_prog), then program 1: bpf_prog_pack_free frees the emptied pack, whose
    # vm_reset_perms purge flushes, then its struct bpf_prog
    k = "kworker/0:1-11 [000] ..... "
    summary, trace, obs = run(tmp_path, bpf_free_case([
        f"{k}3.0: pack_free: (bpf_prog_pack_free+0x4/0x220) hdr=0xffffffffc0400000",
        f"{k}3.1: free_va: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffc90000075000 va_end=0x1",
        f"{k}3.2: pack_free: (bpf_prog_pack_free+0x4/0x220) hdr=0xffffffffc0400040",
        f"{k}3.3: free_va: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffffffc0400000 va_end=0x1",
        f"{k}3.4: purge: (__purge_vmap_area_lazy+0x0/0x3a0) start=0xffff888113200000 end=0xffff888113400000",
        f"{k}3.5: flush_krange: (flush_tlb_kernel_range+0x4/0x180) start=0xffff888113200000 "
        "end=0xffffffffc0601000",
        f"{k}3.6: on_each_cpu: (smp_call_function_many_cond+0x0/0x560) func=do_flush_tlb_all+0x0/0x10",
        f"{k}3.7: free_va: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffc9000007d000 va_end=0x1",
    ]))
    # WHEN imported THEN each bpf_prog_free sits at its program's deferred free, not at the fd's
    # close (2.0, 2.1), right before its struct's vfree; the pack's purge and flush are program 1's
    case = 1_000_000
    assert trace.select("op", "id", "ts_ns").rows() == [
        ("vmalloc", 1, 1_210_000_000), ("bpf_prog_load", case, 1_310_000_000), ("vmalloc", 2, 1_510_000_000),
        ("bpf_prog_load", case + 1, 2_000_000_000),
        ("bpf_prog_free", case, 3_100_000_000), ("vfree", 1, 3_100_000_000),
        ("bpf_prog_free", case + 1, 3_300_000_000), ("vfree", 2, 3_700_000_000)]
    assert by_op(obs) == {("exec_area_alloc", "bpf_prog_load"): 1,
                          ("vmap_purge", "bpf_prog_free"): 1, ("flush_tlb_all", "bpf_prog_free"): 1}
    assert summary.n_malformed == 0


def test_bpf_prog_free_without_its_deferred_free_goes_last(tmp_path):
    # GIVEN closed programs whose deferred free the trace did not catch (it ended first: its last
    # event is another area's vfree)
    summary, trace, _ = run(tmp_path, bpf_free_case([
        "kworker/0:1-11 [000] ..... 9.0: free_va: (free_vmap_area_noflush+0x0/0x1d0) "
        "va_start=0xffffc90000100000 va_end=0xffffc90000102000"]))
    # WHEN imported THEN they are freed at the trace's end, in release order, and counted
    assert trace.select("op", "id", "ts_ns").rows()[-4:] == [
        ("vmalloc", 3, 9_000_000_000), ("vfree", 3, 9_000_000_000),
        ("bpf_prog_free", 1_000_000, 9_000_000_000), ("bpf_prog_free", 1_000_001, 9_000_000_000)]
    assert summary.unused["bpf_prog_free after the trace ended (placed at its end)"] == 2


def test_5_10_bpf_prog_free_follows_its_own_image(tmp_path):
    # GIVEN 5.10 (serial_510_fresh_8G.log): each program has its own image (module_alloc area); a
    # kworker frees program 1's image and struct, and the trace ends before program 0's free
    k = "kworker/1:1-54 [001] ..... "
    lines = bpf_free_case([
        f"{k}3.0: free_va: (free_vmap_area_noflush+0x0/0x100) va_start=0xffffffffc0600000 va_end=0x1",
        f"{k}3.1: purge: (__purge_vmap_area_lazy+0x0/0x680) start=0xffff8881013fc000 end=0xffff8881013fd000",
        f"{k}3.2: flush_krange: (flush_tlb_kernel_range+0x0/0x80) start=0xffff8881013fc000 "
        "end=0xffffffffc0602000",
        f"{k}3.3: on_each_cpu: (smp_call_function_many_cond+0x0/0x2e0) func=do_flush_tlb_all+0x0/0x30",
        f"{k}3.4: free_va: (free_vmap_area_noflush+0x0/0x100) va_start=0xffffc9000007d000 va_end=0x1"])
    b = "bpfload-181 [000] ..... "
    image1 = [f"{b}1.60: alloc_va: (alloc_vmap_area+0x0/0xde0) size=8192 align=1 {EXEC}",
              f"{b}1.61: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffffffc0600000 va_end=0x1"]
    at = lines.index(f"{b}2.0: tracing_mark_write: GT bpfF 0")
    # WHEN imported
    summary, trace, obs = run(tmp_path, lines[:at] + image1 + lines[at:])
    # THEN the freed image names its program: program 1 is freed there, before its struct's vfree
    # and with the image's purge, program 0 at the trace's end
    assert trace.filter(pl.col("op").is_in(["bpf_prog_free", "vfree"])).select("op", "id", "ts_ns").rows() == [
        ("bpf_prog_free", 1_000_001, 3_000_000_000), ("vfree", 2, 3_400_000_000),
        ("bpf_prog_free", 1_000_000, 3_400_000_000)]
    assert by_op(obs)[("vmap_purge", "bpf_prog_free")] == 1
    assert summary.unused["bpf_prog_free after the trace ended (placed at its end)"] == 1


# --- concurrency: what other CPUs did while an op was in progress ------------------------------

NOTHING = "start=0xffffffffffffffff end=0x0"    # __purge_vmap_area_lazy(ULONG_MAX, 0): a CPA's purge


def insmod(task: str, cpu: int, t: float, core: int, init: int, name: str, cpas: list[str]) -> list[str]:
    """A 6.1 load (kprobes of qemu/init.sh) of a module with one text page in core and in init;
    ``cpas``: lines after its first CPA's purge (more CPAs, other CPUs' events), in time order."""
    p = f"{task} [{cpu:03d}] ..... "
    return [f"{p}{t:.6f}: alloc_va: (alloc_vmap_area+0x0/0x880) size=8192 align=4096 {EXEC}",
            f"{p}{t + 1e-6:.6f}: alloc_va_ret: (x <- alloc_vmap_area) va_start={core:#x} va_end={core + 8192:#x}",
            f"{p}{t + 2e-6:.6f}: alloc_va: (alloc_vmap_area+0x0/0x880) size=8192 align=4096 {EXEC}",
            f"{p}{t + 3e-6:.6f}: alloc_va_ret: (x <- alloc_vmap_area) va_start={init:#x} va_end={init + 8192:#x}",
            f"{p}{t + 10e-6:.6f}: set_ro: (set_memory_ro+0x0/0x30) addr={core:#x} npages=1",
            f"{p}{t + 11e-6:.6f}: purge: (__purge_vmap_area_lazy+0x0/0x750) {NOTHING}",
            *cpas,
            f"{p}{t + 90e-6:.6f}: set_x: (set_memory_x+0x0/0x50) addr={init:#x} npages=1",
            f"{p}{t + 91e-6:.6f}: purge: (__purge_vmap_area_lazy+0x0/0x750) {NOTHING}",
            f"{p}{t + 99e-6:.6f}: module_load: {name} "]


def init_free(cpu: int, t: float, init: int, swept: bool) -> list[str]:
    """do_free_init in a kworker: the init area queued lazily, then vm_reset_perms' purge over the
    direct-map range of its page; ``swept``: another CPU's purge took the area meanwhile, so this
    one finds nothing and flushes that range alone (a full flush: the page lies far off)."""
    k = f"kworker/{cpu}:1-17 [{cpu:03d}] ..... "
    dmap = "start=0xffff888100000000 end=0xffff888100400000"
    flush = f"start=0xffff888100000000 end={init + 8192:#x}" if not swept else dmap
    return [f"{k}{t:.6f}: free_va: (free_vmap_area_noflush+0x0/0x340) va_start={init:#x} va_end={init + 8192:#x}",
            f"{k}{t + 40e-6:.6f}: purge: (__purge_vmap_area_lazy+0x0/0x750) {dmap}",
            f"{k}{t + 41e-6:.6f}: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) {flush}",
            f"{k}{t + 42e-6:.6f}: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_flush_tlb_all+0x0/0x30"]


A_CORE, A_INIT, B_CORE, B_INIT = 0xffffffffc0200000, 0xffffffffc0202000, 0xffffffffc0204000, 0xffffffffc0206000


def test_init_free_raced_by_the_next_load_is_its_concurrent_span(tmp_path):
    # GIVEN module a loaded; while insmod b (CPU 1) changes permissions, a's do_free_init kworker
    # (CPU 0) queues a's init area, b's next CPA purges it, and the kworker's reset then finds
    # nothing queued and flushes the direct-map range alone
    b_cpa = [f"insmod-20 [001] ..... 5.000030: set_nx: (set_memory_nx+0x0/0x50) addr={B_CORE:#x} npages=0",
             f"insmod-20 [001] ..... 5.000031: purge: (__purge_vmap_area_lazy+0x0/0x750) {NOTHING}",
             f"insmod-20 [001] ..... 5.000032: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) "
             f"start={A_INIT:#x} end={A_INIT + 8192:#x}",
             "insmod-20 [001] ..... 5.000033: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) "
             "func=do_kernel_range_flush+0x0/0x30"]
    lines = [*insmod("insmod-10", 0, 4.0, A_CORE, A_INIT, "a", []),
             *insmod("insmod-20", 1, 5.0, B_CORE, B_INIT, "b", [*init_free(0, 5.000020, A_INIT, True)[:1],
                                                                 *b_cpa, *init_free(0, 5.000020, A_INIT, True)[1:]])]
    # WHEN imported
    _, trace, obs = run(tmp_path, lines)
    # THEN b's load holds a's init free in its span (it began while b changed permissions)
    assert trace.select("op", "id", "cpu", "concurrent").rows() == [
        ("module_load", 1, 0, 0), ("module_load", 2, 1, 1), ("module_init_free", 1, 0, 0)]
    # AND b's load owns the purge of a's init area; a's reset owns a full flush of its direct map
    # alone, observed as vm_reset_flush_all (placement decides full or ranged: check-model's rule)
    got = by_op(obs)
    assert got[("vmap_purge", "module_load")] == 1 and got[("flush_tlb_kernel_range", "module_load")] == 1
    assert ("vmap_purge", "module_init_free") not in got
    assert got[("flush_tlb_all", "module_init_free")] == got[("vm_reset_flush_all", "module_init_free")] == 1


def test_init_free_its_own_purge_swept_is_not_in_the_span(tmp_path):
    # GIVEN the same, but a's area reached the lazy list only after b's purge snapshot: b's purge
    # finds nothing and the kworker's own reset purges it
    b_cpa = [f"insmod-20 [001] ..... 5.000030: set_nx: (set_memory_nx+0x0/0x50) addr={B_CORE:#x} npages=0",
             f"insmod-20 [001] ..... 5.000031: purge: (__purge_vmap_area_lazy+0x0/0x750) {NOTHING}"]
    free = init_free(0, 5.000020, A_INIT, False)
    lines = [*insmod("insmod-10", 0, 4.0, A_CORE, A_INIT, "a", []),
             *insmod("insmod-20", 1, 5.0, B_CORE, B_INIT, "b", [free[0], *b_cpa, *free[1:]])]
    # WHEN imported THEN the init free ran after b's permission changes as far as the kernel's
    # purges tell: no span, and the free owns its purge and full flush
    _, trace, obs = run(tmp_path, lines)
    assert trace["concurrent"].to_list() == [0, 0, 0]
    got = by_op(obs)
    assert got[("vmap_purge", "module_init_free")] == got[("flush_tlb_all", "module_init_free")] == 1
    assert ("vm_reset_flush_all", "module_init_free") not in got


def test_split_is_charged_to_the_op_whose_cpa_split(tmp_path):
    # GIVEN a load whose after-init set_memory_ro splits a 2M page (__split_large_page's own
    # flush_tlb_all under pgd_lock + cpa_lock: preempt depth 2), and a vmstat reading after both
    i = "insmod-20 [001] "
    lines = ["GT enabled: gt:flush_all",
             *insmod("insmod-20", 1, 5.0, B_CORE, B_INIT, "b", []),
             f"{i}..... 5.000200: set_ro: (set_memory_ro+0x0/0x30) addr={B_CORE:#x} npages=1",
             f"{i}..... 5.000201: purge: (__purge_vmap_area_lazy+0x0/0x750) {NOTHING}",
             f"{i}...2. 5.000210: flush_all: (flush_tlb_all+0x0/0x30)",
             f"{i}...2. 5.000211: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_flush_tlb_all+0x0/0x30",
             f"{i}..... 5.000220: flush_all: (flush_tlb_all+0x0/0x30)",     # CPA's own: not a split
             "init-1 [000] ..... 5.1: tracing_mark_write: GT vmstat direct_map_level2_splits 1 "
             "direct_map_level3_splits 0 ",
             "init-1 [000] ..... 5.2: tracing_mark_write: GT vmstat direct_map_level2_splits 2 "
             "direct_map_level3_splits 0 "]
    lines[1:1] = ["GT vmstat-before direct_map_level2_splits 0",
                  "init-1 [000] ..... 4.9: tracing_mark_write: GT start"]
    # WHEN imported THEN the split is module_init's (do_init_module), not the load's the reading
    # follows; the second reading, with no split flush seen, falls back to the load
    _, trace, obs = run(tmp_path, lines)
    assert trace["op"].to_list() == ["module_load", "module_init"]
    got = by_op(obs)
    assert got[("direct_map_level2_splits", "module_init")] == 1
    assert got[("direct_map_level2_splits", "module_load")] == 1


def test_areas_queued_during_setup_are_replayed_where_they_lay(tmp_path):
    # GIVEN init.sh's setup: an area allocated and freed lazily before "GT start", then one traced
    # vmalloc right above it
    p = "init-1 [000] ..... "
    lines = ["GT enabled: gt:alloc_va gt:alloc_va_ret gt:free_va gt:purge",
             f"{p}1.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=20480 align=4096 {VMAL}",
             f"{p}1.1: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000000000 va_end=0xffffc90000005000",
             f"{p}1.2: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc90000000000 "
             "va_end=0xffffc90000005000",
             f"{p}2.0: tracing_mark_write: GT start",
             f"{p}3.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=8192 align=4096 {VMAL}",
             f"{p}3.1: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000005000 va_end=0xffffc90000007000"]
    # WHEN imported THEN a warmup vmalloc + vfree stands for the queued area, pinned to its VA
    # (busy until the first purge, as in the kernel), and the traced vmalloc follows
    summary, trace, _ = run(tmp_path, lines)
    warm = 2 ** 40 - 2
    assert trace.select("op", "id", "size").rows() == [("vmalloc", warm, 16384), ("vfree", warm, 0),
                                                       ("vmalloc", 1, 4096)]
    assert summary.metadata["warmup_events"] == "2"
    assert summary.metadata["vmalloc_busy"] == f"0+5@{warm}"


def test_module_range_layout_before_tracing_becomes_module_busy(tmp_path):
    # GIVEN a load whose areas sit 2 MiB + 8 KiB into the module range (boot modules, the tracer's
    # kprobe pages and the load offset below them)
    lines = insmod("insmod-20", 1, 5.0, 0xffffffffc0202000, 0xffffffffc0204000, "b", [])
    # WHEN imported THEN the pages below it were in use at the start
    summary, _, _ = run(tmp_path, lines)
    assert summary.metadata["module_busy"] == "0+514"


def test_rox_cache_chunk_from_before_tracing_becomes_execmem_cache(tmp_path):
    # GIVEN a 7.2 load whose text (4 pages) comes from the ROX cache at 2 MiB + 4 KiB into the
    # module range, in no traced area, and whose data gets an area of its own
    i = "insmod-5 [000] ..... "
    data = 0xffffffffc0002000
    lines = [f"{i}1.00: module_alloc: (execmem_alloc+0x4/0x220) type=0 size=16384",
             f"{i}1.01: module_alloc_ret: (execmem_alloc_rw+0x13/0x60 <- execmem_alloc) ret=0xffffffffc0201000",
             f"{i}1.10: module_alloc: (execmem_alloc+0x4/0x220) type=4 size=4096",
             f"{i}1.11: alloc_va: (alloc_vmap_area+0x0/0xde0) size=8192 align=4096 {EXEC}",
             f"{i}1.12: alloc_va_ret: (x <- alloc_vmap_area) va_start={data:#x} va_end={data + 8192:#x}",
             f"{i}1.13: module_alloc_ret: (execmem_alloc_rw+0x13/0x60 <- execmem_alloc) ret={data:#x}",
             f"{i}2.0: module_load: m"]
    # WHEN imported THEN that text's chunk was in the cache at the start, its first page in use
    summary, _, _ = run(tmp_path, lines)
    assert summary.metadata["execmem_cache"] == "512+512:0+1"


def test_text_with_an_area_of_its_own_is_no_cache_chunk(tmp_path):
    # GIVEN a 6.12 load: every section, text included, is an area of its own
    summary, _, _ = run(tmp_path, execmem_module_case())
    # WHEN imported THEN there is no ROX cache to start from
    assert "execmem_cache" not in summary.metadata


def test_free_va_kprobe_sizes_the_free_tracepoint(tmp_path):
    # GIVEN a guest tracing both (7.2): a free of an area allocated before tracing, which only the
    # free_va kprobe sizes
    k = "kworker/0:1-9 [000] ..... "
    lines = ["GT enabled: vmalloc:free_vmap_area_noflush gt:free_va",
             "init-1 [000] ..... 1.0: tracing_mark_write: GT start",
             f"{k}2.0: free_va: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffc90000400000 "
             "va_end=0xffffc90000405000",
             f"{k}2.1: free_vmap_area_noflush: va_start=0xffffc90000400000 nr_lazy=5 nr_lazy_max=16384"]
    # WHEN imported THEN it is one free (the tracepoint's), replayed with a stand-in of its size
    summary, trace, _ = run(tmp_path, lines)
    assert trace.select("op", "size").rows() == [("vmalloc", 16384), ("vfree", 0)]
    assert summary.metadata["vmalloc_busy"] == "1024+5@1"


def test_a_free_the_loads_first_purge_swept_comes_before_the_load(tmp_path):
    # GIVEN a stack freed by a kworker microseconds after insmod's first purge began, yet swept by
    # it (the purge's snapshot came later than its kprobe)
    va = 0xffffc90000408000
    swept = [f"kworker/0:1-17 [000] ..... 5.000015: free_va: (free_vmap_area_noflush+0x0/0x340) "
             f"va_start={va:#x} va_end={va + 0x5000:#x}",
             f"insmod-20 [001] ..... 5.000020: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) "
             f"start={va:#x} end={va + 0x5000:#x}",
             "insmod-20 [001] ..... 5.000021: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) "
             "func=do_kernel_range_flush+0x0/0x30"]
    lines = [f"p-5 [000] ..... 4.0: alloc_va: (alloc_vmap_area+0x0/0x880) size=20480 align=16384 {VMAL}",
             f"p-5 [000] ..... 4.1: alloc_va_ret: (x <- alloc_vmap_area) va_start={va:#x} va_end={va + 0x5000:#x}",
             *insmod("insmod-20", 1, 5.0, B_CORE, B_INIT, "b", swept)]
    # WHEN imported THEN the free comes before the load, whose first CPA then purges it as in the
    # kernel, and the load takes the free's time (times never go back)
    _, trace, obs = run(tmp_path, lines)
    assert trace.select("op", "concurrent").rows() == [("vmalloc", 0), ("vfree", 0), ("module_load", 0)]
    assert trace["ts_ns"].to_list()[1:] == [5_000_015_000, 5_000_015_000]
    assert by_op(obs)[("vmap_purge", "module_load")] == 1


def test_first_uses_of_va_the_setup_purge_swept_become_vmap_pools(tmp_path):
    # GIVEN a 7.2 log whose tracer setup purged [0x400, 0x420) pages of vmalloc VA (its areas went
    # to the vmap node pools), then stacks taken there: on CPU 1 at 0x410 and 0x408 (a pool gives
    # its highest first), at 0x418 (above: the free tree's), on CPU 0 at 0x400, and one past the range
    def stack(t: float, cpu: int, va: int) -> list[str]:
        p = f"init-{int(t * 10)} [{cpu:03d}] ..... "
        return [f"{p}{t}: alloc_va: (alloc_vmap_area+0x0/0xde0) size=20480 align=16384 {VMAL}",
                f"{p}{t + 0.01:.2f}: alloc_va_ret: (x <- alloc_vmap_area) va_start={va:#x} va_end={va + 0x5000:#x}"]
    base = 0xffffc90000000000
    lines = ["GT enabled: vmalloc:purge_vmap_area_lazy gt:alloc_va gt:alloc_va_ret",
             f"init-1 [001] ..... 1.0: purge_vmap_area_lazy: start={base + 0x400000:#x} "
             f"end={base + 0x420000:#x} num_purged=4",
             "init-1 [000] ..... 2.0: tracing_mark_write: GT start",
             *stack(3.0, 1, base + 0x410000), *stack(3.1, 1, base + 0x408000), *stack(3.2, 1, base + 0x418000),
             *stack(3.3, 0, base + 0x400000), *stack(3.4, 0, base + 0x420000)]
    # WHEN imported THEN the pools held the first three of CPU 1's node and CPU 0's, in pages, guard included
    summary, _, _ = run(tmp_path, lines)
    assert summary.metadata["vmap_pools"] == "1040+5/1,1032+5/1,1024+5/0"


def tracepoint_unload_case(free_at: str, began: str | None = None) -> list[str]:
    """A 7.2 guest (vmalloc tracepoints, the purge kprobe beside them): a stack, a module loaded,
    then unloaded while a kworker frees the stack at ``free_at`` (its ``free_va`` kprobe at
    ``began``); rmmod's purge sweeps it."""
    stack, text = 0xffffc90000400000, 0xffffffffc0200000
    va = f"vstart={{}} vend=0xffffe8ffffffffff failed=0"
    entry = [] if began is None else [f"kworker/1:1-5 [001] ..... {began}: free_va: (free_vmap_area_noflush+0x0/0x1d0) "
                                      f"va_start={stack:#x} va_end={stack + 0x5000:#x}"]
    return [
        "GT enabled: vmalloc:alloc_vmap_area vmalloc:free_vmap_area_noflush vmalloc:purge_vmap_area_lazy "
        "module:module_load module:module_free gt:purge" + (" gt:free_va" if entry else ""),
        "init-1 [000] ..... 1.0: tracing_mark_write: GT start",
        f"init-2 [000] ..... 1.1: alloc_vmap_area: va_start: {stack} size=20480 align=16384 "
        + va.format("0xffffc90000000000"),
        f"insmod-3 [000] ..... 2.0: alloc_vmap_area: va_start: {text} size=8192 align=4096 "
        + va.format("0xffffffffc0000000"),
        "insmod-3 [000] ..... 2.1: module_load: m",
        "rmmod-4 [000] ..... 3.0: module_free: m",
        *entry,
        f"kworker/1:1-5 [001] ..... {free_at}: free_vmap_area_noflush: va_start={stack:#x} nr_lazy=5 "
        "nr_lazy_max=16384",
        "rmmod-4 [000] ..... 3.2: purge: (__purge_vmap_area_lazy+0x0/0x3a0) start=0xffffffffffffffff end=0x0",
        f"rmmod-4 [000] ..... 3.3: purge_vmap_area_lazy: start={stack:#x} end={stack + 0x5000:#x} num_purged=1",
    ]


SWEPT, MISSED = ["vmalloc", "module_load", "vfree", "module_unload"], ["vmalloc", "module_load", "module_unload", "vfree"]


@pytest.mark.parametrize("free_at, began, order", [
    ("3.1", None, SWEPT),       # queued before the purge began: swept
    ("3.25", None, MISSED),     # reported after it: the purge missed it
    # began before the purge, reported after it: in its snapshot, as its num_purged=1 says
    ("3.25", "3.15", SWEPT),
    ("3.25", "3.21", MISSED),   # began after the purge did
])
def test_an_unload_goes_after_the_frees_its_first_purge_swept(tmp_path, free_at, began, order):
    # GIVEN a stack freed by another CPU after module_free, before or after rmmod's purge began
    # WHEN imported THEN the unload comes after the free only if its purge swept it
    _, trace, _ = run(tmp_path, tracepoint_unload_case(free_at, began))
    assert trace["op"].to_list() == order


def test_vmap_node_of_an_area_freed_before_tracing_is_its_vmalloc_cpu(tmp_path):
    # GIVEN a 6.9+ guest: an area allocated before tracing (node 0, in its flags) freed on CPU 1
    k = "kworker/1:1-9 [001] ..... "
    lines = ["GT enabled: vmalloc:free_vmap_area_noflush gt:free_va gt:free_node",
             "init-1 [000] ..... 1.0: tracing_mark_write: GT start",
             f"{k}2.0: free_node: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffc90000400000 flags=0x100",
             f"{k}2.0: free_va: (free_vmap_area_noflush+0x0/0x1d0) va_start=0xffffc90000400000 "
             "va_end=0xffffc90000405000",
             f"{k}2.1: free_vmap_area_noflush: va_start=0xffffc90000400000 nr_lazy=5 nr_lazy_max=16384"]
    # WHEN imported THEN its stand-in vmalloc runs on node 0's CPU, so its purge pools it there
    _, trace, _ = run(tmp_path, lines)
    assert trace.select("op", "cpu").rows() == [("vmalloc", 0), ("vfree", 1)]


def test_pools_drained_by_the_tracer_are_empty_at_start(tmp_path):
    # GIVEN the setup's purge swept [0x400, 0x420) pages, then init.sh drained the vmap node pools
    base = 0xffffc90000000000
    lines = ["GT enabled: vmalloc:purge_vmap_area_lazy gt:alloc_va gt:alloc_va_ret",
             f"init-1 [001] ..... 1.0: purge_vmap_area_lazy: start={base + 0x400000:#x} "
             f"end={base + 0x420000:#x} num_purged=4",
             "init-1 [001] ..... 1.5: tracing_mark_write: GT vmap-pools-drained",
             "init-1 [000] ..... 2.0: tracing_mark_write: GT start",
             f"init-30 [001] ..... 3.0: alloc_va: (alloc_vmap_area+0x0/0xde0) size=20480 align=16384 {VMAL}",
             f"init-30 [001] ..... 3.01: alloc_va_ret: (x <- alloc_vmap_area) va_start={base + 0x410000:#x} "
             f"va_end={base + 0x415000:#x}"]
    # WHEN imported THEN no starting pool is inferred: the stack came from the free tree
    summary, _, _ = run(tmp_path, lines)
    assert "vmap_pools" not in summary.metadata


def test_first_purge_reaching_past_the_known_queue_adds_the_unseen_area(tmp_path):
    # GIVEN a 6.1 guest (kprobes: no nr_lazy): a stack freed in the trace at page 0x400 and the
    # first purge flushing up to page 0x480, where nothing traced was queued
    i, k = "insmod-7 [000] ..... ", "kworker/0:1-9 [000] ..... "
    lines = [
        "GT enabled: gt:alloc_va gt:alloc_va_ret gt:free_va gt:purge gt:flush_krange",
        "init-1 [000] ..... 2.0: tracing_mark_write: GT start",
        f"init-5 [000] ..... 2.1: alloc_va: (alloc_vmap_area+0x0/0x880) size=20480 align=16384 {VMAL}",
        "init-5 [000] ..... 2.2: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc90000400000 "
        "va_end=0xffffc90000405000",
        f"{k}3.0: free_va: (free_vmap_area_noflush+0x0/0x340) va_start=0xffffc90000400000 va_end=0xffffc90000405000",
        f"{i}3.1: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffffffffffffffff end=0x0",
        f"{i}3.2: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0xffffc90000400000 end=0xffffc90000480000",
    ]
    # WHEN imported THEN a one-page area queued at the start ends where the purge's range does
    summary, trace, _ = run(tmp_path, lines)
    assert summary.metadata["warmup_events"] == "2"
    assert trace.select("op", "size").rows()[:2] == [("vmalloc", 4096), ("vfree", 0)]
    assert "1150+2@" in summary.metadata["vmalloc_busy"]        # pages 0x47e..0x480


def test_a_6_4_init_free_span_runs_to_its_last_areas_purge(tmp_path):
    # GIVEN a 6.12 init free (kworker, CPU 0) of two init areas, each with its own reset purge,
    # and a stack another CPU frees between them that the second purge sweeps
    k, w = "kworker/0:0-9 [000] ..... ", "kworker/1:2-30 [001] ..... "
    stack = 0xffffc90000400000
    dmap = "start=0xffff888100000000 end=0xffff888100001000"

    def reset(t: str, area: int, end: int, flush_from: int) -> list[str]:
        return [f"{k}{t}0: module_memfree: (execmem_free+0x4/0x50) addr={area:#x}",
                f"{k}{t}1: free_va: (free_vmap_area_noflush+0x0/0x1b0) va_start={area:#x} va_end={end:#x}",
                f"{k}{t}2: purge: (__purge_vmap_area_lazy+0x0/0x750) {dmap}",
                f"{k}{t}3: flush_krange: (flush_tlb_kernel_range+0x4/0xc0) start={flush_from:#x} end={end:#x}",
                f"{k}{t}4: on_each_cpu: (smp_call_function_many_cond+0x0/0x4c0) func=do_flush_tlb_all+0x0/0x10"]
    lines = [f"init-5 [001] ..... 12.100000: alloc_va: (alloc_vmap_area+0x0/0xe00) size=20480 align=16384 {VMAL}",
             f"init-5 [001] ..... 12.100001: alloc_va_ret: (x <- alloc_vmap_area) va_start={stack:#x} "
             f"va_end={stack + 0x5000:#x}",
             *execmem_module_case()[:-9],
             *reset("12.17000", 0xffffffffc024d000, 0xffffffffc024f000, 0xffff888100000000),
             f"{w}12.170005: free_va: (free_vmap_area_noflush+0x0/0x1b0) va_start={stack:#x} "
             f"va_end={stack + 0x5000:#x}",
             *reset("12.17001", 0xffffffffc024f000, 0xffffffffc0252000, stack),
             f"{k}12.170020: module_memfree: (execmem_free+0x4/0x50) addr=0x0"]
    # WHEN imported THEN the stack's free is in the init free's span, which the replay runs inside it
    _, trace, _ = run(tmp_path, lines)
    rows = trace.select("op", "concurrent").rows()
    at = rows.index(("module_init_free", 1))
    assert rows[at + 1] == ("vfree", 0)
