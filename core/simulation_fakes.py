"""The gateway packages' fake servers, running, for ``aegispay simulate --with-fakes``.

:func:`running_fakes` starts the fake Stripe, Razorpay and/or PayPal that ship with the
``aegispay-<gateway>`` packages (``aegispay_<gateway>.fake``) on loopback ports and yields a
:class:`RunningFakes`:

* ``sections`` - the ``[plugins.<gateway>]`` sections pointing each package at its fake
  (base URL, test keys, webhook secret or id); hand them to ``Settings`` / ``PluginConfig``;
* ``plugin()`` - a plugin registering the packages' own adapters from those sections, each
  charging the simulated customer's saved instrument at that gateway (see
  :data:`SAVED_INSTRUMENTS`), and noting which payments reached a gateway;
* ``forward_webhooks(service)`` - hands every signed webhook a fake produced since the last call
  to ``service.handle_webhook`` (Stripe and Razorpay; the fake PayPal keeps no event log, so it
  delivers nothing unprompted);
* ``audit(service)`` - each fake's own count of money movements (``charges()``) against the
  captured payments the store holds for that gateway: more at the gateway is a duplicate (or a
  charge the store does not know), fewer is a payment recorded as paid that was not.

:func:`simulate_with_fakes` runs the simulation workload (:mod:`aegispay.simulation`) through
all of it over real HTTP. Nothing here is imported by the core; the gateway packages are
imported only when their fake is asked for.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .errors import AegisPayError, ConfigError
from .gateways import (
    AuthorizeRequest,
    Gateway,
    GatewayResult,
    GatewayWrapper,
)
from .hookspecs import hookimpl
from .settings import PluginConfig, Settings

if TYPE_CHECKING:
    from .observe import GatewayCall, OperationRecord
    from .service import PaymentService
    from .simulation import SimulationOptions

#: The card every simulated request names (``aegispay.simulation.generate``): a Stripe test
#: PaymentMethod that succeeds without 3-D Secure.
SIMULATION_CARD = "pm_card_visa"

#: What the simulated customer has saved at each gateway, so every payment completes without a
#: person: Stripe's test card ``pm_card_visa`` (confirmed at creation); a Razorpay saved card
#: (``cust_...:token_...``, charged through ``/v1/payments/create/recurring``); a vaulted PayPal
#: wallet (the order is completed at creation with ``payment_source.paypal.vault_id``).
SAVED_INSTRUMENTS: Mapping[str, str] = {
    "stripe": SIMULATION_CARD,
    "razorpay": "cust_AegisSim00001:token_AegisSim00001",
    "paypal": "aegispay-sim-vault-0001",
}

Deliveries = Callable[[Any, int], list[tuple[dict[str, str], bytes]]]


@attrs.frozen
class FakeKind:
    """How to run one package's fake and point its plugin at it."""

    gateway: str
    class_name: str
    # Constructor arguments: the fake's credentials are fixed here so the section can name
    # them without reading the fake's private state. Test values for a local fake only.
    arguments: Mapping[str, Any] = attrs.field(repr=False)
    section: Callable[[Any], dict[str, Any]] = attrs.field(repr=False)
    # (fake, how many already forwarded) -> the later deliveries; None: it keeps no log.
    deliveries: Deliveries | None = attrs.field(default=None, repr=False)
    no_webhooks_why: str = ""


def _stripe_deliveries(fake: Any, start: int) -> list[tuple[dict[str, str], bytes]]:
    # events() copies every event each call: one read per round, sign only the new ones.
    return [fake.sign(event) for event in fake.events()[start:]]


def _razorpay_deliveries(fake: Any, start: int) -> list[tuple[dict[str, str], bytes]]:
    return list(fake.events()[start:])


