"""The plugin system: entry points from really installed distributions, broken plugins, allow /
deny lists, built-ins running last, hook registration rules, hook documentation, the
``aegispay plugins --json`` command, and the ``aegispay.testing`` pytest plugin."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import aegispay
import attrs
import pytest
from aegispay import (
    FraudVerdict,
    HookContext,
    Money,
    Operation,
    Outcome,
    Payment,
    PaymentRequest,
    PaymentState,
    RouteDecision,
    build_service,
    hookimpl,
    hookspecs,
    load_settings,
    make_plugin_host,
)
from aegispay.errors import PluginError
from aegispay.events import Event
from aegispay.observe import GatewayCall, OperationRecord
from aegispay.pluginmanager import PluginHost, PluginInfo
from aegispay.settings import PluginConfig
from aegispay.store.memory import MemoryStore
from aegispay.testing import GatewaysPlugin, ScriptedGateway

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = Path(__file__).resolve().parent / "example_plugin"
ARCHITECTURE_DOC = ROOT / "docs" / "architecture.md"
CORE_VERSION = dist_version("aegispay")

# Built-in plugins, in registration order, with the hooks each implements (sorted).
BUILTIN_HOOKS: dict[str, tuple[str, ...]] = {
    "simulated_gateways": ("aegispay_register_gateways",),
    "validation": ("aegispay_validate_payment",),
    "fraud_rules": ("aegispay_check_fraud",),
    "routing": ("aegispay_select_gateway", "aegispay_startup"),
    "priority_routing": ("aegispay_select_gateway",),
    "event_log": ("aegispay_on_event",),
    "log_sink": ("aegispay_register_event_sinks",),
    "redis_streams": ("aegispay_register_event_sinks", "aegispay_startup"),
    "webhooks": ("aegispay_register_event_sinks", "aegispay_startup"),
}
SINKS = ["log_sink", "redis_streams", "webhooks"]  # the built-in sinks, registered last


def usd(amount: str = "10.00", **fields: Any) -> PaymentRequest:
    return PaymentRequest(Money.of(amount, "USD"), **fields)


# This repository's gateway packages (aegispay-*/), which a developer's environment may have
# installed beside the core (nox's core test run has them uninstalled). The tests here are
# about the plugins they install themselves, so those are left out of the comparisons.
SIBLING_DISTRIBUTIONS = frozenset({"aegispay-stripe", "aegispay-razorpay", "aegispay-paypal"})


def names(host: PluginHost) -> list[str]:
    return [info.name for info in host.infos() if info.distribution not in SIBLING_DISTRIBUTIONS]


def impl_owners(host: PluginHost, hook: str) -> list[str]:
    return [impl.plugin_name for impl in getattr(host.pm.hook, hook).get_hookimpls()]


# --- putting plugins on sys.path, and taking them off again ---------------------------------


@pytest.fixture
def on_sys_path() -> Iterator[Callable[[Path], None]]:
    """``on_sys_path(dir)`` prepends ``dir`` to sys.path for this test only: sys.path is restored
    afterwards, modules imported from ``dir`` are forgotten, and import caches are invalidated
    both ways (importlib.metadata finds distributions through the same path finders)."""
    saved = list(sys.path)
    added: list[Path] = []

    def add(path: Path) -> None:
        sys.path.insert(0, str(path))
        added.append(path.resolve())
        importlib.invalidate_caches()

    yield add

    sys.path[:] = saved
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(root) for root in added):
            del sys.modules[name]
    importlib.invalidate_caches()


def write_dist(
    site: Path,
    dist: str,
    version: str,
    entry_points: Mapping[str, str],
    modules: Mapping[str, str],
) -> None:
    """A minimal installed distribution in ``site``: ``<dist>-<version>.dist-info`` with METADATA
    and ``entry_points.txt`` (group ``aegispay``), plus the given top-level modules."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[aegispay]\n{lines}", encoding="utf-8")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


