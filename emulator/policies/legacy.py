"""``legacy``: the old path the seed RFC set out to replace (Linux 5.10)."""

from __future__ import annotations

from dataclasses import dataclass

from emulator.policies.base import Policy


@dataclass
class Legacy(Policy):
    """Linux 5.10: module_alloc + set_memory_ro/nx/x per module, one module_alloc per BPF program.

    Modules: a core and an init allocation, 9 set_memory_ro, 5 set_memory_nx,
    2 set_memory_x (kernel/module.c); BPF: ``bpf_jit_binary_alloc`` then
    ``set_memory_ro`` + ``set_memory_x`` (3 + splits shootdowns a load);
    every free is a ``VM_FLUSH_RESET_PERMS`` vfree (1 full flush).  All of
    it is the base :class:`Policy`; this file only names it.
    """

    PRESETS = {"linux-5.10": {}}
