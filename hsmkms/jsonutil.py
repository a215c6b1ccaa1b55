"""JSON parsing shared by the parameters that carry JSON documents (contexts, policies)."""

from __future__ import annotations


def reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` that refuses a key given twice: JSON allows it, but which value wins is a guess."""
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result