GOOD_MODULE = """
    from aegispay import hookimpl

    @hookimpl
    def aegispay_validate_payment(request, context):
        return None
"""


# --- the example plugin, really built and installed with pip -------------------------------


@attrs.frozen
class PipInstall:
    site: Path
    command: tuple[str, ...]
    returncode: int
    output: str

    def require(self) -> Path:
        """The install directory; fails the calling test (never skips it) if pip failed."""
        if self.returncode != 0:
            pytest.fail(
                f"installing {EXAMPLE_PLUGIN} failed (exit {self.returncode}):\n"
                f"$ {' '.join(self.command)}\n{self.output}",
                pytrace=False,
            )
        return self.site


@pytest.fixture(scope="session")
def example_install(tmp_path_factory: pytest.TempPathFactory) -> PipInstall:
    """Build and install tests/example_plugin into a private directory, once per session.

    The source is copied first so setuptools' in-tree build products (build/, *.egg-info) never
    land in the repository."""
    source = tmp_path_factory.mktemp("example-src") / "example_plugin"
    shutil.copytree(
        EXAMPLE_PLUGIN,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    site = tmp_path_factory.mktemp("example-site")
    command = (
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(site),
        str(source),
    )
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    return PipInstall(site, command, proc.returncode, proc.stdout + proc.stderr)


def test_example_plugin_installs_as_a_real_distribution(example_install: PipInstall) -> None:
    site = example_install.require()
    infos = list(site.glob("*.dist-info"))
    assert len(infos) == 1, infos
    entry_points = (infos[0] / "entry_points.txt").read_text(encoding="utf-8")
    assert "[aegispay]" in entry_points
    assert "example_fraud = aegispay_example_fraud" in entry_points
    assert (site / "aegispay_example_fraud" / "__init__.py").is_file()


def test_installed_entry_point_is_listed(
    example_install: PipInstall, on_sys_path: Callable[[Path], None]
) -> None:
    on_sys_path(example_install.require())
    host = make_plugin_host()

    assert host.failures == []
    info = {i.name: i for i in host.infos()}["example_fraud"]
    assert info == PluginInfo(
        "example_fraud", "aegispay-example-fraud", "0.1.0", ("aegispay_check_fraud",), None
    )
    assert info.to_dict() == {
        "name": "example_fraud",
        "distribution": "aegispay-example-fraud",
        "version": "0.1.0",
        "hooks": ["aegispay_check_fraud"],
        "error": None,
    }
    # Built-ins first, then entry points (then direct plugins).
    assert names(host) == [*BUILTIN_HOOKS, "example_fraud"]
    # The registered object is the installed module, not a copy from the source tree.
    module = host.plugin("example_fraud")
    assert Path(module.__file__).resolve().is_relative_to(example_install.site.resolve())


def test_installed_plugin_is_gone_when_uninstalled(
    example_install: PipInstall, on_sys_path: Callable[[Path], None]
) -> None:
    """The on_sys_path fixture really restores: without the directory nothing is loaded (this
    also guards the other tests in this file against a leaking sys.path)."""
    example_install.require()
    assert "example_fraud" not in names(make_plugin_host())


@pytest.mark.anyio
async def test_installed_plugin_denies_blocked_payments(
    example_install: PipInstall, on_sys_path: Callable[[Path], None]
) -> None:
    on_sys_path(example_install.require())
    gateway = ScriptedGateway("acme")
    host = make_plugin_host(
        allow=["validation", "priority_routing", "example_fraud"],
        plugins={"acme_gateways": GatewaysPlugin([gateway])},
    )
    assert names(host) == ["validation", "priority_routing", "example_fraud", "acme_gateways"]
    service = build_service(host=host, store=MemoryStore())
    async with service:
        blocked = await service.pay(usd(metadata={"block": "yes"}))
        assert gateway.calls == []
        allowed = await service.pay(usd(metadata={"block": "no"}))
        plain = await service.pay(usd())

    assert blocked.state is PaymentState.FAILED
    assert blocked.failure_code == "fraud_denied"
    assert blocked.failure_message is not None and "block" in blocked.failure_message
    assert blocked.attempts == ()
    assert gateway.charge_count(blocked.id) == 0
    for payment in (allowed, plain):
        assert payment.state is PaymentState.COMPLETED
        assert gateway.charge_count(payment.id) == 1
    assert {call.payment_id for call in gateway.calls} == {allowed.id, plain.id}


def test_test_service_stays_hermetic_with_plugin_installed(
    example_install: PipInstall,
    on_sys_path: Callable[[Path], None],
    aegispay_service: Callable[..., aegispay.PaymentService],
) -> None:
    on_sys_path(example_install.require())
    assert "example_fraud" in names(make_plugin_host())  # installed and visible...
    service = aegispay_service()
    assert "example_fraud" not in names(service.host)  # ...but the fixture loads no entry point


# --- broken third-party plugins ---------------------------------------------------------------

BROKEN_PLUGINS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # case: (entry point target, module source, substrings the error must contain)
    "import_error": (
        "acme_broken_mod",
        """
        raise ImportError("acme-sdk is not installed")
        """,
        ("ImportError", "acme-sdk is not installed"),
    ),
    "misspelt_hook": (
        "acme_broken_mod",
        """
        from aegispay import FraudVerdict, hookimpl

        @hookimpl
        def aegispay_chek_fraud(payment, context):
            return FraudVerdict.deny(100, "everything is fraud")
        """,
        ("aegispay_chek_fraud", "do not exist"),
    ),
    "unmarked_misspelt_hook": (
        "acme_broken_mod",
        """
        def aegispay_chek_fraud(payment, context):
            return None
        """,
        ("aegispay_chek_fraud",),
    ),
    "constructor_raises": (
        "acme_broken_mod:AcmePlugin",
        """
        from aegispay import hookimpl

        class AcmePlugin:
            def __init__(self, config):
                raise RuntimeError("acme: api_key is not configured")

            @hookimpl
            def aegispay_check_fraud(self, payment, context):
                return None
        """,
        ("api_key is not configured",),
    ),
    "wrong_hook_arguments": (
        "acme_broken_mod",
        """
        from aegispay import FraudVerdict, hookimpl

        @hookimpl
        def aegispay_check_fraud(payment, context):
            return FraudVerdict.deny(100, "half-registered plugin")

        @hookimpl
        def aegispay_validate_payment(req, ctx):
            return None
        """,
        ("aegispay_validate_payment",),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_PLUGINS))
