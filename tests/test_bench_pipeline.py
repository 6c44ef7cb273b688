"""`lucida bench pipeline`: both scenes in one run, figures that add up (never timed here)."""

from __future__ import annotations

import pytest
from lucida.models import resolve_bundle
from lucida.tools.bench.pipeline import SIM_LABEL, bench_pipeline


@pytest.fixture(scope="module")
def lymph_m():
    return resolve_bundle("lymph-m")


def test_one_run_measures_a_still_field_and_the_new_field_worst_case(lymph_m):
    r = bench_pipeline(lymph_m, seconds=1.0)
    worst = r["new_field"]
    assert r["scene"].startswith("still field") and "worst case" in worst["scene"]
    for run in (r, worst):
        assert run["fps"] > 0 and 0 < run["throughput_ratio"] < 2
        assert run["limit_fps"] == pytest.approx(min(run["model_bound_fps"], run["cpu_bound_fps"]))
        stages = dict(run["cpu_ms_per_frame"])
        total = stages.pop("total")
        assert sum(stages.values()) == pytest.approx(total, abs=0.01)
    # the still field goes through the motion gate, as a camera's frames do; the slideshow of
    # unrelated fields cannot (its fields jump), so its gate costs nothing
    assert r["cpu_ms_per_frame"]["motion"] > 10 * worst["cpu_ms_per_frame"]["motion"]
    assert r["tiles_per_frame"] == 4 and r["delegate"] == "cpu"
    # the machine's speed before and after, so that runs on a shared machine can be compared
    before, after = r["host_gauge_ms"]
    assert 0 < before < 50 and 0 < after < 50
    assert r["host_steady"] == (abs(after / before - 1) <= 0.15)


def test_the_simulated_edge_tpu_run_says_it_is_a_simulation(lymph_m):
    r = bench_pipeline(lymph_m, seconds=1.0, sim_edgetpu_ms=2.0, devices=2)
    assert r["simulation"] == SIM_LABEL and "SIMULATED" in SIM_LABEL
    assert r["fps_1_device"] > 0 and r["fps_2_devices"] > 0 and r["speedup"] > 0
    assert set(r["runs"]) == {"1", "2"}
