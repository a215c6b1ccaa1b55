"""RAM-style policies: parsing, wildcard matching and the allow/deny evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hsmkms.policy import ALLOW_ALL, MAX_POLICY_BYTES, Decision, Policy, PolicyError, parse_policy

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
    p = policy(allow("kms:Encrypt", f"{ACCOUNT}:alias/{name}"))
    assert p.evaluate("Encrypt", [f"{ACCOUNT}:alias/{literal}"]).allowed
    assert not p.evaluate("Encrypt", [f"{ACCOUNT}:alias/{lookalike}"]).allowed


def test_action_metacharacters_are_literal():
    assert not policy(allow("kms:De.rypt", "*")).evaluate("Decrypt", [APP_KEY]).allowed


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
    monkeypatch.setattr("hsmkms.policy.MAX_REMEMBERED_DECISIONS", 8)
    policy = parse_policy(OPERATOR_POLICY)
    fresh = parse_policy(OPERATOR_POLICY)
    cases = [(action, [f"acs:kms:cn-hangzhou:123:key/k{n}"])
             for action in ("Decrypt", "kms:CreateKey", "ScheduleKeyDeletion", "DescribeKey") for n in range(5)]
    for _ in range(3):  # second and third rounds come from memory (and the memory is cleared on the way)
        for action, resources in cases:
            assert policy.evaluate(action, resources) == fresh._decide(action, resources)
            assert len(policy._decisions) <= 8
    assert {policy.evaluate(a, r).allowed for a, r in cases} == {True, False}
