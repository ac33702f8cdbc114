"""The OpenAPI 3 description of `tokencli serve` (the /docs and /redoc pages that show it
are in viewers.py).

Kept apart from routes.py, which answers what this describes: a test checks that
this document and `routes.ROUTES` name exactly the same routes.
"""

from __future__ import annotations

import re
from typing import Any

from tokencli import __version__
from tokencli.domain.model import (
    LIST_LIMIT_MAX,
    MAX_LABEL_LENGTH,
    MAX_SCOPES,
    MAX_TTL_SECONDS,
    MAX_USES,
    SCOPE_PATTERN,
    STATE_NAMES,
    TokenState,
)
from tokencli.http import viewers
from tokencli.http.http11 import MAX_BODY_BYTES

VERDICT_NAMES = tuple(state.value for state in TokenState)
SCOPE_PATTERN_TEXT = f"^{SCOPE_PATTERN.pattern}$"
# What the service accepts, as far as a pattern can say it: units largest first, each
# with a bound small enough that no combination passes 3650 days, never zero.
TTL_PATTERN = (
    r"^(?=[0-9])([1-9][0-9]{0,7}|([1-9][0-9]?w)?([1-9][0-9]{0,2}d)?([1-9][0-9]{0,3}h)?"
    r"([1-9][0-9]{0,4}m)?([1-9][0-9]{0,5}s)?)$"
)
LABEL_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]*$"

_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Malformed body or bad option",
        401: "Missing or wrong key",
        404: "No such token, or metrics are off",
        413: f"Body larger than {MAX_BODY_BYTES} bytes",
        503: "The database cannot be used",
    }
    return {str(code): _json(_ERROR_REF, texts[code]) for code in codes}


_SCOPE_PARAMETER = {
    "name": "scope",
    "in": "query",
    "required": False,
    "description": "A scope the token must hold (repeatable: all are required)",
    "schema": {"type": "array", "items": {"type": "string", "pattern": SCOPE_PATTERN_TEXT}},
    "style": "form",
    "explode": True,
}
_ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The token's public ID",
    "schema": {"type": "string"},
}


