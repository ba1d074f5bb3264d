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
    "--store", "store_url", default=None, help="Store URL (default: from settings; memory://)."
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
    as_json: bool,
) -> None:
    """Run N payments through the whole pipeline with simulated gateways, then report."""
    from .simulation import SimulationOptions, run_simulation
    from .stack import build_service

    settings = _simulation_settings(_settings(ctx), seed, gateways, latency_ms, store_url)
    if lock_url is not None:
        settings = attrs.evolve(settings, lock=lock_url)
    service = build_service(settings)
    sim_plugin = service.host.plugin("simulated_gateways")
    ledger = getattr(sim_plugin, "ledger", None)
    options = SimulationOptions(payments, concurrency, seed, refund_share)
    _tune_gc()
    report = _with_progress(
        payments,
        as_json,
        lambda advance: anyio.run(run_simulation, service, options, ledger, advance),
    )
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        _print_report(report)
    if (
        report.get("duplicate_charges")
        or report["replay_mismatches"]
        or report.get("unrecorded_charges")
    ):
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
        ("elapsed", f"{report['elapsed_s']:.2f} s"),
        ("throughput", f"{report['throughput_per_s']:,.0f} payments/s"),
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
def bench(payments: int, latency_payments: int, memory_payments: int) -> None:
    """Print throughput, latency, overhead and memory figures beside a same-run baseline."""
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
