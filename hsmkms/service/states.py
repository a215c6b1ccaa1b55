"""Key states and the one gate every action passes: the key-state x action matrix of the API reference §2.8.

Each action names a rule; a rule maps the key's state to None (allowed) or the error to raise.  Actions
that do not touch an existing key (CreateKey, ListKeys ...) have no rule and never call the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from hsmkms.errors import KeyStateRejected, KmsError, StateModifiedFailed


class KeyState(StrEnum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"


Rule = Callable[[KeyState], KmsError | None]


def _any_state(state: KeyState) -> KmsError | None:
    return None


def _enabled_only(state: KeyState) -> KmsError | None:
    return None if state is KeyState.ENABLED else KeyStateRejected(state)


def _not_pending_deletion(state: KeyState) -> KmsError | None:
    return KeyStateRejected(state) if state is KeyState.PENDING_DELETION else None


def _enabled_or_disabled(state: KeyState) -> KmsError | None:
    return None if state in (KeyState.ENABLED, KeyState.DISABLED) else StateModifiedFailed()


def _not_pending_deletion_transition(state: KeyState) -> KmsError | None:
    return StateModifiedFailed() if state is KeyState.PENDING_DELETION else None


def _pending_deletion_only(state: KeyState) -> KmsError | None:
    return None if state is KeyState.PENDING_DELETION else StateModifiedFailed()


RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ["DescribeKey", "DeleteAlias", "ListAliasesByKeyId", "ListResourceTags", "DescribeKeyVersion",
         "ListKeyVersions", "GetParametersForImport", "DeleteKeyMaterial"],
        _any_state,
    ),
    **dict.fromkeys(
        ["GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "Encrypt", "Decrypt", "ReEncrypt",
         "GenerateAndExportDataKey", "ExportDataKey", "CreateKeyVersion", "UpdateRotationPolicy"],
        _enabled_only,
    ),
    # Not in the reference's table (§2.8): the Encrypt/Decrypt row applies to every other cryptographic
    # operation, GetPublicKey included (as AWS KMS does: a disabled key's public key is not handed out).
    **dict.fromkeys(
        ["AsymmetricSign", "AsymmetricVerify", "AsymmetricEncrypt", "AsymmetricDecrypt", "GetPublicKey",
         "GenerateMac", "VerifyMac"],
        _enabled_only,
    ),
    **dict.fromkeys(
        ["UpdateKeyDescription", "TagResource", "UntagResource", "TagResources", "UntagResources",
         "UpdateAlias", "SetDeletionProtection"],
        _not_pending_deletion,
    ),
    **dict.fromkeys(["EnableKey", "DisableKey"], _enabled_or_disabled),
    **dict.fromkeys(["ScheduleKeyDeletion", "CreateAlias", "ImportKeyMaterial"], _not_pending_deletion_transition),
    "CancelKeyDeletion": _pending_deletion_only,
}


# Every (action, state) a rule allows, worked out once: the gate of every crypto request is one set lookup.
_ALLOWED = frozenset((action, state.value) for action, rule in RULES.items() for state in KeyState
                     if rule(state) is None)


def check(action: str, state: str) -> None:
    """Raise the §2.8 error when ``state`` forbids ``action`` on a key."""
    if (action, state) in _ALLOWED:
        return
    error = RULES[action](KeyState(state))
    if error is not None:
        raise error