KINDS: Mapping[str, FakeKind] = {
    "stripe": FakeKind(
        "stripe",
        "FakeStripe",
        {"secret_key": "sk_test_aegispay_sim", "webhook_secret": "whsec_aegispay_sim_0123456789"},
        lambda fake: {
            "secret_key": fake.secret_key,
            "webhook_secret": fake.webhook_secret,
            "base_url": fake.base_url,
            "default_payment_method": SIMULATION_CARD,
        },
        _stripe_deliveries,
    ),
    "razorpay": FakeKind(
        "razorpay",
        "FakeRazorpay",
        {
            "key_id": "rzp_test_aegispay_sim",
            "key_secret": "aegispay_sim_key_secret_0123",
            "webhook_secret": "aegispay_sim_webhook_secret_0123",
        },
        lambda fake: {
            "key_id": fake.key_id,
            "key_secret": fake.key_secret,
            "webhook_secret": fake.webhook_secret,
            "base_url": fake.base_url,
        },
        _razorpay_deliveries,
    ),
    "paypal": FakeKind(
        "paypal",
        "FakePayPal",
        {
            "client_id": "aegispay-sim-client",
            "client_secret": "aegispay-sim-client-secret",
            "webhook_id": "WH-AEGISPAY-SIM-0001",
        },
        lambda fake: {
            "client_id": fake.client_id,
            "client_secret": KINDS["paypal"].arguments["client_secret"],
            "webhook_id": fake.webhook_id,
            "base_url": fake.base_url,
        },
        None,
        "the fake PayPal keeps no event log and pushes nothing: it signs a webhook only when "
        "asked (signed_webhook), so none is forwarded",
    ),
}


def parse_gateways(gateways: str | Iterable[str]) -> tuple[str, ...]:
    """``"stripe,razorpay"`` (or a list) as known gateway names, in order, each once."""
    raw = gateways.split(",") if isinstance(gateways, str) else list(gateways)
    names = tuple(dict.fromkeys(name.strip().lower() for name in raw if name.strip()))
    if not names:
        raise ConfigError(f"--gateways: name at least one of {sorted(KINDS)} to run with fakes")
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ConfigError(
            f"--gateways: no fake server for {unknown}; fakes exist for {sorted(KINDS)}"
        )
    return names


def _import_package(gateway: str, module: str) -> Any:
    name = f"aegispay_{gateway}.{module}"
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(
            f"--gateways: {gateway!r} needs the aegispay-{gateway} package "
            f"(pip install aegispay-{gateway}): cannot import {name}: {error}"
        ) from None


class SavedInstrumentGateway(GatewayWrapper):
    """A package's adapter, unchanged, except that an authorization naming the simulation's
    card charges the customer's instrument saved at this gateway (:data:`SAVED_INSTRUMENTS`).

    The simulation builds one request before routing picks a gateway, and each gateway names
    a customer's saved instrument its own way; this is the simulated customer's wallet.
    """

    def __init__(self, inner: Gateway, instrument: str) -> None:
        super().__init__(inner)
        self.instrument = instrument

    def __repr__(self) -> str:
        return f"SavedInstrumentGateway({self.inner!r})"  # the adapter's repr hides secrets

    async def authorize(self, request: AuthorizeRequest) -> GatewayResult:
        if request.payment_method in (None, SIMULATION_CARD):
            request = attrs.evolve(request, payment_method=self.instrument)
        return await self.inner.authorize(request)


class FakeGatewaysPlugin:
    """Registers each faked gateway through its package's own plugin hook, fed its fake's
    section, and notes every payment of the service's operations and gateway calls (what
    :meth:`RunningFakes.audit` checks)."""

    def __init__(self, fakes: RunningFakes) -> None:
        self._fakes = fakes

    def __repr__(self) -> str:
        return f"FakeGatewaysPlugin({sorted(self._fakes.fakes)})"

    @hookimpl
    def aegispay_register_gateways(
        self, register: Callable[[Gateway], None], config: PluginConfig
    ) -> None:
        for name in self._fakes.fakes:
            package_plugin = _import_package(name, "plugin")
            instrument = SAVED_INSTRUMENTS[name]

            def wrapped(gateway: Gateway, _instrument: str = instrument) -> None:
                register(SavedInstrumentGateway(gateway, _instrument))

            package_plugin.aegispay_register_gateways(
                register=wrapped, config=PluginConfig({name: self._fakes.sections[name]})
            )

    @hookimpl
    def aegispay_after_gateway_call(self, call: GatewayCall) -> None:
        self._fakes.payment_ids.add(call.payment_id)

    @hookimpl
    def aegispay_operation_finished(self, record: OperationRecord) -> None:
        # Also the payments no gateway saw (refused by validation or fraud checks).
        if record.payment_id is not None:
            self._fakes.payment_ids.add(record.payment_id)


