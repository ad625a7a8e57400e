"""Policy registry, parameters, presets and the ``permtrace policies`` command."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from emulator import policies
from emulator.policies.base import Policy
from pipeline.cli import main
from traces.errors import PermtraceError


def test_builtins_and_aliases_are_registered_with_their_presets():
    infos = policies.available()
    assert {"legacy", "perm_alloc", "bpf_prog_pack", "execmem_rox"} <= set(infos)
    base = {name: infos[name].base for name in ("linux-5.10", "linux-6.1", "linux-6.12", "linux-6.18", "linux-7.2")}
    assert base == {"linux-5.10": "legacy", "linux-6.1": "bpf_prog_pack", "linux-6.12": "bpf_prog_pack",
                    "linux-6.18": "execmem_rox", "linux-7.2": "execmem_rox"}
    assert infos["linux-6.12"].preset == {"mod_mem_areas": True, "native_rox": True, "cpa_flush_full": True,
                                          "vmap_nodes": True}
    pa = infos["perm_alloc"].params
    assert pa == {"unmapped_cache": (bool, True), "text_poke_load": (bool, True),
                  "cache_mappings": (bool, False), "module_2m_mappings": (bool, False)}
    assert infos["legacy"].doc.startswith("Linux 5.10")


def test_make_parses_strings_by_declared_type_and_reports_choices():
    p = policies.make("perm_alloc", {"cache_mappings": "true", "module_2m_mappings": "0"})
    assert p.params() == {"unmapped_cache": True, "text_poke_load": True, "cache_mappings": True,
                          "module_2m_mappings": False}
    assert policies.make("linux-6.12").params()["cpa_flush_full"] is True
    assert policies.make("linux-6.12", {"cpa_flush_full": "false"}).params()["cpa_flush_full"] is False
    assert policies.parse_value(int, "2M", "x") == 2 << 20 and policies.parse_value(int, "4k", "x") == 4096
    with pytest.raises(PermtraceError, match="valid: .*legacy.*linux-6.1"):
        policies.make("linux-9.9")
    with pytest.raises(PermtraceError, match="unknown param 'cache' .*valid: cache_mappings"):
        policies.make("perm_alloc", {"cache": "1"})
    with pytest.raises(PermtraceError, match="true/false"):
        policies.make("perm_alloc", {"cache_mappings": "maybe"})


class OutOfTree(Policy):
    """An out-of-tree test policy."""

    PRESETS = {"oot-1": {}}


def test_entry_point_policies_are_listed_and_made(monkeypatch):
    ep = EntryPoint("oot", f"{__name__}:OutOfTree", policies.ENTRY_POINT_GROUP)
    monkeypatch.setattr(policies, "entry_points", lambda group: [ep] if group == policies.ENTRY_POINT_GROUP else [])
    monkeypatch.setitem(__import__("sys").modules, __name__, __import__("sys").modules[__name__])
    infos = policies.available()
    assert infos["oot"].cls is OutOfTree and infos["oot-1"].base == "oot"
    assert infos["oot"].source.startswith("entry point")
    assert isinstance(policies.make("oot-1"), OutOfTree)


def test_permtrace_policies_lists_names_params_defaults_and_docs(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "perm_alloc" in out and "-p cache_mappings=<bool>  default false" in out
    assert "alias linux-6.18 = execmem_rox" in out and "The 2020 perm_alloc RFC" in out


def test_bench_rejects_bad_sizes(capsys):
    assert main(["bench", "--sizes", "lots"]) == 2
    assert "--sizes" in capsys.readouterr().err
