"""Request parameters: decoding, merging and the typed accessors."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_from_bytes

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hsmkms.api.params import MAX_PARAMETERS, Params, merge, parse_pairs
from hsmkms.errors import InvalidParameter, MissingParameter, ParseRequestParameterException
from hsmkms.service.context import canonical_aad
from tests.equivalence import EQUIVALENCE, outcome

# --- parse_pairs ---------------------------------------------------------------------------------------


def test_parse_pairs_basic():
    assert parse_pairs(b"a=1&b=2") == [("a", "1"), ("b", "2")]


def test_parse_pairs_keeps_order_and_duplicates():
    assert parse_pairs(b"b=2&a=1&a=3") == [("b", "2"), ("a", "1"), ("a", "3")]


def test_parse_pairs_plus_is_space():
    assert parse_pairs(b"KeyId=alias%2Fmy+key") == [("KeyId", "alias/my key")]
    assert parse_pairs(b"x=a%20b") == [("x", "a b")]
    assert parse_pairs(b"x=%2B") == [("x", "+")]


def test_parse_pairs_utf8_escapes():
    assert parse_pairs(b"k=%E2%82%AC&%C3%A9=%C3%A9") == [("k", "€"), ("é", "é")]
    assert parse_pairs(b"k=%F0%9F%98%80") == [("k", "\U0001F600")]


def test_parse_pairs_tea_encoded_context():
    encoded = b"EncryptionContext=%7B%22a%22%3A%22b+c%22%2C%22x%22%3A%22y%2A~%22%7D"
    assert parse_pairs(encoded) == [("EncryptionContext", '{"a":"b c","x":"y*~"}')]


def test_parse_pairs_empty():
    assert parse_pairs(b"") == []


def test_parse_pairs_keeps_blank_values():
    assert parse_pairs(b"SignatureType=&a=1") == [("SignatureType", ""), ("a", "1")]
    assert parse_pairs(b"flag") == [("flag", "")]


@pytest.mark.parametrize(
    "encoded",
    [
        b"k=\xc3\xa9",  # raw UTF-8 bytes
        b"k\xff=1",
        b"k=\x80",
        b"k=%C3",  # truncated UTF-8 escape
        b"k=%FF",
        b"k=%C3%28",
        b"%C3=1",
        b"k=%ED%A0%80",  # an encoded surrogate is not UTF-8
    ],
)
def test_parse_pairs_rejects(encoded):
    with pytest.raises(ParseRequestParameterException) as info:
        parse_pairs(encoded)
    assert info.value.code == "ParseRequestParameterException"
    assert info.value.status == 400


def test_parse_pairs_field_limit():
    at_limit = "&".join(f"p{i}=v" for i in range(MAX_PARAMETERS)).encode()
    assert len(parse_pairs(at_limit)) == MAX_PARAMETERS
    over = "&".join(f"p{i}=v" for i in range(MAX_PARAMETERS + 1)).encode()
    with pytest.raises(ParseRequestParameterException):
        parse_pairs(over)


def test_parse_pairs_far_over_limit():
    with pytest.raises(ParseRequestParameterException):
        parse_pairs(b"&".join([b"a=1"] * 10_000))


# parse_pairs decodes all names and values in one call; it must answer exactly as parse_qsl did, errors included.


def reference_parse_pairs(encoded: bytes) -> list[tuple[str, str]]:
    """parse_pairs as it was: urllib's parse_qsl and nothing else."""
    if not encoded:
        return []
    try:
        return parse_qsl(encoded.decode("ascii"), keep_blank_values=True, encoding="utf-8", errors="strict",
                         max_num_fields=MAX_PARAMETERS)
    except (UnicodeDecodeError, ValueError):
        raise ParseRequestParameterException() from None


