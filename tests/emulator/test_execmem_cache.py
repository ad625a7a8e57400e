"""The execmem ROX cache's starting state (``Machine.execmem_cache``, 7.2 module traces)."""

from __future__ import annotations

import pytest

from emulator import policies
from emulator.machine import Machine
from emulator.vmalloc import MODULES_VADDR
from traces.errors import PermtraceError


def booted(execmem_cache: str):
    """GIVEN a 7.2 kernel whose module range is busy up to 2 MiB + 4 KiB past a chunk at 4 MiB."""
    machine = Machine(nr_cpus=2, mem_bytes=2 << 30, kaslr=False, module_busy="0+1537",
                      execmem_cache=execmem_cache)
    policy = policies.make("linux-7.2")
    k = machine.boot(0)
    policy.attach(k)
    return policy, k


def test_text_is_carved_from_the_chunk_of_the_start():
    policy, k = booted("1024+512:0+1")
    chunk = MODULES_VADDR + 1024
    # THEN the chunk is in the cache, its first page taken, and building it was not counted
    assert list(policy.chunks) == [chunk]
    assert (policy.cache_starts, policy.cache_ends) == ([chunk + 1], [chunk + 512])
    assert k.totals()["emu_flush_tlb_all"] == 0
    # WHEN a module's text is allocated
    text = policy.module_text_alloc(4)
    # THEN it lands right after the busy page, no new chunk; making it writable splits the
    # chunk's PMD and its read-only 2 MiB direct-map alias, as in a chunk populated by a load
    assert text.chunk.addr + text.first == chunk + 1 and list(policy.chunks) == [chunk]
    t = k.totals()
    assert (t["emu_vmalloc_pmd_splits"], t["direct_map_level2_splits"], t["emu_flush_tlb_all"]) == (1, 1, 4)


def test_no_start_chunk_populates_one_at_the_first_text():
    policy, k = booted("")
    policy.module_text_alloc(4)
    assert len(policy.chunks) == 1 and MODULES_VADDR + 1024 not in policy.chunks


def test_execmem_cache_metadata_is_parsed_and_checked():
    assert Machine.from_metadata({"execmem_cache": "1024+512:0+1:7+2,2048+512"}).execmem_chunks() == [
        (1024, 512, [(0, 1), (7, 2)]), (2048, 512, [])]
    with pytest.raises(PermtraceError, match="execmem_cache"):
        Machine(execmem_cache="1024+512:0")
