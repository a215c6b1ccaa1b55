"""Signatures V1 (HMAC-SHA1) and V3 (ACS3-HMAC-SHA256): known-answer vectors and the Authenticator.

Vectors come from the API reference §3.3 and §3.4.
"""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hsmkms.api.auth import (
    EMPTY_SHA256,
    MAX_NONCE_CHARS,
    V3_ALGORITHM,
    Authenticator,
    SignedRequest,
    V3Authorization,
    parse_timestamp,
    parse_v3_authorization,
    pct,
    v1_signature,
    v1_string_to_sign,
    v1_string_to_sign_as_sent,
    v3_canonical_request,
    v3_signature,
    v3_string_to_sign,
)
from hsmkms.api.params import merge, parse_pairs
from hsmkms.errors import (
    IllegalTimestamp,
    IncompleteSignature,
    InvalidAccessKeyIdNotFound,
    InvalidParameter,
    InvalidTimeStampExpired,
    MissingParameter,
    ParseRequestParameterException,
    SignatureDoesNotMatch,
    SignatureNonceUsed,
    StsTokenNotSupported,
)
from hsmkms.service.access_keys import Credential
from hsmkms.store.nonces import NonceStore
from tests.equivalence import EQUIVALENCE, outcome

# --- V1 known answers ----------------------------------------------------------------------------------

OFFICIAL_V1_PARAMS = {
    "AccessKeyId": "testid",
    "Action": "CreateKey",
    "Format": "json",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureVersion": "1.0",
    "Timestamp": "2016-03-28T03:13:08Z",
    "Version": "2016-01-20",
}
OFFICIAL_V1_STRING_TO_SIGN = (
    "GET&%2F&AccessKeyId%3Dtestid%26Action%3DCreateKey%26Format%3Djson%26SignatureMethod%3DHMAC-SHA1"
    "%26SignatureVersion%3D1.0%26Timestamp%3D2016-03-28T03%253A13%253A08Z%26Version%3D2016-01-20"
)
OFFICIAL_V1_SIGNATURE = "41wk2SSX1GJh7fwnc5eqOfiJPFg="
# The value printed in the official document's prose: the HMAC of a mis-encoded string to sign.
OFFICIAL_V1_WRONG_PROSE_SIGNATURE = "s/OdVWMTmNGagvWlljdAJ7Itsew="

KMS_V1_PARAMS = {
    "AccessKeyId": "testak",
    "Action": "GenerateDataKey",
    "EncryptionContext": '{"a":"b c"}',
    "Format": "JSON",
    "KeyId": "alias/my key",
    "KeySpec": "AES_256",
    "SignatureMethod": "HMAC-SHA1",
    "SignatureNonce": "0123456789abcdef0123456789abcdef",
    "SignatureVersion": "1.0",
    "Timestamp": "2024-01-01T00:00:00Z",
    "Version": "2016-01-20",
}
KMS_V1_SIGNATURE = "/nNnu27INoCoIevHYcgS5A+S+eo="


def test_v1_official_string_to_sign():
    assert v1_string_to_sign("GET", OFFICIAL_V1_PARAMS) == OFFICIAL_V1_STRING_TO_SIGN


def test_v1_official_signature():
    signature = v1_signature("testsecret", v1_string_to_sign("GET", OFFICIAL_V1_PARAMS))
    assert signature == OFFICIAL_V1_SIGNATURE


def test_v1_official_signature_is_not_the_misprinted_prose_value():
    signature = v1_signature("testsecret", v1_string_to_sign("GET", OFFICIAL_V1_PARAMS))
    assert signature != OFFICIAL_V1_WRONG_PROSE_SIGNATURE


def test_v1_signature_of_the_given_string_to_sign():
    # The signature function alone, fed the reference string verbatim.
    assert v1_signature("testsecret", OFFICIAL_V1_STRING_TO_SIGN) == OFFICIAL_V1_SIGNATURE


def test_v1_official_parameter_order_does_not_matter():
    shuffled = dict(reversed(list(OFFICIAL_V1_PARAMS.items())))
    assert v1_string_to_sign("GET", shuffled) == OFFICIAL_V1_STRING_TO_SIGN


def test_v1_kms_vector():
    assert v1_signature("testsecret", v1_string_to_sign("POST", KMS_V1_PARAMS)) == KMS_V1_SIGNATURE


def test_v1_string_to_sign_starts_with_the_actual_method():
    assert v1_string_to_sign("POST", KMS_V1_PARAMS).startswith("POST&%2F&")
    assert v1_string_to_sign("GET", KMS_V1_PARAMS).startswith("GET&%2F&")
    assert v1_signature("testsecret", v1_string_to_sign("GET", KMS_V1_PARAMS)) != KMS_V1_SIGNATURE


def test_v1_signature_param_is_excluded_from_string_to_sign():
    with_signature = {**KMS_V1_PARAMS, "Signature": "whatever+/="}
    assert v1_string_to_sign("POST", with_signature) == v1_string_to_sign("POST", KMS_V1_PARAMS)
    assert "Signature%3D" not in v1_string_to_sign("POST", with_signature)
    assert v1_signature("testsecret", v1_string_to_sign("POST", with_signature)) == KMS_V1_SIGNATURE


def test_v1_empty_values_are_kept():
    params = {**OFFICIAL_V1_PARAMS, "SignatureType": ""}
    text = v1_string_to_sign("GET", params)
    assert "%26SignatureType%3D%26SignatureVersion" in text
    assert v1_signature("testsecret", text) != OFFICIAL_V1_SIGNATURE


