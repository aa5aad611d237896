"""Pure rules of cross-service delivery: the SSRF guard, endpoint configuration, and what
a subscriber's answer means for the event."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from dispatch_aio import (
    ConfigurationError,
    Endpoint,
    FanoutConfig,
    Registry,
    Reject,
    RetryAfter,
    SubscriberUnavailableError,
    UnsafeEndpointError,
    generate_secret,
    refusal_reason,
)
from dispatch_aio._delivery.responses import check_response, retry_after_seconds
from dispatch_aio._delivery.ssrf import check_endpoint_host

SECRET = generate_secret()

REFUSED = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.1.1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::a00:1",
    "2002:7f00:1::",
]


@pytest.mark.parametrize("address", REFUSED)
def test_the_guard_refuses_non_public_addresses(address: str) -> None:
    assert refusal_reason(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert refusal_reason(address) is None


def test_an_endpoint_may_allow_private_addresses_but_never_cloud_metadata() -> None:
    assert refusal_reason("127.0.0.1", allow_private_network=True) is None
    assert refusal_reason("::ffff:10.1.2.3", allow_private_network=True) is None
    for metadata in ("169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"):
        reason = refusal_reason(metadata, allow_private_network=True)
        assert reason is not None
        assert "metadata" in reason


def test_the_loopback_reason_is_named() -> None:
    assert refusal_reason("::ffff:127.0.0.1") == "a loopback address"
    assert refusal_reason("10.0.0.1") == "a private address"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "10.1.2.3", "169.254.169.254", "[::ffff:127.0.0.1]"]
)
def test_an_endpoint_on_a_private_literal_is_refused_when_built(host: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_private_network"):
        Endpoint(url=f"http://{host}:8080/inbox", secrets=[SECRET])
    if "169.254" not in host:
        Endpoint(url=f"http://{host}:8080/inbox", secrets=[SECRET], allow_private_network=True)


def test_a_host_name_resolving_to_loopback_is_refused_at_load(tmp_path: Path) -> None:
    # "localhost" resolves to 127.0.0.1 and ::1 on every machine.
    with pytest.raises(UnsafeEndpointError):
        check_endpoint_host("u", "localhost", allow_private_network=False)
    check_endpoint_host("u", "localhost", allow_private_network=True)
    path = tmp_path / "fanout.json"
    path.write_text(
        json.dumps(
            {"endpoints": {"coaching": {"url": "http://localhost:9/in", "secrets": [SECRET]}}}
        )
    )
    with pytest.raises(UnsafeEndpointError, match="loopback"):
        FanoutConfig.load(path)


def test_a_configuration_file_loads_secrets_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = generate_secret(), generate_secret()
    monkeypatch.setenv("COACHING_SECRETS", f"{new}, {old}")
    path = tmp_path / "fanout.toml"
    path.write_text(
        'schema = "revenue"\n'
        "[endpoints.coaching]\n"
        'url = "http://127.0.0.1:9/in"\n'
        'secrets_env = "COACHING_SECRETS"\n'
        "allow_private_network = true\n"
        "retry_delays = [0.1, 0.2]\n"
    )
    config = FanoutConfig.load(path)
    endpoint = config.endpoints["coaching"]
    assert config.db_schema == "revenue"
    assert [s.get_secret_value() for s in endpoint.secrets] == [new, old]
    assert new not in repr(config)
    assert endpoint.retry_delays == (0.1, 0.2)
    assert "credit.locked" in config.event_types_for("coaching", Registry.load())


@pytest.mark.parametrize(
    "endpoint",
    [
        {"url": "ftp://example.com/in", "secrets": [SECRET]},
        {"url": "https://user:pw@example.com/in", "secrets": [SECRET]},
        {"url": "https://example.com/in"},
        {"url": "https://example.com/in", "secrets": ["nope"]},
        {"url": "https://example.com/in", "secrets_env": "DISPATCH_AIO_TEST_UNSET_VARIABLE"},
        {"url": "https://example.com/in", "secrets": [SECRET], "read_timeout": 0},
    ],
)
def test_bad_endpoints_are_configuration_errors(endpoint: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        FanoutConfig.from_mapping({"endpoints": {"coaching": endpoint}})


def test_subscriber_names_must_make_consumer_names() -> None:
    with pytest.raises(ConfigurationError, match="subscriber name"):
        FanoutConfig.from_mapping(
            {"endpoints": {"Bad Name": {"url": "https://example.com/", "secrets": [SECRET]}}}
        )


NOW = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)


def _check(status: int, **headers: str) -> None:
    check_response("coaching", status, headers, "why", retry_after_cap=60.0, now=NOW)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    _check(status)


def test_410_rejects_with_the_reason() -> None:
    with pytest.raises(Reject, match="gone"):
        _check(410)


def test_a_raw_answer_excerpt_is_quoted_as_its_decoded_text() -> None:
    """The fan-out passes the answer's bytes; invalid UTF-8 is replaced, not an error."""
    for excerpt in (b"  no such tenant \xff ", "  no such tenant \ufffd "):
        with pytest.raises(Reject) as caught:
            check_response("coaching", 404, {}, excerpt, retry_after_cap=60.0, now=NOW)
        assert str(caught.value).endswith("(HTTP 404): no such tenant \ufffd")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 301, 302, 308])
