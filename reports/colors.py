"""One colour per policy, the same in every chart and every report.

Built-in policies and their release aliases have fixed colours (an alias
shares its policy's hue family); any other name gets a colour from
:data:`EXTRA` chosen by a stable hash of the name, so it does not change
when other policies come and go.
"""

from __future__ import annotations

import hashlib

#: Built-in policies and aliases (Tableau 10 hues; legacy grey = the baseline).
FIXED: dict[str, str] = {
    "legacy": "#7f7f7f",
    "linux-5.10": "#7f7f7f",
    "perm_alloc": "#1f77b4",
    "bpf_prog_pack": "#ff7f0e",
    "linux-6.1": "#ff7f0e",
    "linux-6.12": "#d62728",
    "execmem_rox": "#2ca02c",
    "linux-6.18": "#2ca02c",
    "linux-7.2": "#17becf",
}

#: Colours for other policy names (out-of-tree policies, parameter variants).
EXTRA: tuple[str, ...] = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#aec7e8",
                          "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")


def policy_color(name: str) -> str:
    """The colour of a policy label (a parameter variant ``name {json}`` hashes as a whole)."""
    if name in FIXED:
        return FIXED[name]
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return EXTRA[int.from_bytes(digest, "big") % len(EXTRA)]


def scale(policies: list[str]) -> dict[str, list[str]]:
    """An Altair/Vega-Lite colour scale (``domain``/``range``) for these policies."""
    names = sorted(policies)
    return {"domain": names, "range": [policy_color(n) for n in names]}
