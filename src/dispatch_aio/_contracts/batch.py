"""publish_many's batch loop: what EnvelopeBuilder.build does, for many usual events. Pure.

publish_many builds up to thousands of events per call, nearly all of one kind: the
same event type, version and optional fields, exact dicts and strs. For those, the
loop here runs the checks that differ between events inline, with the validators
build() uses, and the checks that do not differ once per kind. Any other event, and
any event a check here does not accept, is built the whole way, which raises the
error it always raised: errors, their order and the rows stored stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import fastjsonschema

from .._codec import construct_envelope, publish_parameters
from .._envelope import Envelope
from .._ids import new_id
from .building import EnvelopeBuilder, check_shape

__all__ = ["SPEC_KEYS", "build_many"]

#: Keys a publish_many event may have (EventSpec's); any other is refused.
SPEC_KEYS = frozenset(
    {
        "event_type",
        "payload",
        "subject",
        "actor",
        "schema_version",
        "correlation_id",
        "causation_id",
        "occurred_at",
    }
)
#: Those the batch loop handles itself (a given occurred_at is converted and checked
#: the whole way).
_QUICK_SPEC_KEYS = SPEC_KEYS - {"occurred_at"}
_ENVELOPE_FIELD_NAMES = frozenset(Envelope.model_fields)


def build_many(
    builder: EnvelopeBuilder,
    specs: Sequence[Any],
    traceparent: str | None,
    build_one: Callable[[Any], tuple[Envelope, tuple[Any, ...]]],
) -> tuple[list[Envelope], list[tuple[Any, ...]]]:
    """The envelopes and insert rows of publish_many's events, in order.

    ``build_one`` builds one event the whole way: its checks of the event dict, then
    EnvelopeBuilder.build. An event of a kind already built whole once (event type,
    version, optional fields present), made of exact dicts and strs, is built here,
    checking only what differs between events, as build() checks it. Anything else,
    and any event a check here does not accept, goes to ``build_one``, which raises
    the error the whole way raises: errors and their order stay the same.
    """
    envelopes: list[Envelope] = []
    rows: list[tuple[Any, ...]] = []
    quick = _quick_builder(builder, traceparent)
    for spec in specs:
        built = None
        if quick is not None and type(spec) is dict and spec.keys() <= _QUICK_SPEC_KEYS:
            try:
                built = quick(spec)
            except Exception:  # the whole way decides, and raises the error to raise
                built = None
        if built is None:
            built = build_one(spec)
        envelopes.append(built[0])
        rows.append(built[1])
    return envelopes, rows


def _quick_builder(
    builder: EnvelopeBuilder, traceparent: str | None
) -> Callable[[dict[str, Any]], tuple[Envelope, tuple[Any, ...]] | None] | None:
    """build()'s work for one usual event dict, or None where there is no quick way.

    The function returns None for an event it leaves to the whole way, and raises
    whatever a check raises (the caller then also takes the whole way). Every value
    is checked by the validator build() uses, the envelope's constant fields once per
    kind (the checked keys of _EnvelopeCheck), the caller's while they change.
    """
    check = builder.envelope_check
    fields = check.fields
    producer, tenant_id = builder.producer, builder.tenant_id
    if fields is None or type(producer) is not str or type(tenant_id) is not str:
        return None
    if traceparent is not None:
        if type(traceparent) is not str:
            return None
        try:
            fields["traceparent"](traceparent)
        except fastjsonschema.JsonSchemaValueException:
            return None  # the whole way raises, naming the event
    no_trace = traceparent is None
    checked = check.checked
    versions = builder.current_versions
    registry = builder.registry
    validate_payload = registry.validate_payload
    digests = registry.payload_digests
    subject_ok, actor_ok = fields["subject"], fields["actor"]
    correlation_ok, causation_ok = fields["correlation_id"], fields["causation_id"]
    encode = builder.encode_payload
    now = datetime.now
    # The fields an envelope sets, by whether correlation and causation are absent.
    fields_sets: dict[tuple[bool, bool], frozenset[str]] = {}
    for no_correlation in (False, True):
        for no_causation in (False, True):
            absent = {
                name
                for name, value in (
                    ("correlation_id", no_correlation),
                    ("causation_id", no_causation),
                    ("traceparent", traceparent is None),
                )
                if value
            }
            fields_sets[no_correlation, no_causation] = frozenset(_ENVELOPE_FIELD_NAMES) - absent
    last_subject = last_actor = last_correlation = last_causation = None

    def quick(spec: dict[str, Any]) -> tuple[Envelope, tuple[Any, ...]] | None:
        nonlocal last_subject, last_actor, last_correlation, last_causation
        get = spec.get
        event_type, payload = get("event_type"), get("payload")
        subject, actor = get("subject"), get("actor")
        correlation_id, causation_id = get("correlation_id"), get("causation_id")
        version = get("schema_version")
        if (
            type(event_type) is not str
            or type(payload) is not dict
            or type(subject) is not str
            or type(actor) is not str
            or (correlation_id is not None and type(correlation_id) is not str)
            or (causation_id is not None and type(causation_id) is not str)
        ):
            return None
        if version is None:
            version = versions.get(event_type)
            if version is None:
                version = versions[event_type] = registry.current_version(event_type)
        elif type(version) is not int:
            return None
        no_correlation, no_causation = correlation_id is None, causation_id is None
        if (event_type, version, no_correlation, no_causation, no_trace) not in checked:
            return None  # the first of its kind: the whole envelope is checked
        payload = payload.copy()
        check_shape(event_type, version, payload)
        validate_payload(event_type, version, payload)
        if subject != last_subject:
            subject_ok(subject)
            last_subject = subject
        if actor != last_actor:
            actor_ok(actor)
            last_actor = actor
        if not no_correlation and correlation_id != last_correlation:
            correlation_ok(correlation_id)
            last_correlation = correlation_id
        if not no_causation and causation_id != last_causation:
            causation_ok(causation_id)
            last_causation = causation_id
        encoded = encode(event_type, version, payload)
        event_id = new_id("evt")
        occurred_at = now(UTC)
        envelope = construct_envelope(
            {
                "event_id": event_id,
                "event_type": event_type,
                "schema_version": version,
                "occurred_at": occurred_at,
                "tenant_id": tenant_id,
                "producer": producer,
                "subject": subject,
                "actor": actor,
                "payload": payload,
                "correlation_id": correlation_id,
                "causation_id": causation_id,
                "traceparent": traceparent,
            },
            set(fields_sets[no_correlation, no_causation]),
        )
        return envelope, publish_parameters(envelope, encoded, digests[event_type, version])

    return quick
