"""Hypothesis strategies for hostile action parameters.

Parameter names come from three places: the names each handler in ``hsmkms.api.actions.ACTIONS`` reads
(found in its code, so an action added later is covered without editing this file), a list of names the
Alibaba API knows, and made-up, indexed (``Tag.N.Key``) and flattened (``EncryptionContext.<x>``) names.
Values are valid-looking (real key ids, aliases, ARNs, versions and blobs through ``Sym``), edge values
(empty, huge, negative, unicode, JSON fragments and deep nesting) or damaged blobs.
"""

from __future__ import annotations

import base64
import dis
import inspect
import string
from dataclasses import dataclass, field
from types import CodeType, FunctionType

from hypothesis import strategies as st

from hsmkms.api import actions as actions_module
from hsmkms.api.params import Params
from tests.fuzz.world import CONTEXT, MISSING_KEY, STATES, Json, Sym

# Names the API documents for its actions (2016-01-20), whatever the handlers read today.
KNOWN_NAMES = (
    "KeyId", "Plaintext", "CiphertextBlob", "EncryptionContext", "NumberOfBytes", "KeySpec", "AliasName",
    "PageNumber", "PageSize", "Filters", "Tags", "TagKeys", "Description", "PendingWindowInDays",
    "EnableAutomaticRotation", "RotationInterval", "KeyVersionId", "DestinationKeyId", "SourceEncryptionContext",
    "DestinationEncryptionContext", "RegionId", "ResourceType", "NextToken", "EnableDeletionProtection",
    "ProtectedResourceArn", "DeletionProtectionDescription", "KeyUsage", "Origin", "ProtectionLevel",
    "DKMSInstanceId", "Policy", "Format", "DryRun", "All", "SourceEncryptionAlgorithm", "SourceKeyVersionId",
    "SecretName", "CertificateId", "KeyStorageMechanism", "DestinationEncryptionAlgorithm", "Algorithm",
    "SecurityToken", "MaxResults", "ResourceId", "Tag", "TagKey",
)

# --- names read by a handler ------------------------------------------------------------------------------


PARAMS_METHODS = {name for name, f in vars(Params).items() if isinstance(f, FunctionType) and not name.startswith("__")}


def _reads(code: CodeType) -> tuple[set[str], set[str]]:
    """(parameter names ``code`` reads through Params methods, Params methods it calls without a name)."""
    names: set[str] = set()
    bare: set[str] = set()
    method: str | None = None
    arguments: list[str] = []
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_METHOD", "LOAD_ATTR") and instruction.argval in PARAMS_METHODS:
            method, arguments = instruction.argval, []
        elif method and instruction.opname == "LOAD_CONST" and isinstance(instruction.argval, str):
            arguments.append(instruction.argval)
        elif method and instruction.opname in ("CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_FUNCTION_KW"):
            if not arguments:
                bare.add(method)
            elif method == "indexed":  # a flattened list: <name>.1, <name>.2 ...
                names |= {f"{arguments[0]}.1", f"{arguments[0]}.2"}
            elif method == "indexed_pairs" and len(arguments) >= 3:  # <name>.N.<first> / <name>.N.<second>
                names |= {f"{arguments[0]}.1.{arguments[1]}", f"{arguments[0]}.1.{arguments[2]}",
                          f"{arguments[0]}.2.{arguments[1]}"}
            else:
                names.add(arguments[0])
            method = None
    for const in code.co_consts:
        if isinstance(const, CodeType):
            inner_names, inner_bare = _reads(const)
            names |= inner_names
            bare |= inner_bare
    return names, bare