def test_broken_plugin_is_reported_and_others_load(
    case: str, tmp_path: Path, on_sys_path: Callable[[Path], None]
) -> None:
    target, source, expected = BROKEN_PLUGINS[case]
    write_dist(tmp_path, "acme-broken", "1.0", {"acme_broken": target}, {"acme_broken_mod": source})
    # Loaded after the broken one (entry points load in name order).
    write_dist(tmp_path, "zz-good", "2.0", {"zz_good": "zz_good_mod"}, {"zz_good_mod": GOOD_MODULE})
    on_sys_path(tmp_path)

    host = make_plugin_host()  # must not raise

    assert len(host.failures) == 1
    failure = host.failures[0]
    assert failure.name == "acme_broken"
    assert failure.distribution == "acme-broken"
    assert failure.version == "1.0"
    assert failure.hooks == ()
    assert failure.error
    for text in expected:
        assert text in failure.error
    assert failure in host.infos()
    assert host.infos()[-1] == failure  # loaded plugins first, then the failures
    # Everything else loaded.
    assert names(host)[:-1] == [*BUILTIN_HOOKS, "zz_good"]
    assert {i.name: i for i in host.infos()}["zz_good"].error is None
    # Nothing of the broken plugin stays registered: no half-registered hooks.
    assert host.plugin("acme_broken") is None
    for hook in hookspecs.hook_names():
        assert "acme_broken" not in impl_owners(host, hook)
    host.pm.check_pending()


