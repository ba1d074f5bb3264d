"""``aegispay gateways``: every gateway's health, latency and circuit state, as a table or JSON.

Health lives in the memory of the process that makes the gateway calls (``GatewayMonitor``).
With ``[engine.gateway_health.shared]`` configured, ``--fleet`` instead prints what the running
workers publish to Redis (``SharedBreakerState.fleet_health``): their window counters summed,
the highest worker p95, and the fleet's circuit state. A fresh CLI process has seen no traffic,
so the command can first run a short simulated warm-up: ``--simulate N`` sends N payments
through a throw-away in-memory service with the configured plugins (amounts, currencies and
the simulated gateways seeded by ``--seed``; payment ids are random, so outcomes vary a little
from run to run; nothing is written to the configured store) and then reports what its
gateways' health windows and breakers saw. Without ``--simulate`` it lists the configured
gateways with empty windows and says so. A running service reads the same figures with
``service.gateway_health()`` or scrapes ``service.gateway_monitor.metrics_registry()``.
"""

from __future__ import annotations

import json
import random
from typing import Any

import anyio
import attrs
import click

from .settings import PluginConfig, Settings, load_settings

_WARM_UP_CURRENCIES = ("USD", "EUR", "GBP", "INR", "JPY", "KWD")
_WARM_UP_COUNTRIES = ("US", "DE", "GB", "IN", "JP", "KW")


def _settings(ctx: click.Context) -> Settings:
    """The settings the ``aegispay`` group loaded (``--config``), else the default ones."""
    obj = ctx.find_root().obj
    settings: Settings = obj["settings"] if isinstance(obj, dict) else load_settings(None)
    return settings