def test_v1_secret_gets_ampersand_suffix():
    # A different secret gives a different signature; "testsecret&" as secret would double the suffix.
    text = v1_string_to_sign("GET", OFFICIAL_V1_PARAMS)
    assert v1_signature("testsecret&", text) != OFFICIAL_V1_SIGNATURE
    assert v1_signature("other", text) != OFFICIAL_V1_SIGNATURE


# --- V3 known answers ----------------------------------------------------------------------------------

OFFICIAL_V3_QUERY = [
    ("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
    ("RegionId", "cn-shanghai"),
]
OFFICIAL_V3_HEADERS = {
    "host": "ecs.cn-shanghai.aliyuncs.com",
    "x-acs-action": "RunInstances",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "x-acs-date": "2023-10-26T09:01:01Z",
    "x-acs-signature-nonce": "d410180a5abf7fe235dd9b74aca91fc0",
    "x-acs-version": "2014-05-26",
}
SIX_SIGNED = ("host", "x-acs-action", "x-acs-content-sha256", "x-acs-date", "x-acs-signature-nonce",
              "x-acs-version")
OFFICIAL_V3_SIGNATURE = "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"

KMS_V3_QUERY = list({"KeyId": "alias/my key", "KeySpec": "AES_256", "EncryptionContext": '{"a":"b c"}'}.items())
KMS_V3_HEADERS = {
    "host": "kms.cn-hangzhou.aliyuncs.com",
    "x-acs-action": "GenerateDataKey",
    "x-acs-version": "2016-01-20",
    "x-acs-date": "2024-01-01T00:00:00Z",
    "x-acs-signature-nonce": "0123456789abcdef0123456789abcdef",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
}
KMS_V3_CANONICAL_QUERY = "EncryptionContext=%7B%22a%22%3A%22b%20c%22%7D&KeyId=alias%2Fmy%20key&KeySpec=AES_256"
KMS_V3_CANONICAL_HASH = "b647d8254b9543f91a9a00b2f06652a1ad42c2accd4a5327768065e646ddf5d5"
KMS_V3_SIGNATURE = "a82f3590ab9b3783d06eef89d1ca035cd55412ea3000458e720bff0f63294e33"


def test_empty_sha256_constant():
    assert EMPTY_SHA256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_signed_header_list_is_sorted():
    assert list(SIX_SIGNED) == sorted(OFFICIAL_V3_HEADERS)


def test_v3_official_signature():
    canonical = v3_canonical_request("POST", "/", OFFICIAL_V3_QUERY, OFFICIAL_V3_HEADERS, SIX_SIGNED,
                                     OFFICIAL_V3_HEADERS["x-acs-content-sha256"])
    assert v3_signature("YourAccessKeySecret", v3_string_to_sign(canonical)) == OFFICIAL_V3_SIGNATURE


def test_v3_official_canonical_request_layout():
    canonical = v3_canonical_request("POST", "/", OFFICIAL_V3_QUERY, OFFICIAL_V3_HEADERS, SIX_SIGNED,
                                     EMPTY_SHA256)
    assert canonical == (
        "POST\n/\n"
        "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai\n"
        "host:ecs.cn-shanghai.aliyuncs.com\n"
        "x-acs-action:RunInstances\n"
        f"x-acs-content-sha256:{EMPTY_SHA256}\n"
        "x-acs-date:2023-10-26T09:01:01Z\n"
        "x-acs-signature-nonce:d410180a5abf7fe235dd9b74aca91fc0\n"
        "x-acs-version:2014-05-26\n"
        "\n"
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version\n"
        f"{EMPTY_SHA256}"
    )


def test_v3_kms_canonical_request():
    canonical = v3_canonical_request("POST", "/", KMS_V3_QUERY, KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)
    assert canonical.split("\n")[2] == KMS_V3_CANONICAL_QUERY
    assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == KMS_V3_CANONICAL_HASH


def test_v3_kms_string_to_sign():
    canonical = v3_canonical_request("POST", "/", KMS_V3_QUERY, KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)
    assert v3_string_to_sign(canonical) == f"ACS3-HMAC-SHA256\n{KMS_V3_CANONICAL_HASH}"


def test_v3_kms_signature():
    canonical = v3_canonical_request("POST", "/", KMS_V3_QUERY, KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)
    assert v3_signature("testsecret", v3_string_to_sign(canonical)) == KMS_V3_SIGNATURE


def test_v3_query_order_does_not_matter():
    forward = v3_canonical_request("POST", "/", KMS_V3_QUERY, KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)
    backward = v3_canonical_request("POST", "/", list(reversed(KMS_V3_QUERY)), KMS_V3_HEADERS, SIX_SIGNED,
                                    EMPTY_SHA256)
    assert forward == backward


def test_v3_empty_query_and_empty_value():
    canonical = v3_canonical_request("POST", "/", [], KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)
    assert canonical.split("\n")[2] == ""
    canonical = v3_canonical_request("POST", "/", [("B", ""), ("A", "x")], KMS_V3_HEADERS, SIX_SIGNED,
                                     EMPTY_SHA256)
    assert canonical.split("\n")[2] == "A=x&B="


def test_v3_header_values_are_trimmed():
    padded = {**KMS_V3_HEADERS, "x-acs-action": "  GenerateDataKey \t"}
    assert v3_canonical_request("POST", "/", KMS_V3_QUERY, padded, SIX_SIGNED, EMPTY_SHA256) == \
        v3_canonical_request("POST", "/", KMS_V3_QUERY, KMS_V3_HEADERS, SIX_SIGNED, EMPTY_SHA256)


def test_v3_signature_is_lowercase_hex_and_key_has_no_ampersand():
    sts = v3_string_to_sign("x")
    sig = v3_signature("testsecret", sts)
    assert sig == sig.lower() and len(sig) == 64
    assert v3_signature("testsecret&", sts) != sig


# --- pct -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" ", "%20"),
        ("*", "%2A"),
        ("~", "~"),
        ("-_.", "-_."),
        ("AZaz09", "AZaz09"),
        ("/", "%2F"),
        ("+", "%2B"),
        ("=", "%3D"),
        ("&", "%26"),
        (":", "%3A"),
        ("%", "%25"),
        ("'", "%27"),
        ("!", "%21"),
        ("é", "%C3%A9"),
        ("€", "%E2%82%AC"),
        ("\U0001F600", "%F0%9F%98%80"),
        ("\xff", "%C3%BF"),
        ("a b*c~d", "a%20b%2Ac~d"),
        ("", ""),
    ],
)
def test_pct(text, expected):
    assert pct(text) == expected


