"""permtrace export perfetto: Chrome trace-event JSON that ui.perfetto.dev opens."""

from __future__ import annotations

import json

from pipeline.cli import main


def test_export_structure(dataset, tmp_path):
    # GIVEN two policies x two traces x three seeds WHEN exported
    out = tmp_path / "trace.json"
    assert main(["export", "perfetto", str(dataset), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    # THEN one process per policy, named, and one thread per (policy, trace), lowest seed
    procs = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs == {1: "legacy", 2: "perm_alloc"}
    threads = sorted(e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name")
    assert threads == ["a (seed 0)", "a (seed 0)", "b (seed 0)", "b (seed 0)"]
    assert {e["ph"] for e in events} == {"M", "C", "i"}
    # every non-metadata event has a numeric ts in microseconds; counters carry their value in args
    counters = [e for e in events if e["ph"] == "C"]
    assert all(isinstance(e["ts"], float) and e["pid"] in procs for e in counters)
    shoot = [e for e in counters if e["pid"] == 1 and e["name"] == "a: emu_shootdowns"]
    assert [e["args"]["emu_shootdowns"] for e in shoot] == [0, 1, 2, 4, 5, 7, 8, 10]
    assert [e["ts"] for e in shoot] == sorted(e["ts"] for e in shoot)
    assert shoot[-1]["ts"] == 99_000.0  # event 99 at 99 ms -> 99000 us
    # instant events mark where shootdowns grew, naming the increase
    marks = [e for e in events if e["ph"] == "i" and e["pid"] == 1 and "shootdowns" in e["name"]]
    assert marks and all(e["s"] == "t" and e["name"].startswith("+") for e in marks)
    assert sum(int(e["name"].split()[0]) for e in marks) // 2 == 10  # two traces


def test_export_refuses_to_overwrite_without_force(dataset, tmp_path):
    out = tmp_path / "trace.json"
    out.write_text("{}")
    assert main(["export", "perfetto", str(dataset), "--out", str(out)]) == 2
    assert out.read_text() == "{}"
    assert main(["export", "perfetto", str(dataset), "--out", str(out), "--force"]) == 0