async def warm_up(service: Any, payments: int, concurrency: int, seed: int) -> dict[str, int]:
    """Send ``payments`` seeded payments through ``service`` (entered here); the outcome
    counts by payment state."""
    from .money import Money
    from .requests import PaymentRequest

    currencies = [
        code
        for code in _WARM_UP_CURRENCIES
        if any(
            g.supported_currencies is None or code in g.supported_currencies
            for g in service.gateways.values()
        )
    ] or ["USD"]
    rng = random.Random(seed)
    specs = []
    for i in range(payments):
        currency = rng.choice(currencies)
        unit = 10 ** Money.zero(currency).exponent
        amount = Money(max(1, int(100 + rng.random() * 19_900) * unit // 100), currency)
        country = _WARM_UP_COUNTRIES[_WARM_UP_CURRENCIES.index(currency)]
        specs.append(
            PaymentRequest(
                amount,
                customer_id=f"cus_warm_{i % 97}",
                payment_method="card",
                country=country,
            )
        )
    states: dict[str, int] = {}
    queue = iter(specs)

    async def worker() -> None:
        for request in queue:
            payment = await service.pay(request)
            states[payment.state.value] = states.get(payment.state.value, 0) + 1

    async with service, anyio.create_task_group() as group:
        for _ in range(max(1, min(concurrency, payments))):
            group.start_soon(worker)
    return states


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _table(report: dict[str, Any], segments: bool, title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for column in (
        "gateway",
        "score",
        "success",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "circuit",
        "volume",
        "calls/s",
        "failed",
    ):
        left = column in ("gateway", "circuit")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)

    def row(label: str, h: dict[str, Any], circuit: str) -> None:
        by_class = h["by_class"]
        latency = h["latency_ms"]
        table.add_row(
            label,
            f"{h['score']:.3f}",
            f"{h['success_rate']:.3f}",
            _fmt(latency["p50"]),
            _fmt(latency["p95"]),
            _fmt(latency["p99"]),
            circuit,
            str(h["volume"]),
            _fmt(h["throughput_per_s"]),
            str(by_class["not_sent"] + by_class["unknown"] + by_class["timeout"]),
        )

    for name, health in report.items():
        row(name, health, health["circuit"])
        if segments:
            for dimension, values in health.get("segments", {}).items():
                for value, seg in values.items():
                    row(f"  {dimension}={value}", seg, "")
    return table


@click.command("gateways")
@click.option(
    "--simulate",
    "payments",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="First send N simulated payments through an in-memory service (0: no warm-up).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--segments", is_flag=True, help="Also show each currency / method / country.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--prometheus", is_flag=True, help="Print the Prometheus text exposition.")
@click.option(
    "--fleet",
    is_flag=True,
    help="Print every worker's counters merged, from the shared Redis state "
    "([engine.gateway_health.shared]).",
)
@click.pass_context
def gateways(
    ctx: click.Context,
    payments: int,
    seed: int,
    concurrency: int,
    segments: bool,
    as_json: bool,
    prometheus: bool,
    fleet: bool,
) -> None:
    """Gateway health: score, success rate, p50/p95/p99, circuit state and volume."""
    from .metrics import render_metrics
    from .stack import build_service

    settings = _settings(ctx)
    config = settings.plugin_config
    sections = {name: dict(config.section(name)) for name in config.names()}
    simulated = dict(sections.get("simulated_gateways", {}))
    simulated.setdefault("seed", seed)
    sections["simulated_gateways"] = simulated
    # Never the configured store: the warm-up's payments are throw-away.
    settings = attrs.evolve(settings, store="memory://", plugin_config=PluginConfig(sections))
    service = build_service(settings)
    states: dict[str, int] = {}
    if payments:
        states = anyio.run(warm_up, service, payments, concurrency, seed)
    monitor = service.gateway_monitor
    if fleet:
        _print_fleet(monitor.shared, as_json)
        return
    if prometheus:
        click.echo(render_metrics(monitor.metrics_registry()), nl=False)
        return
    report = monitor.snapshot(segments=True)
    if payments:
        source = f"after a simulated warm-up of {payments} payments (seed {seed})"
    else:
        source = "this process has made no gateway call: empty windows (try --simulate 2000)"
    if as_json:
        out = {"source": source, "warm_up_states": states, "gateways": report}
        click.echo(json.dumps(out, sort_keys=True))
        return
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # piped: do not squeeze the table into 80 columns
    console.print(_table(report, segments, f"Gateway health, {source}"))
    click.echo("failed = NOT_SENT + UNKNOWN + timeouts in the window; --json has every class")


def _print_fleet(shared: Any, as_json: bool) -> None:
    """The merged view of every live worker, read once from Redis."""
    if shared is None:
        raise click.UsageError(
            '--fleet needs [engine.gateway_health.shared] url = "redis://..." '
            "(or enabled = true with a redis:// lock URL)"
        )
    from redis.exceptions import RedisError

    async def read() -> dict[str, dict[str, Any]]:
        try:
            report: dict[str, dict[str, Any]] = await shared.fleet_health()
            return report
        finally:
            await shared.aclose()

    try:
        report = anyio.run(read)
    except (RedisError, OSError) as error:
        raise click.ClickException(f"shared breaker state: {shared!r}: {error}") from None
    if as_json:
        click.echo(json.dumps({"source": "fleet", "gateways": report}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Gateway health across the fleet (workers seen within stats_ttl_s)")
    for column in ("gateway", "workers", "availability", "success", "p95 ms (max)", "circuit"):
        table.add_column(column, justify="left" if column in ("gateway", "circuit") else "right")
    table.add_column("volume", justify="right")
    table.add_column("failed", justify="right")
    for name, h in report.items():
        circuit = h["circuit"]
        if h["reopens_in_s"]:
            circuit += f" ({h['reopens_in_s']:.1f}s)"
        table.add_row(
            name,
            str(len(h["workers"])),
            f"{h['availability']:.3f}",
            f"{h['success_rate']:.3f}",
            _fmt(h["p95_ms"]),
            circuit,
            str(h["volume"]),
            str(h["failures"]),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(table)