def test_pct_every_ascii_character():
    for code in range(128):
        char = chr(code)
        keep = char.isascii() and (char.isalnum() or char in "-_.~")
        expected = char if keep else f"%{code:02X}"
        assert pct(char) == expected, repr(char)


def test_pct_hex_is_upper_case():
    encoded = pct("\u00fe\u00ef\n")
    assert encoded == "%C3%BE%C3%AF%0A"
    assert encoded == encoded.upper()


# --- pct and the canonical strings: the same as before they were made faster ----------------------------


def reference_pct(text: str) -> str:
    if re.match(r"[A-Za-z0-9_.~-]*\Z", text):
        return text
    return quote(text, safe="-_.~")


def reference_v1_string_to_sign(method: str, params) -> str:
    canonical = "&".join(f"{reference_pct(k)}={reference_pct(v)}" for k, v in sorted(params.items())
                         if k != "Signature")
    encoded = canonical.replace("%", "%25").replace("=", "%3D").replace("&", "%26")
    return f"{method}&%2F&{encoded}"


def reference_v3_canonical_request(method, path, query, headers, signed_headers, payload_hash) -> str:
    canonical_query = "&".join(f"{reference_pct(k)}={reference_pct(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join(
        [method, path, canonical_query, canonical_headers, ";".join(signed_headers), payload_hash]
    )


# Text of every kind: any code point (lone surrogates included), or mostly the characters that matter here.
ANY_CHARACTER = st.characters(exclude_categories=())
INTERESTING = "aZ09-_.~ %=&+/:;*'!\"{}\x00\x7f\x80\xff\u00e9\u20ac\ud800\udbff\udc00\udfff\U0001F600\ufffd"
texts = st.one_of(st.text(ANY_CHARACTER, max_size=12), st.text(st.sampled_from(INTERESTING), max_size=12),
                  st.text(st.sampled_from("aZ09-_.~"), max_size=12))
V1_NAMES = ["Action", "Version", "Format", "AccessKeyId", "SignatureMethod", "SignatureVersion", "SignatureNonce",
            "Timestamp", "KeyId", "EncryptionContext", "Signature", "Plaintext"]
v1_params = st.dictionaries(st.one_of(st.sampled_from(V1_NAMES), texts), texts, max_size=14)


@EQUIVALENCE
@given(st.one_of(texts, st.text(ANY_CHARACTER, max_size=40)))
@example("\ud800")
@example("a\udfffb")
@example("\ud83d\ude00")  # a surrogate pair as two code points is not the character it stands for
@example("".join(chr(code) for code in range(256)))
def test_pct_same_as_quote(text):
    assert outcome(pct, text) == outcome(reference_pct, text)


def test_pct_lone_surrogate_raises_as_quote_did():
    with pytest.raises(UnicodeEncodeError) as info:
        pct("ok\ud800")
    assert info.value.args == ("utf-8", "ok\ud800", 2, 3, "surrogates not allowed")


@EQUIVALENCE
@given(st.sampled_from(["GET", "POST"]), v1_params)
@example("GET", OFFICIAL_V1_PARAMS)
@example("POST", {**KMS_V1_PARAMS, "Signature": "\ud800"})  # never encoded, so never raises
@example("POST", {"a\ud800": "x", "b": "\udfff"})  # the first in sorted order raises
@example("POST", {"a": "\udfff", "b\ud800": "x"})
@example("GET", {"é": "&=%", "Ä": "", "a b": "c+d"})
def test_v1_string_to_sign_same_as_before(method, params):
    assert outcome(v1_string_to_sign, method, params) == outcome(reference_v1_string_to_sign, method, params)


@EQUIVALENCE
@given(st.lists(st.tuples(st.one_of(st.sampled_from(["KeyId", "a"]), texts), texts), max_size=8),
       st.dictionaries(st.sampled_from(["host", "x-acs-date", "content-type"]), texts),
       st.lists(st.sampled_from(["host", "x-acs-date", "content-type", "x-acs-action"]), unique=True))
def test_v3_canonical_request_same_as_before(query, headers, signed_headers):
    args = ("POST", "/", query, headers, signed_headers, EMPTY_SHA256)
    assert outcome(v3_canonical_request, *args) == outcome(reference_v3_canonical_request, *args)


