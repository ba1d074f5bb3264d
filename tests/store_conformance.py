"""The conformance suite every :class:`aegispay.store.base.PaymentStore` backend must pass.

A backend's test module subclasses :class:`StoreConformance` (the name has no ``Test`` prefix,
so pytest does not collect the abstract class itself) and provides the ``make_store`` fixture:
an async factory returning a fresh, empty, ready store. The factory owns clean-up (closing the
stores it made, dropping databases); tests may call it more than once.

The memory store is the reference: these tests pin down its semantics so every other backend
matches them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import attrs
import pytest
from aegispay import events as ev
from aegispay.errors import ConcurrencyConflict, FencingTokenRejected
from aegispay.gateways import Outcome
from aegispay.money import Money
from aegispay.outbox import OutboxMessage
from aegispay.payment import Attempt, Payment, PendingOperation, Refund, apply, replay
from aegispay.states import PaymentState
from aegispay.store.base import Change, IdempotencyClaimed, IdempotencyRecord, PaymentStore

StoreFactory = Callable[[], Awaitable[PaymentStore]]

T0 = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
USD = "USD"


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def initiated(payment_id: str, minor: int = 10_000, merchant: str = "m_1") -> ev.PaymentInitiated:
    return ev.PaymentInitiated(
        payment_id=payment_id,
        version=1,
        occurred_at=at(0),
        merchant_id=merchant,
        amount=Money(minor, USD),
        capture_mode="automatic",
        customer_id="c_1",
        payment_method="card",
        reference="order-7",
        description="books",
        country="DE",
        metadata={"cart": "42", "channel": "web"},
    )


def started(payment_id: str, version: int, attempt: int = 1, gateway: str = "alpha") -> ev.Event:
    return ev.PaymentProcessingStarted(
        payment_id=payment_id,
        version=version,
        occurred_at=at(version),
        attempt_no=attempt,
        gateway=gateway,
        idempotency_key=f"{payment_id}-a{attempt}",
        route_reason=f"try {gateway}",
    )


def lifecycle(payment_id: str) -> list[ev.Event]:
    """Failover, authorise, capture, a partial refund, and a second refund left pending."""
    common: dict[str, Any] = {"payment_id": payment_id}
    return [
        initiated(payment_id),
        started(payment_id, 2, 1, "alpha"),
        ev.PaymentAttemptFailed(
            **common,
            version=3,
            occurred_at=at(3),
            attempt_no=1,
            outcome=Outcome.NOT_SENT,
            decline_code="connect",
            message="connection refused",
        ),
        started(payment_id, 4, 2, "beta"),
        ev.PaymentAuthorized(
            **common,
            version=5,
            occurred_at=at(5),
            attempt_no=2,
            amount=Money(10_000, USD),
            gateway_reference="ch_2",
        ),
        ev.CaptureRequested(
            **common, version=6, occurred_at=at(6), amount=Money(10_000, USD), idempotency_key="c1"
        ),
        ev.PaymentCompleted(
            **common,
            version=7,
            occurred_at=at(7),
            amount=Money(10_000, USD),
            idempotency_key="c1",
            gateway_reference="cap_1",
        ),
        ev.RefundRequested(
            **common,
            version=8,
            occurred_at=at(8),
            refund_no=1,
            amount=Money(2_500, USD),
            idempotency_key="r1",
            reason="damaged",
        ),
        ev.RefundSucceeded(
            **common,
            version=9,
            occurred_at=at(9),
            refund_no=1,
            amount=Money(2_500, USD),
            idempotency_key="r1",
            gateway_reference="re_1",
            reason="damaged",
        ),
        ev.RefundRequested(
            **common,
            version=10,
            occurred_at=at(10),
            refund_no=2,
            amount=Money(1_000, USD),
            idempotency_key="r2",
            reason="late",
        ),
    ]


def every_core_event(payment_id: str) -> list[ev.Event]:
    """One event of every core type, optional fields set, versions 1..n (not a valid fold:
    the store stores what it is given)."""
    # A non-UTC offset too: the instant must survive, whatever the backend does with zones.
    plus2 = datetime(2024, 5, 1, 14, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    money = Money(1_500, "KWD")
    c: dict[str, Any] = {"payment_id": payment_id, "occurred_at": plus2}
    samples: list[ev.Event] = [
        initiated(payment_id),
        ev.PaymentFlaggedForReview(**c, version=0, risk_score=75, reasons=("velocity", "bin")),
        started(payment_id, 0),
        ev.PaymentAttemptFailed(
            **c, version=0, attempt_no=1, outcome=Outcome.DECLINED, decline_code="do_not_honor"
        ),
        ev.PaymentOutcomeUnknown(**c, version=0, attempt_no=2, message="reset by peer"),
        ev.PaymentRequiresAction(
            **c, version=0, attempt_no=2, gateway_reference="pi_2", next_action={"url": "x"}
        ),
        ev.PaymentAuthorized(**c, version=0, attempt_no=2, amount=money, gateway_reference="g"),
        ev.PaymentCompleted(
            **c, version=0, amount=money, idempotency_key="k", gateway_reference="g"
        ),
        ev.PaymentFailed(**c, version=0, code="declined", message="no"),
        ev.PaymentCancelled(**c, version=0, reason="customer", voided=True),
        ev.RefundSucceeded(
            **c, version=0, refund_no=1, amount=money, idempotency_key="r", reason="why"
        ),
        ev.RefundFailed(
            **c, version=0, refund_no=2, amount=money, idempotency_key="r2", code="x", message="m"
        ),
        ev.CaptureFailed(**c, version=0, amount=money, idempotency_key="k2", code="c", message="m"),
        ev.CaptureRequested(**c, version=0, amount=money, idempotency_key="k3"),
        ev.RefundRequested(
            **c, version=0, refund_no=3, amount=money, idempotency_key="r3", reason=None
        ),
        ev.VoidRequested(**c, version=0, idempotency_key="v", reason="fraud"),
        ev.OperationNotSent(**c, version=0, operation="void", idempotency_key="v", message="m"),
    ]
    assert {type(e) for e in samples} == set(ev.CORE_EVENT_TYPES), "a core event type is missing"
    return [attrs.evolve(e, version=i) for i, e in enumerate(samples, start=1)]


def fold(payment: Payment | None, events: Sequence[ev.Event]) -> Payment:
    for event in events:
        payment = apply(payment, event)
    assert payment is not None
    return payment


def change(
    before: Payment | None,
    events: Sequence[ev.Event],
    *,
    expected: int | None = None,
    token: int | None = None,
    idempotency: IdempotencyRecord | None = None,
) -> Change:
    return Change(
        payment=fold(before, events),
        expected_version=before.version if expected is None and before else (expected or 0),
        events=tuple(events),
        fencing_token=token,
        idempotency=idempotency,
    )


def idem(payment: Payment, key: str = "key-1", scope: str = "m_1") -> IdempotencyRecord:
    return IdempotencyRecord(
        scope=scope,
        key=key,
        fingerprint=f"sha256:{key}",
        payment_id=payment.id,
        response=payment,
        created_at=at(0),
        expires_at=at(86_400),
    )


async def new_payment(store: PaymentStore, payment_id: str, **kwargs: Any) -> Payment:
    c = change(None, [initiated(payment_id)], **kwargs)
    await store.commit(c)
    return c.payment


async def snapshot(store: PaymentStore, payment_ids: Sequence[str]) -> Any:
    """Everything observable about the given payments and the outbox."""
    return (
        sorted(await store.payment_ids()),
        [await store.load(p) for p in payment_ids],
        [await store.events(p) for p in payment_ids],
        await store.outbox_pending(10_000),
        await store.outbox_parked(),
    )


@pytest.mark.anyio
class StoreConformance:
    """Subclass and provide ``make_store``: an async factory of fresh, empty stores."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError("a backend's test class provides the make_store fixture")

    @pytest.fixture
    async def store(self, make_store: StoreFactory, anyio_backend: str) -> AsyncIterator[Any]:
        yield await make_store()

    # -- commits, versions ------------------------------------------------------------------

    async def test_empty_store(self, store: PaymentStore) -> None:
        assert await store.load("nope") is None
        assert await store.events("nope") == []
        assert await store.payment_ids() == []
        assert await store.find_idempotency("m_1", "k") is None
        assert await store.outbox_pending(10) == []
        assert await store.outbox_parked() == []

    async def test_commit_new_payment(self, store: PaymentStore) -> None:
        c = change(None, [initiated("pay_1")])
        await store.commit(c)
        assert await store.load("pay_1") == c.payment
        assert await store.events("pay_1") == list(c.events)
        assert await store.payment_ids() == ["pay_1"]

    async def test_sequential_commits(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        payment: Payment | None = None
        for chunk in (history[:1], history[1:4], history[4:5], history[5:]):
            c = change(payment, chunk)
            await store.commit(c)
            payment = c.payment
            assert await store.load("pay_1") == payment
        assert await store.events("pay_1") == history
        assert replay(await store.events("pay_1")) == await store.load("pay_1")

    async def test_several_payments(self, store: PaymentStore) -> None:
        for pid in ("pay_b", "pay_a", "pay_c"):
            await new_payment(store, pid)
        assert sorted(await store.payment_ids()) == ["pay_a", "pay_b", "pay_c"]
        assert [e.payment_id for e in await store.events("pay_a")] == ["pay_a"]

    @pytest.mark.parametrize("expected", [0, 2, 5])
    async def test_stale_version_conflicts_and_writes_nothing(
        self, store: PaymentStore, expected: int
    ) -> None:
        history = lifecycle("pay_1")
        p1 = await new_payment(store, "pay_1")
        p2 = fold(p1, history[1:3])
        await store.commit(Change(p2, 1, tuple(history[1:3])))  # now at version 3
        before = await snapshot(store, ["pay_1"])
        stale = Change(fold(p2, history[3:4]), expected, (history[3],), idempotency=idem(p2))
        with pytest.raises(ConcurrencyConflict) as info:
            await store.commit(stale)
        assert not isinstance(info.value, FencingTokenRejected)
        assert (info.value.payment_id, info.value.expected_version) == ("pay_1", expected)
        assert info.value.actual_version == 3
        assert await snapshot(store, ["pay_1"]) == before
        assert await store.find_idempotency("m_1", "key-1") is None

    async def test_update_of_unknown_payment_conflicts(self, store: PaymentStore) -> None:
        events = lifecycle("ghost")
        bogus = Change(fold(None, events[:2]), 1, (events[1],))
        with pytest.raises(ConcurrencyConflict) as info:
            await store.commit(bogus)
        assert info.value.actual_version == 0
        assert await snapshot(store, ["ghost"]) == ([], [None], [[]], [], [])

    # -- fencing ------------------------------------------------------------------------------

    async def test_fencing_tokens(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        payment = await new_payment(store, "pay_1", token=5)
        before = await snapshot(store, ["pay_1"])
        with pytest.raises(FencingTokenRejected) as info:
            await store.commit(change(payment, history[1:2], token=4))
        assert (info.value.token, info.value.highest) == (4, 5)
        assert await snapshot(store, ["pay_1"]) == before

        c = change(payment, history[1:2], token=5)  # equal: the same holder writes again
        await store.commit(c)
        c = change(c.payment, history[2:3], token=7)  # higher: a newer holder
        await store.commit(c)
        # 7 is remembered: 6 (between the two) is now too old.
        with pytest.raises(FencingTokenRejected) as info:
            await store.commit(change(c.payment, history[3:4], token=6))
        assert (info.value.token, info.value.highest) == (6, 7)
        # An unfenced write (no lock held) is not checked and does not lower the fence.
        c = change(c.payment, history[3:4])
        await store.commit(c)
        with pytest.raises(FencingTokenRejected):
            await store.commit(change(c.payment, history[4:5], token=6))
        await store.commit(change(c.payment, history[4:5], token=8))
        assert [e.version for e in await store.events("pay_1")] == [1, 2, 3, 4, 5]

    async def test_stale_version_wins_over_fencing(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        payment = await new_payment(store, "pay_1", token=5)
        await store.commit(change(payment, history[1:2], token=5))
        with pytest.raises(ConcurrencyConflict) as info:
            await store.commit(change(payment, history[1:2], token=1))
        assert not isinstance(info.value, FencingTokenRejected)

    # -- idempotency --------------------------------------------------------------------------

    async def test_idempotency_claimed_once(self, store: PaymentStore) -> None:
        first = change(None, [initiated("pay_1")])
        first = attrs.evolve(first, idempotency=idem(first.payment))
        await store.commit(first)
        found = await store.find_idempotency("m_1", "key-1")
        assert found == first.idempotency
        assert found is not None and found.response == first.payment

        before = await snapshot(store, ["pay_1", "pay_2"])
        second = change(None, [initiated("pay_2")])
        second = attrs.evolve(second, idempotency=idem(second.payment))
        with pytest.raises(IdempotencyClaimed) as info:
            await store.commit(second)
        assert info.value.existing == first.idempotency
        assert await snapshot(store, ["pay_1", "pay_2"]) == before

    async def test_idempotency_scopes_are_independent(self, store: PaymentStore) -> None:
        a = change(None, [initiated("pay_a")])
        b = change(None, [initiated("pay_b", merchant="m_2")])
        await store.commit(attrs.evolve(a, idempotency=idem(a.payment, scope="m_1")))
        await store.commit(attrs.evolve(b, idempotency=idem(b.payment, scope="m_2")))
        found_a = await store.find_idempotency("m_1", "key-1")
        found_b = await store.find_idempotency("m_2", "key-1")
        assert found_a is not None and found_a.payment_id == "pay_a"
        assert found_b is not None and found_b.payment_id == "pay_b"
        assert await store.find_idempotency("m_3", "key-1") is None

    async def test_idempotency_on_an_existing_payment(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        payment = await new_payment(store, "pay_1")
        c = change(payment, history[1:2])
        await store.commit(attrs.evolve(c, idempotency=idem(c.payment, key="op-1")))
        again = change(c.payment, history[2:3], idempotency=idem(c.payment, key="op-1"))
        before = await snapshot(store, ["pay_1"])
        with pytest.raises(IdempotencyClaimed):
            await store.commit(again)
        assert await snapshot(store, ["pay_1"]) == before

    # -- round trips --------------------------------------------------------------------------

    async def test_every_event_type_round_trips(self, store: PaymentStore) -> None:
        events = every_core_event("pay_1")
        payment = attrs.evolve(fold(None, events[:1]), version=len(events))
        await store.commit(Change(payment, 0, tuple(events)))
        loaded = await store.events("pay_1")
        assert loaded == events
        assert [type(e) for e in loaded] == [type(e) for e in events]
        assert [m.event for m in await store.outbox_pending(100)] == events

    async def test_projection_round_trips(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        c = change(None, history)
        # The fold really covers the nested parts this test is about.
        p = c.payment
        assert p.state is PaymentState.PARTIALLY_REFUNDED
        assert [a.outcome for a in p.attempts] == [Outcome.NOT_SENT, Outcome.SUCCEEDED]
        assert p.refunds == (Refund(1, Money(2_500, USD), "r1", True, "re_1", "damaged"),)
        assert p.pending == PendingOperation("refund", "r2", Money(1_000, USD), 2, "late")
        assert p.metadata == {"cart": "42", "channel": "web"}
        await store.commit(attrs.evolve(c, idempotency=idem(p)))
        loaded = await store.load("pay_1")
        assert loaded == p
        assert loaded is not None and isinstance(loaded.attempts, tuple)
        assert isinstance(loaded.attempts[0], Attempt) and loaded.refunds[0].amount.currency == USD
        assert loaded.created_at == T0 and loaded.updated_at == at(10)
        record = await store.find_idempotency("m_1", "key-1")
        assert record is not None and record.response == p

    async def test_projection_with_optional_fields_set(self, store: PaymentStore) -> None:
        events = lifecycle("pay_1")[:2]
        events.append(
            ev.PaymentRequiresAction(
                payment_id="pay_1",
                version=3,
                occurred_at=at(3),
                attempt_no=1,
                gateway_reference="pi_1",
                next_action={"type": "redirect", "url": "https://bank.example/3ds"},
            )
        )
        c = change(None, events)
        payment = attrs.evolve(c.payment, review=True, failure_code="x", failure_message="y")
        await store.commit(attrs.evolve(c, payment=payment))
        assert await store.load("pay_1") == payment

    # -- unsettled payments -------------------------------------------------------------------

    async def _commit_all(self, store: PaymentStore, events: Sequence[ev.Event]) -> Payment:
        c = change(None, events)
        await store.commit(c)
        return c.payment

    async def test_unsettled_payment_ids(self, store: PaymentStore) -> None:
        history = lifecycle("pay_refund_pending")  # COMPLETED... with a refund pending, at(10)
        await self._commit_all(store, history)
        done = lifecycle("pay_done")[:7]  # COMPLETED, nothing pending
        await self._commit_all(store, done)
        await self._commit_all(store, lifecycle("pay_processing")[:2])  # PROCESSING, at(2)
        await self._commit_all(
            store,
            [
                *lifecycle("pay_3ds")[:2],
                ev.PaymentRequiresAction(
                    payment_id="pay_3ds",
                    version=3,
                    occurred_at=at(3),
                    attempt_no=1,
                    gateway_reference="pi_1",
                    next_action={"type": "redirect"},
                ),
            ],
        )
        capture = lifecycle("pay_capture")[:6]  # AUTHORIZED with a capture pending, at(6)
        await self._commit_all(store, capture)
        # A metadata value that looks like a pending operation does not make a payment open.
        tricky = attrs.evolve(initiated("pay_tricky"), metadata={"note": '"pending":{"x":1}'})
        await self._commit_all(store, [tricky])
        await new_payment(store, "pay_new")  # INITIATED

        everything = ["pay_3ds", "pay_capture", "pay_processing", "pay_refund_pending"]
        assert await store.unsettled_payment_ids(at(1_000)) == everything
        # Only those last updated strictly before the cutoff.
        assert await store.unsettled_payment_ids(at(6)) == ["pay_3ds", "pay_processing"]
        assert await store.unsettled_payment_ids(at(2)) == []
        assert await store.unsettled_payment_ids(at(0)) == []

    async def test_unsettled_payment_ids_follow_commits(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        payment = await self._commit_all(store, history[:2])
        assert await store.unsettled_payment_ids(at(100)) == ["pay_1"]
        c = change(payment, history[2:7])  # failover, authorised, captured: settled
        await store.commit(c)
        assert await store.unsettled_payment_ids(at(100)) == []
        await store.commit(change(c.payment, history[7:]))  # a refund left pending
        assert await store.unsettled_payment_ids(at(100)) == ["pay_1"]
        assert await store.unsettled_payment_ids(at(10)) == []

    # -- outbox -------------------------------------------------------------------------------

    async def test_every_event_becomes_one_outbox_message(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        await store.commit(change(None, history[:3]))
        pending = await store.outbox_pending(100)
        assert pending == [OutboxMessage(e.event_id, "pay_1", e.version, e) for e in history[:3]]
        assert [m.message_id for m in pending] == ["pay_1:1", "pay_1:2", "pay_1:3"]

    async def test_outbox_oldest_first_and_limit(self, store: PaymentStore) -> None:
        a, b = lifecycle("pay_a"), lifecycle("pay_b")
        pa = await new_payment(store, "pay_a")
        pb = await new_payment(store, "pay_b")
        await store.commit(change(pa, a[1:3]))
        await store.commit(change(pb, b[1:2]))
        expected = ["pay_a:1", "pay_b:1", "pay_a:2", "pay_a:3", "pay_b:2"]
        assert [m.message_id for m in await store.outbox_pending(100)] == expected
        assert [m.message_id for m in await store.outbox_pending(2)] == expected[:2]
        assert await store.outbox_pending(0) == []

    async def test_mark_published(self, store: PaymentStore) -> None:
        await store.commit(change(None, lifecycle("pay_1")[:4]))
        await store.outbox_mark_published(["pay_1:1", "pay_1:2"])
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_1:3", "pay_1:4"]
        await store.outbox_mark_published(["pay_1:1"])  # again: nothing changes
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_1:3", "pay_1:4"]
        await store.outbox_mark_published(["pay_1:3", "pay_1:4"])
        assert await store.outbox_pending(10) == []
        assert await store.outbox_parked() == []
        assert len(await store.events("pay_1")) == 4  # publishing never touches the history

    async def test_failures_counted_then_parked(self, store: PaymentStore) -> None:
        await store.commit(change(None, lifecycle("pay_1")[:3]))
        head = [m.message_id for m in await store.outbox_pending(2)]
        await store.outbox_record_failure(head, "boom 1", max_attempts=3)
        await store.outbox_record_failure(head, "boom 2", max_attempts=3)
        # Two of three attempts used: still pending, still in order.
        assert [m.message_id for m in await store.outbox_pending(10)] == [
            "pay_1:1",
            "pay_1:2",
            "pay_1:3",
        ]
        assert await store.outbox_parked() == []
        await store.outbox_record_failure(head, "boom 3", max_attempts=3)
        parked = await store.outbox_parked()
        assert [(m.message_id, m.event.version, error) for m, error in parked] == [
            ("pay_1:1", 1, "boom 3"),
            ("pay_1:2", 2, "boom 3"),
        ]
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_1:3"]
        # The message behind them has its own count: one failure does not park it.
        await store.outbox_record_failure(["pay_1:3"], "once", max_attempts=3)
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_1:3"]
        await store.outbox_mark_published(["pay_1:3"])
        assert await store.outbox_pending(10) == []
        assert len(await store.outbox_parked()) == 2

    async def test_per_payment_order_across_interleaved_commits(self, store: PaymentStore) -> None:
        streams = {pid: lifecycle(pid) for pid in ("pay_a", "pay_b", "pay_c")}
        payments: dict[str, Payment | None] = dict.fromkeys(streams)
        # Interleave commits of one or two events across the three payments.
        for step in range(5):
            for pid, history in streams.items():
                chunk = history[2 * step : 2 * step + 2]
                c = change(payments[pid], chunk)
                await store.commit(c)
                payments[pid] = c.payment
        seen: list[OutboxMessage] = []
        while batch := await store.outbox_pending(4):
            seen.extend(batch)
            await store.outbox_mark_published([m.message_id for m in batch])
        assert len(seen) == 30
        for pid, history in streams.items():
            mine = [m for m in seen if m.payment_id == pid]
            assert [m.sequence for m in mine] == list(range(1, 11))
            assert [m.event for m in mine] == history

    # -- notifications ------------------------------------------------------------------------

    async def test_on_commit_called_after_success_only(self, store: PaymentStore) -> None:
        calls: list[str] = []
        store.on_commit(lambda: calls.append("first"))
        store.on_commit(lambda: calls.append("second"))
        payment = await new_payment(store, "pay_1")
        assert calls == ["first", "second"]
        history = lifecycle("pay_1")
        with pytest.raises(ConcurrencyConflict):
            await store.commit(change(payment, history[1:2], expected=7))
        with pytest.raises(FencingTokenRejected):
            await store.commit(change(payment, history[1:2], token=-1))
        assert len(calls) == 2
        await store.commit(change(payment, history[1:2]))
        assert len(calls) == 4

    async def test_on_commit_not_called_when_key_claimed(self, store: PaymentStore) -> None:
        loaded: list[int] = []
        store.on_commit(lambda: loaded.append(len(loaded)))
        await new_payment(store, "pay_1")
        with pytest.raises(IdempotencyClaimed):
            first = change(None, [initiated("pay_2")])
            await store.commit(attrs.evolve(first, idempotency=idem(first.payment)))
            second = change(None, [initiated("pay_3")])
            await store.commit(attrs.evolve(second, idempotency=idem(second.payment)))
        assert loaded == [0, 1]  # pay_1 and pay_2; not the refused pay_3

    # -- races --------------------------------------------------------------------------------

    @pytest.mark.parametrize("contenders", [2, 5])
    async def test_racing_commits_one_wins(self, store: PaymentStore, contenders: int) -> None:
        history = lifecycle("pay_1")
        payment = await new_payment(store, "pay_1")
        base = await store.load("pay_1")
        assert base == payment
        results: dict[int, str] = {}

        async def contend(n: int) -> None:
            # Each contender writes a different attempt for the same next version.
            event = started("pay_1", 2, attempt=1, gateway=f"gw{n}")
            try:
                await store.commit(change(payment, [event]))
            except ConcurrencyConflict as error:
                results[n] = type(error).__name__
            else:
                results[n] = "ok"

        async with anyio.create_task_group() as tg:
            for n in range(contenders):
                tg.start_soon(contend, n)
        winners = [n for n, r in results.items() if r == "ok"]
        assert len(winners) == 1, results
        assert sorted(results.values()) == ["ConcurrencyConflict"] * (contenders - 1) + ["ok"]
        events = await store.events("pay_1")
        assert [e.version for e in events] == [1, 2]
        assert isinstance(events[1], ev.PaymentProcessingStarted)
        assert events[1].gateway == f"gw{winners[0]}"
        loaded = await store.load("pay_1")
        assert loaded is not None and loaded.gateway == f"gw{winners[0]}"
        assert len(await store.outbox_pending(100)) == 2
        assert history[0] == events[0]

    async def test_racing_creations_one_wins(self, store: PaymentStore) -> None:
        results: list[str] = []

        async def create(merchant: str) -> None:
            try:
                await store.commit(change(None, [initiated("pay_1", merchant=merchant)]))
            except ConcurrencyConflict:
                results.append("conflict")
            else:
                results.append(merchant)

        async with anyio.create_task_group() as tg:
            for merchant in ("m_1", "m_2", "m_3"):
                tg.start_soon(create, merchant)
        assert sorted(results)[0] == "conflict" and results.count("conflict") == 2
        winner = next(r for r in results if r != "conflict")
        loaded = await store.load("pay_1")
        assert loaded is not None and loaded.merchant_id == winner
        assert len(await store.events("pay_1")) == 1
        assert len(await store.outbox_pending(100)) == 1
