"""Code patching through the temporary ``poking_mm`` (arch/x86/kernel/alternative.c).

``text_poke`` / ``text_poke_copy`` / ``text_poke_set`` map the target page(s)
in a per-CPU temporary mm and flush only the local TLB: no IPI, no
shootdown.  ``text_poke_copy`` works in chunks that never cross a page
(one ``__text_poke`` and one local flush per chunk).

``text_poke_bp_batch`` (``smp_text_poke_batch_finish`` on 6.16+) patches up
to ``TP_VEC_MAX`` = 256 sites per batch: INT3 on every site, sync, the
tails, sync, the first bytes, sync - three ``text_poke_sync`` rounds of
sync-core IPIs (``do_sync_core``) to every other CPU, measured as 3 per
batch on 6.1 (groundtruth/results/guest).  Each site is poked three times
(three local flushes).
"""

from __future__ import annotations

from emulator.tlb import local_flush

TP_VEC_MAX = 256
PAGE_SIZE = 4096


def text_poke_copy(k, addr_byte_offset: int, nbytes: int) -> None:
    """Copy ``nbytes`` to executable memory starting ``addr_byte_offset`` into a page: local flushes only."""
    if nbytes <= 0:
        return
    first = addr_byte_offset // PAGE_SIZE
    last = (addr_byte_offset + nbytes - 1) // PAGE_SIZE
    local_flush(k, last - first + 1)


#: ``text_poke_set`` (fill with INT3, ``bpf_arch_text_invalidate``) chunks the same way.
text_poke_set = text_poke_copy


def text_poke_bp_batch(k, sites: int) -> None:
    """Patch ``sites`` live code sites: ceil(sites/256) batches of 3 sync-core IPI rounds each."""
    if sites <= 0:
        return
    batches = -(-sites // TP_VEC_MAX)
    c = k.stat
    c["emu_text_poke_bp_batches"] += batches
    c["emu_sync_core_ipis"] += 3 * batches * (k.nr_cpus - 1)
    local_flush(k, 3 * sites)


def jump_label_add_module(k, sites: int) -> None:
    """Patch a new module's ``sites`` jump-label / static-call sites at load.

    ``jump_label_add_module`` batches per static key and a module's keys
    have about one site each, so each site is its own ``text_poke_bp``
    batch: measured on 6.1, xfs patched 1308 sites in 1308 batches (3924
    ``do_sync_core`` IPIs at 2 CPUs).
    """
    if sites <= 0:
        return
    c = k.stat
    c["emu_text_poke_bp_batches"] += sites
    c["emu_sync_core_ipis"] += 3 * sites * (k.nr_cpus - 1)
    local_flush(k, 3 * sites)
