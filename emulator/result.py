"""What a replay returns: plain counters and numpy arrays, never DataFrames.

This is the boundary between ``emulator`` and ``pipeline``; the pipeline
turns it into the result tables of architecture.md section 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Waste causes, as ``emu_waste_bytes_<cause>`` counters (bytes).
WASTE_CAUSES: tuple[str, ...] = (
    "pack_fragmentation",  # unused chunks inside bpf_prog_pack / ROX-cache chunks holding live code
    "cache",               # free pages or chunks held by a cache (perm_alloc, execmem ROX cache)
    "page_rounding",       # tail of the last page of each allocation
    "page_tables",         # page-table pages created by direct-map / vmalloc PMD splits
)

#: Direct-map level codes in :attr:`ReplayResult.direct_map`.
LEVEL_4K, LEVEL_2M, LEVEL_1G = 0, 1, 2


@dataclass
class ReplayResult:
    """Everything one replay produced.

    counters
        Final totals, name -> int.  Kernel spelling where the kernel has the
        counter (``direct_map_level2_splits``, ``DirectMap4k`` in kB,
        ``nr_tlb_remote_flush``...), ``emu_*`` otherwise (architecture.md
        section 3): ``emu_shootdowns``, ``emu_shootdown_ipis``,
        ``emu_flush_tlb_all``, ``emu_flush_tlb_kernel_range``,
        ``emu_cpa_flush``, ``emu_local_flush``, ``emu_sync_core_ipis``,
        ``emu_vmap_purges``, ``emu_vm_reset_flush_all`` (of the full flushes,
        those of a ``vm_reset_perms`` that found nothing queued and whose
        pages' direct-map range was above the ceiling), ``emu_waste_bytes`` (+ ``_<cause>``,
        ``emu_waste_peak_bytes[_<cause>]``, ``emu_waste_mean_bytes[_<cause>]``
        time-weighted), ``emu_text_tlb_entries_4k``/``_2m``; also the
        call counts ``emu_set_memory_{ro,rw,x,nx,rox}``,
        ``emu_vm_unmap_aliases``, ``emu_module_alloc``, ``emu_pack_new``/``_free``,
        ``emu_vmalloc_pmd_splits``/``_collapses`` (exec-range PMDs, not in
        vmstat), ``emu_text_poke_bp_batches``, ``emu_wx_pages`` (pages ever
        made writable+executable: 0 for every built-in policy) and ``events``.
    per_op
        op name -> {counter -> total caused by events of that op}, with
        ``events`` = number of such events.  Deferred work (a lazy purge, a
        shrinker) is charged to the event that triggered it.
    timeline
        Sampled counters: ``event_index`` (int64), ``ts_ns`` (uint64) and
        one int64 array per sampled counter, all the same length; the last
        sample is the final state.
    direct_map
        Final level of each 2 MiB region of physical memory, uint8
        (:data:`LEVEL_4K` split to 4K, :data:`LEVEL_2M`, :data:`LEVEL_1G`).
    n_events
        Events replayed.
    """

    counters: dict[str, int]
    per_op: dict[str, dict[str, int]]
    timeline: dict[str, np.ndarray]
    direct_map: np.ndarray
    n_events: int
    meta: dict[str, str] = field(default_factory=dict)
