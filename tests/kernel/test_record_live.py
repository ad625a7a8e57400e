"""``permtrace record`` and ``permtrace groundtruth bpf`` on the running kernel (root, as CI runs),
and the promise that the host's tracing state is left exactly as found, also on SIGTERM/SIGINT/crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from traces import bpfload
from traces.importers.ftrace import observed_path
from traces.record import Recorder, tracing_state
from traces.validate import validate_trace

PERMTRACE = [sys.executable, "-m", "pipeline.cli"]


def test_record_refuses_when_not_root(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["record", "--out", str(tmp_path / "t.parquet"), "--duration", "1"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_record_refuses_a_path_that_is_not_tracefs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["record", "--out", str(tmp_path / "t.parquet"), "--tracefs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a tracefs mount" in err and "mount -t tracefs" in err


def _live_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        bpfload.check_bpf_available()
    except Exception as e:  # noqa: BLE001
        return f"bpf(2) unavailable: {e}"
    if not Path("/sys/kernel/tracing").is_dir():
        return "no /sys/kernel/tracing"
    return None


@pytest.fixture
def watch():
    """A tracefs mount of our own to read the host's tracing state (tracefs is one instance)."""
    if reason := _live_available():
        pytest.skip(reason)
    d = Path(tempfile.mkdtemp(prefix="permtrace-test-tracefs-"))
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(d)], check=True)
    mounts = [m for m in Path("/proc/mounts").read_text().splitlines() if str(d) not in m]
    before = tracing_state(d)
    yield d, before, mounts
    subprocess.run(["umount", str(d)], check=False)
    d.rmdir()


def assert_unchanged(watch) -> None:
    d, before, mounts = watch
    assert tracing_state(d) == before
    assert [m for m in Path("/proc/mounts").read_text().splitlines() if str(d) not in m] == mounts


