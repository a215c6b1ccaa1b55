"""One handler per Action: read typed parameters, call the service, shape the response body.

Handlers are registered in ``ACTIONS`` by name; that table is the list of everything the endpoint answers,
and for each action what it touches (``api/authorize.py``), which the caller's policy must allow.
Wire shapes (KeyMetadata, double-wrapped lists, dates) are built here and nowhere else.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass

from hsmkms.api.authorize import (
    Access,
    Touches,
    on_account,
    on_alias,
    on_blob,
    on_key,
    on_keys,
    on_re_encrypt,
)
from hsmkms.api.params import Params
from hsmkms.errors import InvalidParameter, MissingParameter
from hsmkms.service.access_keys import AccessKeyService
from hsmkms.service.asymmetric import AsymmetricService, Used, key_usage_for
from hsmkms.service.crypto import CryptoService, Located, Sealed
from hsmkms.service.export import WrappingKey, wrapping_key
from hsmkms.service.imports import ImportService
from hsmkms.service.keys import Identity, KeyService, parse_rotation_interval
from hsmkms.service.maintenance import Maintenance
from hsmkms.service.passwords import CHARACTER_TYPES, DEFAULT_LENGTH, MAX_LENGTH, MIN_LENGTH, PasswordRules
from hsmkms.service.states import KeyState
from hsmkms.service.tags import (
    TAG_KEYS_HINT,
    TAGS_HINT,
    TagService,
    parse_tag_keys,
    parse_tags,
    validate_tags,
)
from hsmkms.store.base import AliasRecord, KeyFilter, KeyRecord, VersionRecord

MAX_ENCRYPT_PLAINTEXT_BYTES = 6 * 1024
MAX_DESCRIPTION_CHARS = 8192
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
ORIGINS = {"Aliyun_KMS", "EXTERNAL"}
PROTECTION_LEVELS = {"SOFTWARE", "HSM"}


@dataclass(frozen=True)
class Services:
    keys: KeyService
    crypto: CryptoService
    tags: TagService
    access_keys: AccessKeyService
    maintenance: Maintenance
    identity: Identity
    asymmetric: AsymmetricService


@dataclass(frozen=True)
class Call:
    """One authenticated, authorized call as a handler sees it: it acts on what authorization resolved."""

    services: Services
    params: Params
    access_key_id: str
    access: Access

    def key(self, *names: str) -> KeyRecord:
        """The key named by the first of ``names`` (KeyId by default) the request gave, resolved once."""
        names = names or ("KeyId",)
        key = self.access.key(*names)
        if key is None:
            raise MissingParameter(names[-1])
        return key

    def listed_keys(self) -> list[KeyRecord]:
        """Every key of the flattened list the action takes (``ResourceId.N``), in index order."""
        return [lookup.record() for lookup in self.access.listed]

    def blob(self) -> Located:
        """The CiphertextBlob, decoded once, with the key version and key it names."""
        self.params.required("CiphertextBlob")
        if self.access.located is None:
            raise self.access.missing or MissingParameter("CiphertextBlob")
        return self.access.located


Handler = Callable[[Call], dict]


@dataclass(frozen=True)
class Action:
    handler: Handler
    touches: Touches


ACTIONS: dict[str, Action] = {}


def action(touches: Touches) -> Callable[[Handler], Handler]:
    """Register a handler under its name, with what it touches."""

    def register(handler: Handler) -> Handler:
        ACTIONS[handler.__name__] = Action(handler, touches)
        return handler

    return register


def iso_time(seconds: int | float | None) -> str:
    """``YYYY-MM-DDThh:mm:ssZ`` in UTC; the empty string for an unset date, as the API's examples show."""
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- wire shapes ---------------------------------------------------------------------------------------


