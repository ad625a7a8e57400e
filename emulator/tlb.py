"""TLB flushes, counted as arch/x86/mm/tlb.c sends them.

Every all-CPU round (``on_each_cpu``) is one shootdown: ``emu_shootdowns``
+1 and ``nr_cpus - 1`` IPIs (the caller's CPU flushes locally).  The kind
is kept apart: ``emu_flush_tlb_all`` counts every ``do_flush_tlb_all``
round (from ``flush_tlb_all()`` or a full ``flush_tlb_kernel_range``),
``emu_flush_tlb_kernel_range`` the ranged ``do_kernel_range_flush``
rounds, ``emu_cpa_flush`` CPA's per-page ``__cpa_flush_tlb`` rounds.
``nr_tlb_remote_flush`` keeps the kernel's meaning: only ``flush_tlb_all()``.
Addresses are virtual page numbers (address >> 12).
"""

from __future__ import annotations

#: arch/x86/mm/tlb.c ``tlb_single_page_flush_ceiling`` (pages).
TLB_SINGLE_PAGE_FLUSH_CEILING = 33


def _shootdown(k, kind: str) -> None:
    c = k.stat
    c[kind] += 1
    c["emu_shootdowns"] += 1
    c["emu_shootdown_ipis"] += k.nr_cpus - 1


def flush_tlb_all(k) -> None:
    """``flush_tlb_all()``: count NR_TLB_REMOTE_FLUSH, ``on_each_cpu(do_flush_tlb_all)``.

    ``nr_tlb_remote_flush_received`` is counted as the IPIs this round sends
    (simplification: the kernel counts receipts in ``flush_tlb_func``).
    """
    c = k.stat
    c["nr_tlb_remote_flush"] += 1
    c["nr_tlb_remote_flush_received"] += k.nr_cpus - 1
    _shootdown(k, "emu_flush_tlb_all")


def flush_tlb_kernel_range(k, start: int, end: int) -> None:
    """``flush_tlb_kernel_range(start, end)``: full flush above the ceiling, else per-page INVLPG.

    ``end`` is exclusive; ``end=None`` means TLB_FLUSH_ALL.  A range spanning
    the direct map and the module area is huge, hence always full.
    """
    if end is None or end - start > k.ceiling:
        _shootdown(k, "emu_flush_tlb_all")
    else:
        _shootdown(k, "emu_flush_tlb_kernel_range")


def cpa_flush_tlb(k) -> None:
    """``on_each_cpu(__cpa_flush_tlb)``: CPA's per-page flush of its primary range (set_memory.c cpa_flush)."""
    _shootdown(k, "emu_cpa_flush")


def local_flush(k, n: int = 1) -> None:
    """Local-only flushes (text_poke's temporary mm): no IPI, not a shootdown."""
    k.stat["emu_local_flush"] += n