def _referenced(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _referenced(const)
    return names


def _reads_params(function: FunctionType) -> bool:
    annotations = [str(p.annotation) for p in inspect.signature(function).parameters.values()]
    return any(a in ("Params", "Call") for a in annotations)


def handler_names(action: str) -> list[str]:
    """Parameter names the handler of ``action`` reads: the first string given to each Params accessor it (or a
    helper it hands its Params or Call to) calls, indexed names for the list accessors, and the names of the
    accessors it calls without one (``p.page()``: PageNumber, PageSize; ``p.context()``: EncryptionContext)."""
    names: set[str] = set()
    seen: set[FunctionType] = set()
    pending: list[tuple[FunctionType, bool]] = [(actions_module.ACTIONS[action].handler, False)]
    while pending:
        function, bare_call = pending.pop()
        if function in seen:
            continue
        seen.add(function)
        if bare_call:
            names |= {d for d in (function.__defaults__ or ()) if isinstance(d, str)}
        found, bare = _reads(function.__code__)
        names |= found
        pending += [(vars(Params)[method], True) for method in bare]
        for name in _referenced(function.__code__):
            target = vars(actions_module).get(name)
            if isinstance(target, FunctionType) and target.__module__ == actions_module.__name__ \
                    and _reads_params(target):
                pending.append((target, False))
    return sorted(names)


# --- values ---------------------------------------------------------------------------------------------

# Text that can be percent-encoded (no lone surrogates); anything else.
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=24)
# Text inside JSON documents may hold lone surrogates: the JSON escape (\ud800) is plain ASCII on the wire.
json_text = st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=12)

EDGE_STRINGS = (
    "", " ", "  \t", "0", "-1", "+7", "007", "1.5", "1e3", "-0", "NaN", "Infinity", "null", "true", "false",
    "9" * 11, "9" * 40, "-" + "9" * 40, "0x1F", "1_000", "\u0663", "\uff17", "\U0001d7d5", "\U0001f600",
    "\u202e", "\ufeff", "\x00", "\x01", "\x7f", "\r\n", "%", "%00", "%G1", "&", "=", "+", "\\", "'", '"',
    "<x>", "]]>", "&amp;", "{", "}", "[", "]", "{}", "[]", '{"a":', '{"a":"b"}', '{"a":1}', '{"a":null}',
    '{"a":{"b":"c"}}', '{"a":"b","a":"c"}', '["a"]', "[1,2]", '"x"', "1" * 5000, "a" * 129, "a" * 256,
    "a" * 8192, "a" * 8193, "é" * 3073, "\U0001f600" * 2000, "alias/", "alias/acs-x", "acs:kms:::",
    MISSING_KEY, MISSING_KEY.upper(), " " + MISSING_KEY,
)
edge = st.sampled_from(EDGE_STRINGS)


def deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + '"x"' + "}" * depth
    return '[{"Key":' * depth + '"x"' + "}]" * depth


deep_json = st.builds(deep, st.sampled_from([50, 999, 1001, 3000, 20000]), st.sampled_from(["list", "object", "mix"]))

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), json_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(json_text, children, max_size=4)),
    max_leaves=12,
)