def key_metadata(key: KeyRecord, identity: Identity, material_expires_at: int | None = None) -> dict:
    rotating = key.rotation_interval is not None
    if not rotating:
        rotation = "Disabled"
    elif key.state == KeyState.ENABLED:
        rotation = "Enabled"
    else:
        rotation = "Suspended"
    next_rotation = key.last_rotation_at + key.rotation_interval if rotating and key.last_rotation_at else None
    return {
        "KeyId": key.key_id,
        "Arn": identity.key_arn(key.key_id),
        "KeyState": key.state,
        "KeySpec": key.key_spec,
        "KeyUsage": key.key_usage,
        "Origin": key.origin,
        "ProtectionLevel": key.protection_level,
        "Description": key.description,
        "Creator": key.creator,
        "CreationDate": iso_time(key.created_at),
        "DeleteDate": iso_time(key.delete_at),
        "PrimaryKeyVersion": key.primary_version_id,
        "AutomaticRotation": rotation,
        "RotationInterval": f"{key.rotation_interval}s" if rotating else "",
        "LastRotationDate": iso_time(key.last_rotation_at),
        "NextRotationDate": iso_time(next_rotation),
        "MaterialExpireTime": iso_time(material_expires_at),
        "DeletionProtection": "Enabled" if key.deletion_protection else "Disabled",
        "DeletionProtectionDescription": key.deletion_protection_description,
        "DKMSInstanceId": "",
    }


def version_entry(version: VersionRecord) -> dict:
    return {"KeyId": version.key_id, "KeyVersionId": version.version_id, "CreationDate": iso_time(version.created_at)}


def alias_entry(alias: AliasRecord, identity: Identity) -> dict:
    return {"AliasName": alias.alias_name, "AliasArn": identity.alias_arn(alias.alias_name), "KeyId": alias.key_id}


def sealed_fields(sealed: Sealed) -> dict:
    return {"KeyId": sealed.key_id, "KeyVersionId": sealed.key_version_id, "CiphertextBlob": sealed.ciphertext_blob}


def paged(name: str, item: str, entries: list, total: int, page: tuple[int, int]) -> dict:
    return {name: {item: entries}, "TotalCount": total, "PageNumber": page[0], "PageSize": page[1]}


def data_key_length(params: Params) -> int:
    """NumberOfBytes (1-1024) wins over KeySpec (AES_256 by default)."""
    number = params.integer("NumberOfBytes", 1, 1024)
    spec = params.choice("KeySpec", DATA_KEY_SPECS, default="AES_256")
    return number if number is not None else DATA_KEY_SPECS[spec]


# --- symmetric cryptography ----------------------------------------------------------------------------


@action(on_key("KeyId"))
def GenerateDataKey(call: Call) -> dict:
    p = call.params
    data_key = call.services.crypto.generate_data_key(call.key(), data_key_length(p), p.context())
    return {**sealed_fields(data_key.sealed), "Plaintext": data_key.plaintext_b64}


@action(on_key("KeyId"))
def GenerateDataKeyWithoutPlaintext(call: Call) -> dict:
    p = call.params
    data_key = call.services.crypto.generate_data_key(
        call.key(), data_key_length(p), p.context(), action="GenerateDataKeyWithoutPlaintext"
    )
    return sealed_fields(data_key.sealed)


@action(on_key("KeyId"))
def Encrypt(call: Call) -> dict:
    p = call.params
    plaintext = p.required("Plaintext")
    if len(plaintext.encode("utf-8", "surrogatepass")) > MAX_ENCRYPT_PLAINTEXT_BYTES:
        raise InvalidParameter("Plaintext", f"It must not exceed {MAX_ENCRYPT_PLAINTEXT_BYTES} bytes.")
    return sealed_fields(call.services.crypto.encrypt(call.key(), plaintext, p.context()))


@action(on_blob)
def Decrypt(call: Call) -> dict:
    p = call.params
    opened = call.services.crypto.decrypt(call.blob(), p.context())
    return {"KeyId": opened.key_id, "KeyVersionId": opened.key_version_id, "Plaintext": opened.plaintext}


@action(on_re_encrypt)
def ReEncrypt(call: Call) -> dict:
    p = call.params
    if p.optional("SourceEncryptionAlgorithm") or p.optional("SourceKeyVersionId"):
        raise InvalidParameter("SourceEncryptionAlgorithm", "Only symmetric ciphertext can be re-encrypted here.")
    sealed = call.services.crypto.re_encrypt(
        call.blob(), p.context("SourceEncryptionContext"), call.key("DestinationKeyId"),
        p.context("DestinationEncryptionContext"),
    )
    return sealed_fields(sealed)


def wrapping_key_param(p: Params) -> WrappingKey:
    return wrapping_key(p.required("PublicKeyBlob"), p.required("WrappingKeySpec"), p.required("WrappingAlgorithm"))