# Pieces that make separators, escapes (good, malformed, invalid UTF-8, encoded separators and NULs) and bytes
# that are not ASCII, glued together at random.
QUERY_TOKENS = [
    b"a", b"Key", b"0", b"~", b"-", b".", b"_", b"=", b"&", b"&&", b";", b"+", b" ", b"%", b"%2", b"%4", b"%41",
    b"%4a", b"%3D", b"%3d", b"%26", b"%2B", b"%20", b"%25", b"%00", b"\x00", b"%C3", b"%A9", b"%c3%a9",
    b"%E2%82%AC", b"%ED%A0%80", b"%F0%9F%98%80", b"%FF", b"%zz", b"%%", b"\x80", b"\xc3\xa9", b"\xff", b"\t",
    b"#", b"?", b"\x7f", b"\\", b"\\x41", b"\\\\", b"\\n", b"\\%41",
]
token_queries = st.lists(st.sampled_from(QUERY_TOKENS), max_size=40).map(b"".join)
# name=value fields, names and values escaped from any bytes (so some escapes are not UTF-8, or decode to NUL,
# '&' or '='), or raw from a small alphabet.
query_parts = st.one_of(
    st.binary(max_size=12).map(lambda raw: quote_from_bytes(raw, safe="")),
    st.text(alphabet="aZ09-_.~+%:/;", max_size=12),
)
field_queries = st.lists(st.tuples(query_parts, query_parts), max_size=12).map(
    lambda fields: "&".join(f"{name}={value}" for name, value in fields).encode("ascii"))
# Around the field limit, with fields that are name=value, a name alone or empty.
many_fields = st.tuples(st.integers(MAX_PARAMETERS - 2, MAX_PARAMETERS + 2), st.sampled_from([b"a=1", b"", b"a"])
                        ).map(lambda shape: b"&".join([shape[1]] * shape[0]))

TYPICAL_QUERY = (
    b"Action=GenerateDataKey&Version=2016-01-20&Format=JSON&AccessKeyId=LTAI5tExampleAccessKey01"
    b"&SignatureMethod=HMAC-SHA1&SignatureVersion=1.0&SignatureNonce=0123456789abcdef0123456789abcdef"
    b"&Timestamp=2026-11-29T12%3A00%3A00Z&KeyId=alias%2Fdev&EncryptionContext=%7B%22app%22%3A%22bench%22%7D"
    b"&Signature=ab%2Bcd%2Fef12345678901234%3D"
)


@EQUIVALENCE
@given(st.one_of(token_queries, field_queries, many_fields, st.binary(max_size=80)))
@example(TYPICAL_QUERY)
@example(b"a=%00&b=1")
@example(b"a=\x00&b=1")
@example(b"a=1&b")
@example(b"a=1&&b=2")
@example(b"a=b=c&d")
@example(b"k=%C3&x=%A9")
@example(b"k=%C3%A9&x=%A9")
@example(b"k=%4&x=%")
@example(b"k=\\x41%41&x=\\%4")
def test_parse_pairs_same_as_parse_qsl(encoded):
    assert outcome(parse_pairs, encoded) == outcome(reference_parse_pairs, encoded)


def test_parse_pairs_typical_request():
    pairs = parse_pairs(TYPICAL_QUERY)
    assert pairs[-4:] == [("Timestamp", "2026-11-29T12:00:00Z"), ("KeyId", "alias/dev"),
                          ("EncryptionContext", '{"app":"bench"}'), ("Signature", "ab+cd/ef12345678901234=")]
    assert len(pairs) == 11


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (b"a=1&&b=2&", [("a", "1"), ("b", "2")]),  # empty fields are skipped
        (b"&", []),
        (b"a;b=1;c", [("a;b", "1;c")]),  # ';' is not a separator (Python 3.10+)
        (b"a=b=c", [("a", "b=c")]),  # only the first '=' separates
        (b"=", [("", "")]),
        (b"=v&n=", [("", "v"), ("n", "")]),
        (b"%zz=%4&%=%%41", [("%zz", "%4"), ("%", "%A")]),  # malformed escapes are kept as they are
        (b"a%3Db=c%26d", [("a=b", "c&d")]),  # encoded separators are data
        (b"a=%00&b=\x00", [("a", "\x00"), ("b", "\x00")]),  # NULs, escaped or raw
        (b"a+b=%2B+", [("a b", "+ ")]),
    ],
)
def test_parse_pairs_edge_cases(encoded, expected):
    assert parse_pairs(encoded) == expected == reference_parse_pairs(encoded)


@pytest.mark.parametrize("encoded", [b"a=%C3&b=%A9", b"a=%C3%A9&b=%A9", b"a=%C3=%A9", b"a=1&b=\xc3\xa9"])
def test_parse_pairs_rejects_invalid_utf8_split_across_fields(encoded):
    with pytest.raises(ParseRequestParameterException):
        parse_pairs(encoded)


def test_parse_pairs_field_limit_counts_empty_fields():
    assert parse_pairs(b"&" * (MAX_PARAMETERS - 1)) == []
    with pytest.raises(ParseRequestParameterException):
        parse_pairs(b"&" * MAX_PARAMETERS)


# --- merge ---------------------------------------------------------------------------------------------


