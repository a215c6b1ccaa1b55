"""One handler per Action: read typed parameters, call the service, shape the response body.

Handlers are registered in ``ACTIONS`` by name; that table is the list of everything the endpoint answers.
Wire shapes (KeyMetadata, double-wrapped lists, dates) are built here and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from hsmkms.api.params import Params
from hsmkms.errors import InvalidParameter
from hsmkms.service.access_keys import AccessKeyService
from hsmkms.service.crypto import CryptoService, Sealed
from hsmkms.service.keys import Identity, KeyService
from hsmkms.service.states import KeyState
from hsmkms.store.base import AliasRecord, KeyRecord

MAX_ENCRYPT_PLAINTEXT_BYTES = 6 * 1024
MAX_DESCRIPTION_CHARS = 8192
DATA_KEY_SPECS = {"AES_256": 32, "AES_128": 16}
SYMMETRIC_KEY_SPECS = {"Aliyun_AES_256"}
KEY_USAGES = {"ENCRYPT/DECRYPT"}
ORIGINS = {"Aliyun_KMS"}
PROTECTION_LEVELS = {"SOFTWARE", "HSM"}


@dataclass(frozen=True)
class Services:
    keys: KeyService
    crypto: CryptoService
    access_keys: AccessKeyService
    identity: Identity


@dataclass(frozen=True)
class Call:
    """One authenticated call as a handler sees it."""

    services: Services
    params: Params
    access_key_id: str


Handler = Callable[[Call], dict]
ACTIONS: dict[str, Handler] = {}


def action(handler: Handler) -> Handler:
    ACTIONS[handler.__name__] = handler
    return handler


def iso_time(seconds: int | float | None) -> str:
    """``YYYY-MM-DDThh:mm:ssZ`` in UTC; the empty string for an unset date, as the API's examples show."""
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


# --- wire shapes ---------------------------------------------------------------------------------------


def key_metadata(key: KeyRecord, identity: Identity) -> dict:
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
        "MaterialExpireTime": "",
        "DeletionProtection": "Enabled" if key.deletion_protection else "Disabled",
        "DeletionProtectionDescription": key.deletion_protection_description,
        "DKMSInstanceId": "",
    }


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


@action
def GenerateDataKey(call: Call) -> dict:
    p = call.params
    data_key = call.services.crypto.generate_data_key(p.required("KeyId"), data_key_length(p), p.context())
    return {**sealed_fields(data_key.sealed), "Plaintext": data_key.plaintext_b64}


@action
def GenerateDataKeyWithoutPlaintext(call: Call) -> dict:
    p = call.params
    data_key = call.services.crypto.generate_data_key(
        p.required("KeyId"), data_key_length(p), p.context(), action="GenerateDataKeyWithoutPlaintext"
    )
    return sealed_fields(data_key.sealed)


@action
def Encrypt(call: Call) -> dict:
    p = call.params
    plaintext = p.required("Plaintext")
    if len(plaintext.encode("utf-8", "surrogatepass")) > MAX_ENCRYPT_PLAINTEXT_BYTES:
        raise InvalidParameter("Plaintext", f"It must not exceed {MAX_ENCRYPT_PLAINTEXT_BYTES} bytes.")
    return sealed_fields(call.services.crypto.encrypt(p.required("KeyId"), plaintext, p.context()))


@action
def Decrypt(call: Call) -> dict:
    p = call.params
    opened = call.services.crypto.decrypt(p.required("CiphertextBlob"), p.context())
    return {"KeyId": opened.key_id, "KeyVersionId": opened.key_version_id, "Plaintext": opened.plaintext}


# --- keys ----------------------------------------------------------------------------------------------


@action
def CreateKey(call: Call) -> dict:
    p = call.params
    key = call.services.keys.create_key(
        key_spec=p.choice("KeySpec", SYMMETRIC_KEY_SPECS, default="Aliyun_AES_256"),
        key_usage=p.choice("KeyUsage", KEY_USAGES, default="ENCRYPT/DECRYPT"),
        origin=p.choice("Origin", ORIGINS, default="Aliyun_KMS"),
        # Every key lives in the HSM; the level asked for is recorded and echoed so that declarative
        # tools (Terraform) see no drift.
        protection_level=p.choice("ProtectionLevel", PROTECTION_LEVELS, default="HSM"),
        description=p.text("Description", MAX_DESCRIPTION_CHARS),
    )
    return {"KeyMetadata": key_metadata(key, call.services.identity)}


@action
def DescribeKey(call: Call) -> dict:
    key = call.services.keys.usable(call.params.required("KeyId"), "DescribeKey")
    return {"KeyMetadata": key_metadata(key, call.services.identity)}


@action
def ListKeys(call: Call) -> dict:
    page = call.params.page()
    keys, total = call.services.keys.list_keys((page[0] - 1) * page[1], page[1])
    identity = call.services.identity
    entries = [{"KeyId": k.key_id, "KeyArn": identity.key_arn(k.key_id)} for k in keys]
    return paged("Keys", "Key", entries, total, page)


# --- aliases -------------------------------------------------------------------------------------------


@action
def CreateAlias(call: Call) -> dict:
    p = call.params
    call.services.keys.create_alias(p.required("AliasName"), p.required("KeyId"))
    return {}


@action
def DeleteAlias(call: Call) -> dict:
    call.services.keys.delete_alias(call.params.required("AliasName"))
    return {}


@action
def ListAliases(call: Call) -> dict:
    page = call.params.page()
    aliases, total = call.services.keys.list_aliases((page[0] - 1) * page[1], page[1])
    entries = [alias_entry(a, call.services.identity) for a in aliases]
    return paged("Aliases", "Alias", entries, total, page)