@action(on_key("KeyId"))
def GenerateAndExportDataKey(call: Call) -> dict:
    p = call.params
    wrapping = wrapping_key_param(p)
    data_key, exported = call.services.crypto.generate_and_export_data_key(
        call.key(), data_key_length(p), p.context(), wrapping)
    return {**sealed_fields(data_key.sealed), "ExportedDataKey": exported}


@action(on_blob)
def ExportDataKey(call: Call) -> dict:
    p = call.params
    wrapping = wrapping_key_param(p)
    exported = call.services.crypto.export_data_key(call.blob(), p.context(), wrapping)
    return {"KeyId": exported.key_id, "KeyVersionId": exported.key_version_id,
            "ExportedDataKey": exported.exported_data_key}


# --- keys ----------------------------------------------------------------------------------------------


@action(on_account())
def CreateKey(call: Call) -> dict:
    p = call.params
    if p.optional("DKMSInstanceId"):
        raise InvalidParameter("DKMSInstanceId", "KMS instances do not exist here; every key is an HSM key.")
    if p.optional("Policy"):
        raise InvalidParameter("Policy", "Key policies are not supported; access-key policies control access.")
    rotating = p.boolean("EnableAutomaticRotation")
    interval = parse_rotation_interval(p.required("RotationInterval")) if rotating else None
    key_spec = p.optional("KeySpec") or "Aliyun_AES_256"
    key = call.services.keys.create_key(
        key_spec=key_spec,
        key_usage=key_usage_for(key_spec, p.optional("KeyUsage") or None),
        origin=p.choice("Origin", ORIGINS, default="Aliyun_KMS"),
        # Every key lives in the HSM; the level asked for is recorded and echoed so that declarative
        # tools (Terraform) see no drift.
        protection_level=p.choice("ProtectionLevel", PROTECTION_LEVELS, default="HSM"),
        description=p.text("Description", MAX_DESCRIPTION_CHARS),
        rotation_interval=interval,
        tags=parse_tags(p.json("Tags", TAGS_HINT, default="[]")),
    )
    return {"KeyMetadata": key_metadata(key, call.services.identity)}


@action(on_key("KeyId"))
def DescribeKey(call: Call) -> dict:
    key = call.services.keys.describe(call.key())
    expires = ImportService(call.services.keys).material_expires_at(key)
    return {"KeyMetadata": key_metadata(key, call.services.identity, expires)}


FILTER_FIELDS = {
    "KeyState": "states", "KeySpec": "key_specs", "KeyUsage": "key_usages", "ProtectionLevel": "protection_levels",
    "Creator": "creators", "AliasName": "alias_names", "TagKey": "tag_keys", "TagValue": "tag_values",
    "keyId": "key_ids", "KeyId": "key_ids", "CreatorType": None, "DKMSInstanceId": None,
}
MAX_FILTERS = 10


FILTERS_HINT = (f'Up to {MAX_FILTERS} of {{"Key":K,"Values":[...]}} with K one of '
                f"{', '.join(sorted(FILTER_FIELDS))}.")


def key_filter(p: Params) -> KeyFilter | None:
    """ListKeys ``Filters``: ``[{"Key":"KeyState","Values":["Enabled"]}, ...]``; repeated Keys merge."""
    document = p.json("Filters", FILTERS_HINT)
    if document is None:
        return None
    if not isinstance(document, list) or len(document) > MAX_FILTERS or not all(
        isinstance(f, dict) and set(f) == {"Key", "Values"} and isinstance(f["Key"], str)
        and f["Key"] in FILTER_FIELDS and isinstance(f["Values"], list) and f["Values"]
        and all(isinstance(v, str) for v in f["Values"])
        for f in document
    ):
        raise InvalidParameter("Filters", FILTERS_HINT)
    wanted: dict[str, set[str]] = {}
    match_nothing = False
    for entry in document:
        field_name = FILTER_FIELDS[entry["Key"]]
        if field_name is None:
            # Every key here is a user key outside any KMS instance.
            ok = {"CreatorType": {"User"}, "DKMSInstanceId": {""}}[entry["Key"]]
            match_nothing |= not (ok & set(entry["Values"]))
        else:
            wanted.setdefault(field_name, set()).update(entry["Values"])
    return KeyFilter(match_nothing=match_nothing, **{k: frozenset(v) for k, v in wanted.items()})


