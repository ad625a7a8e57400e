"""The time-weighted mean of live waste (``Kernel.waste`` / ``waste_counters``), exact."""

from emulator import Machine
from emulator.result import WASTE_CAUSES

ROUNDING = WASTE_CAUSES.index("page_rounding")
TABLES = WASTE_CAUSES.index("page_tables")


def at(k, now, cause, delta):
    k.now = now
    k.waste(cause, delta)


def test_mean_is_the_integral_over_the_span():
    # GIVEN 4096 B of rounding live over [100, 300) and 512 B of page tables from 250 to the end (400)
    k = Machine(nr_cpus=2, mem_bytes=1 << 30).boot(0)
    at(k, 100, ROUNDING, 4096)
    at(k, 250, TABLES, 512)
    at(k, 300, ROUNDING, -4096)
    # WHEN the counters are taken over [100, 400]
    c = k.waste_counters(100, 400)
    # THEN each mean is its byte-ns integral over the 300 ns span
    assert c["emu_waste_mean_bytes_page_rounding"] == 4096 * 200 // 300
    assert c["emu_waste_mean_bytes_page_tables"] == 512 * 150 // 300
    assert c["emu_waste_mean_bytes"] == (4096 * 200 + 512 * 150) // 300
    assert c["emu_waste_peak_bytes"] == 4096 + 512 and c["emu_waste_bytes"] == 512


def test_a_change_back_in_time_counts_from_the_latest_time_seen():
    # GIVEN a change stamped 200 after one at 300 (time never runs backwards in the integral)
    k = Machine(nr_cpus=2, mem_bytes=1 << 30).boot(0)
    at(k, 100, ROUNDING, 4096)
    at(k, 300, ROUNDING, -4096)
    at(k, 200, ROUNDING, 100)
    # WHEN the counters are taken over [100, 400]
    c = k.waste_counters(100, 400)
    # THEN the late change is live over [300, 400], not [200, 400]
    assert c["emu_waste_mean_bytes_page_rounding"] == (4096 * 200 + 100 * 100) // 300