def _validate_operation(method: str, *, in_path: bool = True) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [_SCOPE_PARAMETER]
    if in_path:
        parameters.insert(
            0,
            {
                "name": "token",
                "in": "path",
                "required": True,
                "description": "The whole token, ID:SECRET",
                "schema": {"type": "string"},
            },
        )
    operation: dict[str, Any] = {
        "summary": f"Check a token ({method}); a valid check uses one use",
        "operationId": f"validate_token_{method.lower()}" + ("" if in_path else "_body"),
        "security": [{"validateKey": []}, {"adminKey": []}, {}],
        "parameters": parameters,
        "responses": {
            "200": _json({"$ref": "#/components/schemas/Validity"}, "The verdict"),
            **_errors(400, 401, 413, 503),
        },
    }
    if method == "POST":
        schema = "ValidateRequest" if in_path else "ValidateBody"
        operation["requestBody"] = {
            "required": not in_path,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    return operation


def _page(summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "responses": {
            "200": {"description": "HTML page", "content": {"text/html": {"schema": {}}}}
        },
    }


def _asset(asset: viewers.Asset) -> dict[str, Any]:
    media_type = asset.content_type.split(";")[0]
    name = asset.path.rsplit("/", 1)[1]
    return {
        "summary": f"{name}, a file the {asset.path.split('/')[1]} page loads",
        "operationId": "asset_" + re.sub(r"[^a-z0-9]+", "_", name),
        "responses": {
            "200": {
                "description": "Sent gzip-compressed when the client accepts gzip",
                "content": {media_type: {"schema": {"type": "string"}}},
            },
            "503": _json(_ERROR_REF, "Too many of these files handed out just now; retry"),
        },
    }


def _admin(summary: str, operation_id: str, answer: dict[str, Any], *codes: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "security": [{"adminKey": []}],
        "responses": {"200": answer, **_errors(*codes)},
    }


_LIST_PARAMETERS: list[dict[str, Any]] = [
    {"name": "label", "in": "query", "schema": {"type": "string"}},
    _SCOPE_PARAMETER,
    {
        "name": "state",
        "in": "query",
        "schema": {"type": "array", "items": {"type": "string", "enum": list(STATE_NAMES)}},
        "style": "form",
        "explode": True,
    },
    {
        "name": "expiring_within",
        "in": "query",
        "schema": {"type": "string", "pattern": TTL_PATTERN, "example": "1d"},
    },
    {
        "name": "limit",
        "in": "query",
        "description": (
            f"Tokens per page, 1 to {LIST_LIMIT_MAX} (the default); more is refused (400):"
            " follow `next` instead"
        ),
        "schema": {"type": "integer", "minimum": 1, "maximum": LIST_LIMIT_MAX},
    },
    {
        "name": "after",
        "in": "query",
        "description": "Start after this token ID: the `next` of the previous page",
        "schema": {"type": "string", "pattern": "^[a-z2-7]{12}$"},
    },
    {"name": "all", "in": "query", "schema": {"type": "boolean"}},
]


def _paths() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"adminKey": []}]
    return {
        "/app/token": {
            "post": {
                "summary": "Issue a token",
                "operationId": "issue_token",
                "security": bearer,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/IssueRequest"}
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Issued"}, "The new token"),
                    **_errors(400, 401, 413, 503),
                },
            }
        },
        "/app/valid/{token}": {
            "get": _validate_operation("GET"),
            "post": _validate_operation("POST"),
        },
        "/app/valid": {"post": _validate_operation("POST", in_path=False)},
        "/app/clear/all/tokens": {
            "delete": _admin(
                "Purge expired, used-up and revoked tokens",
                "purge_tokens",
                _json({"$ref": "#/components/schemas/Purged"}, "How many went"),
                401,
                503,
            )
        },
        "/app/tokens": {
            "get": {
                **_admin(
                    "List tokens (never a secret); live ones unless filtered",
                    "list_tokens",
                    _json({"$ref": "#/components/schemas/TokenList"}, "One page of tokens"),
                    400,
                    401,
                    503,
                ),
                "description": (
                    "A page of tokens by ID. Pass the answer's `next` as `after` for the"
                    " following page, until `next` is null. A page may hold fewer tokens"
                    " than `limit`, even none, and still have a `next`: each page looks at"
                    " a bounded number of stored tokens. Pages never overlap: a token is"
                    " listed at most once, as its page found it."
                ),
                "parameters": _LIST_PARAMETERS,
            }
        },
        "/app/tokens/{id}": {
            "parameters": [_ID_PARAMETER],
            "get": _admin(
                "Show a token; takes no use",
                "show_token",
                _json({"$ref": "#/components/schemas/Token"}, "The token"),
                401,
                404,
                503,
            ),
            "delete": _admin(
                "Revoke a token (again: 200)",
                "revoke_token",
                _json({"$ref": "#/components/schemas/Revoked"}, "Revoked"),
                401,
                404,
                503,
            ),
        },
        "/health": {
            "get": {
                "summary": "Liveness and database check",
                "operationId": "health",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Health"}, "Healthy"),
                    **_errors(503),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format)",
                "operationId": "metrics",
                "security": bearer,
                "responses": {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 404),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI document"),
                },
            }
        },
        "/docs": {"get": _page("Swagger UI for this API", "docs")},
        "/redoc": {"get": _page("ReDoc for this API", "redoc")},
        **{asset.path: {"get": _asset(asset)} for asset in viewers.ASSETS},
    }


_SCOPES = {"type": "array", "items": {"type": "string", "pattern": SCOPE_PATTERN_TEXT}}
_TOKEN_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "label": {"type": "string", "nullable": True},
    "created_at": {"type": "string", "format": "date-time"},
    "expires_at": {"type": "string", "format": "date-time"},
    "uses_left": {"type": "integer", "nullable": True},
    "state": {"type": "string", "enum": list(STATE_NAMES)},
    "scopes": _SCOPES,
}