@action(on_account())
def ListKeys(call: Call) -> dict:
    p = call.params
    where = key_filter(p)
    page = p.page()
    keys, total = call.services.keys.list_keys((page[0] - 1) * page[1], page[1], where)
    identity = call.services.identity
    entries = [{"KeyId": k.key_id, "KeyArn": identity.key_arn(k.key_id)} for k in keys]
    return paged("Keys", "Key", entries, total, page)


@action(on_key("KeyId"))
def EnableKey(call: Call) -> dict:
    call.services.keys.enable(call.key())
    return {}


@action(on_key("KeyId"))
def DisableKey(call: Call) -> dict:
    call.services.keys.disable(call.key())
    return {}


@action(on_key("KeyId"))
def UpdateKeyDescription(call: Call) -> dict:
    p = call.params
    description = p.text("Description", MAX_DESCRIPTION_CHARS, required=True)
    call.services.keys.update_description(call.key(), description)
    return {}


@action(on_key("KeyId", "ProtectedResourceArn"))
def SetDeletionProtection(call: Call) -> dict:
    p = call.params
    enabled = p.boolean("EnableDeletionProtection", required=True)
    key = call.key("KeyId", "ProtectedResourceArn")
    description = p.text("DeletionProtectionDescription", MAX_DESCRIPTION_CHARS)
    call.services.keys.set_deletion_protection(key, enabled, description)
    return {}


@action(on_key("KeyId"))
def ScheduleKeyDeletion(call: Call) -> dict:
    p = call.params
    days = p.integer("PendingWindowInDays", 7, 366, required=True)
    call.services.keys.schedule_deletion(call.key(), days)
    return {}


@action(on_key("KeyId"))
def CancelKeyDeletion(call: Call) -> dict:
    call.services.keys.cancel_deletion(call.key())
    return {}


@action(on_key("KeyId"))
def UpdateRotationPolicy(call: Call) -> dict:
    p = call.params
    enabled = p.boolean("EnableAutomaticRotation", required=True)
    interval = p.optional("RotationInterval")
    seconds = parse_rotation_interval(interval) if enabled and interval is not None else None
    call.services.keys.update_rotation_policy(call.key(), enabled, seconds)
    return {}


# --- versions ------------------------------------------------------------------------------------------


@action(on_key("KeyId"))
def CreateKeyVersion(call: Call) -> dict:
    version = call.services.keys.create_version(call.key())
    return {"KeyVersion": version_entry(version)}


@action(on_key("KeyId"))
def DescribeKeyVersion(call: Call) -> dict:
    p = call.params
    version = call.services.keys.describe_version(call.key(), p.required("KeyVersionId"))
    return {"KeyVersion": version_entry(version)}


@action(on_key("KeyId"))
def ListKeyVersions(call: Call) -> dict:
    p = call.params
    page = p.page(max_size=101)
    versions, total = call.services.keys.list_versions(call.key(), (page[0] - 1) * page[1], page[1])
    return paged("KeyVersions", "KeyVersion", [version_entry(v) for v in versions], total, page)


# --- key-material import (BYOK) ------------------------------------------------------------------------

MAX_KEY_MATERIAL_EXPIRE_UNIX = 2**53


@action(on_key("KeyId"))
def GetParametersForImport(call: Call) -> dict:
    p = call.params
    parameters = ImportService(call.services.keys).parameters(
        call.key(), p.required("WrappingKeySpec"), p.required("WrappingAlgorithm"))
    return {"KeyId": parameters.key_id, "ImportToken": parameters.import_token,
            "PublicKey": base64.b64encode(parameters.public_key_der).decode("ascii"),
            "TokenExpireTime": iso_time(parameters.expires_at)}


@action(on_key("KeyId"))
def ImportKeyMaterial(call: Call) -> dict:
    p = call.params
    ImportService(call.services.keys).import_material(
        call.key(), p.required("ImportToken"), p.required("EncryptedKeyMaterial"),
        p.integer("KeyMaterialExpireUnix", 0, MAX_KEY_MATERIAL_EXPIRE_UNIX, default=0))
    return {}


