"""The bench's steal gate: /proc/stat read as proc(5) lays it out, runs measured again
while the hypervisor took more than the limit, and the budget that bounds it all."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bench import report, steal
from bench.run import Options, PreparedRow, Results, measure_levels
from bench.steal import CoreTimes, StealGate
from tests.bench.test_bench import _measurement

# proc(5): cpuN user nice system idle iowait irq softirq steal guest guest_nice
STAT = """cpu  300 0 60 1000 10 0 5 40 0 0
cpu0 100 0 20 500 5 0 2 30 0 0
cpu1 200 0 40 500 5 0 3 10 7 0
intr 12345 0 0
"""


def test_each_core_reads_its_steal_and_the_sum_of_its_first_eight_times(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT)
    assert steal.read((0, 1), stat) == {
        0: CoreTimes(steal=30, total=100 + 20 + 500 + 5 + 2 + 30),
        1: CoreTimes(steal=10, total=200 + 40 + 500 + 5 + 3 + 10),  # guest is within user
    }
    with pytest.raises(ValueError, match=r"no line for core\(s\) \[2\]"):
        steal.read((0, 2), stat)


def test_this_kernel_reports_both_bench_cores() -> None:
    cores = tuple(sorted(os.sched_getaffinity(0)))[:2]
    found = steal.read(cores)
    assert set(found) == set(cores) and all(t.total > t.steal >= 0 for t in found.values())


def test_the_share_is_the_most_disturbed_cores() -> None:
    before = {0: CoreTimes(0, 1000), 1: CoreTimes(0, 1000)}
    after = {0: CoreTimes(2, 1200), 1: CoreTimes(20, 1200)}
    assert steal.share(before, after) == pytest.approx(0.1)
    assert steal.share(before, before) == 0.0  # no tick passed


def test_the_wait_samples_cores_that_wake_each_other() -> None:
    """The real sample: two processes passing a byte back and forth for 0.2 s end, and
    their cores' steal share is a fraction."""
    cores = tuple(sorted(os.sched_getaffinity(0)))[:2]
    lost = steal._ping_pong_share(cores, 0.2)
    assert 0.0 <= lost <= 1.0


class Script:
    """/proc/stat readings whose steal moves by the scripted shares, one per measurement."""

    def __init__(self, shares: list[float]) -> None:
        self.shares, self.ticks, self.reads = list(shares), 0, 0

    def read(self, cores):
        self.reads += 1
        if self.reads % 2 == 0:  # the reading after a measurement
            lost = self.shares.pop(0)
            self.ticks += 10_000
            self.stolen = getattr(self, "stolen", 0) + round(lost * 10_000)
        return {core: CoreTimes(getattr(self, "stolen", 0), self.ticks) for core in cores}


def gate(monkeypatch, shares, probes=(0.0,), budget=600.0, limit=0.01) -> StealGate:
    monkeypatch.setattr(steal, "read", Script(shares).read)
    samples = list(probes)
    return StealGate((0, 1), limit, budget, probe=lambda cores, seconds: samples.pop(0))


def test_a_disturbed_run_is_measured_again_and_the_quiet_one_kept(monkeypatch) -> None:
    g = gate(monkeypatch, [0.30, 0.0], probes=(0.0, 0.0))
    settled: list[int] = []
    attempts = iter(["disturbed", "quiet"])
    kept, lost = g.measure(lambda: next(attempts), lambda: settled.append(1))
    assert (kept, lost) == ("quiet", 0.0)
    assert settled == [1]  # the server and the others settle before the repeat
    assert (g.runs, g.remeasured, g.over_limit) == (1, 1, 0)


def test_a_run_that_never_goes_quiet_keeps_its_least_disturbed_attempt(monkeypatch) -> None:
    g = gate(monkeypatch, [0.5, 0.2, 0.4, 0.3], probes=[0.0] * steal.MAX_ATTEMPTS)
    attempts = iter(range(steal.MAX_ATTEMPTS))
    kept, lost = g.measure(lambda: next(attempts), lambda: None)
    assert (kept, lost) == (1, pytest.approx(0.2))
    assert (g.runs, g.remeasured, g.over_limit) == (1, steal.MAX_ATTEMPTS - 1, 1)


def test_the_wait_goes_on_until_a_quiet_sample(monkeypatch) -> None:
    g = gate(monkeypatch, [0.0], probes=(0.5, 0.3, 0.01, 0.9))
    g.measure(lambda: "run", lambda: None)
    assert g.probe((0, 1), 1.0) == 0.9  # the samples after the quiet one were not taken


def test_with_no_budget_every_run_is_measured_once_and_its_steal_kept(monkeypatch) -> None:
    g = gate(monkeypatch, [0.3], probes=(), budget=0)  # a probe would pop an empty list
    assert g.measure(lambda: "run", lambda: None) == ("run", pytest.approx(0.3))
    assert (g.runs, g.remeasured, g.over_limit, g.spent_seconds) == (1, 0, 1, 0.0)


