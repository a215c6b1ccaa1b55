"""The policy examples in the README parse and mean what the README says they mean."""

from __future__ import annotations

import re
from pathlib import Path

from hsmkms.policy import parse_policy

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
