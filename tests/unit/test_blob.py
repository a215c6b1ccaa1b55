"""CiphertextBlob formats 1 and 2: known-answer tests pin both layouts, and every malformation is refused."""

from __future__ import annotations

import base64

import pytest

from hsmkms.errors import InvalidCiphertext
from hsmkms.service.blob import (
    FORMAT_2,
    IV_LEN,
    MAX_SEALED_LEN,
    TAG_LEN,
    VERSION_ID_LEN,
    Blob,
    decode,
    encode,
)

VERSION_ID = "86a9efd9-3d16-4894-bd4f-1fc43f3f2abf"
IV = bytes(range(12))
SEALED = bytes(range(100, 132))
KAT_BLOB = Blob(key_version_id=VERSION_ID, iv=IV, sealed=SEALED)
# Pinned format-1 encoding of KAT_BLOB. Changing it breaks every ciphertext already handed out.
KAT_TEXT = (
    "ODZhOWVmZDktM2QxNi00ODk0LWJkNGYtMWZjNDNmM2YyYWJm"
    "AAECAwQFBgcICQoLZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="
)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def test_layout_constants():
    assert (VERSION_ID_LEN, IV_LEN, TAG_LEN) == (36, 12, 16)


def test_encode_known_answer():
    assert encode(KAT_BLOB) == KAT_TEXT


def test_decode_known_answer():
    blob = decode(KAT_TEXT)
    assert blob == KAT_BLOB
    assert blob.key_version_id == VERSION_ID
    assert blob.iv == IV
    assert blob.sealed == SEALED


def test_known_answer_layout_is_uuid_iv_sealed():
    raw = base64.b64decode(KAT_TEXT)
    assert raw == VERSION_ID.encode("ascii") + IV + SEALED
    # Same prefix as the official GenerateDataKey example blob (reference §5.1).
    assert KAT_TEXT.startswith("ODZhOWVmZDkt")


def test_round_trip_other_values():
    blob = Blob("00000000-0000-4000-8000-000000000000", b"\xff" * 12, b"\x00" * 16 + b"payload")
    assert decode(encode(blob)) == blob


@pytest.mark.parametrize(
    "text",
    [
        "!!!!",  # not base64
        "ODZh OWVm",  # whitespace inside
        KAT_TEXT + "\n",  # trailing newline
        KAT_TEXT[:-1],  # bad padding: the '=' removed
        KAT_TEXT + "=",  # bad padding: one '=' too many
        KAT_TEXT[:-2] + "_" + "=",  # urlsafe alphabet
        KAT_TEXT.replace("+", "-"),  # urlsafe alphabet
        "",  # empty
        "====",
        "QQ==",  # one byte, 'A': not a hex digit
        b64(b"0"),  # one valid first byte, far too short
        "ODZhé" + KAT_TEXT[5:],  # non-ASCII text
        "\uff2f" + KAT_TEXT[1:],  # full-width letter
    ],
)
def test_decode_rejects_malformed_text(text):
    with pytest.raises(InvalidCiphertext) as info:
        decode(text)
    assert info.value.code == "InvalidParameter"
    assert info.value.status == 400


def test_decode_rejects_version_id_not_a_uuid():
    not_uuid = b"0123456789abcdef0123456789abcdef0123"  # 36 hex chars, no dashes
    assert len(not_uuid) == 36
    with pytest.raises(InvalidCiphertext):
        decode(b64(not_uuid + IV + SEALED))


def test_decode_rejects_upper_case_uuid():
    with pytest.raises(InvalidCiphertext):
        decode(b64(VERSION_ID.upper().encode() + IV + SEALED))
    # Only one character up-cased, and its first byte still a valid digit.
    mixed = VERSION_ID[:-1] + VERSION_ID[-1].upper()
    assert mixed != VERSION_ID
    with pytest.raises(InvalidCiphertext):
        decode(b64(mixed.encode() + IV + SEALED))


@pytest.mark.parametrize("first", [b"g", b"A", b"\x02", b"\x00", b"-", b"{"])
def test_decode_rejects_first_byte_not_hex(first):
    raw = first + VERSION_ID.encode()[1:] + IV + SEALED
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw))


def test_decode_rejects_bad_dash_positions():
    shifted = "86a9efd93-d16-4894-bd4f-1fc43f3f2abf"
    assert len(shifted) == 36
    with pytest.raises(InvalidCiphertext):
        decode(b64(shifted.encode() + IV + SEALED))


def test_decode_rejects_absurdly_long_input():
    huge = encode(Blob(VERSION_ID, IV, b"x" * 100_000))
    with pytest.raises(InvalidCiphertext):
        decode(huge)
    with pytest.raises(InvalidCiphertext):
        decode("A" * 10_000_000)


def test_decode_accepts_max_sealed_length():
    blob = Blob(VERSION_ID, IV, b"s" * MAX_SEALED_LEN)
    assert decode(encode(blob)) == blob


def test_decode_rejects_just_over_the_length_limit():
    blob = Blob(VERSION_ID, IV, b"s" * (MAX_SEALED_LEN + 3))
    with pytest.raises(InvalidCiphertext):
        decode(encode(blob))


