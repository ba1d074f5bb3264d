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
from aegispay.outbox import OutboxCounts, OutboxFailure, OutboxMessage, OutboxSettled
from aegispay.payment import Attempt, Payment, PendingOperation, Refund, apply, replay
from aegispay.states import PaymentState
from aegispay.store.base import (
    Change,
    IdempotencyClaimed,
    IdempotencyProgress,
    IdempotencyRecord,
    PaymentStore,
    Pruned,
)

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


def in_flight(
    payment: Payment | None,
    key: str,
    *,
    locked_at: datetime,
    scope: str = "m_1",
    expires_at: datetime | None = None,
) -> IdempotencyRecord:
    """An in-flight claim at ``created`` (``pay``'s); without a payment, one for
    ``pay_<key>``."""
    if payment is None:
        payment = fold(None, [initiated(f"pay_{key}", merchant=scope)])
    return attrs.evolve(
        idem(payment, key=key, scope=scope),
        expires_at=expires_at or at(86_400),
        state="in_flight",
        recovery_point="created",
        locked_at=locked_at,
    )


def payment_initiated(payment: Payment) -> ev.Event:
    return initiated(payment.id, merchant=payment.merchant_id)


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


LEASE = timedelta(seconds=30)


async def claim(
    store: PaymentStore, owner: str, *, now: datetime | None = None, limit: int = 100
) -> list[OutboxMessage]:
    """``owner`` claims at ``now`` (default at(100)) for the standard 30 s lease."""
    now = at(100) if now is None else now
    return await store.outbox_claim(owner, now, now + LEASE, limit)


def fail(batch: Sequence[OutboxMessage], error: str, retry_at: datetime) -> OutboxFailure:
    """The failure of one payment's messages in ``batch``."""
    (payment_id,) = {m.payment_id for m in batch}
    return OutboxFailure(payment_id, tuple(m.message_id for m in batch), error, retry_at)


def per_payment(messages: Sequence[OutboxMessage]) -> dict[str, list[int]]:
    grouped: dict[str, list[int]] = {}
    for message in messages:
        grouped.setdefault(message.payment_id, []).append(message.sequence)
    return grouped


async def commit_streams(store: PaymentStore, counts: dict[str, int]) -> None:
    """Commit, payment after payment, the first ``n`` lifecycle events of each, one commit
    per event, so commit order is payment order."""
    for payment_id, n in counts.items():
        await new_payment(store, payment_id)
        await commit_more(store, payment_id, n - 1)


async def commit_more(store: PaymentStore, payment_id: str, n: int) -> None:
    """Commit the payment's next ``n`` lifecycle events, one commit each."""
    history = lifecycle(payment_id)
    payment = await store.load(payment_id)
    assert payment is not None
    for event in history[payment.version : payment.version + n]:
        c = change(payment, [event])
        await store.commit(c)
        payment = c.payment


