"""Standard Webhooks v1 signatures: HMAC-SHA256 over ``id.timestamp.body``. Pure, stdlib only.

A request carries three headers: ``webhook-id`` (the event id), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature``: space-separated ``v1,<base64 digest>`` entries.
Secrets are written ``whsec_<base64 key>``.

Rotation: :class:`WebhookSecrets` holds every secret currently active, newest first. It
signs with the newest and accepts a signature made with any of them, so a sender and a
receiver can change secrets one after the other without refusing a request in between.

Verification compares digests with :func:`hmac.compare_digest` against every active
secret (no early exit on the first mismatch of a byte) and refuses a timestamp more than
``tolerance`` seconds (5 minutes) away from now in either direction: a captured request
replayed later is refused, and the idempotent inbox absorbs replays within the window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Iterable, Mapping

from .._errors import ConfigurationError, SignatureVerificationError

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "WebhookSecrets",
    "generate_secret",
]

SECRET_PREFIX = "whsec_"
#: Seconds a timestamp may be away from the receiver's clock (either way).
DEFAULT_TOLERANCE = 300.0

# Generous bounds that still stop a hostile header from costing real work.
_MAX_ID_LENGTH = 256
_MAX_TIMESTAMP_DIGITS = 12
_MAX_SIGNATURES = 16
_MAX_SIGNATURE_HEADER = 4096
_DIGEST_SIZE = hashlib.sha256().digest_size


def generate_secret(size: int = 32) -> str:
    """A new random secret in the ``whsec_`` form (``size`` random bytes, 24 to 64)."""
    if not 24 <= size <= 64:
        raise ConfigurationError("a webhook secret needs 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(size)).decode("ascii")


def _decode_secret(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ConfigurationError(
            "a webhook secret must be a string 'whsec_<base64>': generate one with "
            "dispatch_aio.generate_secret()"
        )
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("a webhook secret after 'whsec_' must be valid base64") from None
    if len(key) < 16:
        raise ConfigurationError(
            f"a webhook secret must hold at least 16 bytes of key, not {len(key)}: "
            "generate one with dispatch_aio.generate_secret()"
        )
    return key


class WebhookSecrets:
    """The active secrets of one sender/receiver pair: sign with the newest, verify with any.

    ``secrets`` are ``whsec_`` strings, newest first. Immutable and safe to share between
    tasks. The keys never appear in ``repr``.
    """

    __slots__ = ("_keys", "_macs", "tolerance")

    def __init__(self, secrets: Iterable[str], *, tolerance: float = DEFAULT_TOLERANCE) -> None:
        if isinstance(secrets, str):
            secrets = [secrets]
        keys = tuple(_decode_secret(secret) for secret in secrets)
        if not keys:
            raise ConfigurationError("at least one webhook secret is needed")
        if not tolerance > 0:
            raise ConfigurationError("the timestamp tolerance must be positive seconds")
        self._keys = keys
        # Each key's HMAC state, keyed once: a copy per message costs half of a one-shot
        # hmac.digest, which looks the digest up by name and sets the key up every time.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in keys)
        self.tolerance = float(tolerance)

    def __repr__(self) -> str:
        return f"<WebhookSecrets {len(self._keys)} active, tolerance {self.tolerance:g}s>"

    def __len__(self) -> int:
        return len(self._keys)

    def sign(self, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        """The three Standard Webhooks headers for ``body``, signed with the newest secret.

        ``timestamp`` (Unix seconds) defaults to now.
        """
        if timestamp is None:
            timestamp = int(time.time())
        stamp = str(timestamp)
        digest = _digest(self._macs[0], msg_id, stamp, body)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + binascii.b2a_base64(digest, newline=False).decode("ascii"),
        }

    def verify(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> str:
        """Check the headers against ``body``; return the verified ``webhook-id``.

        ``headers`` maps lower-case names to values. Raises SignatureVerificationError
        (its ``reason`` is for logs, not for the caller) when a header is missing or
        malformed, the timestamp is outside the tolerance, or no signature matches any
        active secret. No I/O.
        """
        msg_id = headers.get("webhook-id")
        timestamp = headers.get("webhook-timestamp")
        signature = headers.get("webhook-signature")
        if not msg_id or not timestamp or not signature:
            raise SignatureVerificationError("missing webhook headers")
        if len(msg_id) > _MAX_ID_LENGTH or not _printable_ascii(msg_id) or "." in msg_id:
            raise SignatureVerificationError("malformed webhook-id")
        if (
            not timestamp.isascii()
            or not timestamp.isdigit()
            or len(timestamp) > _MAX_TIMESTAMP_DIGITS
        ):
            raise SignatureVerificationError("malformed webhook-timestamp")
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > self.tolerance:
            raise SignatureVerificationError("webhook-timestamp outside the tolerance")
        if len(signature) > _MAX_SIGNATURE_HEADER:
            raise SignatureVerificationError("webhook-signature too long")
        offered = _offered_digests(signature)
        matched = False
        # Every pair is compared, so the time taken does not say which one matched.
        for mac in self._macs:
            expected = _digest(mac, msg_id, timestamp, body)
            for candidate in offered:
                matched |= hmac.compare_digest(expected, candidate)
        if not matched:
            raise SignatureVerificationError("no signature matches an active secret")
        return msg_id


def _digest(mac: hmac.HMAC, msg_id: str, timestamp: str, body: bytes) -> bytes:
    # ``mac`` holds the key's state already: this runs on every POST and inbox request.
    mac = mac.copy()
    mac.update(f"{msg_id}.{timestamp}.".encode() + body)
    return mac.digest()


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable() and " " not in value


def _offered_digests(header: str) -> list[bytes]:
    """The v1 digests of a ``webhook-signature`` header; other versions are skipped."""
    entries = header.split(" ")
    if len(entries) > _MAX_SIGNATURES:
        raise SignatureVerificationError("too many signatures")
    digests: list[bytes] = []
    for entry in entries:
        version, comma, encoded = entry.partition(",")
        if not comma:
            raise SignatureVerificationError("malformed webhook-signature")
        if version != "v1":
            continue
        try:
            # binascii's strict mode is base64.b64decode(validate=True) minus its wrapper.
            digest = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise SignatureVerificationError("malformed webhook-signature") from None
        # Canonical encodings only, as the reference compares the strings: another
        # spelling of the same bytes (non-zero padding bits) is refused.
        if (
            len(digest) == _DIGEST_SIZE
            and binascii.b2a_base64(digest, newline=False) == encoded.encode()
        ):
            digests.append(digest)
    if not digests:
        raise SignatureVerificationError("no v1 signature")
    return digests