# --- the V1 string to sign from the fields as sent -------------------------------------------------------


def canonical_fields(params: dict[str, str]) -> list[str]:
    return [f"{reference_pct(k)}={reference_pct(v)}" for k, v in params.items() if k != "Signature"]


def decoded(encoded: tuple[str, ...]) -> dict[str, str]:
    return merge(*(parse_pairs(text.encode("ascii")) for text in encoded))


def without_signature(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k != "Signature"}


# Valid text only (a lone surrogate cannot be sent), names that no other name starts with followed by a character
# that sorts before '=' ('.', '-', digits): with those the fields as sent sort differently (covered below).
encodable = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
plain_names = st.text(st.sampled_from("ABCKXYZabkxyz_~"), min_size=1, max_size=10)


@EQUIVALENCE
@given(st.sampled_from(["GET", "POST"]), st.dictionaries(st.one_of(st.sampled_from(V1_NAMES), plain_names),
                                                       encodable, max_size=14), st.randoms(), st.integers(0, 14))
@example("GET", {**OFFICIAL_V1_PARAMS, "Signature": "x"}, None, 3)
def test_v1_string_to_sign_as_sent_is_the_canonical_one_for_canonical_fields(method, params, rng, split):
    """Any order, empty fields, the Signature field anywhere, the fields shared between query and body."""
    fields = canonical_fields(params) + ["", "", f"Signature={reference_pct(params.get('Signature', 'sig'))}"]
    if rng is not None:
        rng.shuffle(fields)
    encoded = ("&".join(fields[:split]), "&".join(fields[split:]))
    assert v1_string_to_sign_as_sent(method, encoded) == reference_v1_string_to_sign(method, params)
    assert without_signature(decoded(encoded)) == without_signature(params)


@pytest.mark.parametrize("sent, meant", [
    ("KeyId=alias%2Fmy+key", {"KeyId": "alias/my key"}),  # '+' for a space, as form encoding has it
    ("KeyId=alias%2fmy%20key", {"KeyId": "alias/my key"}),  # a lower-case escape
    ("KeyId=alias/my%20key", {"KeyId": "alias/my key"}),  # an unescaped '/'
    ("Key%49d=a", {"KeyId": "a"}),  # an unreserved character escaped
    ("KeyId", {"KeyId": ""}),  # no '='
    ("Signatur%65=abc&KeyId=a", {"Signature": "abc", "KeyId": "a"}),  # the Signature name escaped
    ("Tag.1=a&Tag=b", {"Tag": "b", "Tag.1": "a"}),  # sorted as sent, "Tag.1=" comes before "Tag="
])
def test_v1_fields_sent_otherwise_give_another_string_that_the_canonical_one_then_verifies(sent, meant):
    assert decoded((sent,)) == meant
    assert v1_string_to_sign_as_sent("GET", (sent,)) != v1_string_to_sign("GET", meant)


RAW_CHARACTERS = "aK=&%+2F3D5e.~-_:/ "


@EQUIVALENCE
@given(st.lists(st.text(st.sampled_from(RAW_CHARACTERS), max_size=24), min_size=1, max_size=2))
@example(["KeyId=alias%2Fdev&Action=Decrypt"])
@example(["a=%3D&b=%26", "c=%25"])
def test_v1_string_to_sign_as_sent_never_stands_for_other_parameters(texts):
    """Whatever was sent: when the string from the fields as sent is the canonical string of what they decode
    to, each field is exactly pct(name)=pct(value) of one of those parameters -- no other parameters share it."""
    encoded = tuple(texts)
    try:
        params = decoded(encoded)
    except (ParseRequestParameterException, InvalidParameter):
        return
    if v1_string_to_sign_as_sent("POST", encoded) == v1_string_to_sign("POST", params):
        sent = sorted(f for text in encoded for f in text.split("&") if f and not f.startswith("Signature="))
        assert sent == sorted(canonical_fields(params))


@EQUIVALENCE
@given(st.lists(st.text(st.sampled_from(RAW_CHARACTERS + "SignatureS"), max_size=30), max_size=3))
@example(["Signature=a&Signature=b&&x=1", "Signature", "&Signature=&Signaturex=2&"])
def test_v1_string_to_sign_as_sent_is_its_definition(texts):
    """Sorted in C with the Signature fields and empty ones taken out by bisection: the same string as the
    definition (every non-empty field not starting with ``Signature=``, sorted), for any texts at all."""
    fields = sorted(f for text in texts for f in text.split("&") if f and not f.startswith("Signature="))
    expected = "GET&%2F&" + "&".join(fields).replace("%", "%25").replace("&", "%26").replace("=", "%3D")
    assert v1_string_to_sign_as_sent("GET", tuple(texts)) == expected


def test_v1_signatures_of_many_secrets_are_hmac_sha1_of_each():
    """The keyed HMAC state is made once per secret and copied for each signature; more secrets than it keeps
    (it empties when full) still each get their own."""
    for round_ in range(2):
        for index in range(150):
            secret, text = f"secret-{index}", f"GET&%2F&n%3D{round_}"
            expected = base64.b64encode(hmac.digest(f"{secret}&".encode(), text.encode(), "sha1")).decode()
            assert v1_signature(secret, text) == expected