def _schemas() -> dict[str, Any]:
    status_200 = {"type": "integer", "enum": [200]}
    return {
        "IssueRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ttl": {
                    "oneOf": [
                        {"type": "string", "pattern": TTL_PATTERN, "example": "15m"},
                        {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS},
                    ],
                    "nullable": True,
                    "description": "Lifetime: 90s, 15m, 1h30m, 7d, or seconds; "
                    "default 60m, at most 3650d",
                },
                "label": {
                    "type": "string",
                    "maxLength": MAX_LABEL_LENGTH,
                    "pattern": LABEL_PATTERN,
                    "nullable": True,
                    "description": "Printable text; control characters are refused",
                },
                "uses": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_USES,
                    "nullable": True,
                    "description": "Valid for this many checks; default unlimited",
                },
                "scopes": {**_SCOPES, "maxItems": MAX_SCOPES, "nullable": True},
            },
        },
        "ValidateRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "A `token` here must equal the path's token (else 400).",
            "properties": {"scopes": {**_SCOPES, "nullable": True}},
        },
        "ValidateBody": {
            "type": "object",
            "additionalProperties": False,
            "required": ["token"],
            "properties": {
                "token": {"type": "string", "description": "The whole token, ID:SECRET"},
                "scopes": {**_SCOPES, "nullable": True},
            },
        },
        "Issued": {
            "type": "object",
            "required": ["status_code", "token"],
            "properties": {
                "status_code": status_200,
                "token": {"type": "string", "example": "vizejx2joxg3:y_JTXqc44Si..."},
            },
        },
        "Validity": {
            "type": "object",
            "required": ["status_code", "status", "state"],
            "properties": {
                "status_code": status_200,
                "status": {"type": "boolean"},
                "state": {"type": "string", "enum": list(VERDICT_NAMES)},
                "id": {"type": "string"},
                "expires_at": {"type": "string", "format": "date-time"},
                "uses_left": {"type": "integer", "nullable": True},
                "scopes": _SCOPES,
            },
        },
        "Token": {
            "type": "object",
            "required": ["status_code", *_TOKEN_PROPERTIES],
            "properties": {"status_code": status_200, **_TOKEN_PROPERTIES},
        },
        "TokenList": {
            "type": "object",
            "required": ["status_code", "tokens", "next"],
            "properties": {
                "status_code": status_200,
                "tokens": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": list(_TOKEN_PROPERTIES),
                        "properties": _TOKEN_PROPERTIES,
                    },
                },
                "next": {
                    "type": "string",
                    "nullable": True,
                    "description": "The `after` of the next page; null on the last",
                },
            },
        },
        "Revoked": {
            "type": "object",
            "required": ["status_code", "status", "id"],
            "properties": {
                "status_code": status_200,
                "status": {"type": "boolean"},
                "id": {"type": "string"},
            },
        },
        "Purged": {
            "type": "object",
            "required": ["status_code", "status", "purged"],
            "properties": {
                "status_code": status_200,
                "status": {"type": "boolean"},
                "purged": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status_code", "status"],
            "properties": {
                "status_code": status_200,
                "status": {"type": "string", "enum": ["ok"]},
            },
        },
        "Error": {
            "type": "object",
            "required": ["status_code", "detail"],
            "properties": {
                "status_code": {"type": "integer"},
                "detail": {"type": "string"},
            },
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document served at /openapi.json."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tokencli token management service",
            "version": __version__,
            "description": (
                "Issue, validate and administer short-lived tokens. With an admin key, "
                "issuing, purging, /app/tokens and /metrics need `Authorization: Bearer "
                "KEY`; with a validate key, validation needs it (or the admin key)."
            ),
        },
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "adminKey": {"type": "http", "scheme": "bearer"},
                "validateKey": {"type": "http", "scheme": "bearer"},
            },
            "schemas": _schemas(),
        },
    }
