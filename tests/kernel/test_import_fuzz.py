"""Fuzz the ftrace line parser: whatever the line, it is counted (used, unused or malformed),
and the only way it fails is the documented ``Malformed`` record, never an exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traces.importers.ftrace import FtraceParser, ImportSummary
from traces.importers.kernel import KernelEventConverter

VMAL = "vstart=0xffffc90000000000 vend=0xffffe8ffffffffff"
GOOD = [
    f"python3-8489 [001] ...1. 1265.840168: alloc_vmap_area: va_start: 18446683600598831104 size=40960 "
    f"align=1 {VMAL} failed=0",
    "python3-8489 [001] ..... 1265.840548: free_vmap_area_noflush: va_start=0xffffc90003710000 nr_lazy=1 "
    "nr_lazy_max=16384",
    "kworker/0:0-9 [000] ...2. 394.227895: csd_queue_cpu: cpu=1 callsite=on_each_cpu_cond_mask+0x20/0x60 "
    "func=do_flush_tlb_all csd=00000000be6f757c",
    "python3-8489 [001] ...1. 1265.840168: tracing_mark_write: GT load 0",
    "python3-8489 [001] ...1. 1265.840168: tracing_mark_write: GT close 0",
    "insmod-125 [001] ..... 4.552160: alloc_va: (alloc_vmap_area+0x0/0x880) size=16384 align=1 "
    f"{VMAL}",
    "insmod-125 [001] ..... 4.552191: alloc_va_ret: (x <- alloc_vmap_area) va_start=0xffffc900003dd000 va_end=0x1",
    "insmod-125 [001] ..... 4.570393: purge: (__purge_vmap_area_lazy+0x0/0x750) start=0xffffffffffffffff end=0x0",
    "insmod-125 [001] ..... 4.570416: flush_krange: (flush_tlb_kernel_range+0x0/0xc0) start=0x1 end=0x2",
    "insmod-125 [001] ..... 4.570466: on_each_cpu: (on_each_cpu_cond_mask+0x0/0x40) func=do_kernel_range_flush+0x0",
    "insmod-125 [001] ..... 4.571500: text_poke_bp_batch: (text_poke_bp_batch+0x0/0x2a0) nr=3",
    "insmod-125 [001] ..... 4.573099: module_load: crc32c_generic ",
    "rmmod-130 [000] ..... 9.0: module_free: crc32c_generic",
    "GT vmstat-before direct_map_level2_splits 1",
    "GT init-uptime 2.89 kernel 6.1.0-56-amd64 cpus 2",
    "cpus=2",
    "bpfload-151 [001] ..... 7.141363: tracing_mark_write: GT case N=1 K=2",
    "bpfload-151 [001] ..... 7.141364: tracing_mark_write: GT bpfL 0",
    "bpfload-151 [001] ..... 7.141365: tracing_mark_write: GT bpfF 0",
    "bpfload-151 [001] ..... 7.141366: tracing_mark_write: GT dm load-begin 4k=26496 2M=3119104 1G=0 l2=1 l3=0",
    "init-1 [000] ..... 4.591352: tracing_mark_write: GT vmstat direct_map_level2_splits 2 direct_map_level3_splits 0",
    "GT bpf N=1 K=2 loaded=1 load_s=0.004 jited_len=21 xlated_len=16 jit_addr0=0xffffffffc000065c",
    "GT enabled: csd:csd_queue_cpu vmalloc:alloc_vmap_area vmalloc:purge_vmap_area_lazy gt:alloc_va",
    "# entries-in-buffer/entries-written: 2773/2773   #P:2",
    "         python3-8489    [001] .....  1265.840454: <stack trace>",
    " => trace_event_raw_event_alloc_vmap_area",
]
numbers = st.one_of(st.integers(-(1 << 70), 1 << 70).map(str), st.integers(0, 1 << 80).map(hex),
                    st.text("0123456789abcdefxX-+.", max_size=30))


@st.composite
def mutated(draw) -> str:
    """A good line, cut, with fields replaced by odd numbers, or with garbage spliced in."""
    line = draw(st.sampled_from(GOOD))
    how = draw(st.sampled_from(["cut", "number", "splice", "replace_char"]))
    if how == "cut":
        return line[:draw(st.integers(0, len(line)))]
    if how == "number":
        import re
        spans = [m.span() for m in re.finditer(r"(?<=[=: \[])[0-9a-fx.]+", line)]
        if not spans:
            return line
        a, b = draw(st.sampled_from(spans))
        return line[:a] + draw(numbers) + line[b:]
    if how == "splice":
        i = draw(st.integers(0, len(line)))
        return line[:i] + draw(st.text(max_size=20)) + line[i:]
    i = draw(st.integers(0, max(len(line) - 1, 0)))
    return line[:i] + draw(st.characters()) + line[i + 1:]


lines = st.one_of(mutated(), st.text(max_size=200), st.sampled_from(GOOD))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(lines, max_size=30))
def test_every_line_is_accounted_for_and_nothing_raises(batch):
    summary = ImportSummary()
    conv = KernelEventConverter()
    parser = FtraceParser(conv, summary)
    for n, line in enumerate(batch, 1):
        parser.line(n, line.replace("\n", " ").replace("\r", " "))
    trace, observed = conv.finish()
    accounted = sum(summary.used.values()) + summary.n_malformed + sum(summary.unused.values())
    assert accounted == summary.n_lines == len(batch)
    assert all(1 <= n <= len(batch) for n, _, _ in summary.malformed)
    assert trace.num_rows >= 0 and observed.num_rows >= 0
    ts = trace.column("ts_ns").to_pylist()
    assert ts == sorted(ts)