@pytest.mark.anyio
async def test_service_runs_despite_broken_plugin(
    tmp_path: Path, on_sys_path: Callable[[Path], None]
) -> None:
    _, source, _ = BROKEN_PLUGINS["wrong_hook_arguments"]
    write_dist(
        tmp_path,
        "acme-broken",
        "1.0",
        {"acme_broken": "acme_broken_mod"},
        {"acme_broken_mod": source},
    )
    on_sys_path(tmp_path)
    gateway = ScriptedGateway()
    service = build_service(plugins=[GatewaysPlugin([gateway])], store=MemoryStore())
    assert [f.name for f in service.host.failures] == ["acme_broken"]
    async with service:
        payment = await service.pay(usd())
    # The broken plugin's (valid) fraud hook must not have been left behind to deny payments.
    assert payment.state is PaymentState.COMPLETED
    assert gateway.charge_count(payment.id) == 1


# --- allow / deny -------------------------------------------------------------------------------


def test_deny_omits_builtin() -> None:
    host = make_plugin_host(deny=["fraud_rules"], entry_points=False)
    assert names(host) == [
        "simulated_gateways",
        "validation",
        "routing",
        "priority_routing",
        "event_log",
        *SINKS,
    ]
    assert impl_owners(host, "aegispay_check_fraud") == []


def test_deny_without_entry_point_argument_omits_builtin() -> None:
    host = make_plugin_host(deny=["fraud_rules"])
    assert "fraud_rules" not in names(host)
    assert "fraud_rules" not in impl_owners(host, "aegispay_check_fraud")


def test_allow_keeps_only_listed() -> None:
    host = make_plugin_host(allow=["validation", "priority_routing"], entry_points=False)
    assert names(host) == ["validation", "priority_routing"]
    assert impl_owners(host, "aegispay_register_gateways") == []


def test_empty_allow_list_keeps_nothing_but_direct_plugins() -> None:
    host = make_plugin_host(allow=[], plugins={"mine": GatewaysPlugin([])}, entry_points=False)
    assert names(host) == ["mine"]


