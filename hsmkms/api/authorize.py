"""Authorization: what a call touches, resolved once, and whether the caller's policy allows it.

Each action in ``actions.py`` declares what it touches with one of the functions here.  They resolve every
key the request names exactly once (``KeyService.lookup``; a CiphertextBlob is decoded once), and the handler
then acts on that same resolution (``Call.key``, ``Call.blob``): an alias moved between the check and the
action cannot make a call act on a key it was not authorized for.

A key used through an alias touches both the key ARN and the alias ARN (an explicit Deny on either refuses
the call; an Allow must cover both).  Alias calls also touch the key the alias points to now.  Calls on no
particular key touch the account-level resource ``acs:kms:<region>:<account>:key`` (or ``...:alias``), which
``*`` and ``acs:kms:*`` cover but ``key/*`` does not.  When the named key or alias does not exist, the check
runs on the ARN the caller named and the not-found error comes only after it, so a caller without
permission learns nothing about what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hsmkms.api.params import Params
from hsmkms.errors import ForbiddenNoPermission, InvalidParameter, KmsError
from hsmkms.policy import Policy
from hsmkms.service.crypto import CryptoService, Located
from hsmkms.service.keys import Identity, KeyLookup, KeyService
from hsmkms.store.base import KeyRecord

# Far above any key id, alias name (at most 255 characters) or ARN: a longer reference names nothing, and is
# refused before it reaches a lookup, a policy or an error message.
MAX_KEY_REF_CHARS = 1024


def key_ref(name: str, value: str) -> str:
    if len(value) > MAX_KEY_REF_CHARS:
        raise InvalidParameter(name, f"It must not exceed {MAX_KEY_REF_CHARS} characters.")
    return value


@dataclass
class Access:
    """The policy checks one call needs, and the resolutions its handler acts on."""

    checks: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    keys: dict[str, KeyLookup] = field(default_factory=dict)  # by parameter name
    listed: list[KeyLookup] = field(default_factory=list)  # a flattened list of keys (ResourceId.N), in order
    located: Located | None = None  # the CiphertextBlob, decoded once
    missing: KmsError | None = None  # the first lookup error, answered once the checks passed

    def add(self, action: str, resources: tuple[str, ...]) -> Access:
        self.checks.append((action, resources))
        return self

    def resolved(self, name: str | None, lookup: KeyLookup) -> tuple[str, ...]:
        """Remember a parameter's resolution (``None``: the next of a list) for the handler; returns the ARNs
        it must be allowed on."""
        if name is None:
            self.listed.append(lookup)
        else:
            self.keys[name] = lookup
        if lookup.missing is not None and self.missing is None:
            self.missing = lookup.missing
        return lookup.arns

    def key(self, *names: str) -> KeyRecord | None:
        """The resolved key of the first of ``names`` the request gave (None when it gave none of them)."""
        for name in names:
            lookup = self.keys.get(name)
            if lookup is not None:
                return lookup.record()
        return None

    @property
    def key_id(self) -> str:
        """The first key the call resolved, for the audit trail."""
        if self.located is not None:
            return self.located.key.key_id
        for lookups in (self.keys.values(), self.listed):
            for lookup in lookups:
                if lookup.key is not None:
                    return lookup.key.key_id
        return ""


def authorize(policy: Policy, access: Access) -> None:
    for action, resources in access.checks:
        decision = policy.evaluate(action, resources)
        if not decision.allowed:
            raise ForbiddenNoPermission(decision.denied_resource)
    if access.missing is not None:
        raise access.missing


@dataclass(frozen=True)
class Resolver:
    """What the touch functions resolve with: keys and aliases, blobs, and the account's ARNs."""

    keys: KeyService
    crypto: CryptoService
    identity: Identity


Touches = Callable[[str, Params, Resolver], Access]


def on_account(kind: str = "key") -> Touches:
    def touches(action: str, p: Params, resolver: Resolver) -> Access:
        identity = resolver.identity
        return Access().add(action, (f"acs:kms:{identity.region}:{identity.account_id}:{kind}",))

    return touches


def on_key(*params: str) -> Touches:
    """The key named by the first of ``params`` that is present (MissingParameter comes from the handler)."""

    def touches(action: str, p: Params, resolver: Resolver) -> Access:
        access = Access()
        name = next((name for name in params if p.optional(name)), None)
        if name is None:
            return access
        return access.add(action, access.resolved(name, resolver.keys.lookup(key_ref(name, p.values[name]))))

    return touches


def on_keys(param: str) -> Touches:
    """Every key of a flattened list (``ResourceId.N``); the account when the list is empty."""

    def touches(action: str, p: Params, resolver: Resolver) -> Access:
        refs = p.indexed(param)
        if not refs:
            return on_account()(action, p, resolver)
        access = Access()
        arns = [arn for ref in refs for arn in access.resolved(None, resolver.keys.lookup(key_ref(param, ref)))]
        return access.add(action, tuple(arns))

    return touches


def on_alias(key_param: str | None = None, *, current_key: bool = True) -> Touches:
    """The alias named by AliasName, the key it points to now (``current_key``), and the key it is (re)bound
    to (``key_param``)."""

    def touches(action: str, p: Params, resolver: Resolver) -> Access:
        access = Access()
        resources: list[str] = []
        alias = p.optional("AliasName")
        if alias:
            key_ref("AliasName", alias)
            if current_key:
                resources += access.resolved("AliasName", resolver.keys.alias_lookup(alias))
            else:
                resources.append(resolver.identity.alias_arn(alias))
        if key_param and p.optional(key_param):
            resources += access.resolved(key_param, resolver.keys.lookup(key_ref(key_param, p.values[key_param])))
        if resources:
            access.add(action, tuple(resources))
        return access

    return touches


def _blob(p: Params, resolver: Resolver, access: Access) -> tuple[str, ...]:
    """The key a CiphertextBlob names, decoded once.  Nothing when the blob is absent (the handler says it is
    missing) or names no key that exists (its error is answered after the other checks, to everyone alike)."""
    text = p.optional("CiphertextBlob")
    if text is None:
        return ()
    try:
        access.located = resolver.crypto.locate(text)
    except KmsError as err:
        access.missing = access.missing or err
        return ()
    return (resolver.identity.key_arn(access.located.key.key_id),)


def on_blob(action: str, p: Params, resolver: Resolver) -> Access:
    access = Access()
    resources = _blob(p, resolver, access)
    return access.add(action, resources) if resources else access


def on_re_encrypt(action: str, p: Params, resolver: Resolver) -> Access:
    """ReEncrypt needs kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the destination."""
    access = Access()
    source = _blob(p, resolver, access)
    if source:
        access.add("ReEncryptFrom", source)
    destination = p.optional("DestinationKeyId")
    if destination:
        lookup = resolver.keys.lookup(key_ref("DestinationKeyId", destination))
        access.add("ReEncryptTo", access.resolved("DestinationKeyId", lookup))
    return access

