"""Every action in the registry, with hostile parameters, correctly signed so that the handler sees them.

Whatever the parameters: never a 5xx; an error is the Alibaba JSON shape; a success is JSON (XML with
Format=XML) carrying a RequestId.  And a few properties that must hold for any input: a damaged blob never
decrypts, a blob opens only under its own context, and an error message never echoes the plaintext.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsmkms.api.actions import ACTIONS
from tests.fuzz.strategies import BLOB_NAMES, MODES, ActionRequest, action_requests, blob_mutations
from tests.fuzz.wire import SERVER_REFUSAL, Reply, check_app_reply, check_reply, send_action
from tests.fuzz.world import Resolver, World, mutate_blob

# Parameters that are the signature's own: with them in play, an authentication error is a fair answer.
PROTOCOL_NAMES = {"Signature", "SignatureMethod", "SignatureVersion", "SignatureNonce", "AccessKeyId", "Timestamp",
                  "SecurityToken"}
AUTH_CODES = {"SignatureDoesNotMatch", "IncompleteSignature", "SignatureNonceUsed", "IllegalTimestamp",
              "InvalidTimeStamp.Expired", "InvalidAccessKeyId.NotFound", "InvalidSecurityToken.NotSupported"}


def sent_context(values: dict[str, str], name: str) -> dict | None:
    """The context a request gave (JSON or flattened), as the server reads it; None when it is not one."""
    flattened = {k[len(name) + 1:]: v for k, v in values.items() if k.startswith(name + ".")}
    if flattened:
        return flattened
    text = values.get(name, "")
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return None


def exercise(world: World, request: ActionRequest) -> Reply:
    resolver = Resolver(world, request.action)
    try:
        values = resolver.params(request.params)
        reply, xml = send_action(world.signer, request.action, values, request.mode, request.in_body)
    finally:
        resolver.close()
    error = check_reply(reply, xml=xml)
    if error is not None and error["Code"] == SERVER_REFUSAL:
        # Parameters of tens of KB in the URL: the HTTP server refuses the request target (414) or head (431).
        assert reply.status in (414, 431), reply.describe()
        return reply

    if error is not None and not PROTOCOL_NAMES & set(values):
        # The harness signs correctly: anything else would mean the fuzzing never reaches the handlers.
        assert error["Code"] not in AUTH_CODES, reply.describe()
    plaintext = values.get("Plaintext", "")
    if error is not None and len(plaintext) >= 16 and not any(
            plaintext in k or plaintext in v for k, v in values.items() if k != "Plaintext"):
        assert plaintext not in error["Message"], reply.describe()
    if reply.status == 200 and not xml and request.action in ("Decrypt", "ReEncrypt"):
        facts = world.authentic(values.get("CiphertextBlob", ""))
        assert facts is not None, f"a blob that is no real blob was opened:\n{reply.describe()}"
        source = "EncryptionContext" if request.action == "Decrypt" else "SourceEncryptionContext"
        assert sent_context(values, source) == facts.context, f"opened under another context:\n{reply.describe()}"
        if request.action == "Decrypt":
            assert reply.json()["Plaintext"] == facts.plaintext, reply.describe()
    return reply


@pytest.mark.parametrize("action", sorted(ACTIONS))
@given(data=st.data())
def test_action_parameters(world: World, action: str, data) -> None:
    exercise(world, data.draw(action_requests(action), label="request"))


@given(which=st.sampled_from(BLOB_NAMES), mutation=blob_mutations, action=st.sampled_from(["Decrypt", "ReEncrypt"]),
       mode=st.sampled_from(MODES))
def test_damaged_blobs_never_open(world: World, which: str, mutation: tuple, action: str, mode: str) -> None:
    facts = world.blobs[which]
    blob = mutate_blob(facts.text, mutation, world)
    context = json.dumps(facts.context)
    if action == "Decrypt":
        values = {"CiphertextBlob": blob, "EncryptionContext": context}
    else:
        values = {"CiphertextBlob": blob, "SourceEncryptionContext": context,
                  "DestinationKeyId": world.keys["enabled"].key_id}
    reply, _ = send_action(world.signer, action, values, mode)
    error = check_app_reply(reply)
    usable = facts.which == "enabled"
    if world.authentic(blob) is facts and usable:
        assert reply.status == 200, reply.describe()
        if action == "Decrypt":
            assert reply.json()["Plaintext"] == facts.plaintext
    else:
        assert error is not None, f"a damaged blob or one of an unusable key was opened:\n{reply.describe()}"
        assert error["Code"] in {"InvalidParameter", "MissingParameter", "Forbidden.KeyNotFound",
                                 "Rejected.Disabled", "Rejected.PendingDeletion"}, reply.describe()


@given(which=st.sampled_from(["ctx", "old", "padded", "datakey"]),
       context=st.dictionaries(st.sampled_from(["app", "n", "k", "x", ""]), st.sampled_from(["fuzz", "1", "v", ""]),
                               max_size=3),
       flattened=st.booleans(), mode=st.sampled_from(MODES))
def test_blobs_open_only_under_their_context(world: World, which: str, context: dict, flattened: bool,
                                             mode: str) -> None:
    facts = world.blobs[which]
    values = {"CiphertextBlob": facts.text}
    if flattened and context:
        values |= {f"EncryptionContext.{k}": v for k, v in context.items()}
    else:
        values["EncryptionContext"] = json.dumps(context)
    reply, _ = send_action(world.signer, "Decrypt", values, mode)
    error = check_app_reply(reply)
    if context == facts.context:
        assert reply.status == 200 and reply.json()["Plaintext"] == facts.plaintext, reply.describe()
    else:
        assert error is not None and error["Code"] == "InvalidParameter", reply.describe()
