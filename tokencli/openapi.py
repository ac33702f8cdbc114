"""The OpenAPI 3 description of `tokencli serve`, and the /docs and /redoc pages.

Kept apart from server.py so the server module stays about HTTP handling. A test checks
that this document and the server's route table name exactly the same routes.
"""

from __future__ import annotations

from typing import Any

from tokencli import __version__
from tokencli.service import MAX_LABEL_LENGTH, MAX_TTL_SECONDS, MAX_USES

MAX_BODY_BYTES = 64 * 1024
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
        401: "Missing or wrong admin key",
        413: f"Body larger than {MAX_BODY_BYTES} bytes",
        503: "The database cannot be used",
    }
    return {str(code): _json(_ERROR_REF, texts[code]) for code in codes}


def _validate_operation(method: str) -> dict[str, Any]:
    return {
        "summary": f"Check a token ({method}); a valid check uses one use",
        "operationId": f"validate_token_{method.lower()}",
        "parameters": [
            {
                "name": "token",
                "in": "path",
                "required": True,
                "description": "The whole token, ID:SECRET",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": _json({"$ref": "#/components/schemas/Validity"}, "The verdict"),
            **_errors(503),
        },
    }


def _page(summary: str, operation_id: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "operationId": operation_id,
        "responses": {
            "200": {"description": "HTML page", "content": {"text/html": {"schema": {}}}}
        },
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document served at /openapi.json."""
    bearer: list[dict[str, list[str]]] = [{"adminKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tokencli token management service",
            "version": __version__,
            "description": (
                "Issue, validate and purge short-lived tokens. When the server has an admin "
                "key, issuing and purging need `Authorization: Bearer KEY`."
            ),
        },
        "paths": {
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
            "/app/clear/all/tokens": {
                "delete": {
                    "summary": "Purge expired, used-up and revoked tokens",
                    "operationId": "purge_tokens",
                    "security": bearer,
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Purged"}, "How many went"),
                        **_errors(401, 503),
                    },
                }
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
        },
        "components": {
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
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
                    },
                },
                "Issued": {
                    "type": "object",
                    "required": ["status_code", "token"],
                    "properties": {
                        "status_code": {"type": "integer", "enum": [200]},
                        "token": {"type": "string", "example": "vizejx2joxg3:y_JTXqc44Si..."},
                    },
                },
                "Validity": {
                    "type": "object",
                    "required": ["status_code", "status"],
                    "properties": {
                        "status_code": {"type": "integer", "enum": [200]},
                        "status": {"type": "boolean"},
                    },
                },
                "Purged": {
                    "type": "object",
                    "required": ["status_code", "status", "purged"],
                    "properties": {
                        "status_code": {"type": "integer", "enum": [200]},
                        "status": {"type": "boolean"},
                        "purged": {"type": "integer", "minimum": 0},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status_code", "status"],
                    "properties": {
                        "status_code": {"type": "integer", "enum": [200]},
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
            },
        },
    }


# The same pages FastAPI serves: the viewers load from a CDN in the reader's browser.
SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tokencli API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""

REDOC_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tokencli API</title></head><body>
<redoc spec-url="/openapi.json"></redoc>
<script src="https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js"></script>
</body></html>
"""