def test_truncated_tag_boundary():
    minimum = VERSION_ID_LEN + IV_LEN + TAG_LEN
    assert minimum == 64
    raw = base64.b64decode(KAT_TEXT)
    # Exactly uuid + iv + a 16-byte tag (no ciphertext) still parses.
    blob = decode(b64(raw[:minimum]))
    assert blob.key_version_id == VERSION_ID
    assert blob.iv == IV
    assert blob.sealed == SEALED[:TAG_LEN]
    # One byte less does not.
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw[: minimum - 1]))
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw[: VERSION_ID_LEN + IV_LEN]))
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw[:VERSION_ID_LEN]))


def test_every_truncation_below_minimum_is_rejected():
    raw = base64.b64decode(KAT_TEXT)
    for length in range(1, VERSION_ID_LEN + IV_LEN + TAG_LEN):
        with pytest.raises(InvalidCiphertext):
            decode(b64(raw[:length]))


def test_rejections_are_indistinguishable():
    messages = set()
    for text in ["!!!!", "", KAT_TEXT[:-1], b64(VERSION_ID.upper().encode() + IV + SEALED)]:
        with pytest.raises(InvalidCiphertext) as info:
            decode(text)
        messages.add((info.value.code, info.value.status, info.value.message))
    assert len(messages) == 1


@pytest.mark.parametrize(
    "blob",
    [
        Blob(VERSION_ID.upper(), IV, SEALED),
        Blob("not-a-uuid", IV, SEALED),
        Blob(VERSION_ID, IV[:11], SEALED),
        Blob(VERSION_ID, IV + b"\x00", SEALED),
        Blob(VERSION_ID, IV, b"\x00" * (TAG_LEN - 1)),
    ],
)
def test_encode_refuses_malformed_parts(blob):
    with pytest.raises(ValueError):
        encode(blob)


# --- format 2: the token made the IV, whose length the blob carries ------------------------------------

# Pinned format-2 encodings, with a 96-bit and a 128-bit IV. Changing them breaks every such ciphertext.
KAT_2_BLOBS = [
    (Blob(VERSION_ID, IV, SEALED, format=FORMAT_2),
     "Ajg2YTllZmQ5LTNkMTYtNDg5NC1iZDRmLTFmYzQzZjNmMmFiZgwAAQIDBAUGBwgJCgtkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ent8fX5/gIGCgw=="),
    (Blob(VERSION_ID, bytes(range(16)), SEALED, format=FORMAT_2),
     "Ajg2YTllZmQ5LTNkMTYtNDg5NC1iZDRmLTFmYzQzZjNmMmFiZhAAAQIDBAUGBwgJCgsMDQ4PZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="),
]


@pytest.mark.parametrize("blob, text", KAT_2_BLOBS)
def test_format_2_known_answers(blob, text):
    assert encode(blob) == text
    assert decode(text) == blob
    assert base64.b64decode(text) == b"\x02" + VERSION_ID.encode() + bytes([len(blob.iv)]) + blob.iv + SEALED


def test_format_1_stays_readable_and_is_told_apart_from_format_2():
    assert decode(KAT_TEXT).format == 1
    assert decode(KAT_2_BLOBS[0][1]).format == FORMAT_2


def test_format_2_minimum_and_maximum_lengths():
    header = 1 + VERSION_ID_LEN + 1
    raw = base64.b64decode(KAT_2_BLOBS[0][1])
    assert decode(b64(raw[: header + IV_LEN + TAG_LEN])).sealed == SEALED[:TAG_LEN]
    for length in range(1, header + IV_LEN + TAG_LEN):
        with pytest.raises(InvalidCiphertext):
            decode(b64(raw[:length]))
    longest = Blob(VERSION_ID, bytes(16), b"s" * MAX_SEALED_LEN, format=FORMAT_2)
    assert decode(encode(longest)) == longest
    with pytest.raises(InvalidCiphertext):
        decode(encode(Blob(VERSION_ID, bytes(16), b"s" * (MAX_SEALED_LEN + 1), format=FORMAT_2)))


@pytest.mark.parametrize("iv_len_byte", [0, 1, 11, 13, 15, 17, 255])
def test_format_2_refuses_other_iv_lengths(iv_len_byte):
    raw = b"\x02" + VERSION_ID.encode() + bytes([iv_len_byte]) + bytes(32) + SEALED
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw))


@pytest.mark.parametrize("first", [b"\x00", b"\x01", b"\x03", b"\xff"])
def test_unknown_formats_are_refused(first):
    raw = base64.b64decode(KAT_2_BLOBS[0][1])
    with pytest.raises(InvalidCiphertext):
        decode(b64(first + raw[1:]))


def test_format_2_refuses_a_bad_version_id():
    raw = b"\x02" + VERSION_ID.upper().encode() + bytes([12]) + IV + SEALED
    with pytest.raises(InvalidCiphertext):
        decode(b64(raw))


@pytest.mark.parametrize("blob", [Blob(VERSION_ID, bytes(11), SEALED, format=FORMAT_2),
                                  Blob(VERSION_ID, bytes(16), SEALED),  # format 1 takes 12-byte IVs only
                                  Blob(VERSION_ID, IV, SEALED, format=3)])
def test_encode_refuses_ivs_a_format_cannot_carry(blob):
    with pytest.raises(ValueError):
        encode(blob)