def test_other_4xx_and_redirects_reject(status: int) -> None:
    with pytest.raises(Reject, match=f"HTTP {status}"):
        _check(status)


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_retry_after_the_asked_delay_capped(status: int) -> None:
    with pytest.raises(RetryAfter) as seconds:
        _check(status, **{"retry-after": "7"})
    assert seconds.value.delay == 7
    with pytest.raises(RetryAfter) as capped:
        _check(status, **{"retry-after": "86400"})
    assert capped.value.delay == 60
    with pytest.raises(RetryAfter) as dated:
        _check(status, **{"retry-after": "Sat, 09 May 2026 12:00:30 GMT"})
    assert dated.value.delay == 30
    with pytest.raises(RetryAfter) as missing:
        _check(status)
    assert missing.value.delay == 0


@pytest.mark.parametrize("status", [500, 502, 504, 599])
def test_other_5xx_are_ordinary_failures(status: int) -> None:
    with pytest.raises(SubscriberUnavailableError):
        _check(status)


@pytest.mark.parametrize("value", ["", "soon", "-5", "1e9", "Sat, 09 May 2026 11:00:00 GMT"])
def test_unusable_retry_after_values_mean_no_wait(value: str) -> None:
    assert retry_after_seconds(value, cap=60.0, now=NOW) == 0.0


def test_the_core_imports_no_http_library() -> None:
    code = (
        "import sys, dispatch_aio; "
        "print(sorted(m for m in ('httpx', 'httpcore', 'fastapi', 'uvicorn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [["10.0.0.7"], ["93.184.215.14", "::1"], ["169.254.169.254"]])
async def test_the_transport_checks_every_resolved_address_before_connecting(
    answer: list[str],
) -> None:
    from dispatch_aio._delivery.transport import EndpointClient
    from dispatch_aio.fanout import GuardedTransport

    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return answer

    endpoint = Endpoint(url="https://subscriber.example:8443/inbox", secrets=[SECRET])
    transport = GuardedTransport(endpoint, resolve=resolve)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(UnsafeEndpointError):
            await client.post(endpoint.url, content=b"{}")
    assert asked == [("subscriber.example", 8443)]
    # The fan-out's own client: the same guard before any connection.
    fanout_client = EndpointClient(endpoint, resolve=resolve)
    with pytest.raises(UnsafeEndpointError):
        await fanout_client.post(b"{}", {})
    await fanout_client.aclose()
    assert asked == [("subscriber.example", 8443)] * 2
