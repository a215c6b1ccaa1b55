"""RAM-style policies: parsing, wildcard matching and the allow/deny evaluation."""

from __future__ import annotations

import dataclasses
import json
import signal
import tracemalloc
import uuid

import pytest

from hsmkms.api.actions import ACTIONS
from hsmkms.policy import (
    ALLOW_ALL,
    KMS_ACTIONS,
    MAX_POLICY_BYTES,
    Decision,
    Policy,
    PolicyError,
    Wildcard,
    parse_policy,
    policy_warnings,
)

ACCOUNT = "acs:kms:cn-hangzhou:1000000000000000"
APP_KEY_ID = "0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10"
APP_KEY = f"{ACCOUNT}:key/{APP_KEY_ID}"
APP_ALIAS = f"{ACCOUNT}:alias/app"
OTHER_KEY = f"{ACCOUNT}:key/5f0c7b58-3a41-4c7c-8f55-2d6c0e9d4a21"
KEYS_COLLECTION = f"{ACCOUNT}:key"  # what a collection action such as ListKeys or CreateKey touches

# Worked example (a): an application that may only use one key, directly or through its alias, for envelope
# encryption.  Decrypt names no KeyId (the blob does), so a Decrypt request touches the key ARN alone: the
# key ARN must be granted, and the alias ARN lets GenerateDataKey/Encrypt say KeyId=alias/app.
APP_POLICY = """{
  "Version": "1",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["kms:GenerateDataKey", "kms:Decrypt", "kms:Encrypt"],
      "Resource": [
        "acs:kms:cn-hangzhou:1000000000000000:key/0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10",
        "acs:kms:cn-hangzhou:1000000000000000:alias/app"
      ]
    }
  ]
}"""

# Worked example (b): an operator who manages keys and aliases but can never see or produce plaintext.
OPERATOR_POLICY = """{
  "Version": "1",
  "Statement": [
    {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
    {
      "Effect": "Deny",
      "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*"],
      "Resource": "*"
    }
  ]
}"""


def policy(*statements: dict) -> Policy:
    return parse_policy(json.dumps({"Version": "1", "Statement": list(statements)}))


def allow(action, resource) -> dict:
    return {"Effect": "Allow", "Action": action, "Resource": resource}


def deny(action, resource) -> dict:
    return {"Effect": "Deny", "Action": action, "Resource": resource}


# --- evaluation ------------------------------------------------------------------------------------------


def test_allow_matching_action_and_resource():
    p = policy(allow("kms:Decrypt", APP_KEY))
    assert p.evaluate("Decrypt", [APP_KEY]) == Decision(True, None)


def test_default_deny_for_other_action_and_other_resource():
    p = policy(allow("kms:Decrypt", APP_KEY))
    assert p.evaluate("Encrypt", [APP_KEY]) == Decision(False, APP_KEY)
    assert p.evaluate("Decrypt", [OTHER_KEY]) == Decision(False, OTHER_KEY)


def test_explicit_deny():
    p = policy(deny("kms:Decrypt", "*"))
    assert p.evaluate("Decrypt", [APP_KEY]) == Decision(False, APP_KEY)


def test_explicit_deny_beats_allow():
    p = policy(allow("kms:*", "*"), deny("kms:Decrypt", APP_KEY))
    assert p.evaluate("Decrypt", [APP_KEY]) == Decision(False, APP_KEY)
    assert p.evaluate("Decrypt", [OTHER_KEY]).allowed
    assert p.evaluate("Encrypt", [APP_KEY]).allowed


def test_deny_on_alias_beats_allow_on_key():
    p = policy(allow("kms:Encrypt", APP_KEY), deny("kms:Encrypt", APP_ALIAS))
    assert p.evaluate("Encrypt", [APP_KEY]).allowed  # KeyId given as the key id: the alias is not involved
    assert p.evaluate("Encrypt", [APP_KEY, APP_ALIAS]) == Decision(False, APP_ALIAS)


def test_alias_resource_is_allowed_only_with_its_key():
    p = policy(allow("kms:Encrypt", [APP_ALIAS]))
    assert p.evaluate("Encrypt", [APP_ALIAS]).allowed
    # Used through the alias the request also touches the key, which this policy does not grant.
    assert p.evaluate("Encrypt", [APP_KEY, APP_ALIAS]) == Decision(False, APP_KEY)


def test_every_resource_must_be_allowed_possibly_by_different_statements():
    p = policy(allow("kms:Encrypt", APP_KEY), allow("kms:*", APP_ALIAS))
    assert p.evaluate("Encrypt", [APP_KEY, APP_ALIAS]).allowed
    assert p.evaluate("Decrypt", [APP_KEY, APP_ALIAS]) == Decision(False, APP_KEY)