def as_json(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(Json, strategy, st.booleans(), st.sampled_from([None, None, 0, 2]))


def key_refs(states: tuple[str, ...] = STATES) -> st.SearchStrategy:
    symbols = st.builds(
        Sym, st.sampled_from(["key_id", "alias", "key_arn", "alias_arn", "key_id", "key_id_upper"]),
        st.sampled_from(states),
    )
    near_misses = st.sampled_from([
        MISSING_KEY, "alias/fuzz-nope", "alias/acs/x", "acs:kms:cn-hangzhou:1234567890123456:key/" + MISSING_KEY,
        "acs:kms:cn-shanghai:1234567890123456:key/" + MISSING_KEY, "acs:kms:cn-hangzhou:1:alias/fuzz",
        "acs:kms:cn-hangzhou:1234567890123456:alias/", "acs:kms:cn-hangzhou:1234567890123456:secret/x",
        "acs:kms", "acs:", "alias", "key/" + MISSING_KEY, "../" + MISSING_KEY, MISSING_KEY + "\n",
    ])
    return st.one_of(symbols, symbols, near_misses)


integers = st.one_of(
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from(["0", "1", "6", "7", "32", "100", "101", "366", "367", "1024", "1025", "1000000",
                     "1000001", "999999999", "1000000000", "1000000001", "9999999999", "10000000000",
                     "+1", "-0", " 1", "1 ", "1.0", "1e2", "١", "\uff11", "0x10", "01", "0" * 20 + "7"]),
)
booleans = st.sampled_from(["true", "false", "True", "False", "TRUE", "tRuE", "1", "0", "yes", "on", " true",
                            "true\n", ""])
rotation_intervals = st.one_of(
    st.sampled_from(["7d", "30d", "730d", "731d", "6d", "604800s", "604799s", "168h", "10080m", "0d", "-7d", "7D",
                     "7 d", "1e3d", "d", "7", "9" * 12 + "d", "9" * 13 + "d", "63072000s", "\uff17d"]),
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(0, 10**13), st.sampled_from("dhmsDxy")),
)
alias_names = st.one_of(
    st.builds(Sym, st.just("alias"), st.sampled_from(STATES)),
    st.just(Sym("fresh_alias")),
    st.builds(lambda s: "alias/" + s, st.text(alphabet=string.ascii_letters + string.digits + "_/-", min_size=1,
                                               max_size=20)),
    st.builds(lambda s: "alias/" + s, text),
    st.sampled_from(["alias/", "alias/acs", "alias/acsx", "alias/" + "a" * 255, "alias/" + "a" * 256, "Alias/x",
                     "alias/a b", "alias/../x", "alias//", "alias/é", "x", "acs:kms:cn-hangzhou:1234567890123456:"
                     "alias/x"]),
)
versions = st.one_of(
    st.builds(Sym, st.sampled_from(["version_id", "old_version_id"]), st.sampled_from(STATES)),
    st.sampled_from([MISSING_KEY, MISSING_KEY.upper(), "v1", "", "../x"]),
)

BLOB_NAMES = ("ctx", "old", "padded", "datakey", "disabled", "pending")
blob_mutations = st.one_of(
    st.just(()),
    st.tuples(st.just("flip"), st.integers(0, 10**6)),
    st.tuples(st.just("truncate"), st.integers(0, 200)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("version"), st.sampled_from(["enabled", "disabled", "pending", "missing"])),
    st.tuples(st.just("text-cut"), st.integers(0, 200)),
    st.tuples(st.just("text-char"), st.integers(0, 200), st.sampled_from(list("A/+=-_ \n.%\u00e9"))),
    st.tuples(st.just("text-insert"), st.integers(0, 200), st.sampled_from(["=", "==", " ", "\n", "A", "AAAA"])),
    st.tuples(st.just("urlsafe")),
    st.tuples(st.just("strip-padding")),
)
blobs = st.builds(Sym, st.just("blob"), st.sampled_from(BLOB_NAMES), blob_mutations)
garbage_blobs = st.one_of(
    st.binary(max_size=120).map(lambda b: base64.b64encode(b).decode("ascii")),
    st.sampled_from(["", "=", "====", "AAAA", "!!!!", "0" * 100, "Zm9v", "A" * 11000]),
)

contexts = st.one_of(
    st.just(Json(CONTEXT)),
    st.just(Json({"n": "1", "app": "fuzz"}, indent=2)),
    st.just(Json({"k": "v"})),
    st.just(Json({})),
    as_json(st.dictionaries(json_text, json_text, max_size=5)),
    as_json(st.dictionaries(json_text, json_values, min_size=1, max_size=3)),
    as_json(json_values),
    st.just(Json({"k": "x" * 8200})),
    st.just(Json({f"k{i}": "v" * 60 for i in range(140)})),
    st.sampled_from(['{"app":"fuzz","app":"fuzz"}', '{"app":"fuzz","n":"1",}', "{'app':'fuzz'}", '{"a":"\\ud800"}',
                     '{"\\ud800":"b"}', '{"a":"b"} x', "{}{}", '{"a": NaN}', '{"a":"b\\u0000"}']),
    deep_json,
)