@action(on_key("KeyId"))
def DeleteKeyMaterial(call: Call) -> dict:
    ImportService(call.services.keys).delete_material(call.key())
    return {}


# --- aliases -------------------------------------------------------------------------------------------


@action(on_alias("KeyId", current_key=False))
def CreateAlias(call: Call) -> dict:
    p = call.params
    alias_name = p.required("AliasName")
    call.services.keys.create_alias(alias_name, call.key())
    return {}


@action(on_alias("KeyId"))
def UpdateAlias(call: Call) -> dict:
    p = call.params
    alias_name = p.required("AliasName")
    new_key = call.key()
    call.services.keys.update_alias(alias_name, call.key("AliasName"), new_key)
    return {}


@action(on_alias())
def DeleteAlias(call: Call) -> dict:
    alias_name = call.params.required("AliasName")
    call.services.keys.delete_alias(alias_name, call.key("AliasName"))
    return {}


@action(on_account("alias"))
def ListAliases(call: Call) -> dict:
    page = call.params.page()
    aliases, total = call.services.keys.list_aliases((page[0] - 1) * page[1], page[1])
    return paged("Aliases", "Alias", [alias_entry(a, call.services.identity) for a in aliases], total, page)


@action(on_key("KeyId"))
def ListAliasesByKeyId(call: Call) -> dict:
    p = call.params
    page = p.page(max_size=101)
    aliases, total = call.services.keys.list_aliases((page[0] - 1) * page[1], page[1], call.key())
    return paged("Aliases", "Alias", [alias_entry(a, call.services.identity) for a in aliases], total, page)


# --- tags ----------------------------------------------------------------------------------------------

TAG_RESOURCE_TYPES = {"key"}
TAG_PAGE_SIZE = 50


def only_keys(call: Call) -> KeyRecord:
    """The single-resource tag calls name a key, a secret or a certificate; only keys exist here."""
    for other in ("SecretName", "CertificateId"):
        if call.params.optional(other):
            raise InvalidParameter(other, "Only keys can be tagged here.")
    return call.key()


@action(on_key("KeyId"))
def TagResource(call: Call) -> dict:
    p = call.params
    call.services.tags.tag(only_keys(call), parse_tags(p.json("Tags", TAGS_HINT, required=True)))
    return {}


@action(on_key("KeyId"))
def UntagResource(call: Call) -> dict:
    p = call.params
    call.services.tags.untag(only_keys(call), parse_tag_keys(p.json("TagKeys", TAG_KEYS_HINT, required=True)))
    return {}


@action(on_key("KeyId"))
def ListResourceTags(call: Call) -> dict:
    tags = call.services.tags.tags_of(call.key())
    return {"Tags": {"Tag": [{"KeyId": t.key_id, "TagKey": t.tag_key, "TagValue": t.tag_value} for t in tags]}}


def tag_resources_scope(call: Call) -> Params:
    """RegionId and ResourceType of the multi-resource tag calls: this region, keys only."""
    p = call.params
    if p.required("RegionId") != call.services.identity.region:
        raise InvalidParameter("RegionId", f"This service is region {call.services.identity.region}.")
    p.required("ResourceType")
    p.choice("ResourceType", TAG_RESOURCE_TYPES)
    return p


@action(on_keys("ResourceId"))
def TagResources(call: Call) -> dict:
    p = tag_resources_scope(call)
    resources = call.listed_keys() or [p.required("ResourceId.1")]
    pairs = p.indexed_pairs("Tag", "Key", "Value") or [(p.required("Tag.1.Key"), None)]
    tags = validate_tags([(k, v or "") for k, v in pairs], "Tag")
    for key in resources:
        call.services.tags.tag(key, tags, action="TagResources")
    return {}


@action(on_keys("ResourceId"))
def UntagResources(call: Call) -> dict:
    p = tag_resources_scope(call)
    resources = call.listed_keys() or [p.required("ResourceId.1")]
    remove_all = p.boolean("All")
    tag_keys = None if remove_all else (p.indexed("TagKey") or [p.required("TagKey.1")])
    for key in resources:
        call.services.tags.untag(key, tag_keys, action="UntagResources")
    return {}