DEFAULT_TRACEFS = [Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")]


def wait_recording(pid: int, roots: list[Path], timeout: float = 60) -> None:
    """Wait until ``permtrace record`` (process ``pid``) traces: its instance's tracing_on reads 1.

    That is Recorder.start's last step; setup (probe program, settle) takes a second or more.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for root in [*roots, *Path(tempfile.gettempdir()).glob("permtrace-tracefs-*")]:
            try:
                if (root / "instances" / f"permtrace-{pid}" / "tracing_on").read_text().strip() == "1":
                    return
            except OSError:
                pass
        time.sleep(0.05)
    pytest.fail("recording never started")


LOADER = textwrap.dedent("""
    import os, sys, time
    from traces import bpfload
    fds = []
    for i in range(60):
        fds.append(bpfload.load_ebpf(4096))
        time.sleep(0.01)
    time.sleep(1.0)
    for fd in fds:
        os.close(fd)
""")


@pytest.mark.live
@pytest.mark.parametrize("use_watch_mount", [False, True])
def test_record_5s_while_bpf_loads_validates_replays_and_restores(tmp_path, watch, use_watch_mount):
    out = tmp_path / "host.parquet"
    cmd = [*PERMTRACE, "record", "--out", str(out), "--duration", "5"]
    if use_watch_mount:
        cmd += ["--tracefs", str(watch[0])]
    rec = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=Path(__file__).parents[2])
    roots = [watch[0]] if use_watch_mount else DEFAULT_TRACEFS
    wait_recording(rec.pid, roots)         # programs loaded before the start are not traced
    loader = subprocess.Popen([sys.executable, "-c", LOADER], cwd=Path(__file__).parents[2])
    _, err = rec.communicate(timeout=120)
    assert loader.wait(30) == 0
    assert rec.returncode == 0, err
    assert validate_trace(out) == []
    trace = pl.read_parquet(out)
    loads = trace.filter(pl.col("op") == "bpf_prog_load")
    assert loads.height >= 60 and 28683 in loads["size"].to_list()
    assert trace.filter(pl.col("op") == "bpf_prog_free").height >= 60
    assert observed_path(out).is_file()
    import emulator
    from emulator import policies
    from traces.io import read_metadata
    result = emulator.replay(out, policies.make("bpf_prog_pack"),
                             emulator.Machine.from_metadata(read_metadata(out)), 0)
    assert result.n_events == trace.height
    assert_unchanged(watch)


@pytest.mark.live
@pytest.mark.parametrize("sig, args, code", [
    (signal.SIGTERM, ["--duration", "60"], 130),     # a timed run is aborted
    (signal.SIGINT, [], 0),                          # an open-ended run ends normally, trace written
])
def test_record_interrupted_restores_tracing(tmp_path, watch, sig, args, code):
    out = tmp_path / "t.parquet"
    p = subprocess.Popen([*PERMTRACE, "record", "--out", str(out), "--tracefs", str(watch[0]), *args],
                         cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_recording(p.pid, [watch[0]])      # a signal during setup aborts by design, whatever the mode
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert out.exists() == (code == 0)
    assert_unchanged(watch)


@pytest.mark.live
def test_recorder_restores_after_a_crash(watch):
    with pytest.raises(RuntimeError), Recorder(watch[0]) as rec:
        rec.mark("about to crash")
        raise RuntimeError("boom")
    assert_unchanged(watch)


@pytest.mark.live
def test_groundtruth_bpf_live(tmp_path, watch):
    # WHEN 100 eBPF programs of 4096 instructions are loaded and freed on this kernel
    r = subprocess.run([*PERMTRACE, "groundtruth", "bpf", "--n", "100", "--insns", "4096", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    trace_path = tmp_path / "ebpf_n100_k4096.parquet"
    assert validate_trace(trace_path) == []
    # THEN the trace holds exactly the 100 programs (28683 JIT bytes each, REPORT.md) and their 300 vmalloc areas
    from traces.io import read_metadata
    warmup = int(read_metadata(trace_path).get("warmup_events", 0))   # starting state, not workload
    trace = pl.read_parquet(trace_path).slice(warmup)
    counts = dict(trace.group_by("op").len().iter_rows())
    assert counts["bpf_prog_load"] == counts["bpf_prog_free"] == 100
    # 3 areas per eBPF load; kernel threads are attributed to the run too (their frees are the deferred
    # program frees), so a kworker created meanwhile adds its own 16 KiB vmap stack now and then
    stacks = trace.filter((pl.col("op") == "vmalloc") & (pl.col("size") == 16384)).height  # THREAD_SIZE
    assert counts["vmalloc"] - stacks == 300
    assert set(trace.filter(pl.col("op") == "bpf_prog_load")["size"].to_list()) == {28683}
    # AND 2.8 MB of JIT code needed at least one new pack, each costing at least its CPA flush
    obs = pl.read_parquet(observed_path(trace_path))
    tot = dict(obs.group_by("kind").agg(pl.col("value").sum()).iter_rows())
    assert tot["exec_area_alloc"] >= 1 and tot["flush_tlb_all"] >= tot["exec_area_alloc"]
    assert "timings:" in r.stdout
    assert_unchanged(watch)
    # AND check-model under linux-6.18 reproduces the flushes and purges exactly
    c = subprocess.run([*PERMTRACE, "check-model", str(trace_path), "--policy", "linux-6.18"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert c.returncode in (0, 1), c.stderr
    from pipeline.check_model import check_model
    frame = check_model(trace_path, "linux-6.18").frame
    exact = frame.filter(pl.col("deterministic") & pl.col("ok").is_not_null())
    assert exact.filter(pl.col("counter").is_in(["emu_flush_tlb_all", "emu_vmap_purges"])
                        & (pl.col("op") == "all")).height == 2
    assert exact["ok"].all(), c.stdout
    splits = frame.filter(~pl.col("deterministic") & (pl.col("op") == "all") & pl.col("ok").is_not_null())
    if not splits["ok"].all():
        # Where this host's pages land depends on its history; the model's allocator does not yet
        # reproduce a long-running shared host (see the report), so a miss is shown, not hidden.
        bad = splits.filter(~pl.col("ok")).select("counter", "observed", "predicted_min", "predicted_max")
        pytest.xfail(f"splits outside the predicted range on this host: {bad.rows()}")
    assert c.returncode == 0, c.stdout
