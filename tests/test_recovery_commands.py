"""Recovery tooling: ``PaymentService.reconcile`` and the ``payments show``, ``replay``,
``reconcile`` and ``outbox`` commands (the commands as a user runs them: a subprocess)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aegispay import (
    GatewayResult,
    Money,
    Operation,
    Outcome,
    OutcomeUnknown,
    PaymentRequest,
    PaymentState,
    StatusRequest,
)
from aegispay.testing import ScriptedGateway, make_test_service

S = PaymentState


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def sequential_ids() -> Callable[[], str]:
    counter = iter(range(1, 1_000))
    return lambda: f"pay_{next(counter):03d}"


class StuckGateway(ScriptedGateway):
    """Status lookups for the payments in ``stuck`` answer UNKNOWN (the gateway is lost)."""

    def __init__(self, name: str = "scripted", **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.stuck: set[str] = set()

    async def get_status(self, request: StatusRequest) -> GatewayResult:
        if request.payment_id in self.stuck:
            self._record(Operation.STATUS, request.payment_id, request.idempotency_key, None)
            return GatewayResult(Outcome.UNKNOWN, message="still lost")
        return await super().get_status(request)


def request() -> PaymentRequest:
    return PaymentRequest(Money.of("25.00", "USD"), merchant_id="m_1")


@pytest.mark.anyio
async def test_reconcile_settles_an_unknown_attempt_and_leaves_a_lost_one_open() -> None:
    gateway = StuckGateway(script={Operation.AUTHORIZE: [Outcome.UNKNOWN, Outcome.UNKNOWN]})
    clock = Clock()
    service = make_test_service(gateways=[gateway], clock=clock, ids=sequential_ids())
    async with service:
        gateway.stuck.update({"pay_001", "pay_002"})
        first = await service.pay(request())
        second = await service.pay(request())
        for payment in (first, second):
            assert payment.state is S.PROCESSING
            assert payment.unresolved_attempt is not None
            assert payment.unresolved_attempt.outcome is Outcome.UNKNOWN
        gateway.stuck.discard(first.id)  # the gateway now knows what became of the first

        # Too recent: nothing is examined.
        report = await service.reconcile(older_than_s=60)
        assert report.examined == 0
        clock.advance(120)
        report = await service.reconcile(older_than_s=60)
        assert report.examined == 2
        assert dict(report.settled) == {"completed": 1}
        assert report.still_open == 1 and report.still_open_ids == (second.id,)

        settled = await service.get_payment(first.id)
        assert settled.state is S.COMPLETED
        assert gateway.charge_count(first.id) == 1
        open_one = await service.get_payment(second.id)
        assert open_one.state is S.PROCESSING  # never failed over on UNKNOWN
        assert len(open_one.attempts) == 1
        assert gateway.charge_count(second.id) == 1
        # The status lookups used the attempt's own idempotency key.
        keys = {c.idempotency_key for c in gateway.calls if c.payment_id == second.id}
        assert keys == {open_one.attempts[0].idempotency_key}

        # Once the gateway answers, the next run settles the other one too.
        gateway.stuck.clear()
        clock.advance(120)
        report = await service.reconcile(older_than_s=60)
        assert (report.examined, dict(report.settled), report.still_open) == (
            1,
            {"completed": 1},
            0,
        )
        assert await service.store.unsettled_payment_ids(clock() + timedelta(days=1)) == []


@pytest.mark.anyio
async def test_reconcile_completes_a_refund_whose_answer_was_lost() -> None:
    gateway = ScriptedGateway(script={Operation.REFUND: [Outcome.UNKNOWN, Outcome.UNKNOWN]})
    clock = Clock()
    service = make_test_service(gateways=[gateway], clock=clock, ids=sequential_ids())
    async with service:
        payment = await service.pay(request())
        assert payment.state is S.COMPLETED
        with pytest.raises(OutcomeUnknown):
            await service.refund(payment.id, Money.of("10.00", "USD"))
        clock.advance(120)
        # First run: the gateway's answer is lost again - still open, counted as an error.
        report = await service.reconcile(older_than_s=60)
        assert (report.examined, report.still_open) == (1, 1)
        assert dict(report.errors) == {"OutcomeUnknown": 1}
        assert (await service.get_payment(payment.id)).pending is not None

        report = await service.reconcile(older_than_s=60)
        assert (report.examined, dict(report.settled), report.still_open) == (
            1,
            {"partially_refunded": 1},
            0,
        )
        refunded = await service.get_payment(payment.id)
        assert refunded.pending is None
        assert refunded.refunded == Money.of("10.00", "USD")
        assert gateway.refunded[payment.id] == 1_000  # refunded once, however often asked
        refund_keys = [c.idempotency_key for c in gateway.calls if c.operation is Operation.REFUND]
        assert len(refund_keys) == 3 and len(set(refund_keys)) == 1


@pytest.mark.anyio
async def test_reconcile_with_nothing_open() -> None:
    service = make_test_service()
    async with service:
        await service.pay(request())
        report = await service.reconcile(older_than_s=0)
    assert report.to_dict() == {
        "examined": 0,
        "settled": {},
        "settled_total": 0,
        "still_open": 0,
        "still_open_ids": [],
        "errors": {},
    }


# -- the commands ---------------------------------------------------------------------------


def aegispay(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aegispay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    directory = tmp_path_factory.mktemp("recovery")
    url = f"sqlite:///{directory / 'pay.db'}"
    upgraded = aegispay("db", "upgrade", "--store", url, cwd=directory)
    assert upgraded.returncode == 0, upgraded.stderr
    simulated = aegispay(
        "simulate",
        "--payments",
        "30",
        "--concurrency",
        "4",
        "--latency-ms",
        "0",
        "--store",
        url,
        "--json",
        cwd=directory,
    )
    assert simulated.returncode == 0, simulated.stderr
    return directory, url


def _ids(directory: Path, where: str = "1=1") -> list[str]:
    with sqlite3.connect(directory / "pay.db") as connection:
        rows = connection.execute(f"select id from payments where {where} order by id").fetchall()
    return [row[0] for row in rows]


def test_payments_show_prints_the_payment_and_its_events(filled_db: tuple[Path, str]) -> None:
    directory, url = filled_db
    payment_id = _ids(directory, "state = 'completed'")[0]
    result = aegispay("payments", "show", payment_id, "--store", url, cwd=directory)
    assert result.returncode == 0, result.stderr
    assert payment_id in result.stdout
    assert "state: completed" in result.stdout
    assert "PaymentInitiated" in result.stdout and "PaymentCompleted" in result.stdout
    assert "attempts:" in result.stdout

    as_json = aegispay("payments", "show", payment_id, "--store", url, "--json", cwd=directory)
    data = json.loads(as_json.stdout)
    assert data["id"] == payment_id and data["state"] == "completed"
    assert [e["version"] for e in data["events"]] == list(range(1, len(data["events"]) + 1))
    assert data["events"][0]["type"] == "PaymentInitiated"
    assert data["captured"].split()[1] == data["amount"].split()[1]  # "25.00 USD"-style


def test_payments_show_of_an_unknown_payment_names_it(filled_db: tuple[Path, str]) -> None:
    directory, url = filled_db
    result = aegispay("payments", "show", "pay_nope", "--store", url, cwd=directory)
    assert result.returncode != 0
    assert "pay_nope" in result.stderr and "Traceback" not in result.stderr
    replayed = aegispay("replay", "pay_nope", "--store", url, cwd=directory)
    assert replayed.returncode != 0 and "pay_nope" in replayed.stderr


def test_reconcile_and_outbox_commands(filled_db: tuple[Path, str]) -> None:
    directory, url = filled_db
    result = aegispay("reconcile", "--store", url, cwd=directory)
    assert result.returncode == 0, result.stderr
    assert "examined: 0" in result.stdout
    as_json = aegispay("reconcile", "--older-than", "0", "--store", url, "--json", cwd=directory)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["still_open"] == 0

    status = aegispay("outbox", "status", "--store", url, cwd=directory)
    assert status.returncode == 0, status.stderr
    assert "parked: 0" in status.stdout and "pending: 0" in status.stdout
    status_json = json.loads(
        aegispay("outbox", "status", "--store", url, "--json", cwd=directory).stdout
    )
    assert status_json == {
        "pending": 0,
        "ready": 0,
        "backing_off": 0,
        "backing_off_payments": 0,
        "leased_payments": 0,
        "next_retry_at": None,
        "parked": [],
    }

    relay = aegispay("outbox", "relay", "--once", "--store", url, cwd=directory)
    assert relay.returncode == 0, relay.stderr
    assert "published: 0" in relay.stdout


def test_relay_once_publishes_what_another_process_left(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'pay.db'}"
    assert aegispay("db", "upgrade", "--store", url, cwd=tmp_path).returncode == 0
    assert (
        aegispay(
            "simulate", "--payments", "3", "--concurrency", "1", "--latency-ms", "0",
            "--store", url, "--json", cwd=tmp_path,
        ).returncode
        == 0
    )  # fmt: skip
    with sqlite3.connect(tmp_path / "pay.db") as connection:
        connection.execute("update outbox set published_at = null")
        (count,) = connection.execute("select count(*) from outbox").fetchone()
    status = json.loads(aegispay("outbox", "status", "--store", url, "--json", cwd=tmp_path).stdout)
    assert status["pending"] == count > 0
    relay = aegispay("outbox", "relay", "--once", "--store", url, cwd=tmp_path)
    assert relay.returncode == 0, relay.stderr
    assert f"published: {count}" in relay.stdout
    status = json.loads(aegispay("outbox", "status", "--store", url, "--json", cwd=tmp_path).stdout)
    assert status["pending"] == 0


def test_replay_all_finds_a_tampered_projection(filled_db: tuple[Path, str]) -> None:
    directory, url = filled_db
    clean = aegispay("replay", "--all", "--store", url, cwd=directory)
    assert clean.returncode == 0, clean.stderr + clean.stdout
    assert "no mismatches" in clean.stdout
    assert "30 payments" in clean.stdout
    one = _ids(directory, "state = 'completed'")[0]
    single = aegispay("replay", one, "--store", url, cwd=directory)
    assert single.returncode == 0 and "no mismatches" in single.stdout
    assert aegispay("replay", "--store", url, cwd=directory).returncode != 0  # ID or --all

    # Tamper with one projection row (runs last in this module: the database stays tampered).
    victim = _ids(directory, "state = 'completed'")[-1]
    with sqlite3.connect(directory / "pay.db") as connection:
        (data,) = connection.execute("select data from payments where id = ?", (victim,)).fetchone()
        payment = json.loads(data)
        payment["state"] = "failed"
        connection.execute(
            "update payments set state = 'failed', data = ? where id = ?",
            (json.dumps(payment), victim),
        )
    tampered = aegispay("replay", "--all", "--store", url, cwd=directory)
    assert tampered.returncode == 1
    assert f"MISMATCH {victim}: state" in tampered.stdout
    assert "1 of 30 payments" in tampered.stdout
    report = json.loads(aegispay("replay", "--all", "--store", url, "--json", cwd=directory).stdout)
    assert report == {"checked": 30, "mismatches": {victim: ["state"]}}