def test_merge_disjoint_sources():
    assert merge([("a", "1")], [("b", "2")], []) == {"a": "1", "b": "2"}


def test_merge_nothing():
    assert merge() == {}


def test_merge_duplicate_across_sources():
    with pytest.raises(InvalidParameter) as info:
        merge([("KeyId", "a")], [("KeyId", "b")])
    assert '"KeyId"' in info.value.message
    assert info.value.code == "InvalidParameter"


def test_merge_duplicate_within_source():
    with pytest.raises(InvalidParameter) as info:
        merge([("Plaintext", "x"), ("Plaintext", "x")])
    assert '"Plaintext"' in info.value.message


def test_merge_duplicate_with_blank_values():
    with pytest.raises(InvalidParameter):
        merge([("a", "")], [("a", "")])


def test_merge_is_case_sensitive():
    assert merge([("a", "1")], [("A", "2")]) == {"a": "1", "A": "2"}


# --- required / optional -------------------------------------------------------------------------------


def test_required():
    assert Params({"KeyId": "k"}).required("KeyId") == "k"


@pytest.mark.parametrize("values", [{}, {"KeyId": ""}])
def test_required_missing(values):
    with pytest.raises(MissingParameter) as info:
        Params(values).required("KeyId")
    assert info.value.code == "MissingParameter"
    assert '"KeyId"' in info.value.message


def test_optional():
    params = Params({"a": "1", "blank": ""})
    assert params.optional("a") == "1"
    assert params.optional("a", "d") == "1"
    assert params.optional("missing") is None
    assert params.optional("missing", "d") == "d"
    assert params.optional("blank", "d") == "d"
    assert params.optional("blank") is None


# --- integer -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("32", 32), ("1024", 1024), ("0032", 32)])
def test_integer_valid(value, expected):
    assert Params({"n": value}).integer("n", 1, 1024) == expected


def test_integer_default():
    assert Params({}).integer("n", 1, 10, default=5) == 5
    assert Params({"n": ""}).integer("n", 1, 10, default=5) == 5
    assert Params({}).integer("n", 1, 10) is None


def test_integer_negative_range():
    assert Params({"n": "-3"}).integer("n", -5, 5) == -3


@pytest.mark.parametrize(
    "value",
    [
        "0",  # below low
        "1025",  # above high
        "-1",
        "1.5",
        "0x10",
        " 5",
        "5 ",
        "5\n",
        "1e3",
        "abc",
        "٣",  # Arabic-Indic digit
        "５",  # full-width digit
        "1_0",
        "9999999999",  # 10 digits, above high
        "99999999999",  # 11 digits
        "123456789012345678901234567890",
        "9" * 5000,
    ],
)
def test_integer_invalid(value):
    with pytest.raises(InvalidParameter) as info:
        Params({"NumberOfBytes": value}).integer("NumberOfBytes", 1, 1024)
    assert '"NumberOfBytes"' in info.value.message
    assert "1" in info.value.message and "1024" in info.value.message


def test_integer_bounds_inclusive():
    params = Params({"lo": "1", "hi": "1024"})
    assert params.integer("lo", 1, 1024) == 1
    assert params.integer("hi", 1, 1024) == 1024


# --- boolean -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("True", True), ("False", False), ("true", True), ("false", False), ("FALSE", False), ("TRUE", True)],
)
def test_boolean_valid(value, expected):
    assert Params({"b": value}).boolean("b") is expected


def test_boolean_default():
    assert Params({}).boolean("b") is False
    assert Params({}).boolean("b", default=True) is True
    assert Params({"b": ""}).boolean("b", default=True) is True


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "t", "truee", " true", "true "])
def test_boolean_invalid(value):
    with pytest.raises(InvalidParameter) as info:
        Params({"EnableAutomaticRotation": value}).boolean("EnableAutomaticRotation")
    assert '"EnableAutomaticRotation"' in info.value.message


# --- choice --------------------------------------------------------------------------------------------

SPECS = ("AES_128", "AES_256")


def test_choice_valid():
    assert Params({"KeySpec": "AES_128"}).choice("KeySpec", SPECS) == "AES_128"


def test_choice_default():
    assert Params({}).choice("KeySpec", SPECS, default="AES_256") == "AES_256"
    assert Params({"KeySpec": ""}).choice("KeySpec", SPECS, default="AES_256") == "AES_256"
    assert Params({}).choice("KeySpec", SPECS) is None


