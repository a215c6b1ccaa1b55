"""Property tests of policies against a brute-force reference written here, independent of hsmkms.policy.

Random policies over a small universe of actions, ARNs and wildcards (Allow and Deny, ``*`` and ``?``), and
random (action, resources) queries: ``Policy.evaluate`` must decide exactly as the reference does.  The same
universe checks the wildcard matcher, the validation of resources (never refuse a pattern that can match; a
refused pattern matches nothing) and the warning about Deny Decrypt / Allow ReEncryptFrom.

The examples are few and fixed by default (part of ``make test``, a few seconds); with ``HSMKMS_FUZZ=long``
(``HSMKMS_FUZZ=long .venv/bin/python -m pytest tests/unit/test_policy_properties.py``, about 4 minutes) they
are many and random.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmkms.policy import Decision, PolicyError, Wildcard, parse_policy, policy_warnings

LONG = os.environ.get("HSMKMS_FUZZ", "").lower() == "long"
PROPERTY = settings(max_examples=3000 if LONG else 150, derandomize=not LONG, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# --- the reference ----------------------------------------------------------------------------------------


def reference_match(pattern: str, text: str) -> bool:
    """Does the RAM wildcard ``pattern`` match all of ``text``? Character by character, by recursion."""

    @lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        if pattern[i] == "*":
            return match(i + 1, j) or (j < len(text) and match(i, j + 1))
        return j < len(text) and pattern[i] in ("?", text[j]) and match(i + 1, j + 1)

    return match(0, 0)


HALVES = ("kms:reencryptfrom", "kms:reencryptto")


def reference_covers(statement: dict, action: str) -> bool:
    """Actions compare case-insensitively (the universe is ASCII); a pattern matching kms:ReEncrypt also
    covers its two halves (the README's rule)."""
    names = [action.lower()] + (["kms:reencrypt"] if action.lower() in HALVES else [])
    return any(reference_match(pattern.lower(), name) for pattern in as_list(statement["Action"]) for name in names)


def reference_evaluate(statements: list[dict], action: str, resources: list[str]) -> Decision:
    """RAM: an explicit Deny on any resource wins, else every resource needs an Allow, else deny."""
    if action[:4].lower() != "kms:":
        action = "kms:" + action

    def said(effect: str, resource: str) -> bool:
        return any(s["Effect"] == effect and reference_covers(s, action)
                   and any(reference_match(p, resource) for p in as_list(s["Resource"])) for s in statements)

    for resource in resources:
        if said("Deny", resource):
            return Decision(False, resource)
    for resource in resources:
        if not said("Allow", resource):
            return Decision(False, resource)
    return Decision(True, None)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


# --- the universe ------------------------------------------------------------------------------------------

KEY_IDS = ["0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10", "0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e11",
           "5f0c7b58-3a41-4c7c-8f55-2d6c0e9d4a21"]
ALIASES = ["app", "app2", "team/app", "b"]
PREFIXES = ["acs:kms:r1:1", "acs:kms:r1:12", "acs:kms:cn-x:1"]
KEY_ARNS = [f"{prefix}:key/{key_id}" for prefix in PREFIXES for key_id in KEY_IDS]
ARNS = KEY_ARNS + [f"{prefix}:alias/{alias}" for prefix in PREFIXES for alias in ALIASES] + \
    [f"{prefix}:{kind}" for prefix in PREFIXES for kind in ("key", "alias")]
# What else a request can name: a KeyId that is no key id, a foreign ARN, an ARN with a colon in the key part.
ODD_RESOURCES = ["acs:kms:r1:1:key/nothing", "acs:kms:r1:1:key/a:b", "acs:ecs:r1:1:instance/i", "acs:kms:r1:1:"]
# ReEncrypt and its halves often, so that the rule joining them is exercised in most examples.
ACTIONS = ["kms:Decrypt", "kms:Encrypt", "kms:ReEncrypt", "kms:ReEncrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
           "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"]
QUERIED = ["kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:ReEncryptFrom", "kms:ReEncryptTo",
           "kms:Encrypt", "kms:GenerateDataKey", "kms:ReEncrypt"]


@st.composite
def derived(draw, originals: list[str], ignore_case: bool = False) -> str:
    """A pattern that matches at least one of ``originals``: a few runs after its "kms:" or "acs:" replaced by
    '*' (one star per run, possibly empty) or by as many '?' (and, for actions, the case changed).  Valid by
    construction."""
    original = draw(st.sampled_from(originals))
    prefix, text = original[:4], original[4:]  # RAM's form: "kms:..." or "acs:..." stays
    marks = [c for c in text]  # each character: itself, '?', or a star-run number
    stars_before: set[int] = set()
    for run in range(draw(st.integers(0, 3))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        if start == end:
            stars_before.add(start)
        mark = run if draw(st.booleans()) else "?"
        for i in range(start, end):
            marks[i] = mark
    pattern = []
    for i, mark in enumerate(marks + [""]):
        if i in stars_before or (isinstance(mark, int) and (i == 0 or marks[i - 1] != mark)):
            pattern.append("*")
        if isinstance(mark, str):
            pattern.append(mark)
    text = prefix + "".join(pattern)
    if ignore_case and draw(st.booleans()):
        text = "".join(c.upper() if draw(st.booleans()) else c for c in text)
    return text


action_patterns = st.one_of(st.sampled_from(["*", "kms:*", "kms:ReEncrypt", "kms:reencrypt", "kms:*Encrypt"]),
                            derived(ACTIONS, ignore_case=True))
resource_patterns = st.one_of(st.sampled_from(["*", "acs:kms:*", "acs:kms:*:*:key/*"]), derived(ARNS))


def patterns(strategy) -> st.SearchStrategy:
    return st.one_of(strategy, st.lists(strategy, min_size=1, max_size=3))


statements = st.fixed_dictionaries({"Effect": st.sampled_from(["Allow", "Deny"]), "Action": patterns(action_patterns),
                                    "Resource": patterns(resource_patterns)})
policies = st.lists(statements, min_size=1, max_size=5)
query_actions = st.builds(lambda name, qualified, upper: (name if qualified else name[4:]).upper() if upper else
                          (name if qualified else name[4:]), st.sampled_from(QUERIED), st.booleans(), st.booleans())
query_resources = st.lists(st.sampled_from(ARNS + ODD_RESOURCES), min_size=1, max_size=3)


def document(statement_list: list[dict]) -> str:
    return json.dumps({"Version": "1", "Statement": statement_list})


# --- the properties ----------------------------------------------------------------------------------------


@PROPERTY
@given(policies, st.lists(st.tuples(query_actions, query_resources), min_size=1, max_size=8))
def test_evaluate_decides_like_the_reference(statement_list, queries):
    policy = parse_policy(document(statement_list))
    for action, resources in queries:
        expected = reference_evaluate(statement_list, action, resources)
        assert policy.evaluate(action, resources) == expected, (action, resources)
        assert policy.evaluate(action, resources) == expected  # the second time from memory


@settings(PROPERTY, max_examples=PROPERTY.max_examples * 5)  # cheap; a small alphabet makes pieces repeat
@given(st.text("ab*?", max_size=8), st.text("ab*", max_size=8))
def test_wildcard_matches_like_the_reference(pattern, text):
    assert Wildcard(pattern).matches(text) == reference_match(pattern, text)


@PROPERTY
@given(patterns(resource_patterns))
def test_patterns_that_match_an_arn_are_never_refused(resources):
    parse_policy(document([{"Effect": "Deny", "Action": "kms:*", "Resource": resources}]))


PIECES = ["acs:", "kms:", "*", "?", ":", "key", "kye", "alias", "/", "r1", "1", "x", KEY_IDS[0], "-", "app"]


@PROPERTY
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join))
def test_a_refused_resource_matches_no_arn(pattern):
    try:
        parse_policy(document([{"Effect": "Allow", "Action": "kms:*", "Resource": pattern}]))
    except PolicyError as refusal:
        if "must be '*' or an ARN starting with 'acs:'" in str(refusal):  # RAM's form, whatever it could match
            assert pattern != "*" and not pattern.startswith("acs:")
        else:
            assert not [arn for arn in ARNS if reference_match(pattern, arn)], pattern


@PROPERTY
@given(policies)
def test_warnings_find_every_key_where_decrypt_is_denied_but_re_encrypt_from_is_not(statement_list):
    policy = parse_policy(document(statement_list))
    warnings = policy_warnings(policy)
    open_keys = [arn for arn in KEY_ARNS
                 if reference_evaluate(statement_list, "Decrypt", [arn]) == Decision(False, arn)
                 and any(s["Effect"] == "Deny" and reference_covers(s, "kms:Decrypt")
                         and any(reference_match(p, arn) for p in as_list(s["Resource"])) for s in statement_list)
                 and reference_evaluate(statement_list, "ReEncryptFrom", [arn]).allowed]
    if open_keys:
        assert warnings, open_keys
    for warning in (w for w in warnings if "still allows kms:ReEncryptFrom" in w):
        example = warning.split("(for example ")[1].split(")")[0]
        assert not policy.evaluate("Decrypt", [example]).allowed
        assert policy.evaluate("ReEncryptFrom", [example]).allowed
