"""JSON parsing shared by the parameters that carry JSON documents (contexts, policies)."""

from __future__ import annotations

import json


def reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` that refuses a key given twice: JSON allows it, but which value wins is a guess."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


# Made once: json.loads and json.dumps with any option build a new decoder or encoder on every call.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=reject_duplicate_keys)


def loads_strict(text: str) -> object:
    """``json.loads`` that refuses duplicate keys (ValueError)."""
    return _STRICT_DECODER.decode(text)
