"""EncryptionContext: parsing and the canonical form used as AES-GCM additional authenticated data.

A context is a JSON object of string to string.  It is compared as a map, so ``{"a":"1","b":"2"}``,
``{"b": "2", "a": "1"}`` and the Node SDK's flattened ``EncryptionContext.a=1&EncryptionContext.b=2`` are
the same context; an absent context equals ``{}``.  The canonical serialisation (sorted keys, compact
separators, UTF-8, no ASCII escaping) is the AAD, so two contexts authenticate each other exactly when they
are equal as maps.  Plain concatenation would not do: ``{"ab":"c"}`` and ``{"a":"bc"}`` would collide.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from hsmkms.errors import InvalidParameter
from hsmkms.jsonutil import loads_strict

MAX_CONTEXT_CHARS = 8192

EMPTY_AAD = b"{}"
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # made once


class Context(dict):
    """A parsed context: a plain map of string to string that computes its canonical AAD once (the handler
    uses it as AAD and the audit trail hashes it)."""

    __slots__ = ("_aad",)

    @property
    def aad(self) -> bytes:
        try:
            return self._aad
        except AttributeError:
            self._aad = _canonical_bytes(self)
            return self._aad


def parse_context(text: str | None, name: str = "EncryptionContext") -> Context:
    """Parse the JSON-string form.  ``None`` or an empty string means no context."""
    if text is None or text == "":
        return Context()
    if len(text) > MAX_CONTEXT_CHARS:
        raise InvalidParameter(name, f"It must not exceed {MAX_CONTEXT_CHARS} characters.")
    try:
        value = loads_strict(text)
    except (ValueError, RecursionError):
        raise InvalidParameter(name, "It must be a JSON object of string keys to string values.") from None
    # The canonical form of a JSON text is never longer than the text, so its length needs no new check.
    return validate_context(value, name, check_length=False)


def validate_context(value: object, name: str = "EncryptionContext", check_length: bool = True) -> Context:
    """Check that ``value`` is a map of string to string within the size limit."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidParameter(name, "It must be a JSON object of string keys to string values.")
    context = Context(value)
    if check_length and len(canonical_text(context)) > MAX_CONTEXT_CHARS:
        raise InvalidParameter(name, f"It must not exceed {MAX_CONTEXT_CHARS} characters.")
    return context


def canonical_text(context: Mapping[str, str]) -> str:
    return _CANONICAL.encode(context)


def canonical_aad(context: Mapping[str, str]) -> bytes:
    """The bytes bound to a ciphertext as GCM additional data."""
    if isinstance(context, Context):
        return context.aad
    return _canonical_bytes(context)


def _canonical_bytes(context: Mapping[str, str]) -> bytes:
    if not context:
        return EMPTY_AAD
    # surrogatepass: a lone surrogate escaped in JSON (\ud800) is a valid JSON string; keep it distinct.
    return canonical_text(context).encode("utf-8", "surrogatepass")
