"""The ``aegispay`` command line: ``simulate``, ``plugins``, ``states``, plus plugin commands."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import attrs
import click

from .errors import AegisPayError
from .settings import PluginConfig, Settings, load_settings


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    return settings


class _Group(click.Group):
    """Turns AegisPay's own errors into a one-line message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AegisPayError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML configuration file (default: ./aegispay.toml if present).",
)
@click.option("-v", "--verbose", count=True, help="Log events (-v) and gateway calls (-vv).")
@click.version_option(package_name="aegispay")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int) -> None:
    """AegisPay: payment orchestration with pluggable gateways, fraud checks and routing."""
    level = logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    try:
        ctx.obj = {"settings": load_settings(config_path)}
    except AegisPayError as error:
        raise click.ClickException(str(error)) from None


@cli.command()
@click.option("--payments", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--gateways",
    default=None,
    help="Comma-separated simulated gateways to use (default: all configured).",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Store URL (default: from settings; sqlite:///aegispay.db).",
)
@click.option(
    "--lock",
    "lock_url",
    default=None,
    help="Lock URL: redis://host:6379/0 for workers sharing Redis (default: in-process).",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="Mean latency of every simulated gateway; 0 for none (default: per gateway).",
)
@click.option("--refund-share", type=click.FloatRange(0, 1), default=0.10, show_default=True)
@click.option(
    "--scenario",
    "scenario_name",
    default=None,
    help="A chaos scenario on a virtual clock: steady, outage, brownout or flaky "
    "(sets the gateways, routing, breakers and faults; default payments 3,000, concurrency 8).",
)
@click.option(
    "--report",
    "html_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also write a self-contained HTML report (charts over time) to this file.",
)
@click.option(
    "--with-fakes",
    is_flag=True,
    help="Run the gateway packages named by --gateways (default stripe,razorpay,paypal) "
    "against their loopback fake servers, over real HTTP.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def simulate(
    ctx: click.Context,
    payments: int,
    concurrency: int,
    seed: int,
    gateways: str | None,
    store_url: str | None,
    lock_url: str | None,
    latency_ms: float | None,
    refund_share: float,
    scenario_name: str | None,
    html_path: str | None,
    with_fakes: bool,
    as_json: bool,
) -> None:
    """Run N payments through the whole pipeline with simulated gateways, then report."""
    from functools import partial

    from .simulation import SimulationOptions, run_simulation

    settings = _settings(ctx)
    if store_url is not None:
        settings = attrs.evolve(settings, store=store_url)
    if lock_url is not None:
        settings = attrs.evolve(settings, lock=lock_url)
    if with_fakes:
        if scenario_name is not None or latency_ms is not None or html_path is not None:
            raise click.UsageError(
                "--with-fakes cannot be combined with --scenario, --latency-ms or --report "
                "(the fakes answer at their own speed)"
            )
        _simulate_with_fakes(settings, gateways, payments, concurrency, seed, refund_share, as_json)
        return
    scenario_run = None
    if scenario_name is not None:
        from .scenarios import build_scenario_run, get_scenario

        if gateways is not None or latency_ms is not None:
            raise click.UsageError(
                "--gateways and --latency-ms cannot be combined with --scenario "
                "(the scenario sets the gateways and their latency)"
            )
        scenario = get_scenario(scenario_name)
        if ctx.get_parameter_source("payments") is click.core.ParameterSource.DEFAULT:
            payments = scenario.payments
        if ctx.get_parameter_source("concurrency") is click.core.ParameterSource.DEFAULT:
            concurrency = scenario.concurrency
        scenario_run = build_scenario_run(settings, scenario, seed=seed, payments=payments)
        service, ledger, timeline = scenario_run.service, scenario_run.ledger, scenario_run.timeline
    else:
        service, ledger, timeline = _simulation_service(
            settings, seed, gateways, latency_ms, html_path is not None
        )
    options = SimulationOptions(payments, concurrency, seed, refund_share)
    _tune_gc()
    report = _with_progress(
        payments,
        as_json,
        lambda advance: anyio.run(
            partial(run_simulation, service, options, ledger, advance, timeline=timeline)
        ),
    )
    if scenario_run is not None:
        report["scenario"] = scenario_run.describe()
    if html_path is not None:
        from .report_html import write_html_report

        write_html_report(html_path, report)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        _print_report(report)
        if html_path is not None:
            click.echo(f"HTML report written to {html_path}")
    if report.get("store_errors"):
        click.echo(f"{report['store_errors']} payment(s) failed with a store error", err=True)
    if (
        report.get("duplicate_charges")
        or report["replay_mismatches"]
        or report.get("unrecorded_charges")
        or report.get("store_errors")
    ):
        sys.exit(1)


def _simulate_with_fakes(
    settings: Settings,
    gateways: str | None,
    payments: int,
    concurrency: int,
    seed: int,
    refund_share: float,
    as_json: bool,
) -> None:
    from .simulation import SimulationOptions
    from .simulation_fakes import simulate_with_fakes, simulation_failed

    options = SimulationOptions(payments, concurrency, seed, refund_share)
    names = gateways or "stripe,razorpay,paypal"
    report = _with_progress(
        payments,
        as_json,
        lambda advance: anyio.run(simulate_with_fakes, settings, names, options, advance),
    )
    if as_json:
        click.echo(json.dumps(report, sort_keys=True, default=str))
    else:
        _print_report(report)
        audit = report.get("fakes", {}).get("audit", {})
        verdict = "ok" if audit.get("ok") else f"MISMATCH {audit}"
        click.echo(f"fake servers' charges against stored payments: {verdict}")
    if simulation_failed(report):
        sys.exit(1)


def _tune_gc() -> None:
    """Garbage-collector settings for a long, allocation-heavy run (the command's choice, not
    the library's): objects alive now are moved out of the collector's way, young collections
    run every 50,000 allocations instead of 700, and full collections rarely. The in-memory
    store keeps every payment, so each full pass walks all of them: with the default
    thresholds a 50,000-payment run spent ~15 % of its time and its worst pauses (~0.9 s)
    there. The hot path makes no reference cycles, so RSS per payment is the same either
    way (docs/benchmarks.md)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _simulation_service(
    settings: Settings,
    seed: int,
    gateways: str | None,
    latency_ms: float | None,
    timed: bool,
) -> tuple[Any, Any, Any]:
    """(service, ledger, timeline) for a plain simulate run. A ``[plugins.fault_injection]``
    section in the user's configuration registers the fault-injection plugin with it; a
    timeline (wall clock) is recorded only when ``timed`` (for the HTML report)."""
    from .stack import build_service

    settings = _simulation_settings(settings, seed, gateways, latency_ms, None)
    plugins: dict[str, Any] = {}
    if "fault_injection" in settings.plugin_config.names():
        from aegispay.plugins.fault_injection import FaultInjectionPlugin

        plugins["fault_injection"] = FaultInjectionPlugin
    timeline = None
    if timed:
        import time

        from .scenarios import Timeline

        timeline = plugins["timeline"] = Timeline(time.monotonic)
    service = build_service(settings, plugins=plugins)
    ledger = getattr(service.host.plugin("simulated_gateways"), "ledger", None)
    return service, ledger, timeline


def _simulation_settings(
    settings: Settings,
    seed: int,
    gateways: str | None,
    latency_ms: float | None,
    store_url: str | None,
) -> Settings:
    """The user's settings plus what the simulate options and the demo workload need."""
    import attrs

    from .simulation_defaults import simulation_plugin_sections

    config = settings.plugin_config
    sections: dict[str, Mapping[str, Any]] = {name: config.section(name) for name in config.names()}
    sections.update(
        simulation_plugin_sections(sections, seed=seed, gateways=gateways, latency_ms=latency_ms)
    )
    changes: dict[str, Any] = {"plugin_config": PluginConfig(sections)}
    if store_url is not None:
        changes["store"] = store_url
    return attrs.evolve(settings, **changes)


def _with_progress(total: int, quiet: bool, run: Callable[[Callable[[int], None]], Any]) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=False,
    ) as progress:
        task = progress.add_task("payments", total=total)
        pending = 0
        step = max(1, total // 200)  # redraw at most ~200 times: rich is not free

        def advance(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= step:
                progress.advance(task, pending)
                pending = 0

        result = run(advance)
        progress.advance(task, pending)
        return result


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="AegisPay simulation", show_header=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    latency = report["latency_ms"]
    overhead = report["overhead_ms"]
    resends = report["idempotent_resends"]
    rows = [
        ("payments", f"{report['payments']:,}"),
        ("concurrency", str(report["concurrency"])),
        (
            "elapsed (answered + events published)",
            f"{report['answered_s']:.2f} + {report['publish_backlog_s']:.2f} s",
        ),
        ("throughput (end to end)", f"{report['throughput_per_s']:,.0f} payments/s"),
        (
            "this process's CPU",
            f"{report['cpu_s']:.2f} s ({report['cpu_us_per_payment']:,.0f} us per payment)",
        ),
        ("latency p50 / p95 / p99", f"{latency['p50']} / {latency['p95']} / {latency['p99']} ms"),
        ("orchestration overhead p95", f"{overhead['p95']} ms"),
        ("refunds", f"{report['refunds']:,}"),
        (
            "idempotent re-sends (same payment)",
            f"{resends - report['resend_mismatches']:,} / {resends:,}",
        ),
        ("events published", f"{report['events_published']:,}"),
        ("duplicate charges", str(report.get("duplicate_charges", "n/a"))),
        ("charges not recorded", str(report.get("unrecorded_charges", "n/a"))),
        (
            "UNKNOWN outcomes / status lookups",
            f"{report.get('unknown_outcomes', 0)} / {report.get('status_lookups', 0)}",
        ),
        ("attempts left unsettled", str(report["unsettled_attempts"])),
        ("replay mismatches", str(report["replay_mismatches"])),
    ]
    for name, value in rows:
        summary.add_row(name, value)
    console.print(summary)
    outcomes = Table(title="final states")
    outcomes.add_column("state")
    outcomes.add_column("payments", justify="right")
    for state, count in report["outcomes"].items():
        outcomes.add_row(state, f"{count:,}")
    console.print(outcomes)
    gateways = Table(title="by gateway")
    gateways.add_column("gateway")
    gateways.add_column("first choice", justify="right")
    for name in ("succeeded", "declined", "not_sent", "unknown", "requires_action"):
        gateways.add_column(name, justify="right")
    for gateway, data in report["by_gateway"].items():
        attempts = data["attempts"]
        gateways.add_row(
            gateway,
            f"{data['first_choice']:,}",
            *(
                f"{attempts.get(k, 0):,}"
                for k in ("succeeded", "declined", "not_sent", "unknown", "requires_action")
            ),
        )
    console.print(gateways)
    if report["errors"]:
        console.print(f"[red]errors:[/red] {report['errors']}")
    if "timeline" in report:
        _print_timeline(console, report)


_CIRCUIT_MARKS = {
    "closed": "",
    "half_open": " [yellow]half-open[/yellow]",
    "open": " [red]OPEN[/red]",
}


def _print_timeline(console: Any, report: dict[str, Any]) -> None:
    """The run over time: per bucket, each gateway's traffic share, p95 latency and circuit
    state, and the payments' success rate; then the breaker transitions."""
    from rich.table import Table

    timeline = report["timeline"]
    scenario = report.get("scenario")
    title = "over time"
    if scenario is not None:
        title = f"scenario {scenario['name']}: {scenario['description']}"
        console.print(f"[bold]faults injected:[/bold] {scenario['faults_injected'] or 'none'}")
    rate = timeline["success_rate"]
    table = Table(
        title=title,
        caption=f"{timeline['clock']} clock; success rate overall "
        f"{'n/a' if rate is None else f'{rate:.2%}'}",
    )
    table.add_column("t (s)", justify="right")
    table.add_column("payments", justify="right")
    table.add_column("success", justify="right")
    names = list(timeline["gateways"])
    for name in names:
        table.add_column(f"{name}\nshare / p95 ms", justify="right")
    for i, bucket in enumerate(timeline["buckets"]):
        success = bucket["success_rate"]
        cells = [
            f"{bucket['t_s']:g}",
            str(bucket["payments"]),
            "-" if success is None else f"{success:.1%}",
        ]
        for name in names:
            data = timeline["gateways"][name]
            p95 = data["latency_p95_ms"][i]
            cells.append(
                f"{data['share'][i]:.0%} / {'-' if p95 is None else f'{p95:g}'}"
                f"{_CIRCUIT_MARKS[data['circuit'][i]]}"
            )
        table.add_row(*cells)
    console.print(table)
    transitions = timeline["transitions"]
    if transitions:
        changes = Table(title="circuit breaker transitions")
        for column in ("t (s)", "gateway", "from", "to", "reason"):
            changes.add_column(column)
        for change in transitions:
            changes.add_row(
                f"{change['at_s']:.2f}",
                change["gateway"],
                change["from"],
                change["to"],
                change["reason"],
            )
        console.print(changes)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of plugin objects.")
@click.option("--hooks", "list_hooks", is_flag=True, help="List every hook specification instead.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool, list_hooks: bool) -> None:
    """Every loaded plugin: distribution, version, hooks; failed plugins with their error."""
    from . import hookspecs
    from .pluginmanager import make_plugin_host

    if list_hooks:
        names = hookspecs.hook_names()
        if as_json:
            click.echo(json.dumps(names, indent=2))
        else:
            for name in names:
                doc = (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
                click.echo(f"{name}: {doc}")
        return
    settings = _settings(ctx)
    host = make_plugin_host(
        config=settings.plugin_config, allow=settings.plugins.allow, deny=settings.plugins.deny
    )
    infos = host.infos()
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="AegisPay plugins")
    for column in ("name", "distribution", "version", "hooks", "error"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            info.name,
            info.distribution or "",
            info.version or "",
            "\n".join(info.hooks),
            f"[red]{info.error}[/red]" if info.error else "",
        )
    Console().print(table)


@cli.command()
@click.option("--payments", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--latency-payments", type=click.IntRange(min=1), default=20_000, show_default=True)
@click.option(
    "--memory-payments",
    type=click.IntRange(min=0),
    default=200_000,
    show_default=True,
    help="Payments in the memory-profile run (0 skips it).",
)
@click.option(
    "--store",
    "store_url",
    default=None,
    help="Benchmark this SQL store (sqlite:///file.db, postgresql://...) instead: the full "
    "path beside a raw-driver baseline of the same writes (--payments, default 10,000 here).",
)
@click.pass_context
def bench(
    ctx: click.Context,
    payments: int,
    latency_payments: int,
    memory_payments: int,
    store_url: str | None,
) -> None:
    """Print throughput, latency, overhead and memory figures beside a same-run baseline."""
    if store_url is not None:
        from .benchmark_store import store_benchmark

        source = ctx.get_parameter_source("payments")
        count = payments if source is not click.core.ParameterSource.DEFAULT else 10_000
        click.echo(json.dumps(store_benchmark(store_url, count), indent=2))
        return
    from .benchmark import run_benchmarks

    click.echo(json.dumps(run_benchmarks(payments, latency_payments, memory_payments), indent=2))


@cli.command()
@click.option("--mermaid", is_flag=True, help="Print a Mermaid state diagram instead.")
def states(mermaid: bool) -> None:
    """The payment state machine's transition table (the single source of truth)."""
    from .states import transition_diagram_mermaid, transition_table_markdown

    click.echo(transition_diagram_mermaid() if mermaid else transition_table_markdown())


def _config_path(argv: list[str]) -> str | None:
    """``--config PATH`` from the command line, before click parses it (plugin commands must
    be added first, and plugins must see the same settings as the command)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


@cli.group()
def db() -> None:
    """Database schema commands for the SQL stores (SQLite, PostgreSQL)."""


@db.command()
@click.option("--store", "store_url", default=None, help="Store URL (default: from settings).")
@click.pass_context
def upgrade(ctx: click.Context, store_url: str | None) -> None:
    """Create or upgrade the store's database to this AegisPay's schema (idempotent)."""
    from .stack import open_store
    from .urls import safe_url

    url = store_url or _settings(ctx).store
    store = open_store(url)
    migrate = getattr(store, "upgrade_schema", None)
    if migrate is None:
        click.echo(f"{safe_url(url)}: nothing to create (not a SQL store)")
        return

    async def run() -> None:
        try:
            await migrate()
        finally:
            await store.close()

    anyio.run(run)
    click.echo(f"{safe_url(url)}: schema up to date")


@db.command()
@click.option("--store", "store_url", default=None, help="Store URL (default: from settings).")
@click.option(
    "--retention-s",
    type=click.FloatRange(min=0),
    default=None,
    help="Delete outbox messages published longer ago than this; 0 keeps them "
    "(default: engine.outbox_retention_s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def prune(
    ctx: click.Context, store_url: str | None, retention_s: float | None, as_json: bool
) -> None:
    """Delete published outbox messages past their retention and expired idempotency records.

    What a running service's janitor does each pass, all at once: pending and parked
    messages, keys still in flight, payments and their history are never deleted."""
    from .janitor import prune as prune_store
    from .janitor import published_cutoff
    from .outbox import utc_now
    from .stack import open_store
    from .store.base import Pruned
    from .urls import safe_url

    settings = _settings(ctx)
    url = store_url or settings.store
    keep = settings.engine.outbox_retention_s if retention_s is None else retention_s
    now = utc_now()
    published_before = published_cutoff(now, keep)

    async def run() -> Pruned:
        store = open_store(url)
        try:
            return await prune_store(store, now, keep)
        finally:
            await store.close()

    pruned = anyio.run(run)
    if as_json:
        report = {
            "store": safe_url(url),
            "published_before": published_before.isoformat() if published_before else None,
            "expired_before": now.isoformat(),
            "messages": pruned.messages,
            "keys": pruned.keys,
        }
        click.echo(json.dumps(report, sort_keys=True))
        return
    kept = f"published before {published_before:%Y-%m-%d %H:%M:%S} UTC" if published_before else ""
    click.echo(
        f"{safe_url(url)}: deleted {pruned.messages} published outbox message(s) {kept}".rstrip()
        + f" and {pruned.keys} expired idempotency record(s)"
    )


# -- operating on a store: payments, replay, reconcile, outbox ---------------------------------

_STORE_HELP = "Store URL (default: from settings)."


def _service_for(ctx: click.Context, store_url: str | None) -> Any:
    """A service on ``store_url`` (or the configured store) with the configured plugins, so
    plugins' event types and gateways are known. Not entered: no relay runs unless asked."""
    from .stack import build_service

    settings = _settings(ctx)
    if store_url is not None:
        settings = attrs.evolve(settings, store=store_url)
    return build_service(settings)


def _run_with(ctx: click.Context, store_url: str | None, body: Callable[[Any], Any]) -> Any:
    """Build the service, run ``await body(service)`` and close the store and locks."""

    async def run() -> Any:
        service = _service_for(ctx, store_url)
        try:
            return await body(service)
        finally:
            await service.aclose()

    return anyio.run(run)


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _payment_dict(payment: Any) -> dict[str, Any]:
    pending = payment.pending
    return {
        "id": payment.id,
        "merchant_id": payment.merchant_id,
        "state": payment.state.value,
        "version": payment.version,
        "amount": str(payment.amount),
        "authorized": _money(payment.authorized),
        "captured": _money(payment.captured),
        "refunded": _money(payment.refunded),
        "capture_mode": payment.capture_mode,
        "created_at": payment.created_at.isoformat(),
        "updated_at": payment.updated_at.isoformat(),
        "failure_code": payment.failure_code,
        "failure_message": payment.failure_message,
        "attempts": [
            {
                "number": a.number,
                "gateway": a.gateway,
                "outcome": a.outcome.value if a.outcome is not None else None,
                "idempotency_key": a.idempotency_key,
                "gateway_reference": a.gateway_reference,
                "decline_code": a.decline_code,
            }
            for a in payment.attempts
        ],
        "refunds": [
            {
                "number": r.number,
                "amount": str(r.amount),
                "succeeded": r.succeeded,
                "idempotency_key": r.idempotency_key,
                "reason": r.reason,
            }
            for r in payment.refunds
        ],
        "pending": None
        if pending is None
        else {
            "kind": pending.kind,
            "idempotency_key": pending.idempotency_key,
            "amount": _money(pending.amount),
        },
    }


@cli.group()
def payments() -> None:
    """Look at stored payments."""


@payments.command("show")
@click.argument("payment_id")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def payments_show(
    ctx: click.Context, payment_id: str, store_url: str | None, as_json: bool
) -> None:
    """A payment's projection and its event history."""

    async def body(service: Any) -> tuple[Any, list[Any], Any]:
        payment = await service.get_payment(payment_id)
        history = await service.store.events(payment_id)
        return payment, history, service.event_types

    payment, history, event_types = _run_with(ctx, store_url, body)
    data = _payment_dict(payment)
    if as_json:
        data["events"] = [event_types.to_dict(e) for e in history]
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        return
    for key in ("id", "merchant_id", "state", "version", "amount", "authorized", "captured"):
        click.echo(f"{key}: {data[key]}")
    click.echo(f"refunded: {data['refunded']}")
    if data["failure_code"]:
        click.echo(f"failure: {data['failure_code']} {data['failure_message'] or ''}".rstrip())
    click.echo(f"created_at: {data['created_at']}  updated_at: {data['updated_at']}")
    click.echo("attempts:")
    for a in data["attempts"]:
        click.echo(
            f"  #{a['number']} {a['gateway']} outcome={a['outcome'] or 'in flight'} "
            f"key={a['idempotency_key']}"
        )
    if data["refunds"]:
        click.echo("refunds:")
        for r in data["refunds"]:
            status = "succeeded" if r["succeeded"] else "failed"
            click.echo(f"  #{r['number']} {r['amount']} {status} key={r['idempotency_key']}")
    pending = data["pending"]
    if pending is None:
        click.echo("pending: none")
    else:
        amount = f" {pending['amount']}" if pending["amount"] else ""
        click.echo(f"pending: {pending['kind']}{amount} key={pending['idempotency_key']}")
    click.echo(f"events ({len(history)}):")
    for e in history:
        click.echo(f"  v{e.version} {e.type_name} {e.occurred_at.isoformat()}")


def _differences(stored: Any, rebuilt: Any) -> list[str]:
    from .payment import Payment

    if stored is None:
        return ["no stored projection"]
    if rebuilt is None:
        return ["no events"]
    return [
        field.name
        for field in attrs.fields(Payment)
        if getattr(stored, field.name) != getattr(rebuilt, field.name)
    ]


@cli.command("replay")
@click.argument("payment_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every stored payment.")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    payment_id: str | None,
    replay_all: bool,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Rebuild projections from their events and compare them with the stored ones; exit 1
    on any mismatch."""
    from .errors import PaymentNotFound
    from .payment import replay

    if replay_all == (payment_id is not None):
        raise click.UsageError("give a payment ID or --all (not both)")

    async def body(service: Any) -> tuple[int, dict[str, list[str]]]:
        store = service.store
        ids: list[str] = await store.payment_ids() if replay_all else [payment_id or ""]
        mismatches: dict[str, list[str]] = {}
        for pid in ids:
            stored = await store.load(pid)
            history = await store.events(pid)
            if stored is None and not history:
                raise PaymentNotFound(pid)
            differences = _differences(stored, replay(history) if history else None)
            if differences:
                mismatches[pid] = differences
        return len(ids), mismatches

    checked, mismatches = _run_with(ctx, store_url, body)
    if as_json:
        report = {"checked": checked, "mismatches": mismatches}
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        for pid, fields in mismatches.items():
            click.echo(f"MISMATCH {pid}: {', '.join(fields)}")
        if mismatches:
            click.echo(f"{len(mismatches)} of {checked} payments do not match their events")
        else:
            click.echo(f"{checked} payments replayed: no mismatches")
    if mismatches:
        sys.exit(1)


@cli.command()
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Only payments unchanged for this many seconds.",
)
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def reconcile(ctx: click.Context, older_than: float, store_url: str | None, as_json: bool) -> None:
    """Settle payments stuck PROCESSING / UNKNOWN or with a pending operation: ask their
    gateway for the status with the same idempotency key. Then finish the keyed payment
    requests a crash left in flight: process a payment left INITIATED, complete the key of
    one now settled (what the janitor of a running service does periodically)."""

    async def body(service: Any) -> tuple[Any, Any]:
        async with service:  # startup hooks run, and the events it commits are published
            payments = await service.reconcile(older_than)
            keys = await service.resume_idempotency_keys(older_than)
            return payments, keys

    payments, keys = _run_with(ctx, store_url, body)
    report, resumed = payments.to_dict(), keys.to_dict()
    if as_json:
        click.echo(json.dumps(report | {"idempotency": resumed}, indent=2, sort_keys=True))
        return

    def counts(values: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "none"

    click.echo(f"examined: {report['examined']}")
    click.echo(f"settled: {report['settled_total']} ({counts(report['settled'])})")
    click.echo(f"still open: {report['still_open']}")
    for pid in report["still_open_ids"]:
        click.echo(f"  {pid}")
    click.echo(f"errors: {counts(report['errors'])}")
    click.echo(
        f"in-flight idempotency keys: {resumed['examined']} examined, {resumed['resumed']} "
        f"processed, {resumed['completed_total']} completed ({counts(resumed['completed'])}), "
        f"{resumed['still_in_flight']} still in flight"
    )
    for pid in resumed["still_in_flight_ids"]:
        click.echo(f"  {pid}")
    if resumed["errors"]:
        click.echo(f"idempotency key errors: {counts(resumed['errors'])}")


@cli.group()
def outbox() -> None:
    """The transactional outbox: what waits to be published, what was parked."""


def _parked_dict(message: Any, error: str) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "payment_id": message.payment_id,
        "sequence": message.sequence,
        "type": message.event.type_name,
        "attempts": message.attempts,
        "error": error,
    }


@outbox.command("status")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def outbox_status(ctx: click.Context, store_url: str | None, as_json: bool) -> None:
    """Messages waiting to be published (deliverable now or backing off after a failed
    delivery), payments being delivered, and parked messages with their last error."""
    from .outbox import utc_now

    async def body(service: Any) -> tuple[Any, list[Any]]:
        store = service.store
        return await store.outbox_counts(utc_now()), await store.outbox_parked()

    counts, parked = _run_with(ctx, store_url, body)
    next_retry = counts.next_retry_at.isoformat() if counts.next_retry_at else None
    if as_json:
        report = {
            "pending": counts.pending,
            "ready": counts.ready,
            "backing_off": counts.backing_off,
            "backing_off_payments": counts.backing_off_payments,
            "leased_payments": counts.leased_payments,
            "next_retry_at": next_retry,
            "parked": [_parked_dict(m, error) for m, error in parked],
        }
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(f"pending: {counts.pending}")
    click.echo(f"  ready: {counts.ready}")
    click.echo(
        f"  backing off: {counts.backing_off} "
        f"({counts.backing_off_payments} payment(s); next retry {next_retry or '-'})"
    )
    click.echo(f"being delivered: {counts.leased_payments} payment(s)")
    click.echo(f"parked: {len(parked)}")
    for message, error in parked:
        click.echo(
            f"  {message.message_id} {message.payment_id} v{message.sequence} "
            f"{message.event.type_name} attempts={message.attempts}: {error}"
        )


@outbox.command("requeue")
@click.argument("message_ids", nargs=-1)
@click.option("--all", "requeue_all", is_flag=True, help="Requeue every parked message.")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.pass_context
def outbox_requeue(
    ctx: click.Context, message_ids: tuple[str, ...], requeue_all: bool, store_url: str | None
) -> None:
    """Unpark MESSAGE_ID... (or --all): they are delivered again, with a fresh attempt count,
    ahead of their payment's later pending messages. A running relay picks them up by itself
    (a relay in another process at its next poll)."""
    if requeue_all == bool(message_ids):
        raise click.UsageError("give MESSAGE_ID... or --all (not both)")

    async def body(service: Any) -> list[str]:
        requeued: list[str] = await service.store.outbox_requeue(
            None if requeue_all else list(message_ids)
        )
        return requeued

    requeued = _run_with(ctx, store_url, body)
    for message_id in requeued:
        click.echo(f"requeued {message_id}")
    missing = [m for m in message_ids if m not in set(requeued)]
    for message_id in missing:
        click.echo(f"not parked: {message_id}", err=True)
    click.echo(f"requeued: {len(requeued)}")
    if missing:
        ctx.exit(1)


async def _until_stopped() -> None:
    """Return on SIGINT or SIGTERM (then the relay stops cleanly)."""
    import signal

    try:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return
    except NotImplementedError:  # no signal handling on this platform: Ctrl-C interrupts
        await anyio.sleep_forever()


@outbox.command("relay")
@click.option("--store", "store_url", default=None, help=_STORE_HELP)
@click.option("--once", is_flag=True, help="Publish what is deliverable now, then exit.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks for messages committed by other processes.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most messages one pass claims (default 1000); smaller spreads a backlog over relays.",
)
@click.pass_context
def outbox_relay(
    ctx: click.Context, store_url: str | None, once: bool, interval: float, batch_size: int | None
) -> None:
    """Publish committed outbox messages to the sinks and event listeners. Any number of
    relays may run on one database: they share the payments, each payment's messages in
    order; payments whose delivery fails back off without holding up the others."""

    async def body(service: Any) -> int:
        relay = service.relay
        relay.poll_interval = interval
        if batch_size is not None:
            relay.settings = attrs.evolve(relay.settings, batch_size=batch_size)
        async with service:  # runs the relay (and the plugins' startup hooks)
            if once:
                await relay.drain()
            else:
                await _until_stopped()
        # Leaving the service stopped the relay and drained: no lease is left behind.
        return int(relay.published)

    try:
        published = _run_with(ctx, store_url, body)
    except KeyboardInterrupt:
        click.echo("relay stopped", err=True)
        return
    if not once:
        click.echo("relay stopped", err=True)
    click.echo(f"published: {published}")


cli.add_command(__import__("aegispay.cli_gateways", fromlist=["gateways"]).gateways)


def _add_plugin_commands(argv: list[str]) -> None:
    """Let installed plugins add sub-commands (``aegispay_register_commands``), honouring the
    configuration and the allow / deny lists. A broken plugin or configuration leaves the
    built-in commands working; the command itself then reports the configuration error."""
    from .pluginmanager import make_plugin_host

    try:
        settings = load_settings(_config_path(argv))
        host = make_plugin_host(
            config=settings.plugin_config,
            builtins=False,
            allow=settings.plugins.allow,
            deny=settings.plugins.deny,
        )
    except AegisPayError:
        return
    for impl in reversed(host.pm.hook.aegispay_register_commands.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            continue
        try:
            impl.function(cli)
        except Exception as error:  # one plugin's commands must not break the others
            logging.getLogger("aegispay.cli").warning(
                "plugin %r: aegispay_register_commands failed: %s", impl.plugin_name, error
            )


def main() -> None:
    _add_plugin_commands(sys.argv[1:])
    cli(prog_name="aegispay")