def test_every_level_keeps_its_runs_steal_and_the_level_its_largest(monkeypatch) -> None:
    """Through measure_levels: alternated runs, each disturbed one measured again after
    the others and the server itself are quiet; the table shows the level's largest."""
    from bench import run

    shares = [0.0, 0.02, 0.005, 0.001, 0.003]  # the second run measured again once
    g = gate(monkeypatch, shares, probes=[0.0] * 5)
    events: list[str] = []

    class Server:
        pid = 7

    def measure_level(prepared, connections, seconds, options):
        events.append(f"run {prepared.capture}")
        return _measurement("service", "predict single", prepared.capture, 100)

    monkeypatch.setattr(run, "measure_level", measure_level)
    monkeypatch.setattr(run, "wait_quiet", lambda pid: events.append(f"quiet {pid}"))
    rows = [PreparedRow(Server(), "service", "predict single", c, 1, "u", Path("s")) for c in "ab"]
    options = Options(seconds=4, rounds=2, concurrency=(16,))
    levels = measure_levels(rows, options, lambda row: events.append(f"alone {row.capture}"), g)
    assert events == [
        "alone a",
        "run a",
        "alone b",
        "run b",
        "alone b",  # measured again: the others quiet, and the server itself
        "quiet 7",
        "run b",
        "alone a",
        "run a",
        "alone b",
        "run b",
    ]
    (a,), (b,) = levels
    assert [r.steal_share for r in a.runs] == [0.0, pytest.approx(0.001)]
    assert [r.steal_share for r in b.runs] == [pytest.approx(0.005), pytest.approx(0.003)]
    assert b.steal_share == pytest.approx(0.005)
    machine = {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"}
    results = Results(options, machine, measurements=[a, b], steal=g)
    assert report.table(results).splitlines()[-1].endswith("| 0.5% | - |")
    assert "every run kept lost at most 1.0% of either core to steal" in report.summary(results)
    assert report.document(results)["steal"]["remeasured"] == 1


def test_the_summary_names_runs_kept_disturbed() -> None:
    g = StealGate((0, 1), 0.01, 600.0, runs=3, over_limit=2, remeasured=5, spent_seconds=600)
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.steal = g
    printed = report.summary(results)
    assert "3 runs, each started once the cores lost at most 1.0% of either core" in printed
    assert "(5 measured again; 600 s of the 600 s budget spent)" in printed
    assert "2 kept with more steal than 1.0% of either core" in printed
    assert "every run kept" not in printed
    results.steal = dataclasses.replace(g, budget_seconds=0.0, runs=1, over_limit=0)
    printed = report.summary(results)
    assert "1 run, each measured once (a steal budget of 0 s: no waiting, no repeats)" in printed
    assert "started once" not in printed
    unmeasured = dataclasses.replace(g, runs=0)
    results.steal = unmeasured
    assert "steal (" not in report.summary(results)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steal-limit", "0"], "--steal-limit is 0.0; it is a percent"),
        (["--steal-limit", "101"], "--steal-limit is 101.0; it is a percent"),
        (["--steal-budget", "-1"], "--steal-budget is -1; it must be at least 0"),
    ],
)
def test_a_steal_option_out_of_range_is_refused_by_name(argv, message, capsys) -> None:
    from bench.__main__ import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_compute_ceiling_line_shows_its_steal() -> None:
    from bench import compute

    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.compute = compute.ComputeCeiling(
        50e-6, 20_000, 20_000, 256, 40_000, 40_000, "batch-capable copy", 0.0, "proven", 0.004
    )
    line = next(x for x in report.summary(results).splitlines() if x.startswith("raw onnx"))
    assert line.endswith("(batch-capable copy: proven); steal 0.4%")


class Clock:
    """time.monotonic for the gate: advanced by the fakes as their work would take."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_the_budget_counts_each_second_once_and_names_unquiet_starts(monkeypatch) -> None:
    """Probes of 1 s, runs of 2 s, a settle of 0.5 s: a run measured again costs its own
    wait, its settle and its run, each counted once; once the budget is gone, a run starts
    without a quiet sample and the summary says so."""
    clock = Clock()
    monkeypatch.setattr(steal, "time", clock)
    monkeypatch.setattr(steal, "read", Script([0.3, 0.0, 0.3]).read)

    def probe(cores, seconds):
        clock.now += 1.0
        return 0.0

    def attempt():
        clock.now += 2.0
        return "run"

    def settle():
        clock.now += 0.5

    g = StealGate((0, 1), 0.01, 4.5, probe=probe)
    g.measure(attempt, settle)  # wait 1, run (free), settle 0.5, wait 1, run again 2
    assert g.spent_seconds == pytest.approx(4.5) and g.unquiet_starts == 0
    g.measure(attempt, settle)  # nothing left: no wait, measured once, kept disturbed
    assert (g.unquiet_starts, g.over_limit, g.remeasured) == (1, 1, 1)
    results = Results(Options(), {"nproc": 2, "cpu": "x", "python": "3", "onnxruntime": "1"})
    results.steal = g
    assert "1 attempt started without (the budget had run out)" in report.summary(results)