@pytest.mark.anyio
class StoreConformance:
    """Subclass and provide ``make_store``: an async factory of fresh, empty stores."""

    # Whether published messages stay stored (until ``prune``); the in-memory store drops
    # them as they are published.
    keeps_published: bool = True

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

    async def test_idempotency_record_lifecycle_fields_round_trip(
        self, store: PaymentStore
    ) -> None:
        plain = change(None, [initiated("pay_1")])
        await store.commit(attrs.evolve(plain, idempotency=idem(plain.payment, key="plain")))
        found = await store.find_idempotency("m_1", "plain")
        assert found is not None
        assert (found.state, found.recovery_point, found.locked_at) == (
            "completed",
            "created",
            None,
        )

        keyed = change(None, [initiated("pay_2")])
        record = in_flight(keyed.payment, "keyed", locked_at=at(3))
        await store.commit(attrs.evolve(keyed, idempotency=record))
        found = await store.find_idempotency("m_1", "keyed")
        assert found == record
        assert found is not None and found.locked_at == at(3)

    async def test_idempotency_advance_moves_forward_only(self, store: PaymentStore) -> None:
        c = change(None, [initiated("pay_1")])
        await store.commit(attrs.evolve(c, idempotency=in_flight(c.payment, "k", locked_at=at(0))))

        async def advance(point: Any, state: Any, when: int, payment_id: str = "pay_1") -> bool:
            return await store.idempotency_advance(
                IdempotencyProgress("m_1", "k", payment_id, point, state, at(when))
            )

        async def current() -> tuple[Any, ...]:
            record = await store.find_idempotency("m_1", "k")
            assert record is not None
            return (record.recovery_point, record.state, record.locked_at)

        assert await advance("processing", "in_flight", 5)
        assert await current() == ("processing", "in_flight", at(5))
        assert not await advance("created", "in_flight", 6)  # never backwards
        assert await current() == ("processing", "in_flight", at(5))
        assert await advance("processing", "in_flight", 7)  # the same point: a touch
        assert await current() == ("processing", "in_flight", at(7))
        assert not await advance("finished", "completed", 8, payment_id="pay_other")
        assert not await store.idempotency_advance(
            IdempotencyProgress("m_1", "absent", "pay_1", "finished", "completed", at(8))
        )
        assert await advance("finished", "completed", 9)
        assert await current() == ("finished", "completed", None)
        # Completed is final: no advance, no touch, no reopening.
        assert not await advance("finished", "completed", 10)
        assert not await advance("finished", "in_flight", 10)
        assert await current() == ("finished", "completed", None)
        record = await store.find_idempotency("m_1", "k")
        assert record is not None and record.payment_id == "pay_1" and record.response == c.payment

    async def test_progress_moves_the_key_with_the_change_or_not_at_all(
        self, store: PaymentStore
    ) -> None:
        """``Change.progress``: the key's recovery point is written in the change's own
        transaction - with it when it commits, not at all when it is refused - and follows
        the same forward-only rules as ``idempotency_advance``."""
        c = change(None, [initiated("pay_1")])
        await store.commit(attrs.evolve(c, idempotency=in_flight(c.payment, "k", locked_at=at(0))))

        def step(point: Any, state: Any, when: int, payment_id: str = "pay_1") -> Any:
            return IdempotencyProgress("m_1", "k", payment_id, point, state, at(when))

        async def current() -> tuple[Any, ...]:
            record = await store.find_idempotency("m_1", "k")
            assert record is not None
            return (record.recovery_point, record.state, record.locked_at)

        intent = change(c.payment, [started("pay_1", 2)])
        stale = attrs.evolve(intent, expected_version=0, progress=step("finished", "completed", 2))
        with pytest.raises(ConcurrencyConflict):
            await store.commit(stale)
        assert await current() == ("created", "in_flight", at(0))  # refused: key untouched
        await store.commit(attrs.evolve(intent, progress=step("processing", "in_flight", 3)))
        assert await current() == ("processing", "in_flight", at(3))
        # Another payment's step, or a step backwards, is ignored - the change still commits.
        other = change(intent.payment, [started("pay_1", 3, attempt=2)])
        await store.commit(attrs.evolve(other, progress=step("created", "in_flight", 4)))
        assert await current() == ("processing", "in_flight", at(3))
        assert (await store.load("pay_1")) == other.payment
        last = change(other.payment, [started("pay_1", 4, attempt=3)])
        await store.commit(attrs.evolve(last, progress=step("finished", "completed", 5)))
        assert await current() == ("finished", "completed", None)

    async def test_idempotency_advance_of_a_completed_claim(self, store: PaymentStore) -> None:
        c = change(None, [initiated("pay_1")])
        await store.commit(attrs.evolve(c, idempotency=idem(c.payment)))
        assert not await store.idempotency_advance(
            IdempotencyProgress("m_1", "key-1", "pay_1", "processing", "in_flight", at(1))
        )
        assert await store.find_idempotency("m_1", "key-1") == idem(c.payment)

    async def test_idempotency_in_flight_lists_stale_claims_oldest_first(
        self, store: PaymentStore
    ) -> None:
        records = {
            "old": in_flight(None, "old", locked_at=at(0)),
            "older": in_flight(None, "older", locked_at=at(-5)),
            "fresh": in_flight(None, "fresh", locked_at=at(20)),
            "done": idem(fold(None, [initiated("pay_done")]), key="done"),
            "expiring": in_flight(None, "expiring", locked_at=at(1), expires_at=at(50)),
            "other-scope": in_flight(None, "other-scope", locked_at=at(2), scope="m_2"),
        }
        for name, record in records.items():
            payment = fold(None, [initiated(record.payment_id, merchant=record.scope)])
            record = attrs.evolve(record, response=payment)
            records[name] = record
            await store.commit(
                Change(payment, 0, (payment_initiated(payment),), idempotency=record)
            )

        def keys(found: Sequence[IdempotencyRecord]) -> list[str]:
            return [r.key for r in found]

        stale = await store.idempotency_in_flight(at(15))
        assert keys(stale) == ["older", "old", "expiring", "other-scope"]
        assert stale[0] == records["older"]
        assert keys(await store.idempotency_in_flight(at(15), limit=2)) == ["older", "old"]
        assert keys(await store.idempotency_in_flight(at(0))) == ["older"]
        assert keys(await store.idempotency_in_flight(at(15), now=at(50))) == [
            "older", "old", "other-scope"
        ]  # fmt: skip
        assert keys(await store.idempotency_in_flight(at(100))) == [
            "older", "old", "expiring", "other-scope", "fresh"
        ]  # fmt: skip
        # Touched: to the back of the queue, and not stale any more.
        assert await store.idempotency_advance(
            IdempotencyProgress(
                "m_1", "older", records["older"].payment_id, "created", "in_flight", at(30)
            )
        )
        assert await store.idempotency_advance(
            IdempotencyProgress(
                "m_1", "old", records["old"].payment_id, "finished", "completed", at(30)
            )
        )
        assert keys(await store.idempotency_in_flight(at(15))) == ["expiring", "other-scope"]
        assert keys(await store.idempotency_in_flight(at(100))) == [
            "expiring", "other-scope", "fresh", "older"
        ]  # fmt: skip

    async def test_expired_idempotency_record_is_absent_to_find(self, store: PaymentStore) -> None:
        c = change(None, [initiated("pay_1")])
        record = attrs.evolve(idem(c.payment), expires_at=at(100))
        await store.commit(attrs.evolve(c, idempotency=record))
        assert await store.find_idempotency("m_1", "key-1", now=at(99)) == record
        assert await store.find_idempotency("m_1", "key-1", now=at(100)) is None
        assert await store.find_idempotency("m_1", "key-1", now=at(10_000)) is None
        assert await store.find_idempotency("m_1", "key-1") == record  # no clock: as stored

    async def test_claim_replaces_an_expired_record(self, store: PaymentStore) -> None:
        first = change(None, [initiated("pay_1")])
        old = attrs.evolve(in_flight(first.payment, "key-1", locked_at=at(0)), expires_at=at(100))
        await store.commit(attrs.evolve(first, idempotency=old))

        second = change(None, [initiated("pay_2")])
        new = attrs.evolve(
            idem(second.payment), fingerprint="sha256:other", created_at=at(100),
            expires_at=at(200),
        )  # fmt: skip
        await store.commit(attrs.evolve(second, idempotency=new))
        assert await store.find_idempotency("m_1", "key-1") == new
        assert await store.find_idempotency("m_1", "key-1", now=at(150)) == new
        # The replaced claim's payment stays; the old request can no longer move the record.
        assert sorted(await store.payment_ids()) == ["pay_1", "pay_2"]
        assert await store.load("pay_1") == first.payment
        assert not await store.idempotency_advance(
            IdempotencyProgress("m_1", "key-1", "pay_1", "finished", "completed", at(101))
        )
        assert await store.idempotency_in_flight(at(1_000)) == []
        assert await store.find_idempotency("m_1", "key-1") == new

    async def test_claim_never_replaces_an_unexpired_record(self, store: PaymentStore) -> None:
        first = change(None, [initiated("pay_1")])
        old = attrs.evolve(idem(first.payment), expires_at=at(100))
        await store.commit(attrs.evolve(first, idempotency=old))
        before = await snapshot(store, ["pay_1", "pay_2"])

        second = change(None, [initiated("pay_2")])
        early = attrs.evolve(idem(second.payment), created_at=at(99), expires_at=at(199))
        with pytest.raises(IdempotencyClaimed) as info:
            await store.commit(attrs.evolve(second, idempotency=early))
        assert info.value.existing == old
        assert await snapshot(store, ["pay_1", "pay_2"]) == before
        assert await store.find_idempotency("m_1", "key-1") == old

    async def test_racing_claims_of_an_expired_key_one_wins(self, store: PaymentStore) -> None:
        first = change(None, [initiated("pay_0")])
        await store.commit(
            attrs.evolve(first, idempotency=attrs.evolve(idem(first.payment), expires_at=at(10)))
        )
        results: dict[str, str] = {}

        async def claim(n: int) -> None:
            c = change(None, [initiated(f"pay_{n}")])
            record = attrs.evolve(idem(c.payment), created_at=at(20), expires_at=at(120))
            try:
                await store.commit(attrs.evolve(c, idempotency=record))
            except IdempotencyClaimed as claimed:
                results[f"pay_{n}"] = claimed.existing.payment_id
            else:
                results[f"pay_{n}"] = "won"

        async with anyio.create_task_group() as tg:
            for n in range(1, 6):
                tg.start_soon(claim, n)
        winners = [p for p, r in results.items() if r == "won"]
        assert len(winners) == 1, results
        assert set(results.values()) == {"won", winners[0]}
        found = await store.find_idempotency("m_1", "key-1")
        assert found is not None and found.payment_id == winners[0]
        assert sorted(await store.payment_ids()) == ["pay_0", winners[0]]

    # -- round trips --------------------------------------------------------------------------

    async def test_prune_deletes_only_expired_completed_keys(self, store: PaymentStore) -> None:
        """Completed records expired before the cut go, oldest first and ``limit`` at a time;
        unexpired ones and records still in flight (expired or not) stay, and so do their
        payments. A pruned key is free: a new request may claim it."""
        expiries = {"k3": 30, "k1": 10, "k2": 20, "k9": 90}
        for key, expires in expiries.items():
            c = change(None, [initiated(f"pay_{key}")])
            record = attrs.evolve(idem(c.payment, key=key), expires_at=at(expires))
            await store.commit(attrs.evolve(c, idempotency=record))
        stuck = change(None, [initiated("pay_stuck")])
        late = in_flight(stuck.payment, "stuck", locked_at=at(0), expires_at=at(5))
        await store.commit(attrs.evolve(stuck, idempotency=late))

        first = await store.prune(None, at(50), 2)
        assert first.keys == 2 and first.messages == 0
        kept = {key for key in [*expiries, "stuck"] if await store.find_idempotency("m_1", key)}
        assert kept == {"k3", "k9", "stuck"}  # k1 and k2 expired first
        assert (await store.prune(None, at(50), 2)).keys == 1  # k3
        assert (await store.prune(None, at(50), 2)).keys == 0
        assert await store.find_idempotency("m_1", "k9") is not None
        assert await store.find_idempotency("m_1", "stuck") == late
        assert len(await store.payment_ids()) == 5
        again = change(None, [initiated("pay_again")])
        await store.commit(attrs.evolve(again, idempotency=idem(again.payment, key="k1")))
        assert (await store.find_idempotency("m_1", "k1")).payment_id == "pay_again"  # type: ignore[union-attr]

    async def test_prune_deletes_only_published_messages_before_the_cut(
        self, store: PaymentStore
    ) -> None:
        """Messages published before the cut go (where the store keeps them at all), oldest
        first; pending, backing-off and parked ones stay, as does the history."""
        await commit_streams(store, {"pay_a": 2, "pay_b": 2, "pay_c": 1})
        a_and_b = [m for m in await claim(store, "r") if m.payment_id != "pay_c"]
        assert (await store.outbox_settle("r", at(100), a_and_b[:2], (), 1)).published == 2
        parked = [m for m in a_and_b if m.payment_id == "pay_b"]
        failure = fail(parked, "sink down", at(200))
        assert (await store.outbox_settle("r", at(100), [], [failure], 1)).parked == (
            "pay_b:1", "pay_b:2",
        )  # fmt: skip
        before = await store.outbox_counts(at(100))

        assert (await store.prune(at(100), at(0), 10)).messages == 0  # published at 100: kept
        pruned = await store.prune(at(101), at(0), 1)
        assert pruned.messages == (1 if self.keeps_published else 0)
        pruned = await store.prune(at(101), at(0), 10)
        assert pruned.messages == (1 if self.keeps_published else 0)
        assert (await store.prune(at(101), at(0), 10)).messages == 0
        assert await store.outbox_counts(at(100)) == before
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_c:1"]
        assert [m.message_id for m, _ in await store.outbox_parked()] == ["pay_b:1", "pay_b:2"]
        assert len(await store.events("pay_a")) == 2
        assert await store.prune(None, at(0), 0) == Pruned()

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
    # Relays "a" and "b" lease payments; ``now`` is always given (a fake clock), never waited.

    async def test_every_event_becomes_one_outbox_message(self, store: PaymentStore) -> None:
        history = lifecycle("pay_1")
        await store.commit(change(None, history[:3]))
        pending = await store.outbox_pending(100)
        assert pending == [OutboxMessage(e.event_id, "pay_1", e.version, e) for e in history[:3]]
        assert [m.message_id for m in pending] == ["pay_1:1", "pay_1:2", "pay_1:3"]
        assert [m.attempts for m in pending] == [0, 0, 0]

    async def test_outbox_pending_keeps_each_payments_order(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 3, "pay_b": 2})
        pending = await store.outbox_pending(100)
        assert sorted(m.message_id for m in pending) == sorted(
            ["pay_a:1", "pay_a:2", "pay_a:3", "pay_b:1", "pay_b:2"]
        )
        assert per_payment(pending) == {"pay_a": [1, 2, 3], "pay_b": [1, 2]}
        assert len(await store.outbox_pending(2)) == 2
        assert await store.outbox_pending(0) == []

    async def test_claim_returns_payments_oldest_first_each_in_order(
        self, store: PaymentStore
    ) -> None:
        await commit_streams(store, {"pay_a": 3, "pay_b": 2, "pay_c": 1})
        batch = await claim(store, "a")
        assert [m.message_id for m in batch] == [
            "pay_a:1", "pay_a:2", "pay_a:3", "pay_b:1", "pay_b:2", "pay_c:1",
        ]  # fmt: skip
        assert [m.event for m in batch[:3]] == await store.events("pay_a")
        assert all(m.attempts == 0 for m in batch)
        # Claiming publishes nothing.
        assert len(await store.outbox_pending(100)) == 6

    async def test_claim_limit_takes_whole_payments_or_a_prefix(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 4, "pay_b": 1})
        batch = await claim(store, "a", limit=2)
        assert [m.message_id for m in batch] == ["pay_a:1", "pay_a:2"]
        assert await claim(store, "a", limit=0) == []
        settled = await store.outbox_settle("a", at(101), batch, (), 3)
        assert (settled.published, settled.refused, settled.parked) == (2, 0, ())
        batch = await claim(store, "a", limit=3)
        assert [m.message_id for m in batch] == ["pay_a:3", "pay_a:4", "pay_b:1"]

    async def test_settle_publishes_and_releases(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 2, "pay_b": 1})
        batch = await claim(store, "a")
        settled = await store.outbox_settle("a", at(101), batch, (), 3)
        assert settled == OutboxSettled(published=3)
        assert await store.outbox_pending(10) == []
        assert await store.outbox_parked() == []
        assert len(await store.events("pay_a")) == 2  # publishing never touches the history
        # Released: another relay takes the payment's next message at once.
        await commit_more(store, "pay_a", 1)
        assert [m.message_id for m in await claim(store, "b", now=at(102))] == ["pay_a:3"]
        # Settling the same messages again publishes nothing (no lease, already published).
        again = await store.outbox_settle("a", at(103), batch, (), 3)
        assert again.published == 0 and again.refused == 3

    async def test_settle_and_claim_settles_then_claims(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 2, "pay_b": 1})
        batch = await claim(store, "a", limit=2)
        await commit_more(store, "pay_a", 1)  # while the batch is out
        settled, after = await store.outbox_settle_and_claim(
            "a", at(101), batch, (), 3, at(101) + LEASE, 10
        )
        assert settled == OutboxSettled(published=2)
        # pay_a's lease was released, then taken again for its new message.
        assert per_payment(after) == {"pay_a": [3], "pay_b": [1]}
        refused, none = await store.outbox_settle_and_claim(
            "b", at(102), after, (), 3, at(102) + LEASE, 10
        )
        assert (refused, none) == (OutboxSettled(refused=2), [])

    async def test_a_leased_payment_is_skipped_by_other_relays(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 2, "pay_b": 1})
        first = await claim(store, "a", limit=2)
        assert [m.message_id for m in first] == ["pay_a:1", "pay_a:2"]
        # Relay b gets the other payment only: never part of a payment a holds.
        assert [m.message_id for m in await claim(store, "b")] == ["pay_b:1"]
        assert await claim(store, "c") == []
        # A message committed meanwhile waits for a's lease (per-payment order).
        await commit_more(store, "pay_a", 1)
        assert await claim(store, "c") == []
        # The holder claims its own lease again (e.g. after an interrupted batch).
        again = await claim(store, "a")
        assert [m.message_id for m in again] == ["pay_a:1", "pay_a:2", "pay_a:3"]

    async def test_expired_lease_is_taken_over_and_the_old_holder_marks_nothing(
        self, store: PaymentStore
    ) -> None:
        await commit_streams(store, {"pay_a": 2})
        stale = await claim(store, "a", now=at(100))  # leased until at(130)
        assert await claim(store, "b", now=at(129)) == []
        fresh = await claim(store, "b", now=at(131))
        assert fresh == stale
        # a was paused past its lease: it must not mark (b delivers those messages).
        settled = await store.outbox_settle("a", at(132), stale, (), 3)
        assert settled == OutboxSettled(refused=2)
        failed = OutboxFailure("pay_a", ("pay_a:1",), "late", at(200))
        assert (await store.outbox_settle("a", at(132), [], [failed], 3)).refused == 1
        assert [m.attempts for m in await store.outbox_pending(10)] == [0, 0]
        assert (await store.outbox_settle("b", at(133), fresh, (), 3)).published == 2
        assert await store.outbox_pending(10) == []

    async def test_an_expired_lease_marks_nothing_even_if_nobody_took_over(
        self, store: PaymentStore
    ) -> None:
        await commit_streams(store, {"pay_a": 1})
        batch = await claim(store, "a", now=at(100))
        assert (await store.outbox_settle("a", at(130), batch, (), 3)).refused == 1
        assert len(await store.outbox_pending(10)) == 1
        assert await claim(store, "a", now=at(131)) == batch

    async def test_a_failing_payment_backs_off_alone(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 3, "pay_b": 2})
        batch = await claim(store, "a")
        a_ids = ("pay_a:1", "pay_a:2", "pay_a:3")
        delivered = [m for m in batch if m.payment_id == "pay_b"]
        failure = OutboxFailure("pay_a", a_ids, "sink: boom", at(110))
        settled = await store.outbox_settle("a", at(101), delivered, [failure], 3)
        assert settled == OutboxSettled(published=2, failed=3)
        # Backing off: not claimable before at(110), by anyone, not even its later messages.
        assert await claim(store, "a", now=at(105)) == []
        await commit_more(store, "pay_a", 1)
        await commit_streams(store, {"pay_c": 1})
        assert [m.message_id for m in await claim(store, "b", now=at(106))] == ["pay_c:1"]
        assert await store.outbox_next_due("a", at(106)) == at(110)
        counts = await store.outbox_counts(at(106))
        assert (counts.pending, counts.backing_off, counts.ready) == (5, 4, 1)
        assert (counts.backing_off_payments, counts.leased_payments) == (1, 1)
        assert (counts.parked, counts.next_retry_at) == (0, at(110))
        # Due: the whole queue comes back in order, attempts counted per message.
        retry = await claim(store, "a", now=at(110))
        assert [(m.message_id, m.attempts) for m in retry] == [
            ("pay_a:1", 1), ("pay_a:2", 1), ("pay_a:3", 1), ("pay_a:4", 0),
        ]  # fmt: skip
        assert (await store.outbox_settle("a", at(111), retry, (), 3)).published == 4
        counts = await store.outbox_counts(at(111))
        assert (counts.pending, counts.backing_off, counts.next_retry_at) == (1, 0, None)

    async def test_parked_after_max_attempts_and_later_messages_continue(
        self, store: PaymentStore
    ) -> None:
        await commit_streams(store, {"pay_a": 2})
        now = at(100)
        for attempt in (1, 2, 3):
            batch = await claim(store, "a", now=now)
            assert [(m.message_id, m.attempts) for m in batch] == [
                ("pay_a:1", attempt - 1),
                ("pay_a:2", attempt - 1),
            ]
            failure = fail(batch, f"boom {attempt}", now + timedelta(seconds=5))
            settled = await store.outbox_settle("a", now, [], [failure], 3)
            assert settled.failed == 2
            now += timedelta(seconds=5)
        assert settled.parked == ("pay_a:1", "pay_a:2")
        parked = await store.outbox_parked()
        assert [(m.message_id, m.attempts, error) for m, error in parked] == [
            ("pay_a:1", 3, "boom 3"),
            ("pay_a:2", 3, "boom 3"),
        ]
        assert [m.event for m, _ in parked] == await store.events("pay_a")
        assert await store.outbox_pending(10) == []
        assert await claim(store, "a", now=now) == []
        # Later messages of the payment continue (consumers see the gap in its sequence).
        await commit_more(store, "pay_a", 1)
        assert [m.message_id for m in await claim(store, "a", now=now)] == ["pay_a:3"]
        counts = await store.outbox_counts(now)
        assert (counts.pending, counts.parked, counts.backing_off) == (1, 2, 0)

    async def test_each_message_counts_its_own_attempts(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 2})
        batch = await claim(store, "a")
        await store.outbox_settle("a", at(100), [], [fail(batch, "one", at(101))], 2)
        await commit_more(store, "pay_a", 1)
        batch = await claim(store, "a", now=at(101))
        assert [m.attempts for m in batch] == [1, 1, 0]
        settled = await store.outbox_settle("a", at(101), [], [fail(batch, "two", at(102))], 2)
        assert settled.parked == ("pay_a:1", "pay_a:2") and settled.failed == 3
        # pay_a:3 failed once: it still backs off, then is retried alone.
        assert await claim(store, "a", now=at(101)) == []
        batch = await claim(store, "a", now=at(102))
        assert [(m.message_id, m.attempts) for m in batch] == [("pay_a:3", 1)]
        await store.outbox_settle("a", at(102), batch, (), 2)
        assert await store.outbox_pending(10) == []
        assert [m.message_id for m, _ in await store.outbox_parked()] == ["pay_a:1", "pay_a:2"]

    async def test_requeue_unparks_with_fresh_attempts(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 2, "pay_b": 1})
        batch = await claim(store, "a")
        failures = [
            fail([m for m in batch if m.payment_id == p], f"{p} down", at(101))
            for p in ("pay_a", "pay_b")
        ]
        settled = await store.outbox_settle("a", at(100), [], failures, 1)
        assert settled.parked == ("pay_a:1", "pay_a:2", "pay_b:1")
        await commit_more(store, "pay_a", 1)  # pending behind the parked ones

        assert await store.outbox_requeue(["pay_a:1", "nope", "pay_a:3"]) == ["pay_a:1"]
        assert await store.outbox_requeue(["pay_a:1"]) == []  # not parked any more
        assert [m.message_id for m, _ in await store.outbox_parked()] == ["pay_a:2", "pay_b:1"]
        # The requeued message goes out before the payment's later pending ones.
        batch = await claim(store, "a", now=at(101))
        assert [(m.message_id, m.attempts) for m in batch] == [("pay_a:1", 0), ("pay_a:3", 0)]
        await store.outbox_settle("a", at(101), batch, (), 1)

        assert sorted(await store.outbox_requeue()) == ["pay_a:2", "pay_b:1"]
        assert await store.outbox_parked() == []
        assert await store.outbox_requeue() == []
        batch = await claim(store, "a", now=at(102))
        assert per_payment(batch) == {"pay_a": [2], "pay_b": [1]}

    async def test_requeue_during_delivery_keeps_the_batch(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 1})
        batch = await claim(store, "a")
        await store.outbox_settle("a", at(100), [], [fail(batch, "x", at(101))], 1)
        await commit_more(store, "pay_a", 2)
        batch = await claim(store, "a", now=at(101))
        assert [m.message_id for m in batch] == ["pay_a:2", "pay_a:3"]
        assert await store.outbox_requeue() == ["pay_a:1"]  # while pay_a:2-3 are in flight
        assert (await store.outbox_settle("a", at(101), batch, (), 1)).published == 2
        assert [m.message_id for m in await store.outbox_pending(10)] == ["pay_a:1"]

    async def test_lease_owners_and_release(self, store: PaymentStore) -> None:
        await commit_streams(store, {"pay_a": 1, "pay_b": 1, "pay_c": 1})
        assert await store.outbox_lease_owners(at(100)) == []
        await claim(store, "b", limit=1)  # pay_a until at(130)
        await claim(store, "a", limit=1)  # pay_b until at(130)
        await claim(store, "c", now=at(50), limit=1)  # pay_c until at(80)
        assert await store.outbox_lease_owners(at(100)) == ["a", "b"]
        # A dead relay's leases are dropped at once: its payments are claimable now.
        assert await store.outbox_release(["a", "nobody"]) == 1
        assert await store.outbox_release([]) == 0
        assert await store.outbox_lease_owners(at(100)) == ["b"]
        batch = await claim(store, "d")
        assert [m.message_id for m in batch] == ["pay_b:1", "pay_c:1"]

    async def test_next_due(self, store: PaymentStore) -> None:
        assert await store.outbox_next_due("a", at(100)) is None
        await commit_streams(store, {"pay_a": 1, "pay_b": 1})
        assert await store.outbox_next_due("a", at(100)) is None  # ready now: no wait
        batch = await claim(store, "a", now=at(100), limit=1)
        await store.outbox_settle("a", at(100), [], [fail(batch, "x", at(150))], 5)
        assert await store.outbox_next_due("a", at(100)) == at(150)
        # Another relay's lease expiring counts too (not the relay's own).
        await claim(store, "b", now=at(100))  # pay_b, leased until at(130)
        assert await store.outbox_next_due("a", at(100)) == at(130)
        assert await store.outbox_next_due("b", at(100)) == at(150)
        # Only times after ``after``.
        assert await store.outbox_next_due("a", at(140)) == at(150)
        assert await store.outbox_next_due("a", at(150)) is None

    async def test_counts(self, store: PaymentStore) -> None:
        empty = await store.outbox_counts(at(0))
        assert empty == OutboxCounts(0, 0, 0, 0, 0, 0, None)
        await commit_streams(store, {"pay_a": 2, "pay_b": 1, "pay_c": 3})
        batch = await claim(store, "a", now=at(100), limit=3)
        assert per_payment(batch) == {"pay_a": [1, 2], "pay_b": [1]}
        a_batch = [m for m in batch if m.payment_id == "pay_a"]
        b_batch = [m for m in batch if m.payment_id == "pay_b"]
        failures = [fail(a_batch, "a down", at(120)), fail(b_batch, "b down", at(120))]
        await store.outbox_settle("a", at(100), [], failures, 2)
        await claim(store, "b", now=at(101))  # pay_c, leased until at(131)
        counts = await store.outbox_counts(at(101))
        assert counts == OutboxCounts(
            pending=6,
            ready=3,
            backing_off=3,
            backing_off_payments=2,
            leased_payments=1,
            parked=0,
            next_retry_at=at(120),
        )
        later = await store.outbox_counts(at(125))
        assert (later.ready, later.backing_off, later.next_retry_at) == (6, 0, None)
        assert (await store.outbox_counts(at(131))).leased_payments == 0

    async def test_per_payment_order_across_interleaved_commits(self, store: PaymentStore) -> None:
        streams = {pid: lifecycle(pid) for pid in ("pay_a", "pay_b", "pay_c")}
        payments: dict[str, Payment | None] = dict.fromkeys(streams)
        seen: list[OutboxMessage] = []
        # Interleave commits of one or two events across the three payments with small batches.
        for step in range(5):
            for pid, history in streams.items():
                c = change(payments[pid], history[2 * step : 2 * step + 2])
                await store.commit(c)
                payments[pid] = c.payment
            batch = await claim(store, "a", now=at(step), limit=4)
            await store.outbox_settle("a", at(step), batch, (), 3)
            seen.extend(batch)
        while batch := await claim(store, "a", now=at(10), limit=4):
            seen.extend(batch)
            await store.outbox_settle("a", at(10), batch, (), 3)
        assert len(seen) == 30
        assert len({m.message_id for m in seen}) == 30
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