def test_allow_and_deny_apply_to_entry_points(
    tmp_path: Path, on_sys_path: Callable[[Path], None]
) -> None:
    write_dist(tmp_path, "acme-a", "1.0", {"acme_a": "acme_a_mod"}, {"acme_a_mod": GOOD_MODULE})
    write_dist(tmp_path, "acme-b", "1.0", {"acme_b": "acme_b_mod"}, {"acme_b_mod": GOOD_MODULE})
    on_sys_path(tmp_path)

    assert names(make_plugin_host()) == [*BUILTIN_HOOKS, "acme_a", "acme_b"]
    assert names(make_plugin_host(deny=["acme_a"])) == [*BUILTIN_HOOKS, "acme_b"]
    assert names(make_plugin_host(allow=["acme_b", "validation"])) == ["validation", "acme_b"]
    # Direct plugins are always registered: the caller chose them explicitly.
    direct = make_plugin_host(allow=["acme_a"], deny=["mine"], plugins={"mine": GatewaysPlugin([])})
    assert names(direct) == ["acme_a", "mine"]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AEGISPAY_* variables and no aegispay.toml in the working directory."""
    for name in list(os.environ):
        if name.startswith("AEGISPAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "AEGISPAY_PLUGINS__DENY",
            "fraud_rules",
            [
                "simulated_gateways",
                "validation",
                "routing",
                "priority_routing",
                "event_log",
                *SINKS,
            ],
        ),
        (
            "AEGISPAY_PLUGINS__DENY",
            "fraud_rules, event_log, webhooks",
            [
                "simulated_gateways",
                "validation",
                "routing",
                "priority_routing",
                "log_sink",
                "redis_streams",
            ],
        ),
        (
            "AEGISPAY_PLUGINS__DENY",
            '["fraud_rules"]',
            [
                "simulated_gateways",
                "validation",
                "routing",
                "priority_routing",
                "event_log",
                *SINKS,
            ],
        ),
        (
            "AEGISPAY_PLUGINS__ALLOW",
            "validation,priority_routing",
            ["validation", "priority_routing"],
        ),
    ],
)
def test_env_allow_deny_through_settings_and_build_service(
    clean_env: pytest.MonkeyPatch,
    variable: str,
    value: str,
    expected: list[str],
) -> None:
    clean_env.setenv(variable, value)
    settings = load_settings()
    service = build_service(settings, entry_points=False, store=MemoryStore())
    assert names(service.host) == expected
    if "fraud_rules" not in expected:
        assert impl_owners(service.host, "aegispay_check_fraud") == []


def test_env_deny_from_real_environment_reaches_build_service(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("AEGISPAY_PLUGINS__DENY", "fraud_rules")
    settings = load_settings()
    assert settings.plugins.deny == ("fraud_rules",)
    assert "fraud_rules" not in names(build_service(settings, store=MemoryStore()).host)
    # And without the variable, it is back.
    clean_env.delenv("AEGISPAY_PLUGINS__DENY")
    assert "fraud_rules" in names(build_service(load_settings(), store=MemoryStore()).host)


# --- built-ins, ordering and direct registration ----------------------------------------------


def test_builtins_are_registered_with_their_distribution() -> None:
    host = make_plugin_host(entry_points=False)
    assert host.infos() == [
        PluginInfo(name, "aegispay", CORE_VERSION, hooks, None, builtin=True)
        for name, hooks in BUILTIN_HOOKS.items()
    ]
    assert host.failures == []


def test_every_builtin_hook_implementation_is_trylast() -> None:
    host = make_plugin_host(entry_points=False)
    seen = set()
    for hook in hookspecs.hook_names():
        for impl in getattr(host.pm.hook, hook).get_hookimpls():
            assert impl.plugin_name in BUILTIN_HOOKS
            assert impl.trylast, f"{impl.plugin_name}.{hook} is not trylast"
            seen.add((impl.plugin_name, hook))
    assert seen == {(name, hook) for name, hooks in BUILTIN_HOOKS.items() for hook in hooks}


class FixedRouter:
    def __init__(self, choice: str) -> None:
        self.choice = choice
        self.asked: list[Sequence[str]] = []

    @hookimpl
    def aegispay_select_gateway(
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        self.asked.append(list(candidates))
        return RouteDecision((self.choice,), "acme says so", "acme")


class AsyncFixedRouter(FixedRouter):
    @hookimpl
    async def aegispay_select_gateway(  # type: ignore[override]
        self, payment: Payment, candidates: Sequence[str], context: HookContext
    ) -> RouteDecision:
        self.asked.append(list(candidates))
        return RouteDecision((self.choice,), "acme says so", "acme")


@pytest.mark.anyio
async def test_builtin_priority_router_alone_picks_first_registered() -> None:
    """The control for the next test: without a third-party router, gateway "a" is used."""
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    service = build_service(
        plugins={"gateways": GatewaysPlugin([a, b])}, entry_points=False, store=MemoryStore()
    )
    async with service:
        payment = await service.pay(usd())
    assert payment.gateway == "a"
    assert a.charge_count(payment.id) == 1 and b.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize("router_class", [FixedRouter, AsyncFixedRouter])
async def test_third_party_router_wins_over_priority_routing(
    router_class: type[FixedRouter],
) -> None:
    a, b = ScriptedGateway("a"), ScriptedGateway("b")
    router = router_class("b")
    service = build_service(
        plugins={"gateways": GatewaysPlugin([a, b]), "acme_router": router},
        entry_points=False,
        store=MemoryStore(),
    )
    assert "priority_routing" in names(service.host)
    async with service:
        payment = await service.pay(usd())
    assert len(router.asked) == 1 and router.asked[0][:2] == ["a", "b"]
    assert payment.gateway == "b"
    assert b.charge_count(payment.id) == 1
    assert a.calls == []


class Recorder:
    """An object plugin implementing pipeline, lifecycle and event hooks."""

    def __init__(self) -> None:
        self.validated: list[Money] = []
        self.checked: list[str] = []
        self.calls: list[tuple[str, Operation]] = []
        self.results: list[Outcome] = []
        self.operations: list[str] = []
        self.events: list[str] = []

    @hookimpl
    def aegispay_validate_payment(self, request: PaymentRequest, context: HookContext) -> None:
        self.validated.append(request.amount)

    @hookimpl
    async def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> FraudVerdict:
        self.checked.append(payment.id)
        return FraudVerdict.allow(3, "looks fine", "recorder")

    @hookimpl
    def aegispay_before_gateway_call(self, call: GatewayCall) -> None:
        self.calls.append((call.gateway, call.operation))

    @hookimpl
    async def aegispay_after_gateway_call(
        self, call: GatewayCall, result: Any, elapsed_ms: float
    ) -> None:
        self.results.append(result.outcome)

    @hookimpl
    def aegispay_operation_finished(self, record: OperationRecord) -> None:
        self.operations.append(record.operation)

    @hookimpl
    def aegispay_on_event(self, event: Event) -> None:
        self.events.append(event.type_name)


@pytest.mark.anyio
async def test_direct_object_plugin_hooks_are_called() -> None:
    recorder = Recorder()
    gateway = ScriptedGateway("acme")
    service = build_service(
        plugins={"recorder": recorder, "gateways": GatewaysPlugin([gateway])},
        builtins=False,
        entry_points=False,
        store=MemoryStore(),
    )
    info = {i.name: i for i in service.host.infos()}["recorder"]
    assert info.hooks == (
        "aegispay_after_gateway_call",
        "aegispay_before_gateway_call",
        "aegispay_check_fraud",
        "aegispay_on_event",
        "aegispay_operation_finished",
        "aegispay_validate_payment",
    )
    assert info.distribution is None and not info.builtin
    async with service:
        payment = await service.pay(usd("12.34"))
    # The relay is drained when the service closes: every committed event has been delivered.
    assert payment.state is PaymentState.COMPLETED
    assert recorder.validated == [Money.of("12.34", "USD")]
    assert recorder.checked == [payment.id]
    assert recorder.calls == [("acme", Operation.AUTHORIZE)]
    assert recorder.results == [Outcome.SUCCEEDED]
    assert "create" in recorder.operations and "process" in recorder.operations
    assert recorder.events[0] == "PaymentInitiated"
    assert recorder.events[-1] == "PaymentCompleted"


def test_direct_plugin_in_list_is_named_after_its_class_and_registered_last() -> None:
    host = make_plugin_host(plugins=[Recorder()], entry_points=False)
    assert names(host) == [*BUILTIN_HOOKS, "Recorder"]


def test_class_plugin_is_constructed_with_its_config_section() -> None:
    class Configured:
        def __init__(self, config: Mapping[str, Any]) -> None:
            self.config = config

        @hookimpl
        def aegispay_validate_payment(self, request: PaymentRequest, context: HookContext) -> None:
            return None

    config = PluginConfig({"acme": {"api_key": "k", "mode": "test"}, "other": {"x": 1}})
    host = make_plugin_host(
        config=config, plugins={"acme": Configured}, builtins=False, entry_points=False
    )
    instance = host.plugin("acme")
    assert isinstance(instance, Configured)
    assert dict(instance.config) == {"api_key": "k", "mode": "test"}


class Misspelt:
    @hookimpl
    def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
        return None

    @hookimpl
    def aegispay_chek_fraud(self, payment: Payment, context: HookContext) -> None:
        return None


def test_direct_plugin_with_unknown_hook_raises_plugin_error() -> None:
    host = make_plugin_host(entry_points=False)
    with pytest.raises(PluginError) as caught:
        host.register(Misspelt(), "acme_typo")
    message = str(caught.value)
    assert "acme_typo" in message
    assert "aegispay_chek_fraud" in message
    # Left out completely; the host is still consistent.
    assert host.plugin("acme_typo") is None
    assert "acme_typo" not in names(host)
    assert "acme_typo" not in impl_owners(host, "aegispay_check_fraud")
    host.pm.check_pending()


def test_make_plugin_host_rejects_direct_plugin_with_unknown_hook() -> None:
    with pytest.raises(PluginError, match=r"acme_typo.*aegispay_chek_fraud"):
        make_plugin_host(plugins={"acme_typo": Misspelt()}, entry_points=False)


def test_registering_the_same_plugin_name_twice_raises() -> None:
    host = make_plugin_host(builtins=False, entry_points=False)
    host.register(GatewaysPlugin([]), "acme")
    with pytest.raises(PluginError, match="acme"):
        host.register(GatewaysPlugin([]), "acme")


def test_duplicate_gateway_names_name_both_plugins() -> None:
    with pytest.raises(PluginError) as caught:
        build_service(
            plugins={
                "acme_one": GatewaysPlugin([ScriptedGateway("acme")]),
                "acme_two": GatewaysPlugin([ScriptedGateway("acme")]),
            },
            builtins=False,
            entry_points=False,
        )
    message = str(caught.value)
    assert "acme_one" in message and "acme_two" in message
    assert "'acme'" in message


def test_gateway_clashing_with_builtin_names_both_plugins() -> None:
    with pytest.raises(PluginError) as caught:
        build_service(
            plugins={"acme_gateways": GatewaysPlugin([ScriptedGateway("sim-alpha")])},
            entry_points=False,
        )
    message = str(caught.value)
    assert "acme_gateways" in message and "simulated_gateways" in message
    assert "sim-alpha" in message


# --- unmarked implementations ---------------------------------------------------------------


@pytest.mark.anyio
async def test_unmarked_hook_function_in_plugin_module_is_registered(
    tmp_path: Path, on_sys_path: Callable[[Path], None]
) -> None:
    source = """
        from aegispay import FraudVerdict

        aegispay_note = "a constant with the prefix is not a hook"

        def aegispay_check_fraud(payment, context):  # no @hookimpl: still a hook
            if payment.amount.minor > 100_00:
                return FraudVerdict.deny(90, "over 100.00", "acme_unmarked")
            return None

        def helper():
            return 1
    """
    write_dist(
        tmp_path,
        "acme-unmarked",
        "0.3",
        {"acme_unmarked": "acme_unmarked_mod"},
        {"acme_unmarked_mod": source},
    )
    on_sys_path(tmp_path)
    gateway = ScriptedGateway()
    host = make_plugin_host(
        allow=["acme_unmarked", "priority_routing"], plugins=[GatewaysPlugin([gateway])]
    )
    assert host.failures == []
    info = {i.name: i for i in host.infos()}["acme_unmarked"]
    assert info == PluginInfo(
        "acme_unmarked", "acme-unmarked", "0.3", ("aegispay_check_fraud",), None
    )
    async with build_service(host=host, store=MemoryStore()) as service:
        denied = await service.pay(usd("100.01"))
        allowed = await service.pay(usd("100.00"))
    assert denied.state is PaymentState.FAILED and denied.failure_code == "fraud_denied"
    assert allowed.state is PaymentState.COMPLETED
    assert gateway.charge_count(denied.id) == 0 and gateway.charge_count(allowed.id) == 1


def test_unmarked_hook_method_on_object_plugin_is_registered() -> None:
    class Plain:
        def aegispay_check_fraud(self, payment: Payment, context: HookContext) -> None:
            return None

    host = make_plugin_host(plugins={"plain": Plain()}, builtins=False, entry_points=False)
    assert impl_owners(host, "aegispay_check_fraud") == ["plain"]


# --- every hook is documented (datasette style) -------------------------------------------------


def _specs() -> list[str]:
    return list(hookspecs.hook_names())


def test_hook_names_lists_every_hookspec() -> None:
    marked = sorted(
        name
        for name, value in vars(hookspecs).items()
        if callable(value) and hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")
    )
    assert sorted(_specs()) == marked
    assert len(marked) >= 12
    host = PluginHost()
    for name in _specs():
        assert getattr(host.pm.hook, name).has_spec()


@pytest.mark.parametrize("hook", _specs())
def test_hook_name_has_project_prefix(hook: str) -> None:
    assert hook.startswith("aegispay_")


@pytest.mark.parametrize("hook", _specs())
def test_hook_is_documented(hook: str) -> None:
    spec = getattr(hookspecs, hook)
    doc = inspect.getdoc(spec)
    assert doc, f"{hook} has no docstring"
    for parameter in inspect.signature(spec).parameters:
        assert f":param {parameter}:" in doc, f"{hook}: parameter {parameter!r} is not documented"
    assert "return" in doc.lower(), f"{hook}: the docstring does not say what the return means"
    assert "Called" in doc, f"{hook}: the docstring does not say when it is called"


def test_every_hook_is_in_architecture_doc() -> None:
    assert ARCHITECTURE_DOC.is_file(), f"{ARCHITECTURE_DOC} does not exist"
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    missing = [hook for hook in _specs() if hook not in text]
    assert missing == [], f"hooks not mentioned in docs/architecture.md: {missing}"


# --- the command line: aegispay plugins --json ----------------------------------------------------

PLUGIN_KEYS = {"name", "distribution", "version", "hooks", "error"}


def run_plugins_json(cwd: Path, pythonpath: Sequence[Path] = ()) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEGISPAY_")}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    proc = subprocess.run(
        [sys.executable, "-m", "aegispay", "plugins", "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}"
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    for item in data:
        assert isinstance(item, dict) and set(item) == PLUGIN_KEYS, item
    return data


def test_cli_plugins_json_lists_builtins(tmp_path: Path) -> None:
    data = run_plugins_json(tmp_path)
    listed = [item for item in data if item["name"] in BUILTIN_HOOKS]
    assert listed == [
        {
            "name": name,
            "distribution": "aegispay",
            "version": CORE_VERSION,
            "hooks": list(hooks),
            "error": None,
        }
        for name, hooks in BUILTIN_HOOKS.items()
    ]


def test_cli_plugins_json_lists_installed_plugin(
    tmp_path: Path, example_install: PipInstall
) -> None:
    data = run_plugins_json(tmp_path, [example_install.require()])
    by_name = {item["name"]: item for item in data}
    assert by_name["example_fraud"] == {
        "name": "example_fraud",
        "distribution": "aegispay-example-fraud",
        "version": "0.1.0",
        "hooks": ["aegispay_check_fraud"],
        "error": None,
    }
    assert set(BUILTIN_HOOKS) <= set(by_name)


# --- the aegispay.testing pytest plugin -------------------------------------------------------


@pytest.mark.anyio
async def test_testing_plugin_fixtures_are_auto_loaded(
    request: pytest.FixtureRequest,
    aegispay_service: Callable[..., aegispay.PaymentService],
    scripted_gateway: Callable[..., ScriptedGateway],
) -> None:
    # Registered by pytest from the pytest11 entry point "aegispay", not by a conftest import.
    assert request.config.pluginmanager.get_plugin("aegispay") is sys.modules["aegispay.testing"]

    gateway = scripted_gateway("acme", script={Operation.AUTHORIZE: [Outcome.DECLINED]})
    recorder = Recorder()
    service = aegispay_service(plugins=[recorder], gateways=[gateway])
    assert names(service.host) == [
        "validation",
        "fraud_rules",
        "priority_routing",
        "Recorder",
        "GatewaysPlugin",
    ]
    async with service:
        declined = await service.pay(usd())
        completed = await service.pay(usd())
    assert declined.state is PaymentState.FAILED
    assert completed.state is PaymentState.COMPLETED
    assert gateway.charge_count(declined.id) == 0
    assert gateway.charge_count(completed.id) == 1
    assert recorder.checked == [declined.id, completed.id]
