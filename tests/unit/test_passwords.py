"""GetRandomPassword's generator with a scripted random source: options, rejection of biased bytes, errors."""

from __future__ import annotations

import os
import string

import pytest

from hsmkms.errors import InvalidParameter
from hsmkms.service.passwords import CHARACTER_TYPES, PUNCTUATION, PasswordRules, random_password


def scripted(*chunks: bytes):
    """A random source that hands out the given bytes, then os.urandom."""
    pending = list(chunks)

    def random_bytes(count: int) -> bytes:
        return pending.pop(0) if pending else os.urandom(count)

    return random_bytes


def test_default_password_is_32_characters_of_all_four_types():
    password = random_password(PasswordRules(), os.urandom)
    assert len(password) == 32
    assert set(password) <= set(string.ascii_letters + string.digits + PUNCTUATION)
    assert len(PUNCTUATION) == 31 and "`" not in PUNCTUATION  # Alibaba's documented special characters


def test_bytes_that_would_bias_the_pick_are_drawn_again():
    # 93 characters: bytes 0..185 map evenly (two each), 186..255 would favour the first 70 and are skipped.
    alphabet = string.ascii_lowercase + string.ascii_uppercase + string.digits + PUNCTUATION
    chunk = bytes([186, 255, 0, 93, 1, 185, 200, 2, 3, 4, 5, 6])
    password = random_password(PasswordRules(length=8), scripted(chunk))
    assert password == "".join(alphabet[b % 93] for b in [0, 93, 1, 185, 2, 3, 4, 5])


@pytest.mark.parametrize("excluded", list(CHARACTER_TYPES))
def test_each_type_can_be_excluded(excluded):
    for _ in range(20):
        password = random_password(PasswordRules(length=64, excluded_types=frozenset({excluded})), os.urandom)
        assert not set(password) & set(CHARACTER_TYPES[excluded])


def test_excluded_characters_never_appear():
    rules = PasswordRules(length=128, excluded_characters="abcXYZ019!@#")
    for _ in range(20):
        assert not set(random_password(rules, os.urandom)) & set("abcXYZ019!@#")


def test_every_included_type_appears_when_required():
    rules = PasswordRules(length=8, excluded_characters=string.ascii_lowercase[1:], require_each_type=True)
    for _ in range(50):  # lowercase is down to "a": without the requirement most passwords would lack it
        password = random_password(rules, os.urandom)
        assert "a" in password
        for chars in (string.ascii_uppercase, string.digits, PUNCTUATION):
            assert set(password) & set(chars)


def test_a_type_whose_characters_are_all_excluded_is_not_required():
    rules = PasswordRules(length=8, excluded_characters=string.digits, require_each_type=True)
    assert not set(random_password(rules, os.urandom)) & set(string.digits)


@pytest.mark.parametrize("rules, param", [
    (PasswordRules(length=7), "PasswordLength"),
    (PasswordRules(length=129), "PasswordLength"),
    (PasswordRules(excluded_types=frozenset(CHARACTER_TYPES)), "ExcludeCharacters"),
    (PasswordRules(excluded_types=frozenset({"Lowercase", "Uppercase", "Numbers"}),
                   excluded_characters=PUNCTUATION), "ExcludeCharacters"),
])
def test_impossible_rules_are_refused(rules, param):
    with pytest.raises(InvalidParameter) as caught:
        random_password(rules, os.urandom)
    assert param in caught.value.message