@action(on_keys("ResourceId"))
def ListTagResources(call: Call) -> dict:
    p = tag_resources_scope(call)
    wanted = p.indexed_pairs("Tag", "Key", "Value")
    start = p.integer("NextToken", 0, 10**9, default=0)
    found = call.services.tags.find(call.listed_keys(), wanted)
    page = found[start:start + TAG_PAGE_SIZE]
    more = start + TAG_PAGE_SIZE < len(found)
    return {
        "TagResources": {"TagResource": [
            {"ResourceId": t.key_id, "ResourceType": "key", "TagKey": t.tag_key, "TagValue": t.tag_value}
            for t in page
        ]},
        "NextToken": str(start + TAG_PAGE_SIZE) if more else "",
    }


# --- account and utilities -----------------------------------------------------------------------------

MAX_EXCLUDED_CHARACTERS = 1024


@action(on_account())
def GetRandomPassword(call: Call) -> dict:
    p = call.params
    rules = PasswordRules(
        length=p.integer("PasswordLength", MIN_LENGTH, MAX_LENGTH, default=DEFAULT_LENGTH),
        excluded_types=frozenset(name for name in CHARACTER_TYPES if p.boolean(f"Exclude{name}")),
        excluded_characters=p.text("ExcludeCharacters", MAX_EXCLUDED_CHARACTERS),
        require_each_type=p.boolean("RequireEachIncludedType"),
    )
    return {"RandomPassword": call.services.crypto.random_password(rules)}


@action(on_account())
def DescribeRegions(call: Call) -> dict:
    return {"Regions": {"Region": [{"RegionId": call.services.identity.region}]}}


@action(on_account())
def DescribeAccountKmsStatus(call: Call) -> dict:
    return {"AccountStatus": "Enabled"}


# --- asymmetric keys and MACs (KeyVersionId is mandatory on every asymmetric call, reference §2.5) -------


def used_fields(used: Used) -> dict:
    return {"KeyId": used.key_id, "KeyVersionId": used.key_version_id}


@action(on_key("KeyId"))
def GetPublicKey(call: Call) -> dict:
    used, pem = call.services.asymmetric.public_key_pem(call.key(), call.params.required("KeyVersionId"))
    return {**used_fields(used), "PublicKey": pem}


@action(on_key("KeyId"))
def AsymmetricSign(call: Call) -> dict:
    p = call.params
    used, signature = call.services.asymmetric.sign(call.key(), p.required("KeyVersionId"), p.required("Algorithm"),
                                                    p.required("Digest"))
    return {**used_fields(used), "Value": signature}


@action(on_key("KeyId"))
def AsymmetricVerify(call: Call) -> dict:
    p = call.params
    used, valid = call.services.asymmetric.verify(call.key(), p.required("KeyVersionId"), p.required("Algorithm"),
                                                  p.required("Digest"), p.required("Value"))
    return {**used_fields(used), "Value": valid}


@action(on_key("KeyId"))
def AsymmetricEncrypt(call: Call) -> dict:
    p = call.params
    used, ciphertext = call.services.asymmetric.encrypt(call.key(), p.required("KeyVersionId"),
                                                        p.required("Algorithm"), p.required("Plaintext"))
    return {**used_fields(used), "CiphertextBlob": ciphertext}


@action(on_key("KeyId"))
def AsymmetricDecrypt(call: Call) -> dict:
    p = call.params
    if p.optional("Recipient"):
        raise InvalidParameter("Recipient", "Recipients (enclave attestation) are not supported.")
    used, plaintext = call.services.asymmetric.decrypt(call.key(), p.required("KeyVersionId"),
                                                       p.required("Algorithm"), p.required("CiphertextBlob"))
    return {**used_fields(used), "Plaintext": plaintext}


@action(on_key("KeyId"))
def GenerateMac(call: Call) -> dict:
    p = call.params
    key, algorithm = call.key(), p.required("Algorithm")
    mac = call.services.asymmetric.generate_mac(key, algorithm, p.required("Message"))
    return {"KeyId": key.key_id, "Algorithm": algorithm, "Mac": mac}


@action(on_key("KeyId"))
def VerifyMac(call: Call) -> dict:
    p = call.params
    key, algorithm = call.key(), p.required("Algorithm")
    valid = call.services.asymmetric.verify_mac(key, algorithm, p.required("Message"), p.required("Mac"))
    return {"KeyId": key.key_id, "Algorithm": algorithm, "Value": valid}