FILTER_KEYS = sorted(actions_module.FILTER_FIELDS) if hasattr(actions_module, "FILTER_FIELDS") else ["KeyState"]
filter_values = st.one_of(
    st.lists(st.one_of(
        st.sampled_from(["Enabled", "Disabled", "PendingDeletion", "Aliyun_AES_256", "ENCRYPT/DECRYPT", "HSM",
                         "SOFTWARE", "User", "", "1234567890123456", "alias/dev"]),
        st.builds(Sym, st.sampled_from(["key_id", "alias"]), st.sampled_from(STATES)),
        json_text,
    ), max_size=4),
    json_values,
)
filter_entries = st.one_of(
    st.fixed_dictionaries({"Key": st.sampled_from(FILTER_KEYS), "Values": filter_values}),
    st.fixed_dictionaries({"Key": json_values, "Values": filter_values}),
    st.dictionaries(st.sampled_from(["Key", "Values", "key", "values", "Extra"]), json_values, max_size=3),
    json_values,
)
filters = st.one_of(as_json(st.lists(filter_entries, max_size=12)), as_json(st.lists(filter_entries, max_size=3)),
                    as_json(json_values), deep_json, edge)

TAG_CHARS = string.ascii_letters + string.digits + "/\\_-.+=: @"
tag_text = st.one_of(
    st.text(alphabet=TAG_CHARS, max_size=16),
    json_text,
    st.sampled_from(["aliyun", "acs:x", "ALIYUNx", "a" * 128, "a" * 129, "", " ", "é", "\u0663"]),
)
tag_items = st.one_of(
    st.fixed_dictionaries({"TagKey": tag_text}, optional={"TagValue": tag_text}),
    st.dictionaries(st.sampled_from(["TagKey", "TagValue", "Key", "Value"]), json_values, max_size=3),
    json_values,
)
tags_json = st.one_of(as_json(st.lists(tag_items, max_size=22)), as_json(json_values), deep_json, edge)
tag_keys_json = st.one_of(as_json(st.lists(tag_text, max_size=22)), as_json(st.lists(json_values, max_size=3)),
                          deep_json, edge)

plaintexts = st.one_of(
    text,
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=100, max_size=2000),
    st.sampled_from(["a" * 6144, "a" * 6145, "é" * 3072, "é" * 3073, "\U0001f600" * 1536, "\U0001f600" * 1537,
                     "aGVsbG8=", "\x00" * 10, "a" * 70000]),
)
descriptions = st.one_of(
    text,
    st.text(alphabet=st.characters(codec="ascii"), max_size=30),  # control characters included
    st.sampled_from(["x" * 8192, "x" * 8193, "\x00", "a\x01b", "\x0b\x0c", "]]></Description>", "<a>&</a>"]),
)

SPECIFIC: dict[str, st.SearchStrategy] = {
    "KeyId": key_refs(),
    "DestinationKeyId": key_refs(),
    "ProtectedResourceArn": key_refs(),
    "ResourceId": key_refs(),
    "CiphertextBlob": st.one_of(blobs, blobs, garbage_blobs),
    "Plaintext": plaintexts,
    "EncryptionContext": contexts,
    "SourceEncryptionContext": contexts,
    "DestinationEncryptionContext": contexts,
    "NumberOfBytes": integers,
    "PageNumber": integers,
    "PageSize": integers,
    "PendingWindowInDays": integers,
    "NextToken": integers,
    "KeySpec": st.sampled_from(["AES_256", "AES_128", "Aliyun_AES_256", "Aliyun_AES_128", "Aliyun_SM4", "RSA_2048",
                                "EC_P256", "aes_256", "AES_256 ", ""]),
    "KeyUsage": st.sampled_from(["ENCRYPT/DECRYPT", "SIGN/VERIFY", "encrypt/decrypt", ""]),
    "Origin": st.sampled_from(["Aliyun_KMS", "EXTERNAL", "aliyun_kms", ""]),
    "ProtectionLevel": st.sampled_from(["HSM", "SOFTWARE", "hsm", "PLAINTEXT", ""]),
    "EnableAutomaticRotation": booleans,
    "EnableDeletionProtection": booleans,
    "All": booleans,
    "DryRun": booleans,
    "RotationInterval": rotation_intervals,
    "AliasName": alias_names,
    "KeyVersionId": versions,
    "SourceKeyVersionId": versions,
    "Description": descriptions,
    "DeletionProtectionDescription": descriptions,
    "Filters": filters,
    "Tags": tags_json,
    "TagKeys": tag_keys_json,
    "Tag": tag_text.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
    "TagKey": tag_text.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
    "RegionId": st.sampled_from(["cn-hangzhou", "cn-shanghai", "CN-HANGZHOU", " cn-hangzhou", ""]),
    "ResourceType": st.sampled_from(["key", "Key", "KEY", "secret", "certificate", ""]),
    "Format": st.sampled_from(["JSON", "XML", "xml", "Xml", "json", "YAML", ""]),
    "Policy": st.one_of(as_json(json_values), st.just('{"Version":"1","Statement":[]}')),
    "SourceEncryptionAlgorithm": st.sampled_from(["AES_256_GCM", "RSAES_OAEP_SHA_256", ""]),
}