def test_v1_request_encoded_otherwise_passes_through_the_canonical_string(auth):
    request = v1_request()
    as_form = "&".join(f"{quote(k, safe='')}={quote(v, safe='').replace('%20', '+')}"
                       for k, v in request.params.items())
    assert "+" in as_form  # KeyId "alias/my key"
    sent = SignedRequest("POST", "/", [], request.params, {}, b"", (as_form,))
    assert auth.authenticate(sent).access_key_id == "AK"


def test_v1_request_encoded_canonically_passes(auth):
    request = v1_request()
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in request.params.items())
    sent = SignedRequest("POST", "/", [], request.params, {}, b"", (canonical,))
    assert auth.authenticate(sent).access_key_id == "AK"


def test_v1_fields_as_sent_cannot_carry_parameters_the_signature_did_not_cover(auth):
    """The fields as sent are what is decoded: a field added to them fails whichever string is checked."""
    request = v1_request()
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in request.params.items())
    tampered = SignedRequest("POST", "/", [], {**request.params, "NumberOfBytes": "1"}, {}, b"",
                             (canonical + "&NumberOfBytes=1",))
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(tampered)


# --- parse_v3_authorization ----------------------------------------------------------------------------


def test_parse_v3_authorization_valid():
    parsed = parse_v3_authorization(
        "ACS3-HMAC-SHA256 Credential=testak,SignedHeaders=host;x-acs-action;x-acs-date,Signature=" + "ab" * 32
    )
    assert parsed == V3Authorization("testak", ("host", "x-acs-action", "x-acs-date"), "ab" * 32)


def test_parse_v3_authorization_lenient_spaces_and_case():
    parsed = parse_v3_authorization(
        "ACS3-HMAC-SHA256 Credential=testak, SignedHeaders=Host;X-Acs-Date , Signature=ABCDEF"
    )
    assert parsed.access_key_id == "testak"
    assert parsed.signed_headers == ("host", "x-acs-date")
    assert parsed.signature == "abcdef"


def test_parse_v3_authorization_field_order_free():
    parsed = parse_v3_authorization("ACS3-HMAC-SHA256 Signature=ab,SignedHeaders=host,Credential=ak")
    assert parsed == V3Authorization("ak", ("host",), "ab")


@pytest.mark.parametrize(
    "value",
    [
        "ACS3-HMAC-SM3 Credential=ak,SignedHeaders=host,Signature=ab",
        "ACS3-RSA-SHA256 Credential=ak,SignedHeaders=host,Signature=ab",
        "acs3-hmac-sha256 Credential=ak,SignedHeaders=host,Signature=ab",
        "HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256",
        "",
        # missing fields
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host",
        "ACS3-HMAC-SHA256 Credential=ak,Signature=ab",
        "ACS3-HMAC-SHA256 SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 ",
        # duplicate fields
        "ACS3-HMAC-SHA256 Credential=ak,Credential=ak,SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=ab,Signature=ab",
        # empty values
        "ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=",
        # unknown field, junk
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=ab,Extra=1",
        "ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,,Signature=ab",
        "ACS3-HMAC-SHA256 Credential=a k,SignedHeaders=host,Signature=ab",
        "ACS3-HMAC-SHA256 Credential ak,SignedHeaders=host,Signature=ab",
    ],
)
def test_parse_v3_authorization_rejects(value):
    with pytest.raises(IncompleteSignature) as info:
        parse_v3_authorization(value)
    assert info.value.code == "IncompleteSignature"
    assert info.value.status == 400


# --- parse_timestamp -----------------------------------------------------------------------------------


def _epoch(*fields: int) -> int:
    return calendar.timegm((*fields, 0, 0, 0))


def test_parse_timestamp_z_format():
    assert parse_timestamp("2016-03-28T03:13:08Z") == _epoch(2016, 3, 28, 3, 13, 8)
    assert parse_timestamp("1970-01-01T00:00:00Z") == 0
    assert parse_timestamp("2024-02-29T23:59:59Z") == _epoch(2024, 2, 29, 23, 59, 59)


@pytest.mark.parametrize("fraction", [".9", ".973", ".123456", ".123456789"])
def test_parse_timestamp_fractional_seconds(fraction):
    value = parse_timestamp(f"2016-03-28T03:13:08{fraction}Z")
    assert _epoch(2016, 3, 28, 3, 13, 8) <= value < _epoch(2016, 3, 28, 3, 13, 9)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "2016-13-28T03:13:08Z",  # month 13
        "2016-00-28T03:13:08Z",  # month 0
        "2016-03-32T03:13:08Z",  # day 32
        "2023-02-29T03:13:08Z",  # not a leap year
        "2016-03-28T24:00:00Z",  # hour 24
        "2016-03-28T03:60:08Z",
        "2016-03-28T03:13:61Z",
        "2016-03-28T03:13:08",  # no Z
        "2016-03-28T03:13:08+08:00",
        "2016-03-28T03:13:08z",
        "2016-03-28 03:13:08Z",
        "2016-03-28T03:13Z",
        "16-03-28T03:13:08Z",
        "2016-3-28T03:13:08Z",
        "2016-03-28T03:13:08.Z",
        "2016-03-28T03:13:08.1234567890Z",  # 10 fraction digits
        "2016-03-28T03:13:08Zjunk",
        "2016-03-28T03:13:08Z\n",
        " 2016-03-28T03:13:08Z",
        "1459134788",
        "not a date",
    ],
)
def test_parse_timestamp_rejects(value):
    with pytest.raises(IllegalTimestamp) as info:
        parse_timestamp(value)
    assert info.value.code == "IllegalTimestamp"