def test_first_not_allowed_resource_is_reported():
    p = policy(allow("kms:Encrypt", APP_ALIAS))
    assert p.evaluate("Encrypt", [OTHER_KEY, APP_KEY, APP_ALIAS]) == Decision(False, OTHER_KEY)


def test_explicit_deny_is_reported_before_a_resource_that_is_merely_not_allowed():
    p = policy(allow("kms:Encrypt", APP_KEY), deny("kms:Encrypt", APP_ALIAS))
    assert p.evaluate("Encrypt", [OTHER_KEY, APP_ALIAS]) == Decision(False, APP_ALIAS)


@pytest.mark.parametrize(
    "pattern, action, expected",
    [
        ("kms:*", "Decrypt", True),
        ("kms:*", "ListKeys", True),
        ("*", "GenerateDataKey", True),
        ("kms:Generate*", "GenerateDataKey", True),
        ("kms:Generate*", "GenerateDataKeyWithoutPlaintext", True),
        ("kms:Generate*", "Decrypt", False),
        ("kms:*Key", "CreateKey", True),
        ("kms:*Key", "CreateKeyVersion", False),
        ("kms:?ncrypt", "Encrypt", True),
        ("kms:?ncrypt", "Decrypt", False),
        ("kms:?ncrypt", "ReEncrypt", False),
        ("kms:Decrypt", "DecryptX", False),
        ("kms:Decrypt", "XDecrypt", False),
    ],
)
def test_action_wildcards(pattern, action, expected):
    assert policy(allow(pattern, "*")).evaluate(action, [APP_KEY]).allowed is expected


@pytest.mark.parametrize(
    "pattern, resource, expected",
    [
        (f"{ACCOUNT}:key/*", APP_KEY, True),
        (f"{ACCOUNT}:key/*", APP_ALIAS, False),
        (f"{ACCOUNT}:key/*", KEYS_COLLECTION, False),
        ("acs:kms:*:*:key/*", APP_KEY, True),
        ("acs:kms:*", APP_ALIAS, True),
        ("acs:kms:cn-shanghai:*", APP_KEY, False),
        (f"{ACCOUNT}:alias/ap?", APP_ALIAS, True),
        (f"{ACCOUNT}:alias/a?", APP_ALIAS, False),
        (f"{ACCOUNT}:alias/app?", APP_ALIAS, False),
        (f"{ACCOUNT}:alias/app*", APP_ALIAS, True),  # '*' matches the empty run
        (f"{ACCOUNT}:alias/APP", APP_ALIAS, False),  # resources are case-sensitive
    ],
)
def test_resource_wildcards(pattern, resource, expected):
    assert policy(allow("kms:Encrypt", pattern)).evaluate("Encrypt", [resource]).allowed is expected


@pytest.mark.parametrize("pattern", ["KMS:DECRYPT", "kms:decrypt", "Kms:DeCrYpT", "kms:de*"])
@pytest.mark.parametrize("action", ["Decrypt", "decrypt", "kms:Decrypt", "KMS:decrypt"])
def test_actions_are_case_insensitive(pattern, action):
    assert policy(allow(pattern, "*")).evaluate(action, [APP_KEY]).allowed


@pytest.mark.parametrize(
    "name, literal, lookalike",
    [
        ("a.b", "a.b", "aXb"),
        ("a+b", "a+b", "aab"),
        ("a(b)", "a(b)", "ab"),
        ("a[bc]", "a[bc]", "ab"),
        ("a|b", "a|b", "a"),
        ("a^b$", "a^b$", "ab"),
        ("a\\d", "a\\d", "a1"),
        ("a{2}", "a{2}", "aa"),
    ],
)
def test_regex_metacharacters_in_patterns_are_literal(name, literal, lookalike):
    # A region may hold any character but ':' (alias names and key ids are too strict to carry these).
    p = policy(allow("kms:Encrypt", f"acs:kms:{name}:1:alias/app"))
    assert p.evaluate("Encrypt", [f"acs:kms:{literal}:1:alias/app"]).allowed
    assert not p.evaluate("Encrypt", [f"acs:kms:{lookalike}:1:alias/app"]).allowed
    assert Wildcard(name).matches(literal) and not Wildcard(name).matches(lookalike)


def test_action_metacharacters_are_literal():
    assert not Wildcard("kms:De.rypt", ignore_case=True).matches("kms:Decrypt")
    with pytest.raises(PolicyError, match="'kms:De.rypt' is not a KMS action"):
        policy(allow("kms:De.rypt", "*"))


def test_star_matches_across_separators_and_newlines():
    p = policy(allow("kms:Encrypt", "acs:*"))
    assert p.evaluate("Encrypt", ["acs:kms:r:a:alias/x/y\nz"]).allowed


def test_evaluate_refuses_no_resources_and_a_bare_string():
    with pytest.raises(ValueError):
        ALLOW_ALL.evaluate("ListKeys", [])
    with pytest.raises(TypeError):
        ALLOW_ALL.evaluate("ListKeys", APP_KEY)  # type: ignore[arg-type]


