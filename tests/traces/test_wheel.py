"""The four generic package names resolve to this project from an installed wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("traces", "emulator", "pipeline", "reports")


def test_no_other_installed_distribution_provides_our_names():
    import importlib.metadata
    providers = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        assert set(providers.get(name, ["permtrace"])) == {"permtrace"}, (name, providers[name])


def test_installed_wheel_owns_its_four_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("permtrace-*.whl")
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == set(PACKAGES)
    assert "traces/data/module_anchors.csv" in zipfile.ZipFile(wheel).namelist()

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, cwd=tmp_path)
    probe = ("import json, importlib; "
             f"mods = {{n: importlib.import_module(n).__file__ for n in {PACKAGES!r}}}; "
             "from traces.synth._anchors import load_module_anchors; "
             "mods['anchors'] = len(load_module_anchors()['module']); print(json.dumps(mods))")
    # -I: isolated (no cwd, no user site, no PYTHONPATH); the install dir goes first on sys.path by hand,
    # so the editable checkout installed in this venv must lose to it
    code = f"import sys; sys.path.insert(0, {str(site)!r}); " + probe
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd=tmp_path,
                         capture_output=True, text=True).stdout
    found = json.loads(out)
    for name in PACKAGES:
        assert Path(found[name]).is_relative_to(site), (name, found[name])
    assert found["anchors"] == 46
