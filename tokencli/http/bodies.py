"""Reading a JSON request body: malformed, too deep or ambiguous bodies are 400.

Ambiguous means an object that repeats a key, at any depth: JSON leaves the meaning open,
Python keeps the last, and a proxy or WAF in front may read the first, so
`{"scopes": ["admin"], "scopes": []}` would be judged as two different requests.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from tokencli.http.http11 import HttpError
from tokencli.service.views import literal

__all__ = ["MAX_JSON_DEPTH", "parse_json_body"]

# JSON bodies nest at most this deep: json.loads recurses, and 20,000 nested brackets
# would otherwise end in RecursionError.
MAX_JSON_DEPTH = 32


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refused (400) if a key repeats: with the last one winning, a
    proxy that reads the first would judge another body than ours."""
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = literal(key[:64])
                raise HttpError(HTTPStatus.BAD_REQUEST, f"body repeats the key {shown!r}")
            seen.add(key)
    return members


def parse_json_body(body: bytes) -> Any:
    """The JSON value of a body, refused (400) if malformed, nested too deep, or if any
    object in it, at any depth, repeats a key."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise HttpError(
                    HTTPStatus.BAD_REQUEST, f"body nests deeper than {MAX_JSON_DEPTH} levels"
                )
        elif byte in (0x5D, 0x7D):
            depth -= 1
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HttpError(HTTPStatus.BAD_REQUEST, "body is not valid JSON") from None
