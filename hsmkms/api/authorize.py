"""Authorization: which resources a call touches, and whether the caller's policy allows it.

Each action in ``actions.py`` declares what it touches with one of the functions here.  A key used through
an alias touches both the key ARN and the alias ARN (an explicit Deny on either refuses the call; an Allow
must cover both).  Calls on no particular key touch the account-level resource
``acs:kms:<region>:<account>:key`` (or ``...:alias``), which ``*`` and ``acs:kms:*`` cover but ``key/*``
does not.  When the named key or alias does not exist, the check runs on the ARN the caller named and the
not-found error comes only after it, so a caller without permission learns nothing about what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hsmkms.api.params import Params
from hsmkms.errors import AliasNotFound, ForbiddenNoPermission, KeyNotFound, KmsError
from hsmkms.policy import Policy
from hsmkms.service import blob
from hsmkms.service.keys import ALIAS_PREFIX, Identity, KeyService


@dataclass
class Access:
    """The checks one call needs: (policy action, resources) pairs, and a lookup error to raise after them."""

    checks: list[tuple[str, list[str]]] = field(default_factory=list)
    key_id: str = ""  # the resolved key, for the audit trail
    missing: KmsError | None = None

    def add(self, action: str, resources: list[str]) -> Access:
        self.checks.append((action, resources))
        return self


def authorize(policy: Policy, access: Access) -> None:
    for action, resources in access.checks:
        if resources:
            decision = policy.evaluate(action, resources)
            if not decision.allowed:
                raise ForbiddenNoPermission(decision.denied_resource)
    if access.missing is not None:
        raise access.missing


def named_resources(identity: Identity, keys: KeyService, key_ref: str, access: Access) -> list[str]:
    """ARNs a KeyId parameter (key id, alias, key ARN or alias ARN) stands for; records the resolved key."""
    alias = None
    if key_ref.startswith(ALIAS_PREFIX):
        alias = key_ref
    elif key_ref.startswith(f"acs:kms:{identity.region}:{identity.account_id}:alias/"):
        alias = ALIAS_PREFIX + key_ref.split(":alias/", 1)[1]
    try:
        key = keys.resolve(key_ref)
    except (KeyNotFound, AliasNotFound) as err:
        access.missing = access.missing or err
        if alias:
            return [identity.alias_arn(alias)]
        return [key_ref if key_ref.startswith("acs:") else identity.key_arn(key_ref)]
    access.key_id = access.key_id or key.key_id
    resources = [identity.key_arn(key.key_id)]
    if alias:
        resources.append(identity.alias_arn(alias))
    return resources


Touches = Callable[[str, Params, Identity, KeyService], Access]


def on_account(kind: str = "key") -> Touches:
    def touches(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
        return Access().add(action, [f"acs:kms:{identity.region}:{identity.account_id}:{kind}"])

    return touches


def on_key(*params: str) -> Touches:
    """The key named by the first of ``params`` that is present (MissingParameter comes from the handler)."""

    def touches(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
        access = Access()
        key_ref = next((p.optional(name) for name in params if p.optional(name)), None)
        if key_ref is None:
            return access
        return access.add(action, named_resources(identity, keys, key_ref, access))

    return touches


def on_keys(param: str) -> Touches:
    """Every key of a flattened list (``ResourceId.N``); the account when the list is empty."""

    def touches(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
        access = Access()
        refs = p.indexed(param)
        if not refs:
            return on_account()(action, p, identity, keys)
        return access.add(action, [arn for ref in refs for arn in named_resources(identity, keys, ref, access)])

    return touches


def on_alias(key_param: str | None = None) -> Touches:
    """The alias named by AliasName, and the key it is (re)bound to."""

    def touches(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
        access = Access()
        resources = []
        alias = p.optional("AliasName")
        if alias:
            resources.append(identity.alias_arn(alias))
        if key_param and p.optional(key_param):
            resources += named_resources(identity, keys, p.optional(key_param), access)
        return access.add(action, resources)

    return touches


def blob_key(p: Params, identity: Identity, keys: KeyService, access: Access) -> list[str]:
    """The key a CiphertextBlob names (nothing when it names none: Decrypt then fails on its own)."""
    text = p.optional("CiphertextBlob")
    if text is None:
        return []
    try:
        key_id = keys.version(blob.decode(text).key_version_id).key_id
    except KmsError:
        return []
    access.key_id = key_id
    return [identity.key_arn(key_id)]


def on_blob(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
    access = Access()
    return access.add(action, blob_key(p, identity, keys, access))


def on_re_encrypt(action: str, p: Params, identity: Identity, keys: KeyService) -> Access:
    """ReEncrypt needs kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the destination."""
    access = Access()
    access.add("ReEncryptFrom", blob_key(p, identity, keys, access))
    destination = p.optional("DestinationKeyId")
    if destination:
        access.add("ReEncryptTo", named_resources(identity, keys, destination, access))
    return access
