"""The key-state x action matrix (API reference §2.8), cell by cell."""

from __future__ import annotations

import pytest

from hsmkms.errors import KeyStateRejected, KmsError, StateModifiedFailed
from hsmkms.service.states import RULES, KeyState, check

STATES = ["Enabled", "Disabled", "PendingDeletion", "PendingImport"]
OK = None
PD = "Rejected.PendingDeletion"
SMF = "Rejected.StateModifiedFailed"


def rejected(state: str) -> str:
    return f"Rejected.{state}"


MATRIX: dict[str, dict[str, str | None]] = {}
for _action in ["DescribeKey", "DeleteAlias", "ListAliasesByKeyId", "ListResourceTags", "DescribeKeyVersion",
                "ListKeyVersions"]:
    MATRIX[_action] = dict.fromkeys(STATES, OK)
for _action in ["GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Encrypt", "Decrypt", "ReEncrypt",
                "CreateKeyVersion", "UpdateRotationPolicy"]:
    MATRIX[_action] = {s: (OK if s == "Enabled" else rejected(s)) for s in STATES}
for _action in ["UpdateKeyDescription", "TagResource", "UntagResource", "UpdateAlias"]:
    MATRIX[_action] = {s: (PD if s == "PendingDeletion" else OK) for s in STATES}
for _action in ["EnableKey", "DisableKey"]:
    MATRIX[_action] = {s: (OK if s in ("Enabled", "Disabled") else SMF) for s in STATES}
for _action in ["ScheduleKeyDeletion", "CreateAlias"]:
    MATRIX[_action] = {s: (SMF if s == "PendingDeletion" else OK) for s in STATES}
MATRIX["CancelKeyDeletion"] = {s: (OK if s == "PendingDeletion" else SMF) for s in STATES}

CELLS = [(action, state, expected) for action, row in MATRIX.items() for state, expected in row.items()]


def test_matrix_is_complete():
    assert len(MATRIX) == 6 + 7 + 4 + 2 + 2 + 1
    assert len(CELLS) == len(MATRIX) * len(STATES)


def test_states_enum_values():
    assert [state.value for state in KeyState] == STATES


def test_every_matrix_action_has_a_rule():
    assert set(MATRIX) <= set(RULES)


@pytest.mark.parametrize(("action", "state", "expected"), CELLS, ids=[f"{a}-{s}" for a, s, _ in CELLS])
def test_matrix_cell(action, state, expected):
    if expected is None:
        assert check(action, state) is None
        return
    with pytest.raises(KmsError) as info:
        check(action, state)
    error = info.value
    assert error.code == expected
    assert error.status == 409
    if expected == SMF:
        assert type(error) is StateModifiedFailed
    else:
        assert type(error) is KeyStateRejected
        assert state in error.message


@pytest.mark.parametrize("state", ["Disabled", "PendingDeletion", "PendingImport"])
def test_rejected_code_is_the_plain_state_name(state):
    with pytest.raises(KeyStateRejected) as info:
        check("Encrypt", state)
    assert info.value.code == f"Rejected.{state}"
    assert "KeyState" not in info.value.code


def test_check_accepts_enum_members():
    assert check("Encrypt", KeyState.ENABLED) is None
    with pytest.raises(KeyStateRejected):
        check("Encrypt", KeyState.DISABLED)


def test_unknown_state_is_not_silently_allowed():
    with pytest.raises(Exception):  # noqa: B017 - any refusal; returning None would allow the action
        check("Encrypt", "enabled")


def test_unknown_action_is_not_silently_allowed():
    with pytest.raises(Exception):  # noqa: B017 - any refusal; returning None would allow the action
        check("NoSuchAction", "Enabled")


def test_rejection_instances_are_fresh():
    # Each call raises its own exception object (no shared mutable error instances).
    errors = []
    for _ in range(2):
        with pytest.raises(KeyStateRejected) as info:
            check("Decrypt", "Disabled")
        errors.append(info.value)
    assert errors[0] is not errors[1]


@pytest.mark.parametrize("action", sorted(RULES))
def test_check_gives_what_each_rule_gives_for_every_state(action):
    """``check`` answers allowed cells from a table worked out once; every cell of every rule agrees."""
    for state in KeyState:
        expected = RULES[action](state)
        if expected is None:
            assert check(action, state.value) is None
            continue
        with pytest.raises(KmsError) as info:
            check(action, state.value)
        assert (type(info.value), info.value.code, info.value.message) == (
            type(expected), expected.code, expected.message)


def test_an_unknown_state_is_still_an_error():
    with pytest.raises(ValueError):
        check("Encrypt", "Frozen")