# --- Authenticator -------------------------------------------------------------------------------------

SECRET = "secret"
NOW = float(_epoch(2024, 1, 1, 0, 0, 0))
NOW_STAMP = "2024-01-01T00:00:00Z"
SKEW = 900


def fake_credentials(access_key_id: str) -> Credential:
    if access_key_id in ("AK", "AK2"):
        return Credential(access_key_id, SECRET)
    raise InvalidAccessKeyIdNotFound()


@pytest.fixture
def nonces(tmp_path):
    store = NonceStore(tmp_path / "nonces.bin")
    yield store
    store.close()


@pytest.fixture
def clock():
    class Clock:
        now = NOW

        def __call__(self) -> float:
            return self.now

    return Clock()


@pytest.fixture
def auth(nonces, clock):
    return Authenticator(fake_credentials, nonces, clock, SKEW)


def v1_request(extra: dict | None = None, *, secret: str = SECRET, method: str = "POST",
               nonce: str = "nonce-1", timestamp: str = NOW_STAMP, drop: tuple[str, ...] = (),
               sign: bool = True) -> SignedRequest:
    params = {
        "AccessKeyId": "AK",
        "Action": "Encrypt",
        "Format": "JSON",
        "KeyId": "alias/my key",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": nonce,
        "SignatureVersion": "1.0",
        "Timestamp": timestamp,
        "Version": "2016-01-20",
        **(extra or {}),
    }
    for name in drop:
        params.pop(name, None)
    if sign:
        params["Signature"] = v1_signature(secret, v1_string_to_sign(method, params))
    return SignedRequest(method, "/", list(params.items()), params, {}, b"")


def v3_request(*, secret: str = SECRET, access_key_id: str = "AK", nonce: str = "v3-nonce-1",
               date: str = NOW_STAMP, body: bytes = b"", declared_hash: str | None = None,
               extra_headers: dict | None = None, signed: tuple[str, ...] | None = None,
               query: list | None = None, signature_case=str.lower) -> SignedRequest:
    query = list(KMS_V3_QUERY if query is None else query)
    headers = {
        "host": "kms.cn-hangzhou.aliyuncs.com",
        "x-acs-action": "GenerateDataKey",
        "x-acs-version": "2016-01-20",
        "x-acs-date": date,
        "x-acs-signature-nonce": nonce,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest() if declared_hash is None else declared_hash,
        **(extra_headers or {}),
    }
    signed_headers = tuple(sorted(headers)) if signed is None else signed
    canonical = v3_canonical_request("POST", "/", query, headers, signed_headers,
                                     headers["x-acs-content-sha256"])
    signature = v3_signature(secret, v3_string_to_sign(canonical))
    headers["authorization"] = (
        f"{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(signed_headers)},"
        f"Signature={signature_case(signature)}"
    )
    return SignedRequest("POST", "/", query, dict(query), headers, body)


def test_v1_request_passes(auth):
    assert auth.authenticate(v1_request()).access_key_id == "AK"


def test_v1_request_with_get_method_passes(auth):
    assert auth.authenticate(v1_request(method="GET")).access_key_id == "AK"


def test_v1_signed_with_other_method_fails(auth):
    request = v1_request(method="GET")
    request = SignedRequest("POST", "/", request.query, request.params, {}, b"")
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(request)


def test_v1_fractional_timestamp_passes(auth):
    assert auth.authenticate(v1_request(timestamp="2024-01-01T00:00:00.973Z")).access_key_id == "AK"


def test_v1_same_nonce_twice_is_refused(auth):
    assert auth.authenticate(v1_request(nonce="same")).access_key_id == "AK"
    with pytest.raises(SignatureNonceUsed) as info:
        auth.authenticate(v1_request({"KeyId": "other"}, nonce="same"))
    assert info.value.code == "SignatureNonceUsed"


def test_v1_nonce_is_per_access_key(auth):
    assert auth.authenticate(v1_request(nonce="shared")).access_key_id == "AK"
    assert auth.authenticate(v1_request({"AccessKeyId": "AK2"}, nonce="shared")).access_key_id == "AK2"


def test_v1_distinct_nonces_pass(auth):
    assert auth.authenticate(v1_request(nonce="n1")).access_key_id == "AK"
    assert auth.authenticate(v1_request(nonce="n2")).access_key_id == "AK"


@pytest.mark.parametrize("offset", [16 * 60, -16 * 60])
def test_v1_timestamp_16_minutes_off_is_expired(auth, clock, offset):
    clock.now = NOW + offset
    with pytest.raises(InvalidTimeStampExpired) as info:
        auth.authenticate(v1_request())
    assert info.value.code == "InvalidTimeStamp.Expired"


@pytest.mark.parametrize("offset", [SKEW, -SKEW, 14 * 60])
def test_v1_timestamp_inside_window_passes(auth, clock, offset):
    clock.now = NOW + offset
    assert auth.authenticate(v1_request()).access_key_id == "AK"


def test_v1_timestamp_one_second_past_window_is_expired(auth, clock):
    clock.now = NOW + SKEW + 1
    with pytest.raises(InvalidTimeStampExpired):
        auth.authenticate(v1_request())


