"""FastAPI router for operators: list, show, resolve and replay dead letters over HTTP.

Needs the ``[fastapi]`` extra; nothing else in dispatch-aio imports this module.

The router cannot be mounted without authentication: :func:`dlq_router` requires the
application's own dependency, which returns a :class:`Principal` (or None, or raises
``HTTPException(401)``, when the request is not authenticated)::

    from fastapi import FastAPI, Header, HTTPException
    from dispatch_aio.fastapi import Principal, dlq_router

    async def authenticate(authorization: str | None = Header(None)) -> Principal | None:
        session = await sessions.lookup(authorization)       # the application's own
        if session is None:
            return None                                       # -> 401
        return Principal(subject=session.user, tenant_id=session.tenant,
                         can_write="dlq:write" in session.scopes)

    app = FastAPI()
    app.include_router(dlq_router(pool, authenticate=authenticate))

Each request is handled in this order: authenticate (401), authorise (403), then parse
and validate the id, the query and the body (422; a body above :data:`MAX_BODY_BYTES`
answers 413, JSON nested deeper than :data:`MAX_BODY_DEPTH` answers 422). A principal
sees only its own tenant's dead letters: another tenant's row answers 404 and is left
unchanged. Seeing every tenant takes an explicit ``Principal(..., all_tenants=True)``.
A 422 never echoes more than a short prefix of what it refuses.
"""

import dataclasses
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._deadletters import MAX_PAGE_SIZE, DeadLetter, DeadLetterPage, DeadLetters, text_problem
from ._errors import (
    DatabaseUnavailableError,
    DeadLetterAlreadyResolvedError,
    DeadLetterNotFoundError,
    UsageError,
)
from ._identifiers import validate_schema_name
from ._ids import UUID7, is_prefixed_id
from ._operate.request_json import capped_error, encodable, nesting_depth

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_BODY_BYTES",
    "MAX_BODY_DEPTH",
    "ErrorResponse",
    "Principal",
    "ReplayRequest",
    "ResolveRequest",
    "dlq_router",
]

#: Where :func:`dlq_router` mounts its routes unless told otherwise.
DEFAULT_PREFIX = "/api/dispatcher/v1/dlq"

#: The largest request body the routes read; a larger one answers 413.
MAX_BODY_BYTES = 16 * 1024
#: The deepest JSON nesting a body may have; a deeper one answers 422.
MAX_BODY_DEPTH = 16

# A JSON Schema (ECMA-262) pattern for the OpenAPI document; the check itself is
# is_prefixed_id, which matches the whole string.
_DLQ_ID_PATTERN = f"^dlq_{UUID7}$"
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the application's authentication dependency says.

    ``tenant_id`` limits every read and write to that tenant's dead letters;
    ``can_write`` allows resolve and replay. A platform operator who may see every
    tenant is ``Principal(subject, tenant_id=None, can_write=..., all_tenants=True)``;
    any other combination (no tenant without ``all_tenants``, a tenant with it, an empty
    or non-text tenant or subject) raises UsageError here, when the principal is built.
    """

    subject: str
    tenant_id: str | None
    can_write: bool
    all_tenants: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise UsageError("Principal.subject must be a non-empty string")
        if (problem := text_problem(self.subject)) is not None:
            raise UsageError(f"Principal.subject {problem}")
        if not isinstance(self.can_write, bool) or not isinstance(self.all_tenants, bool):
            raise UsageError("Principal.can_write and Principal.all_tenants must be bools")
        if self.all_tenants:
            if self.tenant_id is not None:
                raise UsageError(
                    "a Principal with all_tenants=True sees every tenant: pass tenant_id=None"
                )
            return
        if self.tenant_id is None:
            raise UsageError(
                "Principal.tenant_id is None: give the caller's tenant, or all_tenants=True "
                "for an operator who may see every tenant"
            )
        if not isinstance(self.tenant_id, str) or not self.tenant_id.strip():
            raise UsageError("Principal.tenant_id must be a non-empty string")
        if (problem := text_problem(self.tenant_id)) is not None:
            raise UsageError(f"Principal.tenant_id {problem}")


def _optional_postgres_text(value: str | None) -> str | None:
    return None if value is None else _postgres_text(value)


def _postgres_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _dead_letter_id(value: str) -> str:
    if not is_prefixed_id(value, "dlq"):
        raise ValueError("not a dead-letter id: expected dlq_ followed by a lower-case UUIDv7")
    return value


def _optional_note(value: str | None) -> str | None:
    if value is not None and (problem := text_problem(value)):
        raise ValueError(problem)
    return value


_Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_postgres_text)]

_DeadLetterId = Annotated[
    str,
    Path(
        description="A dead-letter id: dlq_ followed by a lower-case UUIDv7.",
        json_schema_extra={"pattern": _DLQ_ID_PATTERN},
        examples=["dlq_0196b3c2-4f1e-7a3b-9c2d-5e6f7a8b9c0d"],
    ),
    AfterValidator(_dead_letter_id),
]


class ResolveRequest(BaseModel):
    """Body of ``POST {prefix}/{dead_letter_id}/resolve``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolved_by: _Name = Field(description="The operator resolving the dead letter.")
    resolution_note: Annotated[
        str | None, Field(max_length=2000), AfterValidator(_optional_note)
    ] = Field(default=None, description="Why it is resolved, for the record.")


