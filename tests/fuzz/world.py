"""What the fuzzers aim at: keys, aliases, versions and blobs made on the live server at fixture time.

Strategies cannot know a key id before the server exists, so they draw symbols (``Sym``) that a ``Resolver``
turns into real values when an example runs.  Two scopes keep runs deterministic:

- actions that only read (Describe*, List*, Generate*, Encrypt, Decrypt, ReEncrypt) aim at the shared fixture
  keys: one Enabled (two versions), one Disabled, one PendingDeletion;
- every other action (and any action added later) may change what it touches, so within one example its
  symbols name throwaway keys lent to that example, in the state the symbol asks for, and reset (state,
  protection, tags, aliases) when given back to their pool.  The shared keys and aliases never reach a mutating
  action, so no example can disable, delete, protect, re-alias or tag them.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import uuid
from dataclasses import dataclass, field

from tests.fuzz.wire import API_VERSION, Signer, send

STATES = ("enabled", "disabled", "pending")
READ_ONLY_PREFIXES = ("Describe", "List", "Generate", "Encrypt", "Decrypt", "ReEncrypt")
CONTEXT = {"app": "fuzz", "n": "1"}
MISSING_KEY = "00000000-0000-4000-8000-000000000000"

_serial = itertools.count()


def read_only(action: str) -> bool:
    return action.startswith(READ_ONLY_PREFIXES)


@dataclass(frozen=True)
class Sym:
    """A value known only once the server exists.

    kind: key_id, key_id_upper, alias, key_arn, alias_arn, version_id, old_version_id, blob, fresh_alias.
    which: the key (enabled, disabled, pending), or for ``blob`` the fixture blob's name.
    mutation: for ``blob``, how to damage it (see ``mutate_blob``).
    """

    kind: str
    which: str = "enabled"
    mutation: tuple = ()


@dataclass(frozen=True)
class Json:
    """A JSON document serialised when the example runs (it may hold symbols)."""

    value: object
    ensure_ascii: bool = True
    indent: int | None = None


@dataclass
class KeyFacts:
    key_id: str
    alias: str
    primary_version: str
    versions: list[str] = field(default_factory=list)


@dataclass
class BlobFacts:
    text: str
    plaintext: str
    context: dict[str, str]
    which: str  # the key that sealed it


class World:
    """The shared fixture keys and blobs on one live server, and a pool of throwaway keys."""

    def __init__(self, signer: Signer):
        self.signer = signer
        self.keys: dict[str, KeyFacts] = {}
        self.blobs: dict[str, BlobFacts] = {}
        # Throwaway keys by the state they are lent in; reset when given back, so that a long run does not fill
        # the token with keys.
        self.pool: dict[str, list[KeyFacts]] = {state: [] for state in STATES}

    @classmethod
    def build(cls, signer: Signer) -> World:
        world = cls(signer)
        run = uuid.uuid4().hex[:8]
        for which in STATES:
            world.keys[which] = world.make_key(which, f"alias/fuzz-{run}-{which}")
        enabled = world.keys["enabled"]
        world.blobs["old"] = world.encrypt("enabled", "sealed by the first version", {})
        # A second version: blobs of the first still decrypt, and DescribeKeyVersion has two to name.
        version = signer.call("CreateKeyVersion", KeyId=enabled.key_id)["KeyVersion"]["KeyVersionId"]
        enabled.versions.append(version)
        enabled.primary_version = version
        world.blobs["ctx"] = world.encrypt("enabled", "fuzz plaintext", CONTEXT)
        world.blobs["padded"] = world.encrypt("enabled", "six b", {"k": "v"})  # a length that needs '=' padding
        data_key = signer.call("GenerateDataKey", KeyId=enabled.key_id, NumberOfBytes="32")
        world.blobs["datakey"] = BlobFacts(data_key["CiphertextBlob"], data_key["Plaintext"], {}, "enabled")
        for which in ("disabled", "pending"):
            world.blobs[which] = world.encrypt(which, f"sealed before the key was {which}", CONTEXT)
            world.set_state(world.keys[which].key_id, which, signer)
        return world

    def make_key(self, state: str, alias: str | None, signer: Signer | None = None) -> KeyFacts:
        signer = signer or self.signer
        metadata = signer.call("CreateKey", Description=f"fuzz {state}")["KeyMetadata"]
        facts = KeyFacts(metadata["KeyId"], alias or "", metadata["PrimaryKeyVersion"],
                         [metadata["PrimaryKeyVersion"]])
        if alias:
            signer.call("CreateAlias", AliasName=alias, KeyId=facts.key_id)
        return facts

    @staticmethod
    def set_state(key_id: str, state: str, signer: Signer) -> None:
        if state == "disabled":
            signer.call("DisableKey", KeyId=key_id)
        elif state == "pending":
            signer.call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays="366")

    def encrypt(self, which: str, plaintext: str, context: dict[str, str]) -> BlobFacts:
        sealed = self.signer.call("Encrypt", KeyId=self.keys[which].key_id, Plaintext=plaintext,
                                  EncryptionContext=json.dumps(context))
        return BlobFacts(sealed["CiphertextBlob"], plaintext, context, which)

    # --- throwaway keys ------------------------------------------------------------------------------

    def lend(self, state: str) -> KeyFacts:
        if self.pool[state]:
            return self.pool[state].pop()
        facts = self.make_key(state, f"alias/fuzz-tmp-{uuid.uuid4().hex}")
        World.set_state(facts.key_id, state, self.signer)
        return facts

    def give_back(self, facts: KeyFacts, state: str) -> None:
        """Undo what an example may have done to a throwaway key; a key that cannot be reset is dropped."""
        try:
            self._reset(facts, state)
        except AssertionError:
            return
        self.pool[state].append(facts)

    def _reset(self, facts: KeyFacts, state: str) -> None:
        call = self.signer.call
        metadata = call("DescribeKey", KeyId=facts.key_id)["KeyMetadata"]
        if metadata["KeyState"] == "PendingDeletion":
            call("CancelKeyDeletion", KeyId=facts.key_id)
        elif metadata["KeyState"] == "Disabled":
            call("EnableKey", KeyId=facts.key_id)
        if metadata["DeletionProtection"] != "Disabled":
            call("SetDeletionProtection", KeyId=facts.key_id, EnableDeletionProtection="false")
        call("UntagResources", RegionId="cn-hangzhou", ResourceType="key", All="true", **{"ResourceId.1": facts.key_id})
        aliases = call("ListAliasesByKeyId", KeyId=facts.key_id, PageSize="100")["Aliases"]["Alias"]
        for alias in aliases:
            if alias["AliasName"] != facts.alias:
                call("DeleteAlias", AliasName=alias["AliasName"])
        if facts.alias not in {a["AliasName"] for a in aliases}:
            target = plain_call(self.signer, "DescribeKey", KeyId=facts.alias)
            if target.get("Code") == "Forbidden.AliasNotFound":
                call("CreateAlias", AliasName=facts.alias, KeyId=facts.key_id)
            else:  # moved to another key by UpdateAlias
                call("UpdateAlias", AliasName=facts.alias, KeyId=facts.key_id)
        facts.primary_version = call("DescribeKey", KeyId=facts.key_id)["KeyMetadata"]["PrimaryKeyVersion"]
        World.set_state(facts.key_id, state, self.signer)

    def authentic(self, text: str) -> BlobFacts | None:
        """The fixture blob ``text`` stands for, byte for byte once decoded (None when it stands for none)."""
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (ValueError, binascii.Error, UnicodeEncodeError):
            return None
        for facts in self.blobs.values():
            if base64.b64decode(facts.text) == raw:
                return facts
        return None


class Resolver:
    """Turns one example's symbols into values; in the mutating scope it makes throwaway keys on demand."""

    def __init__(self, world: World, action: str):
        self.world = world
        self.shared = read_only(action)
        self.throwaways: dict[str, KeyFacts] = {}

    def key(self, which: str) -> KeyFacts:
        which = which if which in STATES else "enabled"
        if self.shared:
            return self.world.keys[which]
        if which not in self.throwaways:
            self.throwaways[which] = self.world.lend(which)
        return self.throwaways[which]

    def close(self) -> None:
        """Give the throwaway keys of this example back to the pool."""
        for which, facts in self.throwaways.items():
            self.world.give_back(facts, which)
        self.throwaways.clear()

    def resolve(self, value: object) -> object:
        if isinstance(value, Sym):
            return self.symbol(value)
        if isinstance(value, Json):
            document = self.resolve(value.value)
            try:
                text = json.dumps(document, ensure_ascii=value.ensure_ascii, indent=value.indent)
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: only the escaped form can be sent
                text = json.dumps(document, ensure_ascii=True, indent=value.indent)
            return text
        if isinstance(value, dict):
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.resolve(item) for item in value]
        return value

    def params(self, params: dict[str, object]) -> dict[str, str]:
        return {name: str(self.resolve(value)) for name, value in params.items()}

    def symbol(self, sym: Sym) -> str:
        identity = "acs:kms:cn-hangzhou:1234567890123456"
        if sym.kind == "fresh_alias":
            return f"alias/fuzz-new-{uuid.uuid4().hex[:12]}-{next(_serial)}"
        if sym.kind == "blob":
            facts = self.world.blobs.get(sym.which) or self.world.blobs["ctx"]
            return mutate_blob(facts.text, sym.mutation, self.world)
        key = self.key(sym.which)
        if sym.kind == "key_id":
            return key.key_id
        if sym.kind == "key_id_upper":
            return key.key_id.upper()
        if sym.kind == "alias":
            return key.alias
        if sym.kind == "key_arn":
            return f"{identity}:key/{key.key_id}"
        if sym.kind == "alias_arn":
            return f"{identity}:alias/{key.alias.removeprefix('alias/')}"
        if sym.kind == "version_id":
            return key.primary_version
        if sym.kind == "old_version_id":
            return self.world.keys["enabled"].versions[0]
        raise AssertionError(f"unknown symbol {sym}")