def test_allow_all():
    for action in ("CreateKey", "Decrypt", "GenerateDataKey", "ListAliases"):
        assert ALLOW_ALL.evaluate(action, [APP_KEY, APP_ALIAS]).allowed
    assert ALLOW_ALL.evaluate("ListKeys", [KEYS_COLLECTION]).allowed


# --- the worked examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action, resources, expected",
    [
        ("GenerateDataKey", [APP_KEY, APP_ALIAS], Decision(True)),  # KeyId=alias/app
        ("GenerateDataKey", [APP_KEY], Decision(True)),  # KeyId=<key id> or key ARN
        ("Encrypt", [APP_KEY, APP_ALIAS], Decision(True)),
        ("Decrypt", [APP_KEY], Decision(True)),  # the blob names the key version
        ("Decrypt", [OTHER_KEY], Decision(False, OTHER_KEY)),  # a blob of somebody else's key
        ("Encrypt", [OTHER_KEY], Decision(False, OTHER_KEY)),
        # alias/app re-pointed at another key: the alias alone is not enough.
        ("GenerateDataKey", [OTHER_KEY, APP_ALIAS], Decision(False, OTHER_KEY)),
        ("GenerateDataKeyWithoutPlaintext", [APP_KEY, APP_ALIAS], Decision(False, APP_KEY)),
        ("DescribeKey", [APP_KEY], Decision(False, APP_KEY)),
        ("CreateKey", [KEYS_COLLECTION], Decision(False, KEYS_COLLECTION)),
        ("ListKeys", [KEYS_COLLECTION], Decision(False, KEYS_COLLECTION)),
        ("DeleteAlias", [APP_KEY, APP_ALIAS], Decision(False, APP_KEY)),
    ],
)
def test_example_application_policy(action, resources, expected):
    assert parse_policy(APP_POLICY).evaluate(action, resources) == expected


@pytest.mark.parametrize(
    "action, resources, allowed",
    [
        ("CreateKey", [KEYS_COLLECTION], True),
        ("ListKeys", [KEYS_COLLECTION], True),
        ("DescribeKey", [APP_KEY], True),
        ("CreateAlias", [APP_KEY, APP_ALIAS], True),
        ("DeleteAlias", [APP_KEY, APP_ALIAS], True),
        ("ListAliases", [KEYS_COLLECTION], True),
        ("Decrypt", [APP_KEY], False),
        ("GenerateDataKey", [APP_KEY, APP_ALIAS], False),
        ("GenerateDataKeyWithoutPlaintext", [APP_KEY], False),
        ("ReEncrypt", [APP_KEY], False),
        ("decrypt", [OTHER_KEY], False),
    ],
)
def test_example_operator_policy(action, resources, allowed):
    decision = parse_policy(OPERATOR_POLICY).evaluate(action, resources)
    assert decision == Decision(allowed, None if allowed else resources[0])


# --- parsing and validation --------------------------------------------------------------------------------


def test_single_statement_object_is_accepted():
    p = parse_policy('{"Version": "1", "Statement": {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}}')
    assert len(p.statements) == 1
    assert p.evaluate("Decrypt", [APP_KEY]).allowed


def test_statements_keep_their_patterns():
    p = parse_policy(OPERATOR_POLICY)
    assert [s.effect for s in p.statements] == ["Allow", "Deny"]
    assert p.statements[1].actions == ("kms:Decrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*")
    assert p.statements[0].resources == ("*",)


