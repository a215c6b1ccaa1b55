"""GetRandomPassword over the token's RNG: every allowed character equally likely.

The bound cannot flake in practice: each character's count X is Binomial(n, 1/k), and by the Chernoff bound
P(|X - mu| >= delta*mu) <= 2*exp(-delta^2 * mu / 3).  delta is chosen so that the chance of any of the k
counts leaving its band by chance is below 1e-9, while a modulo-biased pick (some characters 3/2 as likely
as others, the classic mistake) lands far outside it.
"""

from __future__ import annotations

import math
import string
from collections import Counter

from hsmkms.service.passwords import PUNCTUATION, PasswordRules, random_password

FALSE_ALARM = 1e-9


def band(count: int, characters: int) -> tuple[float, float]:
    mu = count / characters
    delta = math.sqrt(3 * math.log(2 * characters / FALSE_ALARM) / mu)
    return mu * (1 - delta), mu * (1 + delta)


def test_characters_are_uniform_over_the_token_rng(hsm):
    alphabet = string.ascii_lowercase + string.ascii_uppercase + string.digits + PUNCTUATION
    counts = Counter()
    for _ in range(2000):
        counts.update(random_password(PasswordRules(length=128), hsm.random))
    assert set(counts) == set(alphabet)
    low, high = band(sum(counts.values()), len(alphabet))
    assert high / low < 1.5  # tight enough that a 3:2 bias cannot hide in it
    outside = {ch: n for ch, n in counts.items() if not low <= n <= high}
    assert not outside, (low, high, outside)


def test_characters_within_each_type_are_uniform_when_every_type_is_required(hsm):
    rules = PasswordRules(length=8, excluded_types=frozenset({"Punctuation"}), require_each_type=True)
    counts = Counter()
    for _ in range(12000):
        counts.update(random_password(rules, hsm.random))
    for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        within = [counts[ch] for ch in chars]
        low, high = band(sum(within), len(chars))
        assert all(low <= n <= high for n in within), (chars, low, high, within)
