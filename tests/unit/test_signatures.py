"""Standard Webhooks v1 signatures: rotation, tolerance, malformed headers, and interop
both ways with the ``standardwebhooks`` reference package."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
import standardwebhooks

from dispatch_aio import ConfigurationError, SignatureVerificationError, WebhookSecrets
from dispatch_aio import generate_secret as new_secret

NOW = 1_790_000_000
BODY = b'{"event_id":"evt_1","payload":{"x":"\xc3\xa9"}}'


def test_a_signature_verifies_and_returns_the_id() -> None:
    secrets = WebhookSecrets([new_secret()])
    headers = secrets.sign("evt_1", BODY, timestamp=NOW)
    assert headers["webhook-timestamp"] == str(NOW)
    assert headers["webhook-signature"].startswith("v1,")
    assert secrets.verify(headers, BODY, now=NOW) == "evt_1"


def test_rotation_signs_with_the_newest_and_verifies_with_any() -> None:
    old, new = new_secret(), new_secret()
    sender_before = WebhookSecrets([old])
    sender_after = WebhookSecrets([new, old])
    receiver = WebhookSecrets([new, old])
    for sender in (sender_before, sender_after):
        assert receiver.verify(sender.sign("evt_1", BODY, timestamp=NOW), BODY, now=NOW)
    # The newest signs: a receiver that dropped the old secret accepts the new sender.
    assert WebhookSecrets([new]).verify(sender_after.sign("m", BODY, timestamp=NOW), BODY, now=NOW)
    with pytest.raises(SignatureVerificationError):
        WebhookSecrets([new]).verify(sender_before.sign("m", BODY, timestamp=NOW), BODY, now=NOW)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_a_timestamp_outside_five_minutes_is_refused(offset: int) -> None:
    secrets = WebhookSecrets([new_secret()])
    headers = secrets.sign("evt_1", BODY, timestamp=NOW + offset)
    with pytest.raises(SignatureVerificationError, match="tolerance"):
        secrets.verify(headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_timestamp_within_five_minutes_is_accepted(offset: int) -> None:
    secrets = WebhookSecrets([new_secret()])
    assert secrets.verify(secrets.sign("e", BODY, timestamp=NOW + offset), BODY, now=NOW)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("webhook-id", ""),
        ("webhook-id", "evt 1"),
        ("webhook-id", "x" * 300),
        ("webhook-timestamp", "17e8"),
        ("webhook-timestamp", "-1"),
        ("webhook-timestamp", "1" * 13),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,!!!"),
        ("webhook-signature", "v2,AAAA"),
        ("webhook-signature", " ".join(["v1,AAAA"] * 17)),
        ("webhook-signature", "v1," + base64.b64encode(b"\0" * 32).decode()),
    ],
)
def test_malformed_headers_are_refused(name: str, value: str) -> None:
    secrets = WebhookSecrets([new_secret()])
    headers = secrets.sign("evt_1", BODY, timestamp=NOW)
    headers[name] = value
    with pytest.raises(SignatureVerificationError):
        secrets.verify(headers, BODY, now=NOW)


def test_any_matching_entry_of_several_is_enough() -> None:
    secrets = WebhookSecrets([new_secret()])
    headers = secrets.sign("evt_1", BODY, timestamp=NOW)
    wrong = "v1," + base64.b64encode(b"\1" * 32).decode()
    headers["webhook-signature"] = f"v2,abc {wrong} {headers['webhook-signature']}"
    assert secrets.verify(headers, BODY, now=NOW) == "evt_1"


def test_bad_secrets_are_configuration_errors() -> None:
    for bad in ["", "whsec_", "secret", "whsec_not base64!", "whsec_" + "QUJD"]:
        with pytest.raises(ConfigurationError):
            WebhookSecrets([bad])
    with pytest.raises(ConfigurationError):
        WebhookSecrets([])
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert secret not in repr(WebhookSecrets([secret]))


def _reference_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def test_the_reference_package_verifies_our_signatures() -> None:
    secret = new_secret()
    headers = WebhookSecrets([secret]).sign("evt_1", BODY)  # now: the package checks its clock
    assert standardwebhooks.Webhook(secret).verify(BODY, headers) == {
        "event_id": "evt_1",
        "payload": {"x": "é"},
    }


def test_we_verify_the_reference_packages_signatures() -> None:
    secret = new_secret()
    headers = _reference_headers(secret, "evt_2", NOW, BODY)
    assert WebhookSecrets([secret]).verify(headers, BODY, now=NOW) == "evt_2"
    with pytest.raises(SignatureVerificationError):
        WebhookSecrets([new_secret()]).verify(headers, BODY, now=NOW)


def test_interop_with_the_specifications_published_example() -> None:
    # The example secret, id, timestamp and body of the Standard Webhooks test vectors,
    # run through the reference package: both sides must agree on the exact digest.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    headers = _reference_headers(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    ours = WebhookSecrets([secret]).sign("msg_p5jXN8AQM9LWM0D4loKWxJek", body, timestamp=1614265330)
    assert ours["webhook-signature"] == headers["webhook-signature"]
    assert ours["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert WebhookSecrets([secret]).verify(headers, body, now=1614265330)


def test_another_spelling_of_the_same_signature_bytes_is_refused() -> None:
    # 32 bytes take 43 base64 characters plus "=": the last character carries two padding
    # bits, so four spellings decode to the same digest. Only the canonical one counts,
    # as in the reference package, which compares the strings.
    secrets = WebhookSecrets([new_secret()])
    headers = secrets.sign("evt_1", BODY, timestamp=NOW)
    encoded = headers["webhook-signature"].removeprefix("v1,")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(encoded[42])
    respelled = encoded[:42] + alphabet[last ^ 1] + encoded[43:]
    assert base64.b64decode(respelled) == base64.b64decode(encoded)
    headers["webhook-signature"] = "v1," + respelled
    with pytest.raises(SignatureVerificationError):
        secrets.verify(headers, BODY, now=NOW)
