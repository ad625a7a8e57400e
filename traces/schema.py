"""Trace schema version 1: the contract every other part reads.

One Parquet file, one row per event, sorted by ``seq`` (architecture.md
section 2).  A trace records what the workload *asked for*, never how one
kernel served it, so that one trace replays under every policy.

The emulator never sees strings: :data:`OPS` fixes a small integer code per
op (``OP_CODE``), and readers hand it numpy columns with ``op`` already
encoded as ``uint8``.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

#: Ops in code order.  The code of an op is its index here; never reorder,
#: only append (the codes are part of replay determinism, not of the file).
OPS: tuple[str, ...] = (
    "module_load",       # a module is loaded and its init runs (load_module + do_init_module)
    "module_init_free",  # its init sections are freed (do_free_init)
    "module_unload",     # rmmod (free_module)
    "bpf_prog_load",     # a BPF program (eBPF or classic) is JIT-compiled; size = JIT image bytes
    "bpf_prog_free",     # the program is released (bpf_prog_free_deferred)
    "exec_alloc",        # other executable memory: owner kprobes/ftrace/bpf_trampoline/bpf_dispatcher
    "exec_free",
    "vmalloc",           # plain non-executable vmalloc traffic; drives lazy purge
    "vfree",
    "text_patch",        # runtime code patching (static keys toggled); patch_sites = sites
    "mem_pressure",      # shrinkers are asked to give back `size` bytes
    "module_init",       # the module's init returned: do_init_module makes ro_after_init read-only
                         # (appended to v1: a trace without it replays that step at the init free)
)
OP_CODE: dict[str, int] = {name: code for code, name in enumerate(OPS)}

#: Ops that create an object with an ``id`` and the op that ends it.
ALLOC_FREE: dict[str, str] = {
    "module_load": "module_unload",
    "bpf_prog_load": "bpf_prog_free",
    "exec_alloc": "exec_free",
    "vmalloc": "vfree",
}

#: Module section columns, in the order of the kernel's ``enum mod_mem_type``
#: (include/linux/module.h, 6.4+): MOD_TEXT, MOD_DATA, MOD_RODATA,
#: MOD_RO_AFTER_INIT, MOD_INIT_TEXT, MOD_INIT_DATA, MOD_INIT_RODATA.
SECTION_COLUMNS: tuple[str, ...] = (
    "text_size",
    "data_size",
    "rodata_size",
    "ro_after_init_size",
    "init_text_size",
    "init_data_size",
    "init_rodata_size",
)

#: Executable-allocation owners the synthetic workloads and importers use.
EXEC_OWNERS: tuple[str, ...] = ("kprobes", "ftrace", "bpf_trampoline", "bpf_dispatcher")
#: ``vmalloc`` owner of a task's kernel stack (``alloc_thread_stack_node``, CONFIG_VMAP_STACK):
#: its VA is THREAD_ALIGN aligned, which decides where the areas after it land.
THREAD_STACK = "thread_stack"
#: ``THREAD_ALIGN`` = THREAD_SIZE, bytes: 16 KiB on x86-64 without KASAN
#: (arch/x86/include/asm/page_64_types.h); no other vmalloc asks for this alignment.
THREAD_ALIGN = 16384
#: ``MAX_VA_SIZE_PAGES`` (mm/vmalloc.c, 6.9+): purged vmalloc areas up to this many pages, guard
#: included, go to their vmap node's pool of that size instead of back to the free tree; the
#: importer infers the pools' start with it, the emulator keeps them with it
MAX_VA_SIZE_PAGES = 256
#: Owners the emulator tells apart (``traces.io.iter_event_batches`` codes ``owner`` by this
#: tuple); append only.
OWNERS: tuple[str, ...] = (*EXEC_OWNERS, THREAD_STACK)

#: The Arrow schema written by :func:`traces.io.write_trace`.  Readers also
#: accept ``op``/``owner`` as dictionary-encoded strings.
SCHEMA = pa.schema(
    [
        pa.field("seq", pa.uint64(), nullable=False),
        pa.field("ts_ns", pa.uint64(), nullable=False),
        pa.field("cpu", pa.uint16(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("id", pa.uint64(), nullable=False),
        pa.field("size", pa.uint64(), nullable=False),
        pa.field("owner", pa.string(), nullable=True),
        *(pa.field(c, pa.uint64(), nullable=False) for c in SECTION_COLUMNS),
        pa.field("patch_sites", pa.uint32(), nullable=False),
        # appended to v1 (optional in files, 0 when absent): how many of the following events
        # began while this one was still in progress (issued on other CPUs before its kernel
        # work was done); the emulator interleaves them with it (emulator.replay)
        pa.field("concurrent", pa.uint32(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

#: Parquet key/value metadata keys all start with this prefix.
META_PREFIX = "permtrace."
#: Known metadata keys (without prefix).  Values are strings in the file.
META_KEYS: tuple[str, ...] = (
    "schema_version",
    "source",            # synthetic:<scenario>:seed=<n> | recorded:<release> | imported:ftrace
    "nr_cpus",
    "mem_total_bytes",
    "kernel_release",
    "DirectMap4k",       # kB at start, as /proc/meminfo prints it
    "DirectMap2M",
    "DirectMap1G",
    "buddyinfo",         # text of /proc/buddyinfo at start, when recorded
    "pagetypeinfo",      # text of /proc/pagetypeinfo at start, when recorded
    "vmalloc_busy",      # vmalloc range in use at start, OFFSET+PAGES[@ID],... (importers)
    "module_busy",       # module range in use at start, OFFSET+PAGES,... (importers)
    "vmap_pools",        # 6.9+ vmap node pools' areas at start, OFFSET+PAGES/CPU,... (importers)
    "execmem_cache",     # ROX cache chunks at start, OFFSET+PAGES[:BUSY+PAGES...],... (importers)
)

#: Absurd-size bound for validation: no single request is over 1 TiB.
MAX_SIZE_BYTES = 1 << 40

#: Observations (``<trace>.observed.parquet``): what a real kernel did.
#: ``kind``: ``flush_tlb_all``, ``flush_tlb_kernel_range``, ``cpa_flush``,
#: ``sync_core`` (IPI rounds), ``vmap_purge`` (purges that flushed),
#: ``vm_reset_flush_all`` (full flushes of a ``vm_reset_perms`` that found nothing queued),
#: ``exec_area_alloc``, ``direct_map_level{2,3}_{splits,collapses}`` (deltas).
#: Added compatibly (nullable, readers of the first three columns are
#: unaffected): ``op``, the op kind the kernel's work is charged to (the
#: trace event that triggered it, as the emulator's ``per_op`` charges it;
#: null when unknown, e.g. whole-run vmstat deltas), and ``event_row``, that
#: event's 0-based row in the trace.
OBSERVED_SCHEMA = pa.schema(
    [
        pa.field("ts_ns", pa.uint64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("value", pa.int64(), nullable=False),
        pa.field("op", pa.string(), nullable=True),
        pa.field("event_row", pa.int64(), nullable=True),
    ]
)