@pytest.mark.parametrize("value", ["aes_256", "AES_512", "AES_256 ", "x"])
def test_choice_invalid(value):
    with pytest.raises(InvalidParameter) as info:
        Params({"KeySpec": value}).choice("KeySpec", SPECS)
    assert "AES_128" in info.value.message and "AES_256" in info.value.message


# --- text ----------------------------------------------------------------------------------------------


def test_text_within_limit():
    assert Params({"Description": "d" * 8192}).text("Description", 8192) == "d" * 8192


def test_text_over_limit():
    with pytest.raises(InvalidParameter) as info:
        Params({"Description": "d" * 8193}).text("Description", 8192)
    assert '"Description"' in info.value.message


def test_text_counts_characters():
    assert Params({"d": "é" * 10}).text("d", 10) == "é" * 10


def test_text_default_and_required():
    assert Params({}).text("Description", 10) == ""
    assert Params({}).text("Description", 10, default="x") == "x"
    with pytest.raises(MissingParameter):
        Params({}).text("Description", 10, required=True)
    with pytest.raises(MissingParameter):
        Params({"Description": ""}).text("Description", 10, required=True)
    assert Params({"Description": "abc"}).text("Description", 10, required=True) == "abc"


# --- context -------------------------------------------------------------------------------------------


def test_context_json_form():
    assert Params({"EncryptionContext": '{"a":"b c"}'}).context() == {"a": "b c"}


def test_context_absent():
    assert Params({}).context() == {}
    assert Params({"EncryptionContext": ""}).context() == {}


def test_context_flattened_equals_json_form():
    flattened = Params({"EncryptionContext.a": "b c", "EncryptionContext.x": "y*'!", "KeyId": "k"}).context()
    json_form = Params({"EncryptionContext": '{"x": "y*\'!", "a": "b c"}'}).context()
    assert flattened == json_form == {"a": "b c", "x": "y*'!"}
    assert canonical_aad(flattened) == canonical_aad(json_form)


def test_context_flattened_from_wire():
    pairs = parse_pairs(b"EncryptionContext.a=b%20c&EncryptionContext.x=y*%27!")
    assert Params(merge(pairs)).context() == {"a": "b c", "x": "y*'!"}


def test_context_both_forms_refused():
    params = Params({"EncryptionContext": '{"a":"b"}', "EncryptionContext.a": "b"})
    with pytest.raises(InvalidParameter) as info:
        params.context()
    assert '"EncryptionContext"' in info.value.message


def test_context_flattened_with_blank_json_form_allowed():
    assert Params({"EncryptionContext": "", "EncryptionContext.a": "b"}).context() == {"a": "b"}


def test_context_other_name():
    params = Params({
        "SourceEncryptionContext": '{"s":"1"}',
        "DestinationEncryptionContext.d": "2",
        "EncryptionContext": '{"e":"3"}',
    })
    assert params.context("SourceEncryptionContext") == {"s": "1"}
    assert params.context("DestinationEncryptionContext") == {"d": "2"}
    assert params.context() == {"e": "3"}


def test_context_invalid_json_form():
    with pytest.raises(InvalidParameter):
        Params({"EncryptionContext": '{"a":1}'}).context()


def test_context_flattened_too_long():
    with pytest.raises(InvalidParameter):
        Params({"EncryptionContext.k": "v" * 9000}).context()


# --- page ----------------------------------------------------------------------------------------------


def test_page_defaults():
    assert Params({}).page() == (1, 10)
    assert Params({}).page(default_size=20) == (1, 20)


def test_page_values():
    assert Params({"PageNumber": "3", "PageSize": "100"}).page() == (3, 100)
    assert Params({"PageNumber": "1000000", "PageSize": "1"}).page() == (1_000_000, 1)


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"PageNumber": "0"}, "PageNumber"),
        ({"PageNumber": "1000001"}, "PageNumber"),
        ({"PageNumber": "-1"}, "PageNumber"),
        ({"PageNumber": "x"}, "PageNumber"),
        ({"PageSize": "0"}, "PageSize"),
        ({"PageSize": "101"}, "PageSize"),
        ({"PageSize": "1.0"}, "PageSize"),
    ],
)
def test_page_bounds(values, name):
    with pytest.raises(InvalidParameter) as info:
        Params(values).page()
    assert f'"{name}"' in info.value.message


def test_page_custom_max():
    assert Params({"PageSize": "50"}).page(max_size=50) == (1, 50)
    with pytest.raises(InvalidParameter):
        Params({"PageSize": "51"}).page(max_size=50)
