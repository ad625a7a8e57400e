"""Policy registry: built-ins are the modules of this package, others come from entry points.

Each module of this package (except ``base``) defines one :class:`Policy`
subclass; its file name is its CLI name and its ``PRESETS`` mapping adds
alias names (kernel releases).  Out-of-tree policies register in the
entry-point group ``permtrace.policies`` (``name = "pkg.mod:Class"``).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from emulator.policies.base import Policy
from traces.errors import PermtraceError

ENTRY_POINT_GROUP = "permtrace.policies"


@dataclass(frozen=True)
class PolicyInfo:
    """What ``permtrace policies`` shows about one name."""

    name: str
    cls: type[Policy]
    params: dict[str, tuple[type, object]]  # name -> (type, default)
    doc: str
    base: str | None = None                 # for an alias: the policy it presets
    preset: dict[str, object] = field(default_factory=dict)
    source: str = "builtin"


def _policy_class(module) -> type[Policy] | None:
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Policy) and obj is not Policy and obj.__module__ == module.__name__:
            return obj
    return None


def _params(cls: type[Policy]) -> dict[str, tuple[type, object]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(cls)}


def _first_line(cls) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def available() -> dict[str, PolicyInfo]:
    """Every policy and alias name -> :class:`PolicyInfo`, built-ins first, then entry points."""
    found: list[tuple[str, type[Policy], str]] = []
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name == "base":
            continue
        cls = _policy_class(importlib.import_module(f"{__name__}.{mod.name}"))
        if cls is not None:
            found.append((mod.name, cls, "builtin"))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001 - a broken plugin must not hide the built-ins
            raise PermtraceError(f"policy entry point {ep.name!r} ({ep.value}) failed to load: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise PermtraceError(f"policy entry point {ep.name!r} ({ep.value}) is not a Policy subclass")
        found.append((ep.name, cls, f"entry point {ep.value}"))
    out: dict[str, PolicyInfo] = {}
    for name, cls, source in found:
        params = _params(cls)
        out[name] = PolicyInfo(name, cls, params, _first_line(cls), source=source)
        for alias, preset in cls.PRESETS.items():
            bad = set(preset) - set(params)
            if bad:
                raise PermtraceError(f"preset {alias!r} of {name} sets unknown params {sorted(bad)}")
            out[alias] = PolicyInfo(alias, cls, params, _first_line(cls), base=name, preset=dict(preset),
                                    source=source)
    return out


def parse_value(typ: type, value: object, name: str) -> object:
    """Parse a CLI string by the declared type: bool true/false/1/0, int with 4K/2M/1G suffixes."""
    if not isinstance(value, str):
        if typ is bool and isinstance(value, bool) or typ is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        raise PermtraceError(f"param {name!r} expects {typ.__name__}, got {value!r}")
    v = value.strip().lower()
    if typ is bool:
        if v in ("true", "1", "yes", "on"):
            return True
        if v in ("false", "0", "no", "off"):
            return False
        raise PermtraceError(f"param {name!r} expects true/false/1/0, got {value!r}")
    if typ is int:
        mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(v[-1:], 1)
        try:
            return int(v[:-1] if mult > 1 else v, 0) * mult
        except ValueError:
            raise PermtraceError(f"param {name!r} expects an int (suffixes 4K/2M/1G), got {value!r}") from None
    return typ(value)


def make(name: str, params: dict[str, object] | None = None) -> Policy:
    """Build a policy by name or alias; ``params`` (strings or typed) override the preset."""
    infos = available()
    info = infos.get(name)
    if info is None:
        raise PermtraceError(f"unknown policy {name!r}; valid: {', '.join(sorted(infos))}")
    values = dict(info.preset)
    for key, value in (params or {}).items():
        if key not in info.params:
            valid = ", ".join(sorted(info.params)) or "(none)"
            raise PermtraceError(f"unknown param {key!r} for policy {name!r}; valid: {valid}")
        values[key] = parse_value(info.params[key][0], value, key)
    return info.cls(**values)


__all__ = ["Policy", "PolicyInfo", "available", "make", "parse_value", "ENTRY_POINT_GROUP"]