def test_a_request_that_waited_past_its_window_for_the_nonce_store_is_expired(nonces, clock):
    # Its clock reading is stale by then: another worker, judging by a later one, may have reused the slot
    # of an expired copy of this very nonce.  So the window is checked again after the claim.
    class SlowStore:
        def claim(self, *args):
            clock.now = NOW + SKEW + 1  # the request waited this long for the store's lock
            return nonces.claim(*args)

    slow = Authenticator(fake_credentials, SlowStore(), clock, SKEW)
    clock.now = NOW + SKEW - 1
    with pytest.raises(InvalidTimeStampExpired):
        slow.authenticate(v1_request(nonce="waited"))
    clock.now = NOW + SKEW - 1
    assert Authenticator(fake_credentials, nonces, clock, SKEW).authenticate(v1_request(nonce="prompt"))


def test_v1_expired_request_does_not_burn_its_nonce(auth, clock):
    clock.now = NOW + 16 * 60
    with pytest.raises(InvalidTimeStampExpired):
        auth.authenticate(v1_request(nonce="late"))
    clock.now = NOW
    assert auth.authenticate(v1_request(nonce="late")).access_key_id == "AK"


def test_v1_wrong_secret(auth):
    request = v1_request(secret="not-the-secret")
    with pytest.raises(SignatureDoesNotMatch) as info:
        auth.authenticate(request)
    message = info.value.message
    assert info.value.code == "SignatureDoesNotMatch"
    assert ":" in message
    # The legacy Python SDK reads the server string to sign after the colon.
    assert message.split(":", 1)[1] == v1_string_to_sign("POST", request.params)


def test_v1_failed_signature_does_not_burn_nonce(auth):
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(v1_request(secret="wrong", nonce="n-x"))
    assert auth.authenticate(v1_request(nonce="n-x")).access_key_id == "AK"


def test_v1_tampered_parameter_fails(auth):
    request = v1_request()
    params = {**request.params, "KeyId": "alias/other"}
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(SignedRequest("POST", "/", list(params.items()), params, {}, b""))


@pytest.mark.parametrize("plaintext", ["SuperSecretPlaintextValue42", "c2VjcmV0IGRhdGE+/w=="])
def test_v1_signature_mismatch_message_hides_plaintext(auth, plaintext):
    request = v1_request({"Plaintext": plaintext}, secret="wrong")
    with pytest.raises(SignatureDoesNotMatch) as info:
        auth.authenticate(request)
    message = info.value.message
    assert ":" in message
    for form in (plaintext, pct(plaintext), pct(pct(plaintext)), quote(plaintext)):
        assert form not in message
    assert str(info.value).find(plaintext) == -1


def test_v1_security_token_is_not_supported(auth):
    with pytest.raises(StsTokenNotSupported) as info:
        auth.authenticate(v1_request({"SecurityToken": "sts-token"}))
    assert info.value.code == "InvalidSecurityToken.NotSupported"


@pytest.mark.parametrize("name", ["SignatureNonce", "AccessKeyId"])
def test_v1_missing_parameter(auth, name):
    with pytest.raises(MissingParameter) as info:
        auth.authenticate(v1_request(drop=(name,)))
    assert info.value.code == "MissingParameter"
    assert name in info.value.message


def test_v1_empty_nonce_is_missing(auth):
    with pytest.raises(MissingParameter) as info:
        auth.authenticate(v1_request(nonce=""))
    assert "SignatureNonce" in info.value.message


def test_v1_missing_timestamp(auth):
    with pytest.raises(IllegalTimestamp):
        auth.authenticate(v1_request(drop=("Timestamp",)))


def test_v1_bad_timestamp(auth):
    with pytest.raises(IllegalTimestamp):
        auth.authenticate(v1_request(timestamp="2024-13-01T00:00:00Z"))


def test_no_signature_at_all_is_missing_signature(auth):
    with pytest.raises(MissingParameter) as info:
        auth.authenticate(v1_request(sign=False))
    assert '"Signature"' in info.value.message


@pytest.mark.parametrize(("name", "value"), [("SignatureMethod", "HMAC-SHA256"), ("SignatureVersion", "2.0")])
def test_v1_wrong_method_or_version(auth, name, value):
    with pytest.raises(IncompleteSignature):
        auth.authenticate(v1_request({name: value}))


def test_v1_unknown_access_key(auth):
    with pytest.raises(InvalidAccessKeyIdNotFound):
        auth.authenticate(v1_request({"AccessKeyId": "nobody"}))


def test_v1_nonce_too_long(auth):
    with pytest.raises(InvalidParameter) as info:
        auth.authenticate(v1_request(nonce="n" * (MAX_NONCE_CHARS + 1)))
    assert "SignatureNonce" in info.value.message
    assert auth.authenticate(v1_request(nonce="n" * MAX_NONCE_CHARS)).access_key_id == "AK"


def test_v3_request_passes(auth):
    assert auth.authenticate(v3_request()).access_key_id == "AK"


def test_v3_six_header_request_passes(auth):
    request = v3_request(signed=SIX_SIGNED)
    assert request.headers["authorization"].count("SignedHeaders=" + ";".join(SIX_SIGNED)) == 1
    assert auth.authenticate(request).access_key_id == "AK"


def test_v3_extra_signed_non_acs_headers_pass(auth):
    request = v3_request(extra_headers={"accept": "application/json", "content-type":
                                        "application/x-www-form-urlencoded", "user-agent": "AlibabaCloud"})
    assert auth.authenticate(request).access_key_id == "AK"


def test_v3_upper_case_signature_passes(auth):
    assert auth.authenticate(v3_request(signature_case=str.upper)).access_key_id == "AK"


FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded"}


