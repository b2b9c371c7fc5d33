"""The MMDS data store: one JSON document, rendered as JSON or as EC2 IMDS text.

Semantics follow Firecracker's `mmds/data_store.rs`: PUT replaces the whole
document, PATCH is an RFC 7396 merge patch (null deletes) and needs a document
to exist; both are refused when the compact JSON encoding would exceed the
limit (Firecracker's default, 51200 bytes) and leave the store unchanged.
Lookups take the HTTP path as a JSON pointer ("/a/b", a trailing "/" allowed,
"~0"/"~1" escapes, array indices). JSON output is compact with keys sorted, as
serde_json's default map gives; IMDS output lists an object's keys one a line
(objects get a "/"), prints a string raw, and refuses anything else.
"""

from __future__ import annotations

import json
from typing import Any

DEFAULT_LIMIT = 51200      # --mmds-size-limit default (= --http-api-max-payload-size)


class MmdsError(Exception):
    """Base of the data store's errors; the message is what Firecracker says."""


class LimitExceeded(MmdsError):
    def __init__(self, size: int, limit: int):
        super().__init__(f"The MMDS patch request doesn't fit. The document would be {size} "
                         f"bytes; the data store limit is {limit} bytes.")
        self.size, self.limit = size, limit


class NotInitialized(MmdsError):
    def __init__(self):
        super().__init__("The MMDS data store is not initialized.")


class NotFound(MmdsError):
    def __init__(self, path: str):
        super().__init__(f"The MMDS resource does not exist: {path}")
        self.path = path


class UnsupportedValueType(MmdsError):
    def __init__(self):
        super().__init__("Cannot retrieve value. The value has an unsupported type.")


class InvalidDocument(MmdsError):
    pass


def dumps(value: Any) -> str:
    """Compact JSON, keys sorted, non-ASCII kept: serde_json's `Value::to_string`."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False)


def encoded_size(value: Any) -> int:
    return len(dumps(value).encode())


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _load(doc: Any) -> Any:
    """A document given as JSON text/bytes, or as an already-parsed Python value."""
    if isinstance(doc, (bytes, bytearray, memoryview)):
        doc = bytes(doc).decode("utf-8")
    if isinstance(doc, str):
        try:
            return json.loads(doc)
        except ValueError as e:
            raise InvalidDocument(f"not valid JSON: {e}") from None
    try:
        return json.loads(dumps(doc))  # a private copy, and proof it is JSON
    except (TypeError, ValueError) as e:
        raise InvalidDocument(f"not a JSON value: {e}") from None


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def pointer(doc: Any, path: str) -> tuple[bool, Any]:
    """RFC 6901 lookup as serde_json's `Value::pointer`: (found, value)."""
    if path == "":
        return True, doc
    if not path.startswith("/"):
        return False, None
    cur = doc
    for raw in path[1:].split("/"):
        token = _unescape(raw)
        if isinstance(cur, dict):
            if token not in cur:
                return False, None
            cur = cur[token]
        elif isinstance(cur, list):
            # serde: a decimal usize without a leading zero (except "0" itself) or sign
            if not token.isdigit() or not token.isascii() or (len(token) > 1 and token[0] == "0"):
                return False, None
            i = int(token)
            if i >= len(cur):
                return False, None
            cur = cur[i]
        else:
            return False, None
    return True, cur


def format_imds(value: Any) -> str:
    if isinstance(value, dict):
        return "\n".join(k + "/" if isinstance(value[k], dict) else k for k in sorted(value))
    if isinstance(value, str):
        return value
    raise UnsupportedValueType()


class MmdsStore:
    """The document and its size limit. Not thread-safe by itself: the VMM touches it
    from its event loop only (node updates arrive there as actions)."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise ValueError(f"MMDS size limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self._doc: Any = None
        self.initialized = False

    def _check(self, value: Any) -> None:
        size = encoded_size(value)
        if size > self.limit:
            raise LimitExceeded(size, self.limit)

    def put(self, doc: Any) -> None:
        value = _load(doc)
        self._check(value)
        self._doc, self.initialized = value, True

    def patch(self, patch: Any) -> None:
        if not self.initialized:
            raise NotInitialized()
        value = merge_patch(self._doc, _load(patch))
        self._check(value)
        self._doc = value

    @property
    def document(self) -> Any:
        """A copy of the whole document (None before the first PUT)."""
        return _load(self._doc) if self.initialized else None

    def to_json(self) -> str:
        return dumps(self._doc if self.initialized else {})

    def get(self, path: str, as_json: bool, imds_compat: bool = False) -> str:
        """The rendered value at `path` (already "//"-collapsed); NotFound / UnsupportedValueType."""
        lookup = path[:-1] if path.endswith("/") else path
        found, value = pointer(self._doc, lookup)
        if not found:
            raise NotFound(path)
        if as_json and not imds_compat:
            return dumps(value)
        return format_imds(value)
