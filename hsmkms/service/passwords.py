"""GetRandomPassword: passwords drawn from the HSM's RNG, uniformly over every password the options allow.

Each character is an unbiased pick from the allowed characters (rejection sampling of random bytes, so no
character is likelier than another).  With ``require_each_type`` a whole password that lacks one of the
included types is drawn again, which keeps the result uniform over the passwords that have every type.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

from hsmkms.errors import InvalidParameter

MIN_LENGTH, MAX_LENGTH, DEFAULT_LENGTH = 8, 128, 32
# Alibaba's documented set of special characters: ASCII punctuation without the backtick.
PUNCTUATION = string.punctuation.replace("`", "")
CHARACTER_TYPES = {
    "Lowercase": string.ascii_lowercase,
    "Uppercase": string.ascii_uppercase,
    "Numbers": string.digits,
    "Punctuation": PUNCTUATION,
}
MAX_DRAWS = 10_000  # whole passwords drawn before giving up on require_each_type (never reached in practice)
_RANDOM_CHUNK = 256


@dataclass(frozen=True)
class PasswordRules:
    length: int = DEFAULT_LENGTH
    excluded_types: frozenset[str] = frozenset()
    excluded_characters: str = ""
    require_each_type: bool = False

    def types(self) -> list[str]:
        """The character sets the password draws from: included types, less the excluded characters."""
        sets = [
            "".join(ch for ch in chars if ch not in self.excluded_characters)
            for name, chars in CHARACTER_TYPES.items() if name not in self.excluded_types
        ]
        return [chars for chars in sets if chars]


def random_password(rules: PasswordRules, random_bytes: Callable[[int], bytes]) -> str:
    if not MIN_LENGTH <= rules.length <= MAX_LENGTH:
        raise InvalidParameter("PasswordLength", f"It must be from {MIN_LENGTH} to {MAX_LENGTH}.")
    types = rules.types()
    if not types:
        raise InvalidParameter("ExcludeCharacters", "The options exclude every character.")
    alphabet = "".join(types)
    # Bytes below the largest multiple of len(alphabet) map onto it evenly; the others are drawn again.
    limit = 256 - 256 % len(alphabet)
    pending = b""
    for _ in range(MAX_DRAWS):
        picked = []
        while len(picked) < rules.length:
            if not pending:
                pending = random_bytes(_RANDOM_CHUNK)
            byte, pending = pending[0], pending[1:]
            if byte < limit:
                picked.append(alphabet[byte % len(alphabet)])
        password = "".join(picked)
        if not rules.require_each_type or all(any(ch in chars for ch in password) for chars in types):
            return password
    raise InvalidParameter("ExcludeCharacters", "The options leave too few characters to satisfy them.")
