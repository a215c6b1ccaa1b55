"""EncryptionContext: parsing and the canonical form used as AES-GCM additional authenticated data.

A context is a JSON object of string to string.  It is compared as a map, so ``{"a":"1","b":"2"}``,
``{"b": "2", "a": "1"}`` and the Node SDK's flattened ``EncryptionContext.a=1&EncryptionContext.b=2`` are
the same context; an absent context equals ``{}``.  The canonical serialisation (sorted keys, compact
separators, UTF-8, no ASCII escaping) is the AAD, so two contexts authenticate each other exactly when they
are equal as maps.  Plain concatenation would not do: ``{"ab":"c"}`` and ``{"a":"bc"}`` would collide.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from hsmkms.errors import InvalidParameter
from hsmkms.jsonutil import loads_strict

MAX_CONTEXT_CHARS = 8192

EMPTY_AAD = b"{}"
MAX_REMEMBERED_CONTEXTS = 256
MAX_REMEMBERED_CONTEXT_CHARS = 1024
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # made once


class Context(dict):
    """A parsed context: a read-only map of string to string that computes its canonical AAD and the AAD's
    digest once (the handler uses it as AAD, the audit trail records the digest).  Read-only, because
    parse_context hands the same one to every request that sends the same text."""

    __slots__ = ("_aad", "_digest")

    def _read_only(self, *args, **kwargs):
        raise TypeError("an encryption context is read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only

    @property
    def aad(self) -> bytes:
        try:
            return self._aad
        except AttributeError:
            self._aad = _canonical_bytes(self)
            return self._aad

    @property
    def digest(self) -> str:
        """``context_digest`` of the AAD."""
        try:
            return self._digest
        except AttributeError:
            self._digest = context_digest(self.aad)
            return self._digest


def parse_context(text: str | None, name: str = "EncryptionContext") -> Context:
    """Parse the JSON-string form.  ``None`` or an empty string means no context.

    An application sends the same few contexts over and over: the last ones parsed are remembered by their
    text (short ones only, emptied when full), so that a repeated one is neither parsed nor canonicalised again.
    """
    if text is None or text == "":
        return NO_CONTEXT
    context = _recent_contexts.get(text)
    if context is not None:
        return context
    if len(text) > MAX_CONTEXT_CHARS:
        raise InvalidParameter(name, f"It must not exceed {MAX_CONTEXT_CHARS} characters.")
    try:
        value = loads_strict(text)
    except (ValueError, RecursionError):
        raise InvalidParameter(name, "It must be a JSON object of string keys to string values.") from None
    # The canonical form of a JSON text is never longer than the text, so its length needs no new check.
    context = validate_context(value, name, check_length=False)
    if len(text) <= MAX_REMEMBERED_CONTEXT_CHARS:
        if len(_recent_contexts) >= MAX_REMEMBERED_CONTEXTS:
            _recent_contexts.clear()
        _recent_contexts[text] = context
    return context


NO_CONTEXT = Context()
_recent_contexts: dict[str, Context] = {}  # JSON text -> its context, for the contexts parse_context saw last


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


def context_digest(aad: bytes | None) -> str:
    """Hex SHA-256 of the canonical encryption-context bytes; ``""`` when there was none.

    An absent context equals ``{}`` everywhere in the service, so the canonical empty context (``b"{}"``)
    also gives ``""``.  The audit trail records it: it correlates requests without recording the context.
    """
    if aad is None or aad == b"" or aad == EMPTY_AAD:
        return ""
    return hashlib.sha256(aad).hexdigest()


def _canonical_bytes(context: Mapping[str, str]) -> bytes:
    if not context:
        return EMPTY_AAD
    # surrogatepass: a lone surrogate escaped in JSON (\ud800) is a valid JSON string; keep it distinct.
    return canonical_text(context).encode("utf-8", "surrogatepass")