index_tokens = st.one_of(st.integers(1, 3).map(str),
                         st.sampled_from(["0", "50", "51", "01", "-1", "", "x", "1.0", "\u0661", "1 ", "99999999999"]))
indexed_names = st.one_of(
    st.builds(lambda n: f"ResourceId.{n}", index_tokens),
    st.builds(lambda n, part: f"Tag.{n}.{part}", index_tokens, st.sampled_from(["Key", "Value", "key", ""])),
    st.builds(lambda n: f"TagKey.{n}", index_tokens),
)
flattened_names = st.builds(
    lambda name, key: f"{name}.{key}",
    st.sampled_from(["EncryptionContext", "SourceEncryptionContext", "DestinationEncryptionContext"]),
    st.one_of(st.sampled_from(["app", "n", "", "."]), text),
)
made_up_names = st.one_of(text, st.sampled_from(["", " ", ".", "KeyId.", "keyid", "KEYID", "Key Id", "KeyId\x00"]))


def _specific(name: str) -> st.SearchStrategy | None:
    if name.startswith(("Tag.", "TagKey.")):
        return SPECIFIC["Tag"]
    if name in SPECIFIC:
        return SPECIFIC[name]
    return SPECIFIC.get(name.split(".")[0])


def value_for(name: str) -> st.SearchStrategy:
    specific = _specific(name)
    if specific is None:
        return st.one_of(edge, text)
    return st.one_of(specific, specific, specific, edge, text)


# Values the server usually accepts, so that a request with a few hostile parameters among valid ones gets
# past the first check and into the service.
_small = st.integers(1, 5).map(str)
valid_filters = as_json(st.lists(st.fixed_dictionaries({
    "Key": st.sampled_from(FILTER_KEYS),
    "Values": st.lists(st.one_of(st.sampled_from(["Enabled", "Disabled", "PendingDeletion", "HSM", "User", ""]),
                                 st.builds(Sym, st.sampled_from(["key_id", "alias"]), st.sampled_from(STATES)),
                                 json_text), min_size=1, max_size=3),
}), max_size=3))
valid_tag_text = st.text(alphabet=TAG_CHARS, min_size=1, max_size=12).filter(
    lambda t: not t.lower().startswith(("aliyun", "acs:")))
valid_keys = st.builds(Sym, st.sampled_from(["key_id", "alias", "key_arn", "alias_arn"]),
                      st.sampled_from(["enabled", "enabled", "disabled", "pending"]))
valid_contexts = st.one_of(st.just(Json(CONTEXT)), st.just(Json({})), st.just(Json({"k": "v"})),
                           as_json(st.dictionaries(json_text, json_text, max_size=3)))
