"""Tags on keys: validation (reference §5.5/§5.6) and the operations behind both tag API families."""

from __future__ import annotations

from collections.abc import Iterable

from hsmkms.errors import InvalidParameter, LimitExceeded
from hsmkms.service import states
from hsmkms.service.keys import KeyService
from hsmkms.store.base import KeyRecord, TagRecord

MAX_TAGS_PER_KEY = 20
MAX_TAG_CHARS = 128
_TAG_SYMBOLS = set("/\\_-.+=:@ ")
_RESERVED_PREFIXES = ("aliyun", "acs:")


def validate_tag(tag_key: str, tag_value: str, param: str = "Tags") -> tuple[str, str]:
    if not 1 <= len(tag_key) <= MAX_TAG_CHARS or len(tag_value) > MAX_TAG_CHARS:
        raise InvalidParameter(param, f"A tag key has 1-{MAX_TAG_CHARS} characters, a value at most {MAX_TAG_CHARS}.")
    if tag_key.lower().startswith(_RESERVED_PREFIXES):
        raise InvalidParameter(param, "A tag key must not start with 'aliyun' or 'acs:'.")
    if not all(ch.isalnum() or ch in _TAG_SYMBOLS for ch in tag_key + tag_value):
        raise InvalidParameter(param, "Tags use letters, digits, spaces and / \\ _ - . + = : @ only.")
    return tag_key, tag_value


TAGS_HINT = 'Use a JSON array like [{"TagKey":"k","TagValue":"v"}].'
TAG_KEYS_HINT = 'Use a JSON array of tag keys like ["k1","k2"].'


def parse_tags(document: object, param: str = "Tags") -> list[tuple[str, str]]:
    """Parsed ``[{"TagKey":"k","TagValue":"v"}, ...]`` as validated pairs (at most MAX_TAGS_PER_KEY)."""
    if not isinstance(document, list) or not all(
        isinstance(item, dict) and set(item) <= {"TagKey", "TagValue"} and isinstance(item.get("TagKey"), str)
        and isinstance(item.get("TagValue", ""), str)
        for item in document
    ):
        raise InvalidParameter(param, TAGS_HINT)
    return validate_tags([(item["TagKey"], item.get("TagValue", "")) for item in document], param)


def validate_tags(pairs: Iterable[tuple[str, str]], param: str = "Tags") -> list[tuple[str, str]]:
    pairs = [validate_tag(k, v, param) for k, v in pairs]
    if len(pairs) > MAX_TAGS_PER_KEY or len({k for k, _ in pairs}) != len(pairs):
        raise InvalidParameter(param, f"At most {MAX_TAGS_PER_KEY} tags, each key once.")
    return pairs


def parse_tag_keys(document: object, param: str = "TagKeys") -> list[str]:
    """Parsed ``["k1","k2"]``."""
    if not isinstance(document, list) or not document or not all(isinstance(k, str) and k for k in document):
        raise InvalidParameter(param, TAG_KEYS_HINT)
    return document


class TagService:
    def __init__(self, keys: KeyService):
        self.keys = keys
        self.store = keys.store

    def tag(self, key: KeyRecord, pairs: list[tuple[str, str]], action: str = "TagResource") -> None:
        states.check(action, key.state)
        existing = {t.tag_key for t in self.store.list_tags([key.key_id])}
        if len(existing | {k for k, _ in pairs}) > MAX_TAGS_PER_KEY:
            raise LimitExceeded(f"A key has at most {MAX_TAGS_PER_KEY} tags.")
        self.store.set_tags([TagRecord(key.key_id, k, v) for k, v in pairs])

    def untag(self, key: KeyRecord, tag_keys: list[str] | None, action: str = "UntagResource") -> None:
        """Remove the named tags, or every tag for None."""
        states.check(action, key.state)
        self.store.remove_tags(key.key_id, tag_keys)

    def tags_of(self, key: KeyRecord) -> list[TagRecord]:
        states.check("ListResourceTags", key.state)
        return self.store.list_tags([key.key_id])

    def find(self, keys: list[KeyRecord], wanted: list[tuple[str, str | None]]) -> list[TagRecord]:
        """Tags of the given keys (of all keys when none are given) that match a wanted (key, value) pair;
        a None value matches any value of that key."""
        for key in keys:
            states.check("ListResourceTags", key.state)
        tags = self.store.list_tags([key.key_id for key in keys] or None)
        if wanted:
            tags = [t for t in tags if any(t.tag_key == k and v in (None, t.tag_value) for k, v in wanted)]
        return tags