class ReplayRequest(BaseModel):
    """Body of ``POST {prefix}/{dead_letter_id}/replay``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replayed_by: _Name = Field(description="The operator asking for the replay.")


class ErrorResponse(BaseModel):
    """The body of every error answer except 422 (which lists each invalid input)."""

    detail: str


class _DeadLetterRoute(APIRoute):
    """Answers invalid requests with 422 itself, in FastAPI's shape, whatever they held.

    FastAPI's default handler echoes the invalid input and fails with 500 when that input
    is a string JSON cannot encode (a lone surrogate such as ``"\\ud800"``), and it
    answers 400 to a body that is not UTF-8.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                detail = [capped_error(e) for e in encodable(jsonable_encoder(exc.errors()))]
            except StarletteHTTPException as exc:
                # FastAPI answers 400 to a body that is not UTF-8; it is as malformed as
                # any other body, so it gets the same 422.
                if exc.status_code != 400 or not isinstance(exc.__cause__, UnicodeDecodeError):
                    raise
                detail = [
                    {
                        "type": "body_not_utf8",
                        "loc": ["body"],
                        "msg": "the request body is not UTF-8 encoded JSON",
                        "input": None,
                    }
                ]
            return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)

        return handle


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Not authenticated.",
        403: "The principal may read but not resolve or replay.",
        404: "No such dead letter for the principal's tenant.",
        409: "The dead letter is already resolved.",
        413: f"The request body is larger than {MAX_BODY_BYTES} bytes.",
        503: "The database does not answer.",
    }
    return {
        code: {"model": ErrorResponse, "description": descriptions[code]}
        for code in (401, *codes, 503)
    }