def test_v3_with_body_passes(auth):
    request = v3_request(body=b"Recipient=abc%2B", extra_headers=FORM_HEADERS)
    assert auth.authenticate(request).access_key_id == "AK"


def test_v3_with_body_and_unsigned_content_type_is_incomplete(auth):
    # Unsigned, Content-Type could be changed in transit so that the form body's parameters are dropped.
    request = v3_request(body=b"EncryptionContext=%7B%7D", extra_headers=FORM_HEADERS,
                         signed=tuple(sorted(name for name in SIX_SIGNED)))
    with pytest.raises(IncompleteSignature) as info:
        auth.authenticate(request)
    assert "content-type" in info.value.message
    without_header = v3_request(body=b"EncryptionContext=%7B%7D", nonce="no-type")
    with pytest.raises(IncompleteSignature):
        auth.authenticate(without_header)


def test_v3_without_body_needs_no_signed_content_type(auth):
    assert "content-type" not in v3_request().headers["authorization"]
    assert auth.authenticate(v3_request()).access_key_id == "AK"


def test_v3_same_nonce_twice(auth):
    assert auth.authenticate(v3_request(nonce="rep")).access_key_id == "AK"
    with pytest.raises(SignatureNonceUsed):
        auth.authenticate(v3_request(nonce="rep"))


def test_v3_unsigned_acs_header_is_incomplete(auth):
    request = v3_request(extra_headers={"x-acs-credentials-provider": "static_ak"}, signed=SIX_SIGNED)
    with pytest.raises(IncompleteSignature) as info:
        auth.authenticate(request)
    assert "x-acs-credentials-provider" in info.value.message


def test_v3_unsigned_host_is_incomplete(auth):
    signed = tuple(name for name in SIX_SIGNED if name != "host")
    with pytest.raises(IncompleteSignature) as info:
        auth.authenticate(v3_request(signed=signed))
    assert "host" in info.value.message


def test_v3_body_not_matching_content_sha256(auth):
    request = v3_request(body=b"Recipient=abc", declared_hash=EMPTY_SHA256, extra_headers=FORM_HEADERS)
    with pytest.raises(SignatureDoesNotMatch) as info:
        auth.authenticate(request)
    assert ":" in info.value.message


def test_v3_body_mismatch_does_not_burn_nonce(auth):
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(v3_request(body=b"x", declared_hash=EMPTY_SHA256, nonce="keep", extra_headers=FORM_HEADERS))
    assert auth.authenticate(v3_request(nonce="keep")).access_key_id == "AK"


def test_v3_wrong_secret(auth):
    with pytest.raises(SignatureDoesNotMatch) as info:
        auth.authenticate(v3_request(secret="wrong"))
    assert ":" in info.value.message
    assert "ACS3-HMAC-SHA256" in info.value.message


def test_v3_tampered_query(auth):
    request = v3_request()
    query = [("KeyId", "alias/other"), *[pair for pair in request.query if pair[0] != "KeyId"]]
    tampered = SignedRequest("POST", "/", query, dict(query), request.headers, b"")
    with pytest.raises(SignatureDoesNotMatch):
        auth.authenticate(tampered)


def test_v3_form_body_params_are_not_in_canonical_query(auth):
    # Params merged from a form body are not part of the V3 canonical query; the body hash covers them.
    body = b"Recipient=abc"
    request = v3_request(body=body, extra_headers=FORM_HEADERS)
    merged = {**request.params, "Recipient": "abc"}
    signed = SignedRequest("POST", "/", request.query, merged, request.headers, body)
    assert auth.authenticate(signed).access_key_id == "AK"


def test_v3_security_token_header_not_supported(auth):
    request = v3_request(extra_headers={"x-acs-security-token": "sts", "x-acs-accesskey-id": "AK"})
    with pytest.raises(StsTokenNotSupported):
        auth.authenticate(request)


def test_v3_expired(auth, clock):
    clock.now = NOW - 16 * 60
    with pytest.raises(InvalidTimeStampExpired):
        auth.authenticate(v3_request())


def test_v3_missing_date(auth):
    request = v3_request()
    headers = {k: v for k, v in request.headers.items() if k != "x-acs-date"}
    with pytest.raises(IllegalTimestamp):
        auth.authenticate(SignedRequest("POST", "/", request.query, request.params, headers, b""))


def test_v3_missing_nonce(auth):
    request = v3_request()
    headers = {k: v for k, v in request.headers.items() if k != "x-acs-signature-nonce"}
    with pytest.raises(MissingParameter) as info:
        auth.authenticate(SignedRequest("POST", "/", request.query, request.params, headers, b""))
    assert "x-acs-signature-nonce" in info.value.message


def test_v3_missing_content_sha256(auth):
    request = v3_request()
    headers = {k: v for k, v in request.headers.items() if k != "x-acs-content-sha256"}
    with pytest.raises(MissingParameter):
        auth.authenticate(SignedRequest("POST", "/", request.query, request.params, headers, b""))


def test_v3_unknown_access_key(auth):
    with pytest.raises(InvalidAccessKeyIdNotFound):
        auth.authenticate(v3_request(access_key_id="nobody"))


def test_v3_unsupported_algorithm(auth):
    request = v3_request()
    headers = {**request.headers,
               "authorization": request.headers["authorization"].replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3")}
    with pytest.raises(IncompleteSignature):
        auth.authenticate(SignedRequest("POST", "/", request.query, request.params, headers, b""))