def good(**statement_overrides) -> dict:
    statement = {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"}
    statement.update(statement_overrides)
    return {"Version": "1", "Statement": [statement]}


def without(key: str) -> dict:
    doc = good()
    del doc["Statement"][0][key]
    return doc


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"Version": "1", "Version": "1", "Statement": []}', "duplicate key 'Version'"),
        ("[]", "must be a JSON object"),
        ('"policy"', "must be a JSON object"),
        ('{"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}', "Version must be"),
        ('{"Version": 1, "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}', "Version must be"),
        ('{"Version": "2", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}', "Version must be"),
        ('{"Version": "1"}', "Statement is missing"),
        ('{"Version": "1", "Statement": []}', "Statement must not be empty"),
        ('{"Version": "1", "Statement": "Allow"}', "Statement must be a list"),
        ('{"Version": "1", "Statement": null}', "Statement must be a list"),
        ('{"Version": "1", "Statement": ["Allow"]}', "Statement 1 must be a JSON object"),
        ('{"Version": "1", "Statement": [], "Id": "x"}', "Unsupported key(s) Id"),
        (json.dumps(good(Effect="allow")), 'Effect must be "Allow" or "Deny"'),
        (json.dumps(good(Effect="Permit")), 'Effect must be "Allow" or "Deny"'),
        (json.dumps(good(Effect=None)), 'Effect must be "Allow" or "Deny"'),
        (json.dumps(without("Effect")), 'Effect must be "Allow" or "Deny"'),
        (json.dumps(without("Action")), "Statement 1: Action is missing"),
        (json.dumps(without("Resource")), "Statement 1: Resource is missing"),
        (json.dumps(good(Action=[])), "Action must not be empty"),
        (json.dumps(good(Resource=[])), "Resource must not be empty"),
        (json.dumps(good(Action={"kms": "Decrypt"})), "Action must be a string or a list of strings"),
        (json.dumps(good(Resource=7)), "Resource must be a string or a list of strings"),
        (json.dumps(good(Action=["kms:Decrypt", 1])), "Action must contain only strings"),
        (json.dumps(good(Resource=[None])), "Resource must contain only strings"),
        (json.dumps(good(Resource=["*", ""])), "Resource must not contain an empty string"),
        (json.dumps(good(Action="ecs:DescribeInstances")), "must be '*' or start with 'kms:'"),
        (json.dumps(good(Action="kms*")), "must be '*' or start with 'kms:'"),
        (json.dumps(good(Resource="key/*")), "must be '*' or an ARN starting with 'acs:'"),
        (json.dumps(good(Condition={"IpAddress": {"acs:SourceIp": "10.0.0.0/8"}})), "conditions are not supported"),
        (json.dumps(good(NotAction="kms:Decrypt")), "unsupported key(s) NotAction"),
        (json.dumps(good(Sid="x")), "unsupported key(s) Sid"),
    ],
)
def test_invalid_documents_are_refused_with_a_clear_message(text, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(text)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_error_names_the_offending_statement():
    doc = {"Version": "1", "Statement": [good()["Statement"][0], {"Effect": "Allow", "Action": "kms:*"}]}
    with pytest.raises(PolicyError, match="Statement 2: Resource is missing"):
        parse_policy(json.dumps(doc))


def test_size_limit_counts_utf8_bytes():
    base = json.dumps(good())
    padding = MAX_POLICY_BYTES - len(base.encode())
    assert parse_policy(base + " " * padding).evaluate("Decrypt", [APP_KEY]).allowed  # exactly at the limit
    with pytest.raises(PolicyError, match="exceeds 32768 bytes"):
        parse_policy(base + " " * (padding + 1))
    # A multi-byte character counts for its bytes, not as one character.
    with pytest.raises(PolicyError, match="exceeds"):
        parse_policy(base + " " * (padding - 1) + "\u00e9")


def test_non_string_input_is_refused():
    with pytest.raises(PolicyError, match="JSON string"):
        parse_policy(b'{"Version": "1"}')  # type: ignore[arg-type]


# --- canonical form ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [APP_POLICY, OPERATOR_POLICY, ALLOW_ALL.to_json()])
def test_to_json_round_trips(text):
    p = parse_policy(text)
    canonical = p.to_json()
    assert json.loads(canonical) == json.loads(text)
    again = parse_policy(canonical)
    assert again == p
    assert again.to_json() == canonical


def test_to_json_is_canonical_and_pretty():
    compact = '{"Statement":{"Resource":"*","Action":"kms:Decrypt","Effect":"Deny"},"Version":"1"}'
    spaced = '{ "Version" : "1",\n "Statement" : {"Effect":"Deny", "Action":"kms:Decrypt", "Resource":"*"} }'
    assert parse_policy(compact).to_json() == parse_policy(spaced).to_json()
    assert parse_policy(compact).to_json() == (
        "{\n"
        '  "Statement": {\n'
        '    "Action": "kms:Decrypt",\n'
        '    "Effect": "Deny",\n'
        '    "Resource": "*"\n'
        "  },\n"
        '  "Version": "1"\n'
        "}"
    )


def test_policies_are_immutable_and_comparable():
    p = parse_policy(APP_POLICY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.statements = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.statements[0].effect = "Deny"  # type: ignore[misc]
    assert p == parse_policy(APP_POLICY)
    assert p != parse_policy(OPERATOR_POLICY)
    assert hash(p) == hash(parse_policy(APP_POLICY))


def test_remembered_decisions_match_fresh_ones_and_stay_bounded(monkeypatch):
    monkeypatch.setattr("hsmkms.policy.MAX_REMEMBERED_BYTES", 4096)
    policy = parse_policy(OPERATOR_POLICY)
    fresh = parse_policy(OPERATOR_POLICY)
    cases = [(action, [f"acs:kms:cn-hangzhou:123:key/k{n}"])
             for action in ("Decrypt", "kms:CreateKey", "ScheduleKeyDeletion", "DescribeKey") for n in range(5)]
    for _ in range(3):  # second and third rounds come from memory (and the memory is cleared on the way)
        for action, resources in cases:
            assert policy.evaluate(action, resources) == fresh._decide(action, resources)
            assert 0 < policy._memory.size[1] <= 4096
    assert {policy.evaluate(a, r).allowed for a, r in cases} == {True, False}


def test_requests_longer_than_any_arn_are_decided_but_not_remembered():
    policy = parse_policy(OPERATOR_POLICY)
    for n in range(20):
        huge = f"{ACCOUNT}:key/{n:05d}" + ":" * 60_000  # any caller can name a 60 KB KeyId
        assert policy.evaluate("DescribeKey", [huge]) == Decision(True)
        assert policy.evaluate("Decrypt", [huge]) == Decision(False, huge)
        assert policy.evaluate("Encrypt", [APP_KEY, huge]) == Decision(True)
    assert policy._memory.size == (0, 0)
    policy.evaluate("Decrypt", [APP_KEY])
    assert policy._memory.size[0] == 1


def test_an_action_allowed_on_every_resource_needs_no_decision_per_resource():
    policy = parse_policy('{"Version": "1", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}')
    for n in range(5_000):  # more keys than the memory holds
        assert policy.evaluate("GenerateDataKey", [f"{ACCOUNT}:key/{uuid.UUID(int=n)}"]) == Decision(True)
    assert policy._memory.size == (0, 0)


@pytest.mark.parametrize("action, resources, expected", [
    ("DescribeKey", [APP_KEY], Decision(True)),  # the Allow on "*", no Deny for it
    ("Decrypt", [APP_KEY], Decision(False, APP_KEY)),  # a Deny on "*" applies
    ("kms:GenerateDataKeyWithoutPlaintext", [OTHER_KEY, APP_KEY], Decision(False, OTHER_KEY)),
])
def test_a_deny_on_every_resource_still_decides(action, resources, expected):
    assert parse_policy(OPERATOR_POLICY).evaluate(action, resources) == expected


def test_an_allow_on_some_resources_is_decided_per_resource():
    policy = parse_policy(APP_POLICY)
    assert policy.evaluate("Decrypt", [APP_KEY]) == Decision(True)
    assert policy.evaluate("Decrypt", [OTHER_KEY]) == Decision(False, OTHER_KEY)


def test_remembered_decisions_stay_within_their_byte_budget_in_real_memory(monkeypatch):
    """Unique ARN-sized resources, each referenced only by the memory once decided: what stays allocated is
    what the memory holds, and it must stay within its budget (the old memory held 16,384 decisions per
    policy whatever their size)."""
    budget = 64 * 1024
    monkeypatch.setattr("hsmkms.policy.MAX_REMEMBERED_BYTES", budget)
    policy = parse_policy(APP_POLICY)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2_000):
            policy.evaluate("Decrypt", [f"{ACCOUNT}:key/{uuid.UUID(int=n)}", f"{ACCOUNT}:alias/app-{n}"])
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    entries, estimated = policy._memory.size
    assert entries > 20 and estimated <= budget
    assert grown <= budget, grown


def test_wildcard_matching_time_does_not_explode_on_hostile_resources():
    """A backtracking regex for acs:kms:*:*:key/* took 21 s on one 60 KB resource of colons (a KeyId any
    caller can send); the matcher is linear.  The alarm is a guard against that blow-up, not a speed target:
    the whole test takes milliseconds."""
    p = policy(allow("kms:*", ["acs:kms:*:*:key/*", "acs:kms:*:*:alias/*?*?*"]),
               deny("kms:Decrypt", "acs:kms:*:*:alias/*"))
    hostile = [f"{ACCOUNT}:key/" + ":" * 60_000, "acs:kms:" + ":" * 60_000, f"{ACCOUNT}:alias/" + "a:" * 30_000]
    previous = signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(10)
    try:
        decisions = [p._decide(action, [r]) for r in hostile for action in ("Decrypt", "Encrypt")]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert [d.allowed for d in decisions] == [True, True, False, False, False, True]


def _too_slow(signum, frame):
    raise AssertionError("wildcard matching takes more than 10 s")


@pytest.mark.parametrize(
    "pattern, matching, not_matching",
    [
        ("", [""], ["a"]),
        ("*", ["", "a", "a:b"], []),
        ("**", ["", "abc"], []),
        ("a*", ["a", "ab", "a*"], ["", "ba"]),
        ("*a", ["a", "ba"], ["", "ab"]),
        ("a*a", ["aa", "aba", "aaa"], ["a", "ab"]),
        ("a*b*c", ["abc", "aXbYc", "abbc", "acbc"], ["acb", "ab", "abcx"]),
        ("ab*ba", ["abba", "abxba", "ababa"], ["aba", "ab", "ba"]),  # the first and last piece may not overlap
        ("*a*a*", ["aa", "aba", "baab"], ["a", "ba", ""]),  # nor may two middle pieces
        ("*ab*ba*", ["abba", "xabyba"], ["aba", "baab"]),
        ("?", ["a", "*", "\n"], ["", "ab"]),
        ("a?*?b", ["axyb", "axxxyb"], ["axb", "ab"]),
        ("*x?y*", ["x.y", "aaxqybb", "xxxy"], ["xy", "x..y"]),
        ("a\nb", ["a\nb"], ["a\n"]),
    ],
)
def test_wildcard_matching(pattern, matching, not_matching):
    wildcard = Wildcard(pattern)
    for text in matching:
        assert wildcard.matches(text), text
    for text in not_matching:
        assert not wildcard.matches(text), text


def test_wildcard_ignores_case_only_when_asked():
    assert Wildcard("kms:Gen*Key", ignore_case=True).matches("KMS:generateDATAkey")
    assert not Wildcard("kms:Gen*Key").matches("KMS:generateDATAkey")


# --- validation of actions and resources when a policy is stored ---------------------------------------------


def with_second_statement(**overrides) -> str:
    """A document whose statement 2 is the one under test (so that errors must name the right one)."""
    second = {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"}
    second.update(overrides)
    return json.dumps({"Version": "1", "Statement": [allow("kms:*", "*"), second]})


@pytest.mark.parametrize(
    "action, message",
    [
        ("kms:Decrpyt", "Action 'kms:Decrpyt' is not a KMS action (did you mean 'kms:Decrypt'?)"),
        ("KMS:DECRPYT", "Action 'KMS:DECRPYT' is not a KMS action (did you mean 'kms:Decrypt'?)"),
        ("kms:GenerateDataKeys", "Action 'kms:GenerateDataKeys' is not a KMS action (did you mean"),
        ("kms:NoSuchAction", "Action 'kms:NoSuchAction' is not a KMS action."),
        ("kms:Decrypt ", "Action 'kms:Decrypt ' is not a KMS action"),
        ("kms:", "Action 'kms:' is not a KMS action"),
        ("kms:X*", "Action 'kms:X*' matches no KMS action"),
        ("kms:*Foo", "Action 'kms:*Foo' matches no KMS action"),
        ("kms:Decrypt?", "Action 'kms:Decrypt?' matches no KMS action"),
        ("ecs:*", "must be '*' or start with 'kms:'"),
    ],
)
def test_unknown_actions_are_refused_naming_statement_and_word(action, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(with_second_statement(Action=["kms:Encrypt", action]))
    assert str(info.value).startswith("Statement 2: ")
    assert message in str(info.value)


@pytest.mark.parametrize(
    "action",
    [
        "*", "kms:*", "kms:Generate*", "kms:ReEncrypt*", "kms:ReEncrypt", "kms:ReEncryptFrom", "kms:reencryptto",
        "kms:?ncrypt", "kms:*Secret*", "kms:decrypt", "KMS:DescribeKey",
        # valid for Alibaba Cloud though this service does not implement them: not typos
        "kms:AsymmetricSign", "kms:GetSecretValue", "kms:CreateCertificate", "kms:AdvanceEncrypt",
        "kms:DescribeService", "kms:GetClientKey",
    ],
)
def test_known_actions_and_wildcards_are_accepted(action):
    assert parse_policy(with_second_statement(Action=action)).statements[1].actions == (action,)


def test_the_known_actions_are_alibabas_and_cover_every_action_served():
    assert len(KMS_ACTIONS) == 91 + 11 + 1 + 2  # Tea 3.3.1, legacy only, npm only, ReEncryptFrom/To
    assert set(ACTIONS) <= KMS_ACTIONS
    for name in KMS_ACTIONS:
        parse_policy(with_second_statement(Action=f"kms:{name}"))


@pytest.mark.parametrize(
    "resource",
    [
        "*",
        "acs:kms:*",
        "acs:*",
        "acs:kms:*:*:key/*",
        "acs:kms:*:*:key",
        "acs:kms:*:*:alias",
        "acs:kms:*:*:alias/*",
        "acs:kms:cn-hangzhou:123:alias/app*",
        "acs:kms:cn-hangzhou:123:alias/team/app-1_x",
        APP_KEY,
        APP_ALIAS,
        KEYS_COLLECTION,
        f"{ACCOUNT}:key/0b4bd9bc-*",
        f"{ACCOUNT}:key/????????-????-????-????-????????????",
        "acs:kms:*:*:key/*-*-*-*-*",
        "acs:kms:*:key/*",  # the '*' spans region and account
        "acs:kms:*alias/app",
        "acs:*:alias/*",
        "acs:kms:*/x",  # an alias name may hold '/'
        "acs:kms:a b.c:1:key/*",  # a region may hold any character but ':'
        f"acs:kms:*:*:alias/{'a' * 255}",
    ],
)
def test_resources_that_can_match_are_accepted(resource):
    assert parse_policy(with_second_statement(Resource=resource)).statements[1].resources == (resource,)


@pytest.mark.parametrize(
    "resource, where",
    [
        ("acs:kms:*:*:kye/*", "no ARN starts like 'acs:kms:*:*:ky'"),
        ("acs:kms:*:kye/*", "no ARN starts like 'acs:kms:*:ky'"),  # the '*' cannot reach past ':key/...'
        ("acs:kms:*:*:keys/*", "no ARN starts like 'acs:kms:*:*:keys'"),
        ("acs:kms:*:*:Key/*", "no ARN starts like 'acs:kms:*:*:K'"),
        ("acs:kms:*:*:secret/*", "no ARN starts like 'acs:kms:*:*:s'"),
        ("acs:KMS:*", "no ARN starts like 'acs:K'"),
        ("acs:ecs:*", "no ARN starts like 'acs:e'"),
        ("acs:kms:cn-hangzhou:key/*", "no ARN starts like 'acs:kms:cn-hangzhou:k'"),  # no account
        ("acs:kms:cn-hangzhou:12a:key/*", "no ARN starts like 'acs:kms:cn-hangzhou:12a'"),
        ("acs:kms::123:key/*", "no ARN starts like 'acs:kms::'"),
        (f"{ACCOUNT}:key/0B4BD9BC-*", f"no ARN starts like '{ACCOUNT}:key/0B'"),  # key ids are lowercase
        (f"{ACCOUNT}:key/0b4bd9bc", "it ends before any ARN does"),  # a key id is a whole UUID
        (f"{ACCOUNT}:key/app", f"no ARN starts like '{ACCOUNT}:key/ap'"),
        ("acs:kms:*:*:key/*-*-*-*-*-*", "no ARN starts like"),  # a key id has four dashes
        ("acs:kms:*:*:key/*:*", "no ARN starts like"),
        ("acs:kms:*:*:alias/app:prod", "no ARN starts like 'acs:kms:*:*:alias/app:'"),
        ("acs:kms:*:*:alias/app.prod", "no ARN starts like 'acs:kms:*:*:alias/app.'"),
        ("acs:kms:*:*:alias/", "it ends before any ARN does"),
        (f"acs:kms:*:*:alias/{'a' * 256}", "no ARN starts like"),
        ("acs:kms:*:*:key/*/", "no ARN starts like"),
        ("acs:kms:*:*:key/alias/x", "no ARN starts like 'acs:kms:*:*:key/al'"),
        ("acs:kms:*:*:key:", "no ARN starts like 'acs:kms:*:*:key:'"),
        ("key/*", "must be '*' or an ARN starting with 'acs:'"),
        ("acs", "must be '*' or an ARN starting with 'acs:'"),
    ],
)
def test_resources_that_can_never_match_are_refused_naming_statement_and_word(resource, where):
    with pytest.raises(PolicyError) as info:
        parse_policy(with_second_statement(Resource=["*", resource]))
    message = str(info.value)
    assert message.startswith(f"Statement 2: Resource {resource!r} ")
    assert where in message


def test_validation_names_the_first_bad_statement():
    doc = {"Version": "1", "Statement": [allow("kms:*", "*"), allow("kms:Encrypt", APP_KEY),
                                          deny("kms:Decrypt", "acs:kms:*:*:kye/*"), deny("kms:Decrpyt", "*")]}
    with pytest.raises(PolicyError, match=r"^Statement 3: Resource 'acs:kms:\*:\*:kye/\*'"):
        parse_policy(json.dumps(doc))


# --- kms:ReEncrypt means both halves ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kms:ReEncrypt", "kms:reencrypt", "KMS:REENCRYPT", "kms:ReEncrypt*",
                                  "kms:*crypt", "kms:Re?ncrypt"])
def test_a_deny_on_re_encrypt_denies_both_halves(name):
    p = policy(allow("kms:*", "*"), deny(name, OTHER_KEY))
    assert p.evaluate("ReEncryptFrom", [OTHER_KEY]) == Decision(False, OTHER_KEY)
    assert p.evaluate("ReEncryptTo", [OTHER_KEY]) == Decision(False, OTHER_KEY)
    assert p.evaluate("kms:ReEncryptFrom", [APP_KEY]).allowed
    assert p.evaluate("Decrypt", [OTHER_KEY]).allowed == (name != "kms:*crypt")


def test_an_allow_on_re_encrypt_grants_both_halves_and_nothing_else():
    p = policy(allow("kms:ReEncrypt", APP_KEY))
    assert p.evaluate("ReEncryptFrom", [APP_KEY]).allowed
    assert p.evaluate("ReEncryptTo", [APP_KEY]).allowed
    assert not p.evaluate("Decrypt", [APP_KEY]).allowed
    assert not p.evaluate("ReEncryptTo", [OTHER_KEY]).allowed


def test_one_half_names_only_that_half():
    p = policy(allow("kms:ReEncryptFrom", "*"))
    assert p.evaluate("ReEncryptFrom", [APP_KEY]).allowed
    assert not p.evaluate("ReEncryptTo", [APP_KEY]).allowed
    assert p.statements[0].actions == ("kms:ReEncryptFrom",)


def test_the_expansion_keeps_the_document_as_written():
    p = policy(deny("kms:ReEncrypt", "*"), allow("kms:*", "*"))
    assert p.statements[0].actions == ("kms:ReEncrypt",)
    assert json.loads(p.to_json())["Statement"][0]["Action"] == "kms:ReEncrypt"
    assert parse_policy(p.to_json()) == p


# --- warnings: a Deny on Decrypt that ReEncryptFrom gets around ---------------------------------------------


def test_warns_when_decrypt_is_denied_where_re_encrypt_from_is_allowed():
    """The issue's case: kms:* allowed, kms:Decrypt denied on key B: re-encrypt B's blob under A, decrypt it."""
    warnings = policy_warnings(policy(allow("kms:*", "*"), deny("kms:Decrypt", OTHER_KEY)))
    assert len(warnings) == 1
    assert warnings[0].startswith("Statement 2 denies kms:Decrypt, but statement 1 still allows kms:ReEncryptFrom")
    assert f"for example {OTHER_KEY}" in warnings[0]
    assert "ReEncrypt a ciphertext of such a key under a key it may decrypt with, then Decrypt it" in warnings[0]


@pytest.mark.parametrize(
    "statements",
    [
        # ReEncryptFrom is denied wherever Decrypt is
        [allow("kms:*", "*"), deny(["kms:Decrypt", "kms:ReEncrypt"], OTHER_KEY)],
        [allow("kms:*", "*"), deny(["kms:Decrypt", "kms:ReEncrypt*"], "*")],
        [allow("kms:*", "*"), deny("kms:Decrypt", OTHER_KEY), deny("kms:ReEncryptFrom", "acs:kms:*:*:key/*")],
        [allow("kms:*", "*"), deny("kms:Decrypt", f"{ACCOUNT}:key/5f*"), deny("kms:*", f"{ACCOUNT}:key/5*")],
        # ReEncryptFrom is not allowed where Decrypt is denied
        [allow("kms:ReEncrypt*", APP_KEY), deny("kms:Decrypt", OTHER_KEY)],
        [allow(["kms:Decrypt", "kms:Encrypt"], "*"), deny("kms:Decrypt", OTHER_KEY)],
        # no Deny on Decrypt at all
        [allow("kms:*", "*")],
        [allow("kms:*", "*"), deny("kms:Encrypt", OTHER_KEY)],
    ],
)
def test_no_warning_when_there_is_no_way_around(statements):
    assert policy_warnings(policy(*statements)) == []


def test_warns_about_the_keys_a_partial_deny_on_re_encrypt_leaves_open():
    p = policy(allow("kms:*", "*"), deny("kms:Decrypt", f"{ACCOUNT}:key/*"),
               deny("kms:ReEncryptFrom", f"{ACCOUNT}:key/0*"))
    (warning,) = policy_warnings(p)
    example = warning.split("for example ")[1].split(")")[0]
    assert example.startswith(f"{ACCOUNT}:key/") and not example.startswith(f"{ACCOUNT}:key/0")
    assert not p.evaluate("Decrypt", [example]).allowed and p.evaluate("ReEncryptFrom", [example]).allowed


def test_one_warning_per_deny_statement():
    p = policy(allow("kms:ReEncrypt*", "*"), deny("kms:Decrypt", APP_KEY), allow("kms:*", "*"),
               deny("kms:Decrypt", OTHER_KEY))
    warnings = policy_warnings(p)
    assert [w.split(",")[0] for w in warnings] == ["Statement 2 denies kms:Decrypt", "Statement 4 denies kms:Decrypt"]
    assert "statement 1 still allows" in warnings[0] and "statement 1 still allows" in warnings[1]


@pytest.mark.parametrize("resources", ["acs:kms:*:*:alias/*", KEYS_COLLECTION,
                                       ["acs:kms:*:*:alias/app", "acs:kms:*:*:alias"]])
def test_warns_that_a_decrypt_deny_on_aliases_only_denies_no_decrypt(resources):
    (warning,) = policy_warnings(policy(allow("kms:*", "*"), deny("kms:Decrypt", resources)))
    assert warning.startswith("Statement 2 denies kms:Decrypt only on resources that are not keys")
    assert policy_warnings(policy(allow("kms:*", "*"), deny("kms:Decrypt", [*([resources] if isinstance(
        resources, str) else resources), "acs:kms:*:*:key/*"]), deny("kms:ReEncrypt", "*"))) == []


def test_readme_style_operator_policy_has_no_warning():
    assert policy_warnings(parse_policy(OPERATOR_POLICY)) == []
    assert policy_warnings(parse_policy(APP_POLICY)) == []
    assert policy_warnings(ALLOW_ALL) == []
