"""The policy examples in the README parse and mean what the README says they mean."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hsmkms.policy import PolicyError, parse_policy, policy_warnings

README = Path(__file__).resolve().parents[2] / "README.md"
ARN = "acs:kms:cn-hangzhou:1000000000000000"
APP_KEY = f"{ARN}:key/0b4bd9bc-6c3e-4d2f-9a4e-1c1b2b1a7e10"
OTHER_KEY = f"{ARN}:key/5d1e0c55-6c3e-4d2f-9a4e-1c1b2b1a7e10"


def readme_policies():
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return [parse_policy(block) for block in blocks if '"Statement"' in block]


def test_readme_has_both_examples():
    assert len(readme_policies()) == 2


def test_application_example():
    app = readme_policies()[0]
    assert app.evaluate("GenerateDataKey", [APP_KEY, f"{ARN}:alias/app"]).allowed
    assert app.evaluate("Decrypt", [APP_KEY]).allowed
    assert not app.evaluate("Encrypt", [APP_KEY]).allowed
    assert not app.evaluate("GenerateDataKey", [OTHER_KEY]).allowed
    assert not app.evaluate("GenerateDataKey", [OTHER_KEY, f"{ARN}:alias/app"]).allowed
    assert not app.evaluate("ListKeys", [f"{ARN}:key"]).allowed


def test_operator_example():
    operator = readme_policies()[1]
    for action in ["CreateKey", "DisableKey", "ScheduleKeyDeletion", "CreateKeyVersion", "TagResource"]:
        assert operator.evaluate(action, [APP_KEY]).allowed, action
    for action in ["Decrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Encrypt", "ReEncryptFrom"]:
        decision = operator.evaluate(action, [APP_KEY])
        assert not decision.allowed and decision.denied_resource == APP_KEY, action


def test_readme_examples_raise_no_warning_and_deny_both_halves_of_re_encrypt():
    app, operator = readme_policies()
    assert policy_warnings(app) == [] and policy_warnings(operator) == []
    for half in ("ReEncryptFrom", "ReEncryptTo"):
        assert not operator.evaluate(half, [APP_KEY]).allowed


def one_statement(action: str = "kms:Decrypt", resource: str = "*") -> str:
    return json.dumps({"Version": "1", "Statement": [{"Effect": "Deny", "Action": action, "Resource": resource}]})


# What the README's validation paragraph shows as accepted and refused ("..." stands for the region and account).
ACCEPTED_RESOURCES = ["acs:kms:*", "acs:kms:*:*:key/*", "acs:kms:*:*:alias/app*"]
REFUSED_RESOURCES = ["acs:kms:*:*:kye/*", "acs:kms:cn-hangzhou:key/*", "...:key/0B4BD9BC-...", "...:alias/app.prod",
                     "acs:ecs:*"]
ACCEPTED_ACTIONS = ["kms:GetSecretValue", "kms:CreateCertificate", "kms:ReEncrypt", "kms:ReEncrypt*", "kms:*crypt"]
REFUSED_ACTIONS = ["kms:Decrpyt", "kms:NoSuchAction"]


def test_readme_validation_examples_are_true():
    text = README.read_text(encoding="utf-8")
    for word in ACCEPTED_RESOURCES + REFUSED_RESOURCES + ACCEPTED_ACTIONS + REFUSED_ACTIONS:
        assert f"`{word}`" in text, word
    concrete = {"...:key/0B4BD9BC-...": f"{ARN}:key/0B4BD9BC-6C3E-4D2F-9A4E-1C1B2B1A7E10",
                "...:alias/app.prod": f"{ARN}:alias/app.prod"}
    for resource in ACCEPTED_RESOURCES:
        parse_policy(one_statement(resource=resource))
    for resource in REFUSED_RESOURCES:
        with pytest.raises(PolicyError, match="Statement 1: Resource"):
            parse_policy(one_statement(resource=concrete.get(resource, resource)))
    for action in ACCEPTED_ACTIONS:
        parse_policy(one_statement(action=action))
    for action in REFUSED_ACTIONS:
        with pytest.raises(PolicyError, match=f"Statement 1: Action '{action}' is not a KMS action"):
            parse_policy(one_statement(action=action))
