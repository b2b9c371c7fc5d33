"""The VM metadata document: a JSON object, replaced (PUT) or merge-patched (RFC 7396)."""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidSpec

MAX_BYTES = 51200   # Firecracker's default MMDS data store limit


def _parse(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise InvalidSpec(field, f"not valid JSON: {e}") from None


def _dump(doc: dict) -> str:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MAX_BYTES:
        raise InvalidSpec("json", f"metadata document is {len(text.encode())} bytes, at most "
                                  f"{MAX_BYTES} are allowed")
    return text


def put(text: str) -> str:
    doc = _parse(text, "json")
    if not isinstance(doc, dict):
        raise InvalidSpec("json", "the metadata document must be a JSON object")
    return _dump(doc)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def patch(current: str, text: str) -> str:
    p = _parse(text, "json")
    if not isinstance(p, dict):
        raise InvalidSpec("json", "a merge patch for the metadata document must be a JSON object")
    return _dump(merge_patch(json.loads(current or "{}"), p))