@attrs.define
class WebhookTally:
    """What forwarding did, per gateway: results by status, and errors by type."""

    by_status: dict[str, Counter[str]] = attrs.field(factory=dict)
    errors: dict[str, Counter[str]] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {
                "delivered": sum(self.by_status.get(name, Counter()).values()),
                "results": dict(sorted(self.by_status.get(name, Counter()).items())),
                "errors": dict(sorted(self.errors.get(name, Counter()).items())),
            }
            for name in sorted(set(self.by_status) | set(self.errors))
        }


@attrs.define
class RunningFakes:
    """The fakes :func:`running_fakes` started, with what a service needs to use them."""

    fakes: dict[str, Any]
    sections: dict[str, dict[str, Any]] = attrs.field(repr=False)  # test keys: never printed
    payment_ids: set[str] = attrs.field(factory=set, repr=False)
    webhooks: WebhookTally = attrs.field(factory=WebhookTally, repr=False)
    _forwarded: Counter[str] = attrs.field(factory=Counter, repr=False)

    def plugin(self) -> FakeGatewaysPlugin:
        """Pass to ``build_service(..., plugins=[fakes.plugin()])``."""
        return FakeGatewaysPlugin(self)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` for a run against the fakes: the user's sections for these gateways
        are dropped (the fakes stand in, registered by :meth:`plugin`), no simulated gateway is
        registered, and routing spreads payments round-robin and the demo fraud rules apply
        unless the user configured their own."""
        from .simulation_defaults import SIMULATION_FRAUD_RULES

        config = settings.plugin_config
        sections: dict[str, Mapping[str, Any]] = {
            name: config.section(name) for name in config.names() if name not in self.fakes
        }
        sections["simulated_gateways"] = {"gateways": []}
        sections.setdefault("routing", {"strategy": "round_robin"})
        sections.setdefault("fraud_rules", SIMULATION_FRAUD_RULES)
        return attrs.evolve(settings, plugin_config=PluginConfig(sections))

    def webhook_support(self) -> dict[str, str]:
        """Per gateway: "forwarded", or why its fake delivers no webhooks."""
        return {
            name: "forwarded" if KINDS[name].deliveries else KINDS[name].no_webhooks_why
            for name in self.fakes
        }

    async def forward_webhooks(self, service: PaymentService) -> int:
        """Hand every delivery the fakes produced since the last call to
        ``service.handle_webhook``, in order; returns how many. A delivery the service refuses
        (bad signature, storage down...) is counted under ``errors`` and not retried."""
        sent = 0
        for name, fake in self.fakes.items():
            read = KINDS[name].deliveries
            if read is None:
                continue
            pending = read(fake, self._forwarded[name])
            self._forwarded[name] += len(pending)
            for headers, body in pending:
                sent += 1
                try:
                    result = await service.handle_webhook(name, headers, body)
                except AegisPayError as error:
                    self.webhooks.errors.setdefault(name, Counter())[type(error).__name__] += 1
                    continue
                self.webhooks.by_status.setdefault(name, Counter())[result.status.value] += 1
        return sent

    async def forward_until(
        self, service: PaymentService, stop: anyio.Event, interval_s: float = 1.0
    ) -> None:
        """Forward a round every ``interval_s`` (a gateway's delivery delay) until ``stop`` is
        set, then one last round. Never cancelled inside a delivery: each one finishes."""
        while not stop.is_set():
            with anyio.move_on_after(interval_s):
                await stop.wait()
            await self.forward_webhooks(service)

    async def audit(
        self, service: PaymentService, payment_ids: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """Each fake's ``charges()`` (money really moved, counted by the fake) against the
        payments (default: every one this service operated on) the store shows captured at
        that gateway. ``ok`` is False on any difference."""
        expected: Counter[str] = Counter()
        for payment_id in sorted(self.payment_ids if payment_ids is None else payment_ids):
            payment = await service.store.load(payment_id)
            if payment is not None and payment.captured_amount.minor > 0 and payment.gateway:
                expected[payment.gateway] += 1
        gateways: dict[str, dict[str, int]] = {}
        for name, fake in self.fakes.items():
            charged, captured = int(fake.charges()), expected.get(name, 0)
            gateways[name] = {
                "charges_at_gateway": charged,
                "captured_payments": captured,
                "charges_not_matched": max(0, charged - captured),
                "payments_not_charged": max(0, captured - charged),
            }
        strays = {name: n for name, n in expected.items() if name not in self.fakes}
        not_matched = sum(g["charges_not_matched"] for g in gateways.values())
        not_charged = sum(g["payments_not_charged"] for g in gateways.values())
        return {
            "ok": not not_matched and not not_charged and not strays,
            "by_gateway": gateways,
            "charges_not_matched": not_matched,
            "payments_not_charged": not_charged,
            "captured_elsewhere": strays,
        }

    def handler_errors(self) -> dict[str, list[str]]:
        """Exceptions raised inside the fakes' own handlers (a bug in a fake, not a fault)."""
        return {
            name: [repr(e) for e in fake.handler_errors()]
            for name, fake in self.fakes.items()
            if fake.handler_errors()
        }


@asynccontextmanager
async def running_fakes(gateways: str | Iterable[str]) -> AsyncIterator[RunningFakes]:
    """Start the named gateways' fakes (``"stripe,razorpay,paypal"``) on loopback ports;
    closed on exit, each even if another fails to close."""
    names = parse_gateways(gateways)
    classes = {
        name: getattr(_import_package(name, "fake"), KINDS[name].class_name) for name in names
    }
    async with AsyncExitStack() as stack:
        fakes: dict[str, Any] = {}
        for name in names:
            fake = classes[name](**KINDS[name].arguments)
            # Starting binds a socket and a thread: off the event loop, like any blocking call.
            await anyio.to_thread.run_sync(fake.start)
            stack.push_async_callback(anyio.to_thread.run_sync, fake.close)
            fakes[name] = fake
        sections = {name: KINDS[name].section(fake) for name, fake in fakes.items()}
        yield RunningFakes(fakes, sections)


async def run_with_fakes(
    service: PaymentService,
    fakes: RunningFakes,
    options: SimulationOptions,
    progress: Callable[[int], None] | None = None,
    *,
    webhook_interval_s: float = 1.0,
) -> dict[str, Any]:
    """Run the simulation workload on ``service`` (built with ``fakes.settings()`` and
    ``fakes.plugin()``) while forwarding the fakes' webhooks, then audit it against them.

    The report is :func:`aegispay.simulation.run_simulation`'s, with its store audit redone
    after the last webhooks, ``duplicate_charges`` / ``unrecorded_charges`` from the fakes'
    own counts (see :meth:`RunningFakes.audit`: one number, since a count cannot tell a second
    charge from an unrecorded one) and a ``fakes`` section (per-gateway audit, webhooks).
    """
    from .simulation import audit_store, run_simulation

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(fakes.forward_until, service, stop, webhook_interval_s)
        try:
            report = await run_simulation(service, options, None, progress)
        finally:
            stop.set()  # the forwarder makes its last round, then the group ends
    # Deliveries made while the service was closing, then the events they committed.
    await fakes.forward_webhooks(service)
    await service.relay.drain()
    ids = sorted(fakes.payment_ids)
    store = await audit_store(service, None, ids)
    report["outcomes"] = dict(sorted(store.pop("states").items()))
    report.update(store)
    audit = await fakes.audit(service, ids)
    report["duplicate_charges"] = audit["charges_not_matched"]
    report["unrecorded_charges"] = audit["charges_not_matched"]
    report["fakes"] = {
        "gateways": list(fakes.fakes),
        "saved_instruments": {name: SAVED_INSTRUMENTS[name] for name in fakes.fakes},
        "audit": audit,
        "webhooks": fakes.webhooks.to_dict(),
        "webhook_support": fakes.webhook_support(),
        "fake_errors": fakes.handler_errors(),
    }
    return report


def simulation_failed(report: Mapping[str, Any]) -> bool:
    """Whether a :func:`run_with_fakes` report shows money or history going wrong."""
    fakes = report.get("fakes", {})
    return bool(
        report.get("replay_mismatches")
        or report.get("duplicate_charges")
        or not fakes.get("audit", {}).get("ok", False)
        or fakes.get("fake_errors")
    )


async def simulate_with_fakes(
    settings: Settings,
    gateways: str | Sequence[str],
    options: SimulationOptions,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``aegispay simulate --gateways ... --with-fakes``: start the fakes, build a service on
    ``settings`` pointed at them, run the workload over real HTTP, audit, close everything."""
    from .stack import build_service

    async with running_fakes(gateways) as fakes:
        service = build_service(fakes.settings(settings), plugins=[fakes.plugin()])
        try:
            return await run_with_fakes(service, fakes, options, progress)
        finally:
            await service.aclose()
