"""Typed payloads: a handler annotated ``event: Event[OrderPlaced]`` gets a parsed model.

The JSON Schema in the registry stays the contract that crosses services; a pydantic model
is a typed view of it, chosen by the handler's annotation. This module does no I/O:

- :func:`payload_model_of` reads the model off a handler once, at registration;
- :func:`with_model_payload` turns a validated dict-payload :class:`Event` into an
  ``Event[Model]``, once per consumed event: one ``model_validate`` and no other copy.

A payload the model refuses raises pydantic's ``ValidationError`` (a ``ValueError``):
the consumer treats it like a payload that fails its schema, as the event's own failure.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any, Final, TypeAlias, TypeVar

from pydantic import BaseModel

from ._envelope import Event
from ._errors import UsageError

__all__ = ["PayloadModel", "payload_model_of", "typed_event_class", "with_model_payload"]

M = TypeVar("M", bound=BaseModel)
#: A pydantic model class that payloads are parsed into.
PayloadModel: TypeAlias = type[BaseModel]

_EVENT_FIELDS: Final = frozenset(Event.model_fields)
#: ``Event[...]`` written as text (``from __future__ import annotations``).
_EVENT_SUBSCRIPT: Final = re.compile(r"(^|[.\s\[|])Event\s*\[")
#: ``Event[dict...]`` or ``Event[Any]`` as text: a dict payload, whether or not it resolves
#: (names imported under TYPE_CHECKING only do not exist at run time).
_DICT_SUBSCRIPT: Final = re.compile(r"(^|[.\s\[|])Event\s*\[\s*(typing\.)?(dict|Dict|Any)\b")


def payload_model_of(handler: Callable[..., Any]) -> type[BaseModel] | None:
    """The model of ``handler``'s first parameter when it is ``Event[Model]``, else None.

    String annotations (``from __future__ import annotations``) are resolved in the
    handler's module. Raises UsageError when the annotation names ``Event[...]`` but
    cannot be resolved (a model defined inside a function), or when the parameter of
    ``Event[...]`` is not a pydantic model.
    """
    target = inspect.unwrap(handler)
    parameters = [
        p
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not parameters:
        return None
    first = parameters[0]
    annotation: Any = first.annotation
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):
        # Only this parameter's text is evaluated, as get_type_hints would: another
        # parameter annotated with a name imported under TYPE_CHECKING does not matter.
        scope = dict(getattr(target, "__globals__", {}))
        with contextlib.suppress(TypeError, ValueError):
            scope.update(inspect.getclosurevars(target).nonlocals)
        try:
            annotation = eval(annotation, scope)  # the handler's own annotation text
        except Exception as exc:  # NameError, or any error evaluating the text
            if _EVENT_SUBSCRIPT.search(annotation) and not _DICT_SUBSCRIPT.search(annotation):
                raise UsageError(
                    f"cannot resolve the annotation {annotation!r} of handler "
                    f"{_name(target)} ({type(exc).__name__}: {exc}): define the payload "
                    "model at module level, where the handler's module can see it"
                ) from None
            return None
    return _model_of_annotation(annotation, target)


def _model_of_annotation(annotation: Any, handler: Callable[..., Any]) -> type[BaseModel] | None:
    if not (isinstance(annotation, type) and issubclass(annotation, Event)):
        return None
    metadata = annotation.__pydantic_generic_metadata__
    if metadata["origin"] is None or not metadata["args"]:
        return None  # plain Event: dict payloads
    (argument,) = metadata["args"]
    if isinstance(argument, type) and issubclass(argument, BaseModel):
        return argument
    if typing.get_origin(argument) is dict or argument is dict or argument is Any:
        return None
    raise UsageError(
        f"handler {_name(handler)} takes Event[{getattr(argument, '__name__', argument)}]: "
        "the payload type must be a pydantic BaseModel (or leave Event bare for a dict)"
    )


def _name(handler: Callable[..., Any]) -> str:
    return getattr(handler, "__qualname__", repr(handler))


_CLASSES: dict[type[BaseModel], type[Event[Any]]] = {}


def typed_event_class(model: type[M]) -> type[Event[M]]:
    """``Event[model]``, looked up once per model (pydantic's own cache costs more)."""
    cls = _CLASSES.get(model)
    if cls is None:
        cls = _CLASSES[model] = Event[model]  # type: ignore[valid-type]
    return cls


def with_model_payload(event: Event, model: type[BaseModel]) -> Event[Any]:
    """``event`` as an ``Event[model]``: the same fields, the payload parsed into ``model``.

    The envelope fields are not validated again (the consumer built ``event`` from values
    it had checked). Raises pydantic's ValidationError when the model refuses the payload.
    """
    cls = typed_event_class(model)
    values = dict(event.__dict__)
    values["payload"] = model.model_validate(values["payload"])
    typed = cls.__new__(cls)
    object.__setattr__(typed, "__dict__", values)
    object.__setattr__(typed, "__pydantic_fields_set__", set(_EVENT_FIELDS))
    object.__setattr__(typed, "__pydantic_extra__", None)
    object.__setattr__(typed, "__pydantic_private__", None)
    return typed
