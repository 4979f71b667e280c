"""JSON in and out for the agent routes (`meshd.api.agents`): request parsing and answers.

On the way in, `_json_object` reads a request body that must be a JSON object, `_Fields`
reads its typed fields, and `_query` with `_query_int` and `_query_float` read the query
string; every refusal is an `ApiProblem` 400 (`_bad`) that names the field or parameter. On
the way out, `jsonable` shows plain CBOR data as JSON (byte strings as `{"$base64": ...}`,
integer map keys as text, non-finite floats as "NaN", "Infinity", "-Infinity"), and
`_message_json` describes one persistent inbox frame for an external agent. The names stay
importable from `meshd.api.agents`.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Collection
from json import JSONDecodeError
from typing import Any

from starlette.requests import Request

from meshd.api.base import ApiProblem
from protocol.envelope import Envelope
from protocol.errors import RemoteProtocolError

__all__ = ["jsonable"]

# The agent routes' logger: these helpers log as part of them.
log = logging.getLogger("meshd.api.agents")


# --- request parsing -------------------------------------------------------------------------


def _bad(message: str, code: str = "bad_request") -> ApiProblem:
    return ApiProblem(400, code, message)


async def _json_object(request: Request, what: str) -> dict[str, Any]:
    try:
        data = await request.json()
    except (JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(f"{what}: the body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise _bad(f"{what}: the body must be a JSON object, not {type(data).__name__}")
    return data


class _Fields:
    """Typed reads of a JSON request object; every refusal is a 400 naming the field."""

    def __init__(self, data: dict[str, Any], what: str, allowed: Collection[str]) -> None:
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise _bad(
                f"unknown field {unknown[0]!r} in the {what} request "
                f"(fields: {', '.join(sorted(allowed))})"
            )
        self.data = data

    def _fail(self, key: str, wanted: str) -> ApiProblem:
        return _bad(f"{key!r} must be {wanted}, got {self.data[key]!r:.80}")

    def has(self, key: str) -> bool:
        """Whether the field is present (even as null)."""
        return key in self.data

    def text(self, key: str, *, max_len: int = 256) -> str | None:
        """A string field of 1..max_len characters, or None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= max_len:
            raise self._fail(key, f"a string of 1..{max_len} characters")
        return value

    def integer(self, key: str, *, low: int, high: int) -> int | None:
        """An integer field in [low, high], or None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._fail(key, f"an integer from {low} to {high}")
        return value

    def number(self, key: str, *, low: float, high: float, open_low: bool = False) -> float | None:
        """A finite number in [low, high] (or (low, high]), or None when absent or null."""
        value = self.data.get(key)
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > low if open_low else value >= low)
        if not ok or value > high:
            bound = "more than" if open_low else "at least"
            raise self._fail(key, f"a number {bound} {low:g} and at most {high:g}")
        return float(value)

    def flag(self, key: str) -> bool:
        """A boolean field, false when absent or null."""
        value = self.data.get(key)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def texts(self, key: str, *, max_len: int = 64, max_items: int = 64) -> list[str]:
        """A list of strings, empty when absent or null."""
        value = self.data.get(key)
        if value is None:
            return []
        wanted = f"a list of at most {max_items} strings of 1..{max_len} characters"
        if not isinstance(value, list) or len(value) > max_items:
            raise self._fail(key, wanted)
        for item in value:
            if not isinstance(item, str) or not 0 < len(item) <= max_len:
                raise self._fail(key, wanted)
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """A JSON object field, empty when absent or null."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._fail(key, "a JSON object")
        return value


def _query(request: Request, allowed: Collection[str]) -> dict[str, str]:
    params = request.query_params
    for key in params:
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise _bad(f"unknown query parameter {key!r} (parameters: {known})")
    return {key: params[key] for key in params}


def _query_int(params: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    text = params.get(key)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _bad(f"query parameter {key!r} must be an integer from {low} to {high}, got {text!r}")
    return value


def _query_float(params: dict[str, str], key: str, default: float, high: float) -> float:
    text = params.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= high:  # also refuses nan
        raise _bad(f"query parameter {key!r} must be a number from 0 to {high:g}, got {text!r}")
    return value


# --- JSON out --------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Plain CBOR data as JSON data (bytes as {"$base64": ...}, keys as text, inf/nan as text)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    # Not plain CBOR (the decoder refuses tags); say what it was rather than fail the request.
    return repr(value)


def _message_json(seq: int, frame: bytes) -> dict[str, Any]:
    try:
        envelope = Envelope.decode(frame)
    except RemoteProtocolError as exc:
        # It was checked when it arrived; still, the client must be able to ack past it.
        log.warning("inbox frame %d cannot be decoded: %s", seq, exc)
        return {
            "seq": seq,
            "id": None,
            "from": None,
            "kind": None,
            "body": None,
            "reply_to": None,
            "topic": None,
            "created_ms": None,
            "error": f"undecodable message: {exc}",
        }
    recipient = envelope.recipient
    return {
        "seq": seq,
        "id": envelope.msg_id.hex(),
        "from": envelope.sender.did,
        "kind": envelope.kind,
        "body": jsonable(envelope.body),
        "reply_to": envelope.reply_to.hex() if envelope.reply_to is not None else None,
        "topic": recipient if isinstance(recipient, str) else None,
        "created_ms": envelope.created_ms,
    }
