"""The plugin: found through its entry point, configured from [plugins.razorpay]."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from aegispay.errors import ConfigError
from aegispay.gateways import Gateway
from aegispay.settings import PluginConfig, load_settings

from aegispay_razorpay import plugin
from aegispay_razorpay.config import LIVE_BASE_URL, RazorpayConfig
from aegispay_razorpay.gateway import RazorpayGateway

KEYS = {"key_id": "rzp_test_abc", "key_secret": "s3cret_value_xyz", "webhook_secret": "wh_9876"}


def registered(sections: dict[str, object]) -> list[Gateway]:
    gateways: list[Gateway] = []
    plugin.aegispay_register_gateways(gateways.append, PluginConfig(sections))
    return gateways


def test_the_entry_point_names_the_plugin_module() -> None:
    (found,) = [ep for ep in entry_points(group="aegispay") if ep.name == "razorpay"]
    assert found.value == "aegispay_razorpay.plugin"
    assert found.load() is plugin


def test_nothing_is_registered_without_a_section() -> None:
    assert registered({}) == []


def test_a_configured_section_registers_the_gateway() -> None:
    (gateway,) = registered({"razorpay": dict(KEYS, base_url="http://127.0.0.1:8766/v1/")})
    assert isinstance(gateway, RazorpayGateway) and gateway.name == "razorpay"
    assert gateway.config.base_url == "http://127.0.0.1:8766"  # /v1 is the adapter's
    assert "s3cret_value_xyz" not in repr(gateway.config) and "wh_9876" not in repr(gateway)


def test_environment_variables_configure_it() -> None:
    env = {
        "AEGISPAY_PLUGINS__RAZORPAY__KEY_ID": "rzp_test_env",
        "AEGISPAY_PLUGINS__RAZORPAY__KEY_SECRET": "env_secret",
        "AEGISPAY_PLUGINS__RAZORPAY__CURRENCIES": '["INR", "USD"]',
        "AEGISPAY_PLUGINS__RAZORPAY__READ_TIMEOUT_S": "2.5",
    }
    settings = load_settings(path=None, env=env)
    (gateway,) = [
        g
        for g in registered({"razorpay": dict(settings.plugin_config.section("razorpay"))})
        if isinstance(g, RazorpayGateway)
    ]
    assert gateway.config.key_id == "rzp_test_env"
    assert gateway.supported_currencies == {"INR", "USD"}
    assert gateway.config.read_timeout_s == 2.5
    assert gateway.config.base_url == LIVE_BASE_URL


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"key_id": "rzp_test_abc"}, "key_secret"),
        (dict(KEYS, currencies=["INR", "XOF"]), "currencies"),
        (dict(KEYS, base_url="api.razorpay.com"), "base_url"),
        (dict(KEYS, base_url="http://api.razorpay.com"), "base_url"),
        (dict(KEYS, read_timeout_s=0), "read_timeout_s"),
        (dict(KEYS, refund_speed="instant"), "refund_speed"),
        (dict(KEYS, colour="blue"), "colour"),
    ],
)
def test_bad_configuration_names_the_key_and_hides_secrets(
    section: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        registered({"razorpay": section})
    assert "s3cret_value_xyz" not in str(caught.value)


def test_config_defaults() -> None:
    config = RazorpayConfig(key_id="rzp_test_abc", key_secret="x")
    assert config.base_url == "https://api.razorpay.com"
    assert config.webhook_secret is None and config.refund_speed == "normal"


def test_a_mistyped_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match="key_secret") as caught:
        registered({"razorpay": dict(KEYS, key_secret=987654321)})
    assert "987654321" not in str(caught.value)
