"""The command line as a user runs it: a real subprocess, real exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPORT_KEYS = {
    "payments",
    "throughput_per_s",
    "latency_ms",
    "outcomes",
    "by_gateway",
    "duplicate_charges",
    "replay_mismatches",
}


def aegispay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aegispay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_simulate_json_report_has_the_promised_keys_and_clean_money(tmp_path: Path) -> None:
    result = aegispay("simulate", "--payments", "300", "--latency-ms", "0", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= REPORT_KEYS
    assert report["payments"] == 300
    assert sum(report["outcomes"].values()) == 300
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["duplicate_charges"] == 0
    assert report["replay_mismatches"] == 0
    assert report["unrecorded_charges"] == 0
    # The run's own CPU, for benchmarks: spent, and consistent with its per-payment figure.
    assert report["cpu_s"] > 0
    assert report["cpu_us_per_payment"] == pytest.approx(report["cpu_s"] / 300 * 1e6, rel=0.02)
    assert report["outbox_pending"] == 0


def test_simulate_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    # On the in-memory store nothing suspends on I/O, so the seed fixes the interleaving of
    # gateway draws too; a SQL store's I/O timing varies from run to run.
    runs = [
        json.loads(
            aegispay(
                "simulate",
                "--store",
                "memory://",
                "--payments",
                "200",
                "--latency-ms",
                "0",
                "--seed",
                "7",
                "--json",
                cwd=tmp_path,
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0]["outcomes"] == runs[1]["outcomes"]
    assert runs[0]["by_gateway"] == runs[1]["by_gateway"]


def test_simulate_on_a_sqlite_file_is_durable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pay.db'}"
    assert aegispay("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0
    result = aegispay(
        "simulate",
        "--payments",
        "40",
        "--concurrency",
        "8",
        "--latency-ms",
        "0",
        "--store",
        url,
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["duplicate_charges"] == 0 and report["replay_mismatches"] == 0
    # A second process sees every payment the first one acknowledged.
    import sqlite3

    with sqlite3.connect(tmp_path / "pay.db") as connection:
        (count,) = connection.execute("select count(*) from payments").fetchone()
    assert count == 40


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[engine]\ngateway_timeout_s = 'soon'\n", "settings.engine.gateway_timeout_s"),
        ("[plugins.fraud_rules]\nvelocity_action = 'shout'\n", "velocity_action"),
        ("store = 'ftp://x'\n", "store: unsupported URL scheme 'ftp'"),
    ],
)
def test_bad_configuration_is_a_one_line_error_naming_the_key(
    tmp_path: Path, toml: str, expected: str
) -> None:
    (tmp_path / "aegispay.toml").write_text(toml)
    result = aegispay("simulate", "--payments", "5", "--latency-ms", "0", cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_simulated_gateway_is_named(tmp_path: Path) -> None:
    result = aegispay("simulate", "--payments", "5", "--gateways", "sim-nope", cwd=tmp_path)
    assert result.returncode != 0
    assert "sim-nope" in result.stderr and "sim-alpha" in result.stderr


def test_states_prints_the_transition_table(tmp_path: Path) -> None:
    from aegispay.states import transition_table_markdown

    result = aegispay("states", cwd=tmp_path)
    assert result.stdout.strip() == transition_table_markdown()


# -- chaos scenarios and the HTML report -------------------------------------------------------


def test_simulate_outage_scenario_reports_the_circuit_cycle_and_writes_html(
    tmp_path: Path,
) -> None:
    result = aegispay(
        "simulate",
        "--scenario",
        "outage",
        "--payments",
        "600",
        "--store",
        "memory://",
        "--report",
        "outage.html",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= REPORT_KEYS | {"scenario", "timeline"}
    assert report["payments"] == 600 and report["concurrency"] == 8  # the scenario's default
    assert report["scenario"]["name"] == "outage"
    assert report["duplicate_charges"] == 0 and report["replay_mismatches"] == 0
    timeline = report["timeline"]
    assert len(timeline["buckets"]) == 20 and timeline["clock"] == "virtual"
    changes = [(t["from"], t["to"]) for t in timeline["transitions"]]
    assert changes[0] == ("closed", "open") and changes[-1] == ("half_open", "closed")
    assert "open" in timeline["gateways"]["sim-alpha"]["circuit"]
    page = (tmp_path / "outage.html").read_text()
    assert page.count("<svg") == 5 and "<script" not in page
    assert "circuit for gateway sim-alpha: closed -> open" in result.stderr  # logged


def test_simulate_prints_the_timeline_and_writes_html_without_a_scenario(tmp_path: Path) -> None:
    result = aegispay(
        "simulate",
        "--payments",
        "200",
        "--latency-ms",
        "0",
        "--store",
        "memory://",
        "--report",
        "run.html",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "over time" in result.stdout and "share / p95 ms" in result.stdout
    assert "HTML report written to run.html" in result.stdout
    assert "wall clock" in (tmp_path / "run.html").read_text()


def test_unknown_scenario_and_conflicting_options_are_named(tmp_path: Path) -> None:
    from aegispay.scenarios import SCENARIOS

    unknown = aegispay("simulate", "--scenario", "chaos", cwd=tmp_path)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert f"unknown scenario 'chaos'; available: {', '.join(SCENARIOS)}" in unknown.stderr
    both = aegispay("simulate", "--scenario", "outage", "--gateways", "sim-beta", cwd=tmp_path)
    assert both.returncode != 0
    assert "--gateways and --latency-ms cannot be combined with --scenario" in both.stderr
    helped = aegispay("simulate", "--help", cwd=tmp_path)
    assert all(name in helped.stdout for name in SCENARIOS)


def test_simulate_injects_the_faults_configured_in_aegispay_toml(tmp_path: Path) -> None:
    (tmp_path / "aegispay.toml").write_text(
        "[plugins.fault_injection]\nseed = 3\n[[plugins.fault_injection.faults]]\n"
        'gateway = "sim-alpha"\nkind = "outage"\n'
    )
    result = aegispay(
        "simulate",
        "--payments",
        "150",
        "--latency-ms",
        "0",
        "--store",
        "memory://",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    alpha = report["by_gateway"]["sim-alpha"]["attempts"]
    assert set(alpha) == {"not_sent"} and alpha["not_sent"] > 0  # every call refused
    assert report["gateway_health"]["sim-alpha"]["circuit"] == "open"
    assert report["duplicate_charges"] == 0 and report["unrecorded_charges"] == 0


def test_simulate_fails_when_the_store_fails_payments(tmp_path: Path) -> None:
    """A store that fails every write must not pass for a fast one: the report counts the
    payments it failed and the command exits 1 (the run still reports what it saw)."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'broken.db'}"
    assert aegispay("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "broken.db") as db:
        # Prepared with every insert into payments: "no such function" on each write.
        db.execute("CREATE TRIGGER broken BEFORE INSERT ON payments BEGIN SELECT no_such_fn(); END")
    args = ("simulate", "--payments", "5", "--latency-ms", "0", "--store", url)
    result = aegispay(*args, "--json", cwd=tmp_path)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["store_errors"] == 5
    assert "5 payment(s) failed with a store error" in result.stderr


def test_db_prune_deletes_published_messages_past_their_retention(tmp_path: Path) -> None:
    """``db prune``: with the default retention (a week) a fresh run's messages stay; with a
    tiny one every published message goes, and nothing else (payments, events, keys that
    have not expired)."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'pay.db'}"
    assert aegispay("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0
    args = ("--payments", "20", "--latency-ms", "0", "--refund-share", "0")
    assert aegispay("simulate", *args, "--store", url, cwd=tmp_path).returncode == 0

    def counts() -> tuple[int, ...]:
        with sqlite3.connect(tmp_path / "pay.db") as db:
            return tuple(
                db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("outbox", "payment_events", "payments", "idempotency_keys")
            )

    before = counts()
    assert before[0] == before[1] > 0  # every event's message, all published by the run
    kept = aegispay("db", "prune", "--store", url, "--json", cwd=tmp_path)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["messages"] == 0 and counts() == before
    pruned = aegispay("db", "prune", "--store", url, "--retention-s", "0.001", "--json",
                      cwd=tmp_path)  # fmt: skip
    report = json.loads(pruned.stdout)
    assert (report["messages"], report["keys"]) == (before[0], 0)
    assert counts() == (0, *before[1:])


def test_bench_reads_a_local_servers_cpu_from_proc(tmp_path: Path) -> None:
    """``bench --store``'s server figure: the named processes' own and reaped children's CPU
    (utime, stime, cutime, cstime), others ignored; None where nothing can be read."""
    import os

    from aegispay.benchmark_store import local_server_cpu_s

    ticks = os.sysconf("SC_CLK_TCK")

    def process(pid: int, command: str, times: tuple[int, int, int, int]) -> None:
        (tmp_path / str(pid)).mkdir()
        fields = ["S", *["0"] * 10, *map(str, times), *["0"] * 30]  # state, then field 4 on
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({command}) {' '.join(fields)}\n")

    process(10, "postgres", (100, 50, 20, 5))
    process(11, "postgres: walwriter", (1, 2, 0, 0))  # a postgres child: counted
    process(12, "python3", (1000, 1000, 0, 0))  # not a postgres process
    (tmp_path / "self").mkdir()  # not a pid
    assert local_server_cpu_s(proc=str(tmp_path)) == pytest.approx(178 / ticks)
    assert local_server_cpu_s("redis-server", proc=str(tmp_path)) is None
    assert local_server_cpu_s(proc=str(tmp_path / "missing")) is None
