"""EncryptionContext parsing and its canonical form (the AES-GCM AAD)."""

from __future__ import annotations

import pytest

from hsmkms.errors import InvalidParameter
from hsmkms.service import context as context_module
from hsmkms.service.context import (
    EMPTY_AAD,
    MAX_CONTEXT_CHARS,
    canonical_aad,
    canonical_text,
    parse_context,
    validate_context,
)


def aad(text: str | None) -> bytes:
    return canonical_aad(parse_context(text))


def test_key_order_and_whitespace_do_not_matter():
    compact = aad('{"a":"1","b":"2"}')
    assert compact == aad('{"b": "2", "a": "1"}')
    assert compact == aad(' {\n  "b" : "2" ,\t"a":"1"\n} ')
    assert compact == b'{"a":"1","b":"2"}'


@pytest.mark.parametrize("absent", [None, "", "{}", " { } "])
def test_absent_context_equals_empty_object(absent):
    assert parse_context(absent) == {}
    assert aad(absent) == aad("{}") == EMPTY_AAD == b"{}"


def test_empty_mapping_aad():
    assert canonical_aad({}) == b"{}"


def test_concatenation_collision_is_avoided():
    assert aad('{"ab":"c"}') != aad('{"a":"bc"}')
    assert aad('{"a":"b","c":"d"}') != aad('{"a":"b,c:d"}')


def test_different_values_differ():
    assert aad('{"a":"1"}') != aad('{"a":"2"}')
    assert aad('{"a":"1"}') != aad('{"A":"1"}')
    assert aad('{"a":"1"}') != aad("{}")
    assert aad('{"a":""}') != aad("{}")


def test_pinned_canonical_bytes():
    text = '{"region": "杭州", "b": "x y", "a": "1\\"2"}'
    assert aad(text) == b'{"a":"1\\"2","b":"x y","region":"\xe6\x9d\xad\xe5\xb7\x9e"}'


def test_non_ascii_kept_as_utf8_not_escaped():
    context = parse_context('{"k":"é€"}')
    assert context == {"k": "é€"}
    assert canonical_text(context) == '{"k":"é€"}'
    assert canonical_aad(context) == '{"k":"é€"}'.encode("utf-8")
    assert b"\\u" not in canonical_aad(context)


def test_json_escapes_equal_literal_characters():
    assert aad('{"k":"\\u00e9"}') == aad('{"k":"é"}')
    assert aad('{"k":"\\/"}') == aad('{"k":"/"}')


def test_lone_surrogate_is_kept_distinct():
    lone = aad('{"k":"\\ud800"}')
    assert lone == b'{"k":"\xed\xa0\x80"}'
    assert lone != aad('{"k":"\\ud801"}')
    assert lone != aad('{"k":"?"}')


def test_sorting_is_by_code_point():
    assert aad('{"b":"1","B":"2","a":"3"}') == b'{"B":"2","a":"3","b":"1"}'


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '["a","b"]',
        '[{"a":"b"}]',
        '{"a":1}',
        '{"a":1.5}',
        '{"a":true}',
        '{"a":null}',
        '{"a":NaN}',
        '{"a":["b"]}',
        '{"a":{"b":"c"}}',
        '"a string"',
        "1",
        "null",
        "true",
        "{",
        '{"a":"b",}',
        "{'a':'b'}",
        '{"a":"b"} {"c":"d"}',
        "not json",
        '{"a":"1","a":"2"}',
        '{"a":"1","a":"1"}',
        '{"x":"1","a":"2","x":"3"}',
        "[" * 5000 + "]" * 5000,
    ],
)
def test_rejections(text):
    with pytest.raises(InvalidParameter) as info:
        parse_context(text)
    assert info.value.code == "InvalidParameter"
    assert info.value.status == 400
    assert '"EncryptionContext"' in info.value.message


def test_rejection_names_the_given_parameter():
    with pytest.raises(InvalidParameter) as info:
        parse_context("[]", "SourceEncryptionContext")
    assert '"SourceEncryptionContext"' in info.value.message


def _text_of_length(length: int) -> str:
    prefix, suffix = '{"k":"', '"}'
    text = prefix + "v" * (length - len(prefix) - len(suffix)) + suffix
    assert len(text) == length
    return text


def test_exactly_max_characters_accepted():
    assert MAX_CONTEXT_CHARS == 8192
    text = _text_of_length(8192)
    context = parse_context(text)
    assert canonical_text(context) == text
    assert canonical_aad(context) == text.encode()


def test_one_over_max_characters_rejected():
    with pytest.raises(InvalidParameter):
        parse_context(_text_of_length(8193))


def test_long_text_with_whitespace_rejected_even_if_canonical_is_short():
    text = '{"k":"v"' + " " * 8200 + "}"
    with pytest.raises(InvalidParameter):
        parse_context(text)


def test_max_characters_counts_characters_not_bytes():
    prefix, suffix = '{"k":"', '"}'
    text = prefix + "é" * (8192 - len(prefix) - len(suffix)) + suffix
    assert len(text) == 8192 and len(text.encode()) > 8192
    assert canonical_text(parse_context(text)) == text


def test_validate_context_accepts_string_map():
    assert validate_context({"a": "1", "b": "é"}) == {"a": "1", "b": "é"}


@pytest.mark.parametrize("value", [{"a": 1}, {1: "a"}, ["a"], "a", None, {"a": None}, {"a": {"b": "c"}}])
def test_validate_context_rejects(value):
    with pytest.raises(InvalidParameter):
        validate_context(value)


def test_validate_context_limits_canonical_length():
    ok = {"k": "v" * (8192 - len('{"k":""}'))}
    assert len(canonical_text(ok)) == 8192
    assert validate_context(ok) == ok
    with pytest.raises(InvalidParameter):
        validate_context({"k": "v" * (8193 - len('{"k":""}'))})


def test_validate_context_returns_a_read_only_copy():
    source = {"a": "1"}
    result = validate_context(source)
    source["b"] = "2"
    assert result == {"a": "1"}
    for mutate in (lambda c: c.__setitem__("b", "2"), lambda c: c.__delitem__("a"), lambda c: c.update(b="2"),
                   lambda c: c.pop("a"), lambda c: c.popitem(), lambda c: c.setdefault("b", "2"), lambda c: c.clear(),
                   lambda c: c.__ior__({"b": "2"})):
        with pytest.raises(TypeError):
            mutate(result)
    assert result == {"a": "1"}


def test_a_repeated_context_text_is_parsed_once():
    text = '{"app":"remembered","n":"1"}'
    first = parse_context(text)
    assert parse_context(text) is first
    assert canonical_aad(first) == b'{"app":"remembered","n":"1"}'


def test_remembered_contexts_are_bounded_in_number_and_length(monkeypatch):
    monkeypatch.setattr(context_module, "_recent_contexts", {})
    for n in range(context_module.MAX_REMEMBERED_CONTEXTS + 10):
        parse_context(f'{{"n":"{n}"}}')
    assert 0 < len(context_module._recent_contexts) <= context_module.MAX_REMEMBERED_CONTEXTS
    long_text = '{"a":"' + "x" * context_module.MAX_REMEMBERED_CONTEXT_CHARS + '"}'
    assert parse_context(long_text) == {"a": "x" * context_module.MAX_REMEMBERED_CONTEXT_CHARS}
    assert long_text not in context_module._recent_contexts


def test_an_invalid_context_is_refused_every_time():
    for _ in range(2):
        with pytest.raises(InvalidParameter):
            parse_context('{"a":1}')