def mutate_blob(text: str, mutation: tuple, world: World) -> str:
    """Damage a base64 blob: at the byte level (flip, truncate, extend, other version id) or the text level."""
    if not mutation:
        return text
    op, *args = mutation
    raw = bytearray(base64.b64decode(text))
    if op == "flip":
        bit = args[0] % (len(raw) * 8)
        raw[bit // 8] ^= 1 << (bit % 8)
    elif op == "truncate":
        raw = raw[: args[0] % len(raw)]
    elif op == "extend":
        raw += args[0]
    elif op == "version":  # another real version id: the blob names a key that did not seal it
        other = world.keys[args[0]].versions[0] if args[0] in world.keys else MISSING_KEY
        raw[:36] = other.encode("ascii")
    elif op == "text-cut":
        return text[: args[0] % len(text)]
    elif op == "text-char":
        position = args[0] % len(text)
        return text[:position] + args[1] + text[position + 1:]
    elif op == "text-insert":
        position = args[0] % (len(text) + 1)
        return text[:position] + args[1] + text[position:]
    elif op == "urlsafe":
        return text.replace("+", "-").replace("/", "_")
    elif op == "strip-padding":
        return text.rstrip("=")
    else:
        raise AssertionError(f"unknown blob mutation {mutation}")
    return base64.b64encode(bytes(raw)).decode("ascii")


def plain_call(signer: Signer, action: str, **params: str) -> dict:
    """A valid call whose answer is returned whatever its status (for setting up throwaway state)."""
    target, _, _ = signer.v1_request("GET", {"Action": action, "Version": API_VERSION, **params})
    return send(signer.port, "GET", target).json()