VALID: dict[str, st.SearchStrategy] = {
    "KeyId": valid_keys, "DestinationKeyId": valid_keys, "ProtectedResourceArn": valid_keys,
    "ResourceId": valid_keys,
    "CiphertextBlob": st.builds(Sym, st.just("blob"), st.sampled_from(BLOB_NAMES)),
    "Plaintext": text, "EncryptionContext": valid_contexts, "SourceEncryptionContext": valid_contexts,
    "DestinationEncryptionContext": valid_contexts,
    "NumberOfBytes": st.integers(1, 1024).map(str), "PageNumber": _small, "PageSize": st.integers(1, 100).map(str),
    "PendingWindowInDays": st.integers(7, 366).map(str), "NextToken": st.integers(0, 60).map(str),
    "KeySpec": st.sampled_from(["AES_256", "AES_128", "Aliyun_AES_256"]),
    "KeyUsage": st.just("ENCRYPT/DECRYPT"), "Origin": st.just("Aliyun_KMS"),
    "ProtectionLevel": st.sampled_from(["HSM", "SOFTWARE"]),
    "EnableAutomaticRotation": st.sampled_from(["true", "false"]),
    "EnableDeletionProtection": st.sampled_from(["true", "false"]), "All": st.sampled_from(["true", "false"]),
    "RotationInterval": st.sampled_from(["30d", "604800s", "730d", "168h"]),
    "AliasName": st.one_of(st.just(Sym("fresh_alias")), st.builds(Sym, st.just("alias"), st.sampled_from(STATES))),
    "KeyVersionId": versions, "Description": descriptions, "DeletionProtectionDescription": descriptions,
    "Filters": valid_filters,
    "Tags": as_json(st.lists(st.fixed_dictionaries({"TagKey": valid_tag_text}, optional={"TagValue": tag_text}),
                             max_size=4)),
    "TagKeys": as_json(st.lists(st.one_of(valid_tag_text, json_text), min_size=1, max_size=4)),
    "RegionId": st.just("cn-hangzhou"), "ResourceType": st.just("key"),
    "Tag": valid_tag_text, "TagKey": valid_tag_text, "Format": st.sampled_from(["JSON", "XML"]),
}


def valid_value_for(name: str) -> st.SearchStrategy:
    """A value that is usually accepted ("" for what a handler only reads to refuse, e.g. Policy)."""
    if name.startswith(("Tag.", "TagKey.")):
        return VALID["Tag"]
    if name in VALID:
        return VALID[name]
    return VALID.get(name.split(".")[0], st.just(""))


# --- whole requests ---------------------------------------------------------------------------------------

MODES = ("v1-get", "v1-post", "v1-form", "v1-all-form", "v3", "v3-form", "v3-get", "v3-query-action")


@dataclass
class ActionRequest:
    action: str
    params: dict[str, object]
    mode: str
    in_body: frozenset[str] = field(default_factory=frozenset)

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"ActionRequest({self.action!r}, mode={self.mode!r}, in_body={set(self.in_body)!r}, " \
               f"params={self.params!r})"


@st.composite
def action_requests(draw, action: str) -> ActionRequest:
    relevant = handler_names(action)
    name_choices = [st.sampled_from(KNOWN_NAMES), indexed_names, flattened_names, made_up_names]
    if relevant:
        name_choices = [st.sampled_from(relevant)] * 4 + name_choices
    params: dict[str, object] = {}
    if relevant and draw(st.booleans(), label="mostly valid"):
        # Every name the handler reads with a usually accepted value, then a few hostile ones on top.
        params = {name: draw(valid_value_for(name), label=name) for name in relevant}
        params = {name: value for name, value in params.items() if value != ""}
        hostile = draw(st.lists(st.one_of(*name_choices), max_size=3, unique=True))
    else:
        hostile = draw(st.lists(st.one_of(*name_choices), max_size=8, unique=True))
    for name in hostile:
        if name not in ("Action", "Version"):
            params[name] = draw(value_for(name), label=name)
    flat = draw(st.sampled_from([None, None, None, "EncryptionContext", "SourceEncryptionContext",
                                 "DestinationEncryptionContext"]), label="flattened context")
    if flat:
        params |= {f"{flat}.{k}": v for k, v in CONTEXT.items()}
    response_format = draw(st.sampled_from([None, None, None, "XML", "xml", "JSON"]), label="Format")
    if response_format and "Format" not in params:
        params["Format"] = response_format
    mode = draw(st.sampled_from(MODES), label="mode")
    in_body: frozenset[str] = frozenset()
    if mode in ("v1-form", "v3-form") and params:
        in_body = frozenset(draw(st.sets(st.sampled_from(sorted(params))), label="in body"))
    return ActionRequest(action, params, mode, in_body)
