"""Request parameters: merged from the URL query and a form body, then read through typed accessors.

Every accessor either returns a valid value or raises the Alibaba error for it (MissingParameter,
InvalidParameter), so action handlers never see a raw, unchecked string.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote_to_bytes

from hsmkms.errors import InvalidParameter, MissingParameter, ParseRequestParameterException
from hsmkms.service.context import parse_context, validate_context

MAX_PARAMETERS = 256
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}\Z")
_BOOLEANS = {"true": True, "false": False}  # compared case-insensitively: Python SDKs send True/False


def parse_pairs(encoded: bytes) -> list[tuple[str, str]]:
    """Decode ``a=1&b=2`` (``+`` is a space, escapes are UTF-8).

    Raw non-ASCII bytes, escapes that are not UTF-8, or too many fields are a 400, never a guess.
    """
    if not encoded:
        return []
    try:
        text = encoded.decode("ascii")
        if text.count("&") >= MAX_PARAMETERS:  # as parse_qsl counts fields: empty ones too
            raise ValueError("too many fields")
        # parse_qsl's splitting, without its unquote() per name and value (most of its time).
        pieces: list[str] = []  # name, value, name, value ...
        for field in text.split("&"):
            if field:  # empty fields are skipped; a field without '=' has an empty value
                name, _, value = field.partition("=")
                pieces += (name, value)
        if "%" in text or "+" in text:
            # All pieces decoded in one call, joined by NULs: an escape cannot span a NUL (not a hex digit), and
            # UTF-8 is valid joined by NULs exactly when each piece is valid alone.
            decoded = _percent_decode("\x00".join(pieces).replace("+", " ")).decode("utf-8").split("\x00")
            if len(decoded) != len(pieces):  # a NUL in the data itself (raw or %00): decode piece by piece
                return parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                                 max_num_fields=MAX_PARAMETERS)
            pieces = decoded
        return list(zip(pieces[::2], pieces[1::2], strict=True))
    except (UnicodeDecodeError, ValueError):
        raise ParseRequestParameterException() from None


def _percent_decode(text: str) -> bytes:
    """unquote_to_bytes(text) for ASCII text, in C: each %XX becomes a \\xXX escape (backslashes doubled first,
    so that no other escape exists) for codecs.escape_decode.  A malformed escape (%4G, a % at the end) fails
    there, and unquote_to_bytes, which keeps it as it is, decodes the text instead."""
    try:
        return codecs.escape_decode(text.replace("\\", "\\\\").replace("%", "\\x"))[0]
    except ValueError:
        return unquote_to_bytes(text)


def merge(*sources: Iterable[tuple[str, str]]) -> dict[str, str]:
    """One parameter map; a name given twice is refused rather than guessed at."""
    pairs = [pair for source in sources for pair in source]
    params = dict(pairs)
    if len(params) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise InvalidParameter(name, "The parameter is given more than once.")
            seen.add(name)
    return params


class Params:
    def __init__(self, values: Mapping[str, str]):
        self.values = values
        self._contexts: dict[str, dict[str, str]] = {}  # parsed once per request (handler and audit read them)
        self._dotted: bool | None = None

    @property
    def dotted(self) -> bool:
        """Whether a name has a dot, as a flattened map or list has (``EncryptionContext.app``); most have none."""
        if self._dotted is None:
            self._dotted = any("." in name for name in self.values)
        return self._dotted

    def optional(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        return default if value is None or value == "" else value

    def required(self, name: str) -> str:
        value = self.values.get(name)
        if value is None or value == "":
            raise MissingParameter(name)
        return value

    def text(self, name: str, max_chars: int, default: str = "", required: bool = False) -> str:
        value = self.required(name) if required else self.values.get(name, default)
        if len(value) > max_chars:
            raise InvalidParameter(name, f"It must not exceed {max_chars} characters.")
        return value

    def integer(self, name: str, low: int, high: int, default: int | None = None,
                required: bool = False) -> int | None:
        value = self.required(name) if required else self.optional(name)
        if value is None:
            return default
        if not _INTEGER.match(value) or not low <= int(value) <= high:
            raise InvalidParameter(name, f"It must be an integer from {low} to {high}.")
        return int(value)

    def boolean(self, name: str, default: bool = False, required: bool = False) -> bool:
        value = self.required(name) if required else self.optional(name)
        if value is None:
            return default
        try:
            return _BOOLEANS[value.lower()]
        except KeyError:
            raise InvalidParameter(name, "It must be true or false.") from None

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str | None:
        value = self.optional(name, default)
        if value is not None and value not in choices:
            raise InvalidParameter(name, f"Valid values: {', '.join(sorted(choices))}.")
        return value

    def json(self, name: str, hint: str, default: str | None = None, required: bool = False):
        """A JSON-valued parameter (Tags, TagKeys, Filters ...), parsed; InvalidParameter with ``hint`` if it
        is not JSON, nests absurdly deep, or holds text that is not valid Unicode (a lone surrogate)."""
        text = self.required(name) if required else self.optional(name, default)
        if text is None:
            return None
        try:
            document = json.loads(text)
            json.dumps(document, ensure_ascii=False).encode("utf-8")  # lone surrogates cannot be stored
        except (ValueError, RecursionError, UnicodeEncodeError):
            raise InvalidParameter(name, hint) from None
        return document

    def context(self, name: str = "EncryptionContext") -> dict[str, str]:
        """An EncryptionContext as a JSON string, or flattened as ``<name>.<key>=<value>`` (Node SDK)."""
        context = self._contexts.get(name)
        if context is None:
            prefix = name + "."
            flattened = {}
            if self.dotted:
                flattened = {k[len(prefix):]: v for k, v in self.values.items() if k.startswith(prefix)}
            if flattened:
                if self.values.get(name):
                    raise InvalidParameter(name, "Give the context either as JSON or flattened, not both.")
                context = validate_context(flattened, name)
            else:
                context = parse_context(self.values.get(name), name)
            self._contexts[name] = context
        return context

    def indexed(self, name: str, max_items: int = 50) -> list[str]:
        """A list flattened as ``<name>.1``, ``<name>.2`` ... (the Tea SDKs' list encoding), in index order."""
        return [value for _, value in self._numbered(name, "", max_items)]

    def indexed_pairs(self, name: str, first: str, second: str, max_items: int = 50) -> list[tuple[str, str | None]]:
        """``<name>.N.<first>`` with its optional ``<name>.N.<second>``, e.g. Tag.1.Key / Tag.1.Value."""
        pairs = []
        for index, value in self._numbered(name, "." + first, max_items):
            pairs.append((value, self.values.get(f"{name}.{index}.{second}")))
        orphans = [k for k in self.values if k.startswith(name + ".") and k.endswith("." + second)
                   and f"{k[:-len(second)]}{first}" not in self.values]
        if orphans:
            raise InvalidParameter(orphans[0], f"It has no matching {first}.")
        return pairs

    def _numbered(self, name: str, suffix: str, max_items: int) -> list[tuple[int, str]]:
        found = []
        for key, value in self.values.items():
            if not (key.startswith(name + ".") and key.endswith(suffix)):
                continue
            index = key[len(name) + 1: len(key) - len(suffix)]
            if not (index.isascii() and index.isdigit() and 1 <= int(index) <= max_items):
                raise InvalidParameter(key, f"Indexes run from 1 to {max_items}.")
            found.append((int(index), value))
        return sorted(found)

    def page(self, default_size: int = 10, max_size: int = 100) -> tuple[int, int]:
        """(PageNumber, PageSize), both validated."""
        number = self.integer("PageNumber", 1, 1_000_000, default=1)
        size = self.integer("PageSize", 1, max_size, default=default_size)
        return number, size