def dlq_router(
    pool: asyncpg.Pool | Callable[[], asyncpg.Pool],
    *,
    authenticate: Callable[..., Any],
    schema: str = "public",
    prefix: str = DEFAULT_PREFIX,
) -> APIRouter:
    """An APIRouter with the dead-letter routes, guarded by ``authenticate``.

    ``pool`` is an asyncpg pool, or a callable returning it (for a pool the application
    creates in its lifespan). ``authenticate`` is a FastAPI dependency returning a
    :class:`Principal`, or None (answered with 401) when the request carries no valid
    credentials; it is required, so the routes cannot be mounted without it. Each write
    runs in its own transaction (see :class:`~dispatch_aio.DeadLetters`).
    """
    if authenticate is None or not callable(authenticate):
        raise UsageError(
            "dlq_router needs authenticate=<a FastAPI dependency returning a Principal>; "
            "the dead-letter routes are never mounted without authentication"
        )
    validate_schema_name(schema)
    if isinstance(pool, asyncpg.Pool):
        service = DeadLetters(pool, schema)
        get_pool = None
    elif callable(pool):
        service, get_pool = None, pool
    else:
        raise UsageError(
            f"dlq_router needs an asyncpg pool or a callable returning one, got {pool!r}"
        )

    def dead_letters() -> DeadLetters:
        if service is not None:
            return service
        assert get_pool is not None
        return DeadLetters(get_pool(), schema)

    async def require_principal(
        principal: Annotated[Any, Depends(authenticate)],
    ) -> Principal:
        if principal is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not authenticated")
        if not isinstance(principal, Principal):
            raise TypeError(
                f"the authenticate dependency returned {type(principal).__name__}; "
                "it must return a dispatch_aio.fastapi.Principal or None"
            )
        return principal

    async def require_writer(
        principal: Annotated[Principal, Depends(require_principal)],
    ) -> Principal:
        if not principal.can_write:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{principal.subject} may read dead letters but not resolve or replay them",
            )
        return principal

    router = APIRouter(
        prefix=prefix,
        tags=["dead letters"],
        dependencies=[Depends(require_principal)],
        route_class=_DeadLetterRoute,
    )

    @router.get(
        "",
        response_model=DeadLetterPage,
        responses=_responses(),
        summary="List dead letters, newest first: one consumer's, or every consumer's",
    )
    async def list_dead_letters(
        principal: Annotated[Principal, Depends(require_principal)],
        consumer: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=200,
                description="The consumer's name; leave it out for every consumer's.",
            ),
            AfterValidator(_optional_postgres_text),
        ] = None,
        include_resolved: Annotated[
            bool, Query(description="Include resolved dead letters.")
        ] = False,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")] = 50,
        cursor: Annotated[
            str | None,
            Query(max_length=200, description="next_cursor of the previous page."),
        ] = None,
    ) -> DeadLetterPage:
        try:
            return await _call(
                dead_letters().list(
                    consumer,
                    include_resolved=include_resolved,
                    limit=limit,
                    before=cursor,
                    tenant_id=principal.tenant_id,
                )
            )
        except UsageError as exc:
            _unprocessable(("query", "cursor"), str(exc), cursor)

    @router.get(
        "/{dead_letter_id}",
        response_model=DeadLetter,
        responses=_responses(404),
        summary="Show one dead letter",
    )
    async def get_dead_letter(
        principal: Annotated[Principal, Depends(require_principal)],
        dead_letter_id: _DeadLetterId,
    ) -> DeadLetter:
        return await _call(dead_letters().get(dead_letter_id, tenant_id=principal.tenant_id))

    @router.post(
        "/{dead_letter_id}/resolve",
        response_model=DeadLetter,
        responses=_responses(403, 404, 409, 413),
        summary="Resolve a dead letter (one-shot)",
        openapi_extra=_request_body(ResolveRequest),
    )
    async def resolve_dead_letter(
        principal: Annotated[Principal, Depends(require_writer)],
        dead_letter_id: _DeadLetterId,
        request: Request,
    ) -> DeadLetter:
        body = await _parse_body(request, ResolveRequest)
        return await _call(
            dead_letters().resolve(
                dead_letter_id,
                resolved_by=body.resolved_by,
                note=body.resolution_note,
                tenant_id=principal.tenant_id,
            )
        )

    @router.post(
        "/{dead_letter_id}/replay",
        response_model=DeadLetter,
        responses=_responses(403, 404, 409, 413),
        summary="Have the consumer handle the dead letter's event again",
        openapi_extra=_request_body(ReplayRequest),
    )
    async def replay_dead_letter(
        principal: Annotated[Principal, Depends(require_writer)],
        dead_letter_id: _DeadLetterId,
        request: Request,
    ) -> DeadLetter:
        body = await _parse_body(request, ReplayRequest)
        return await _call(
            dead_letters().replay(
                dead_letter_id, replayed_by=body.replayed_by, tenant_id=principal.tenant_id
            )
        )

    return router


async def _call(operation: Awaitable[_T]) -> _T:
    """Await a service call, turning dead-letter errors into HTTP answers."""
    try:
        result = await operation
    except DeadLetterNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except DeadLetterAlreadyResolvedError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    except DatabaseUnavailableError as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "the dead-letter store is unavailable"
        ) from exc
    return result


def _unprocessable(loc: tuple[str, ...], message: str, value: Any) -> NoReturn:
    """Answer 422 in FastAPI's own shape, so the OpenAPI 422 model holds."""
    raise RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


_Body = TypeVar("_Body", bound=BaseModel)


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses ``model`` itself, after auth."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


async def _parse_body(request: Request, model: type[_Body]) -> _Body:
    """The request body as ``model``: 413 above MAX_BODY_BYTES, else 422 when malformed.

    Called by the handlers, so only once the principal is authenticated and authorised:
    a caller without the right to write learns nothing from how its body is judged.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        _too_large()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            _too_large()
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _unprocessable(("body",), "the request body is not UTF-8 encoded JSON", None)
    depth = nesting_depth(text)
    if depth > MAX_BODY_DEPTH:
        _unprocessable(
            ("body",),
            f"the request body is JSON nested {depth} levels deep; at most "
            f"{MAX_BODY_DEPTH} are accepted",
            None,
        )
    try:
        value = json.loads(text)
    except ValueError as exc:
        _unprocessable(("body",), f"the request body is not valid JSON: {exc}", None)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise RequestValidationError(errors) from None


def _too_large() -> NoReturn:
    raise HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body is larger than {MAX_BODY_BYTES} bytes",
    )
