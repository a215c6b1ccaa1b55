"""RAM-style authorization policies: which KMS actions an access key may perform on which resources.

A policy is the JSON document Alibaba Cloud RAM uses, restricted to what this service can evaluate::

    {"Version": "1", "Statement": [{"Effect": "Allow", "Action": ["kms:Decrypt", "kms:Generate*"],
                                    "Resource": "acs:kms:*:*:key/*"}]}

``Action`` and ``Resource`` are a pattern or a list of patterns, where ``*`` matches any run of characters
(including none) and ``?`` exactly one.  Actions match case-insensitively (RAM treats ``kms:decrypt`` like
``kms:Decrypt``); resources match case-sensitively, because key ids and alias names are.

Evaluation is RAM's: an explicit Deny on any resource the request touches wins; otherwise the request is
allowed only if every resource is matched by some Allow statement for the action; anything else is denied.
The evaluator knows nothing about ARNs: the caller passes every resource a request touches (for a key used
through an alias, both the key ARN and the alias ARN, so that a policy can grant or deny either).

ReEncrypt is authorized as ``kms:ReEncryptFrom`` on the source key and ``kms:ReEncryptTo`` on the destination
(RAM's names).  A statement whose Action matches ``kms:ReEncrypt`` (the API's name, what people write) means
both halves, so that a Deny on it denies ReEncrypt instead of silently matching nothing.

Parsing is strict, because a policy that silently means less (or more) than its author thinks is worse than
one that is refused: unknown keys, ``Condition`` blocks, ``NotAction`` and the like are errors, not ignored,
and so are actions that are no KMS action (``kms:Decrpyt``) and resources that no ARN this service checks can
match (``acs:kms:*:*:kye/*``).  :func:`policy_warnings` names valid policies that do not do what they seem to.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
import string
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from hsmkms.jsonutil import loads_strict

MAX_POLICY_BYTES = 32768
POLICY_VERSION = "1"
ACTION_PREFIX = "kms:"

# Decisions are remembered per policy (the same few (action, key) pairs repeat on the hot path), but request
# data chooses the resources: a request longer than any ARN is decided afresh, and the memory is bounded in
# bytes.  A typical entry costs about 400 bytes, so the budget holds a couple of thousand.
MAX_REMEMBERED_REQUEST_CHARS = 1024
MAX_REMEMBERED_BYTES = 1 << 20
MAX_ACTIONS_SPLIT = 512
_ENTRY_OVERHEAD_BYTES = 200  # the dict slot, the Decision and allocator slack, beyond the key's own objects

_STATEMENT_KEYS = frozenset({"Effect", "Action", "Resource"})
_DOCUMENT_KEYS = frozenset({"Version", "Statement"})
_EFFECTS = ("Allow", "Deny")

# Every action name of the Alibaba Cloud KMS API 2016-01-20: the 91 operations of the Tea SDK 3.3.1, the ones
# only the legacy SDK and the npm SDK have, and RAM's two halves of ReEncrypt.  A policy may name any of them,
# also those this service does not implement (a policy shared with Alibaba Cloud is not a typo); a name that
# is not here is refused.
KMS_ACTIONS = frozenset({
    "AsymmetricDecrypt", "AsymmetricEncrypt", "AsymmetricSign", "AsymmetricVerify", "BatchGetSecretValue",
    "CancelKeyDeletion", "ConnectKmsInstance", "CreateAlias", "CreateApplicationAccessPoint", "CreateClientKey",
    "CreateKey", "CreateKeyVersion", "CreateNetworkRule", "CreatePolicy", "CreateSecret", "Decrypt", "DeleteAlias",
    "DeleteApplicationAccessPoint", "DeleteClientKey", "DeleteKeyMaterial", "DeleteNetworkRule", "DeletePolicy",
    "DeleteSecret", "DescribeAccountKmsStatus", "DescribeApplicationAccessPoint", "DescribeKey",
    "DescribeKeyVersion", "DescribeNetworkRule", "DescribePolicy", "DescribeRegions", "DescribeSecret", "DisableKey",
    "EnableKey", "Encrypt", "ExportDataKey", "GenerateAndExportDataKey", "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext", "GenerateMac", "GetChallenge", "GetClientKey", "GetDefaultKmsInstance",
    "GetKeyPolicy", "GetKmsInstance", "GetKmsInstanceQuotaInfos", "GetManagedDataKey", "GetParametersForImport",
    "GetPublicKey", "GetRandomPassword", "GetSecretPolicy", "GetSecretValue", "ImportKeyMaterial", "ListAliases",
    "ListAliasesByKeyId", "ListApplicationAccessPoints", "ListClientKeys", "ListKeyVersions", "ListKeys",
    "ListKmsInstances", "ListManagedDataKeyVersions", "ListNetworkRules", "ListPolicies", "ListResourceTags",
    "ListSecretVersionIds", "ListSecrets", "ListTagResources", "OpenKmsService", "PutSecretValue", "ReEncrypt",
    "ReleaseKmsInstance", "RestoreSecret", "RotateSecret", "ScheduleKeyDeletion", "SetDeletionProtection",
    "SetKeyPolicy", "SetSecretPolicy", "TagResource", "TagResources", "UntagResource", "UntagResources",
    "UpdateAlias", "UpdateApplicationAccessPoint", "UpdateKeyDescription", "UpdateKmsInstanceBindVpc",
    "UpdateNetworkRule", "UpdatePolicy", "UpdateRotationPolicy", "UpdateSecret", "UpdateSecretRotationPolicy",
    "UpdateSecretVersionStage", "VerifyMac",
    # legacy SDK (aliyun-python-sdk-kms) only
    "AdvanceEncrypt", "CertificatePrivateKeyDecrypt", "CertificatePrivateKeySign", "CertificatePublicKeyEncrypt",
    "CertificatePublicKeyVerify", "CreateCertificate", "DeleteCertificate", "DescribeCertificate", "GetCertificate",
    "UpdateCertificateStatus", "UploadCertificate",
    # npm SDK 1.2.0 only
    "DescribeService",
    # policy-only: the two halves ReEncrypt is authorized as
    "ReEncryptFrom", "ReEncryptTo",
})
RE_ENCRYPT = ACTION_PREFIX + "ReEncrypt"
RE_ENCRYPT_HALVES = (ACTION_PREFIX + "ReEncryptFrom", ACTION_PREFIX + "ReEncryptTo")
_QUALIFIED_ACTIONS = tuple(sorted(ACTION_PREFIX + name for name in KMS_ACTIONS))
_LOWERCASE_ACTIONS = {name.lower(): name for name in _QUALIFIED_ACTIONS}


class PolicyError(ValueError):
    """A policy document that cannot be accepted; the message says what to fix."""


class Wildcard:
    """A RAM wildcard pattern: ``*`` any run of characters, ``?`` exactly one, everything else literal.

    Matching takes time linear in the text (times the pattern's length at worst), never exponential: the
    pattern is cut at its stars into fixed-length pieces; the first must start the text, the last must end
    it, and each middle piece is found at its leftmost place after the previous one (leftmost is never
    worse: it leaves the most text for the pieces after it).  A backtracking regex for ``a*:*:b*`` took 21 s
    on a 60 KB resource made of colons, which any caller can name as a KeyId.
    """

    __slots__ = ("pattern", "_pieces", "everything")

    def __init__(self, pattern: str, *, ignore_case: bool = False):
        flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
        self.pattern = pattern
        # Each piece is a fixed-length regex ('?' is '.', every other character itself), so no backtracking.
        self._pieces = [(re.compile(re.escape(piece).replace(r"\?", "."), flags), len(piece))
                        for piece in pattern.split("*")]
        self.everything = pattern != "" and set(pattern) == {"*"}  # "*" (or "**"): the usual Resource

    def matches(self, text: str) -> bool:
        if self.everything:
            return True
        if len(self._pieces) == 1:
            return self._pieces[0][0].fullmatch(text) is not None
        (first, first_len), *middle, (last, last_len) = self._pieces
        end = len(text) - last_len  # where the last piece must start
        if end < first_len or not first.match(text) or not last.match(text, end):
            return False
        position = first_len
        for piece, _ in middle:
            found = piece.search(text, position, end)
            if found is None:
                return False
            position = found.end()
        return True


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`Policy.evaluate`; ``denied_resource`` names what the error message reports."""

    allowed: bool
    denied_resource: str | None = None


_ALLOWED = Decision(True, None)


@dataclass(frozen=True)
class Statement:
    """One statement with its patterns compiled once, at parse time."""

    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    _action_patterns: tuple[Wildcard, ...] = field(init=False, repr=False, compare=False)
    _resource_patterns: tuple[Wildcard, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        actions = [Wildcard(a, ignore_case=True) for a in self.actions]
        if any(a.matches(RE_ENCRYPT) for a in actions):  # see the module docstring
            actions += [Wildcard(half, ignore_case=True) for half in RE_ENCRYPT_HALVES]
        object.__setattr__(self, "_action_patterns", tuple(actions))
        object.__setattr__(self, "_resource_patterns", tuple(Wildcard(r) for r in self.resources))

    def matches_action(self, qualified_action: str) -> bool:
        """``qualified_action`` as ``kms:Name`` (any case)."""
        return any(pattern.matches(qualified_action) for pattern in self._action_patterns)

    def matches_resource(self, resource: str) -> bool:
        return any(pattern.matches(resource) for pattern in self._resource_patterns)

    @property
    def matches_every_resource(self) -> bool:
        return any(pattern.everything for pattern in self._resource_patterns)


def qualified(action: str) -> str:
    """``kms:Decrypt`` for ``Decrypt`` (or for ``kms:Decrypt`` in any case)."""
    return action if action[: len(ACTION_PREFIX)].lower() == ACTION_PREFIX else ACTION_PREFIX + action


class _DecisionMemory:
    """Decisions one policy has made, keyed by (action, *resources) and bounded in bytes (see above)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, ...], Decision] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # only when remembering; a lookup is one dict read

    def get(self, key: tuple[str, ...]) -> Decision | None:
        return self._entries.get(key)

    def remember(self, key: tuple[str, ...], decision: Decision) -> None:
        if sum(map(len, key)) > MAX_REMEMBERED_REQUEST_CHARS:
            return
        cost = _ENTRY_OVERHEAD_BYTES + sys.getsizeof(key) + sum(map(sys.getsizeof, key))
        with self._lock:
            if key in self._entries:
                return
            if self._bytes + cost > MAX_REMEMBERED_BYTES:
                self._entries.clear()
                self._bytes = 0
            self._entries[key] = decision
            self._bytes += cost

    @property
    def size(self) -> tuple[int, int]:
        """(entries, estimated bytes), for tests."""
        return len(self._entries), self._bytes


@dataclass(frozen=True)
class Policy:
    """A validated policy document: compiled statements plus the canonical text of the original."""

    statements: tuple[Statement, ...]
    document: str  # canonical JSON of the document as given; see to_json()
    _memory: _DecisionMemory = field(default_factory=_DecisionMemory, init=False, repr=False, compare=False)
    # The statements whose Action matches, by action: a decision not remembered (many keys overflow the memory)
    # then only matches resources, and none is needed when the action is allowed on every resource.
    _by_action: dict[str, _ActionStatements] = field(default_factory=dict, init=False, repr=False, compare=False)

    def to_json(self) -> str:
        """Canonical pretty JSON (sorted keys, two-space indent) of the original document; parses back equal."""
        return self.document

    def evaluate(self, action: str, resources: Sequence[str]) -> Decision:
        """Decide whether ``action`` (``GenerateDataKey`` or ``kms:GenerateDataKey``) may touch ``resources``.

        Explicit Deny on any resource wins; otherwise every resource needs an Allow; default deny.  An empty
        ``resources`` is a caller bug (it would be allowed vacuously), so it raises ``ValueError``.
        """
        if isinstance(resources, str):
            raise TypeError("resources must be a sequence of strings, not a string")
        if not resources:
            raise ValueError("a request touches at least one resource")
        if self._statements_for(action).allowed_everywhere:
            return _ALLOWED
        # A policy never changes (a new document is a new Policy), so its decisions can be remembered.
        key = (action, *resources)
        decision = self._memory.get(key)
        if decision is None:
            decision = self._decide(action, resources)
            self._memory.remember(key, decision)
        return decision

    def _decide(self, action: str, resources: Sequence[str]) -> Decision:
        statements = self._statements_for(action)
        denies, allows = statements.denies, statements.allows
        for resource in resources:
            if any(s.matches_resource(resource) for s in denies):
                return Decision(False, resource)
        for resource in resources:
            if not any(s.matches_resource(resource) for s in allows):
                return Decision(False, resource)
        return _ALLOWED

    def _statements_for(self, action: str) -> _ActionStatements:
        statements = self._by_action.get(action)
        if statements is None:
            name = qualified(action)
            relevant = [s for s in self.statements if s.matches_action(name)]
            denies = tuple(s for s in relevant if s.effect == "Deny")
            allows = tuple(s for s in relevant if s.effect == "Allow")
            statements = _ActionStatements(
                denies, allows, allowed_everywhere=not denies and any(s.matches_every_resource for s in allows))
            if len(self._by_action) < MAX_ACTIONS_SPLIT:  # callers name actions from a fixed table; bound it anyway
                self._by_action[action] = statements
        return statements


@dataclass(frozen=True)
class _ActionStatements:
    """A policy's statements that apply to one action."""

    denies: tuple[Statement, ...]
    allows: tuple[Statement, ...]
    # No Deny applies and an Allow covers every resource ("*"): allowed whatever the request touches.
    allowed_everywhere: bool


# --- which resources exist: the ARNs this service checks, as an automaton -----------------------------------
#
# A resource pattern is accepted only if it can match some ARN this service checks:
#
#     acs:kms:<region>:<account>:key          acs:kms:<region>:<account>:key/<key-id>
#     acs:kms:<region>:<account>:alias        acs:kms:<region>:<account>:alias/<alias-name>
#
# with <region> any characters but ':' (what the settings allow), <account> digits, <key-id> a lowercase UUID
# (every key this service makes) and <alias-name> 1 to 255 of [A-Za-z0-9_/-] (what CreateAlias accepts).
# Those ARNs are a regular language, and so is what a wildcard pattern matches; "can the pattern match
# anything" is "do the two languages intersect", which the product of their automata decides exactly.  That
# matters for a '*' that spans colons: in acs:kms:*:*:kye/* the first '*' could swallow "r:1:key/..." if
# key ids or alias names could hold a colon -- they cannot, so the pattern is refused, as it should be;
# splitting patterns at ':' would guess at such cases instead of deciding them.
#
# The automata are position automata: each position consumes one character of its class, ``follow`` says
# which positions may come next (``_START`` is before the first character), ``final`` where a word may end.

_START = -1
_ANY: Callable[[str], bool] = lambda c: True  # noqa: E731
_REGION_CHAR: Callable[[str], bool] = lambda c: c != ":"  # noqa: E731
_DIGITS = frozenset(string.digits)
_HEX_DIGITS = frozenset("0123456789abcdef")
_ALIAS_CHARS = frozenset(string.ascii_letters + string.digits + "_/-")
MAX_ALIAS_NAME_CHARS = 255


class _Automaton:
    def __init__(self) -> None:
        self.accepts: list[Callable[[str], bool]] = []
        self.follow: dict[int, list[int]] = {_START: []}
        self.literals: set[str] = set()  # characters some position accepts alone (for witness search)
        self.final: frozenset[int] = frozenset()
        self._reach: dict[int, frozenset[int]] = {}  # closure of each position, once asked (fixed automata)

    def position(self, tails: Iterable[int], accepts: Callable[[str], bool]) -> int:
        new = len(self.accepts)
        self.accepts.append(accepts)
        self.follow[new] = []
        for tail in tails:
            self.follow[tail].append(new)
        return new

    def literal(self, tails: set[int], text: str) -> set[int]:
        for char in text:
            self.literals.add(char)
            tails = {self.position(tails, char.__eq__)}
        return tails

    def repeat(self, tails: set[int], accepts: Callable[[str], bool], least: int, most: int | None) -> set[int]:
        """``least`` (at least 1) to ``most`` (None: any number of) characters of a class."""
        for _ in range(least):
            tails = {self.position(tails, accepts)}
        (last,) = tails
        if most is None:
            self.follow[last].append(last)
            return tails
        exits = set(tails)
        for _ in range(most - least):
            last = self.position({last}, accepts)
            exits.add(last)
        return exits

    def step(self, states: Iterable[int], char: str | None) -> frozenset[int]:
        """Positions reachable by one character (``None``: any character)."""
        return frozenset(q for p in states for q in self.follow[p] if char is None or self.accepts[q](char))

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        """Positions reachable by any number of characters (the states themselves included)."""
        return frozenset().union(*map(self._reachable, states))

    def _reachable(self, state: int) -> frozenset[int]:
        reachable = self._reach.get(state)
        if reachable is None:
            seen = {state}
            todo = [state]
            while todo:
                for q in self.follow[todo.pop()]:
                    if q not in seen:
                        seen.add(q)
                        todo.append(q)
            reachable = self._reach[state] = frozenset(seen)
        return reachable


def _resource_automaton(*, collections: bool, aliases: bool) -> _Automaton:
    arns = _Automaton()
    tails = arns.literal({_START}, "acs:kms:")
    tails = arns.repeat(tails, _REGION_CHAR, 1, None)
    tails = arns.literal(tails, ":")
    tails = arns.repeat(tails, _DIGITS.__contains__, 1, None)
    tails = arns.literal(tails, ":")
    key = arns.literal(tails, "key")
    key_id = arns.literal(key, "/")
    for length, dash in ((8, "-"), (4, "-"), (4, "-"), (4, "-"), (12, "")):
        key_id = arns.literal(arns.repeat(key_id, _HEX_DIGITS.__contains__, length, length), dash)
    final = set(key_id)
    if collections:
        final |= key
    if aliases:
        alias = arns.literal(tails, "alias")
        final |= arns.repeat(arns.literal(alias, "/"), _ALIAS_CHARS.__contains__, 1, MAX_ALIAS_NAME_CHARS)
        if collections:
            final |= alias
    arns.final = frozenset(final)
    return arns


_RESOURCES = _resource_automaton(collections=True, aliases=True)  # every ARN a call can touch
_KEY_ARNS = _resource_automaton(collections=False, aliases=False)  # the ARNs Decrypt and ReEncryptFrom touch


def _mismatch(pattern: str, arns: _Automaton) -> str | None:
    """None when ``pattern`` matches some word of ``arns``; else where it goes wrong, in words.

    The product of the pattern with ``arns``, run over the pattern: the set of ``arns`` positions the pattern
    read so far can have led to (a '*' leads to everything reachable).  Linear in the pattern's length."""
    states: frozenset[int] = frozenset({_START})
    for index, char in enumerate(pattern):
        if char == "*":
            states = arns.closure(states)
        else:
            states = arns.step(states, None if char == "?" else char)
        if not states:
            return f"no ARN starts like {pattern[:index + 1]!r}"
    return None if states & arns.final else "it ends before any ARN does"


def _pattern_automaton(patterns: Iterable[str]) -> _Automaton:
    """The words any of ``patterns`` matches (case-sensitively)."""
    union = _Automaton()
    final: set[int] = set()
    for pattern in patterns:
        tails = {_START}
        for char in pattern:
            if char == "*":
                star = union.position(tails, _ANY)
                union.follow[star].append(star)
                tails = tails | {star}
            elif char == "?":
                tails = {union.position(tails, _ANY)}
            else:
                tails = union.literal(tails, char)
        final |= tails
    union.final = frozenset(final)
    return union


_CLASSES: tuple[Callable[[str], bool], ...] = (
    _REGION_CHAR, _DIGITS.__contains__, _HEX_DIGITS.__contains__, _ALIAS_CHARS.__contains__)
# All of ASCII, in the order an example should prefer its characters.
_CANDIDATES = (string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation + " "
               + "".join(map(chr, [*range(32), 127])))
MAX_WITNESS_STATES = 20000


def _witness(within: _Automaton, inside: Sequence[_Automaton], outside: _Automaton) -> str | bool:
    """The shortest word of ``within`` that every automaton of ``inside`` accepts and ``outside`` does not,
    or False when there is none; True when the search gave up (MAX_WITNESS_STATES) without deciding.

    Breadth-first search over the product of all of them, each tracked as its set of positions (the subset
    construction, so that "``outside`` does not accept" is exact).  The alphabet is infinite but only a few
    characters behave differently: each literal of any automaton, and one other character per combination of
    the ARN character classes it is in (every character that is neither ASCII nor a literal behaves like the
    first such one after U+00FF)."""
    automata = (within, *inside, outside)
    literals = set().union(*(a.literals for a in automata))
    alphabet = sorted(literals, key=lambda char: (_CANDIDATES.find(char), char))
    other = next(chr(code) for code in itertools.count(0x100) if chr(code) not in literals)
    kinds = set()
    for char in _CANDIDATES + other:
        kind = tuple(accepts(char) for accepts in _CLASSES)
        if char not in literals and kind not in kinds:
            kinds.add(kind)
            alphabet.append(char)
    start = tuple(frozenset({_START}) for _ in automata)
    seen = {start}
    queue = deque([(start, "")])
    while queue:
        states, word = queue.popleft()
        *needed, excluded = states
        if all(s & a.final for s, a in zip(needed, automata, strict=False)) and not excluded & outside.final:
            return word
        for char in alphabet:
            following = tuple(a.step(s, char) for s, a in zip(states, automata, strict=True))
            if all(following[:-1]) and following not in seen:
                if len(seen) >= MAX_WITNESS_STATES:
                    return True
                seen.add(following)
                queue.append((following, word + char))
    return False


# --- parsing ------------------------------------------------------------------------------------------------


def _patterns(statement: dict[str, object], key: str, index: int) -> tuple[str, ...]:
    """A string or a non-empty list of non-empty strings, as a tuple."""
    where = f"Statement {index}: {key}"
    if key not in statement:
        raise PolicyError(f"Statement {index}: {key} is missing.")
    value = statement[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise PolicyError(f"{where} must be a string or a list of strings.")
    if not items:
        raise PolicyError(f"{where} must not be empty.")
    for item in items:
        if not isinstance(item, str):
            raise PolicyError(f"{where} must contain only strings, not {json.dumps(item)}.")
        if not item:
            raise PolicyError(f"{where} must not contain an empty string.")
    return tuple(items)


def _check_action(action: str, index: int, check_names: bool) -> None:
    """RAM's form (``*`` or ``kms:...``), and some KMS action must match."""
    if action != "*" and action[: len(ACTION_PREFIX)].lower() != ACTION_PREFIX:
        raise PolicyError(f"Statement {index}: Action {action!r} must be '*' or start with '{ACTION_PREFIX}'.")
    if not check_names:
        return
    if "*" in action or "?" in action:
        pattern = Wildcard(action, ignore_case=True)
        if not any(pattern.matches(name) for name in _QUALIFIED_ACTIONS):
            raise PolicyError(f"Statement {index}: Action {action!r} matches no KMS action.")
        return
    if action.lower() in _LOWERCASE_ACTIONS:
        return
    close = difflib.get_close_matches(action.lower(), _LOWERCASE_ACTIONS, n=1)
    hint = f" (did you mean {_LOWERCASE_ACTIONS[close[0]]!r}?)" if close else ""
    raise PolicyError(f"Statement {index}: Action {action!r} is not a KMS action{hint}.")


def _check_resource(resource: str, index: int, check_names: bool) -> None:
    """RAM's form (``*`` or an ARN), and some ARN this service checks must match."""
    if resource != "*" and not resource.startswith("acs:"):
        raise PolicyError(f"Statement {index}: Resource {resource!r} must be '*' or an ARN starting with 'acs:'.")
    if not check_names:
        return
    where = _mismatch(resource, _RESOURCES)
    if where is None:
        return
    raise PolicyError(
        f"Statement {index}: Resource {resource!r} can match no KMS resource ({where}); the ARNs are "
        "acs:kms:<region>:<account>:key/<key-id> and ...:alias/<alias-name>, and ...:key or ...:alias for calls "
        "on no particular key, with * and ? as wildcards."
    )


def _statement(raw: object, index: int, check_names: bool) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError(f"Statement {index} must be a JSON object.")
    unknown = sorted(set(raw) - _STATEMENT_KEYS)
    if "Condition" in unknown:
        raise PolicyError(f"Statement {index}: conditions are not supported (remove the Condition key).")
    if unknown:
        raise PolicyError(
            f"Statement {index}: unsupported key(s) {', '.join(unknown)}; only Effect, Action and Resource are allowed."
        )
    effect = raw.get("Effect")
    if effect not in _EFFECTS:
        raise PolicyError(f'Statement {index}: Effect must be "Allow" or "Deny", not {json.dumps(effect)}.')
    actions = _patterns(raw, "Action", index)
    resources = _patterns(raw, "Resource", index)
    for action in actions:
        _check_action(action, index, check_names)
    for resource in resources:
        _check_resource(resource, index, check_names)
    return Statement(effect=effect, actions=actions, resources=resources)


def parse_policy(text: str, *, check_names: bool = True) -> Policy:
    """Validate a policy document strictly; raise :class:`PolicyError` saying what is wrong.

    ``check_names=False`` is for a document stored before names were checked (``load_stored_policy``)."""
    if not isinstance(text, str):
        raise PolicyError("The policy document must be a JSON string.")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise PolicyError(f"The policy document exceeds {MAX_POLICY_BYTES} bytes.")
    try:
        doc = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        raise PolicyError(f"The policy document is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PolicyError("The policy document must be a JSON object.")
    unknown = sorted(set(doc) - _DOCUMENT_KEYS)
    if unknown:
        raise PolicyError(f"Unsupported key(s) {', '.join(unknown)}; a policy has only Version and Statement.")
    if doc.get("Version") != POLICY_VERSION:
        raise PolicyError(f'Version must be the string "{POLICY_VERSION}", not {json.dumps(doc.get("Version"))}.')
    if "Statement" not in doc:
        raise PolicyError("Statement is missing.")
    raw = doc["Statement"]
    # RAM accepts a single statement object in place of a list of one.
    raw_statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raw_statements, list):
        raise PolicyError("Statement must be a list of statement objects.")
    if not raw_statements:
        raise PolicyError("Statement must not be empty.")
    statements = tuple(_statement(item, index, check_names) for index, item in enumerate(raw_statements, start=1))
    canonical = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
    return Policy(statements=statements, document=canonical)


def load_stored_policy(text: str) -> Policy:
    """A policy as the store holds it.  Documents stored before actions and resources were checked against
    what exists still load, meaning what they meant then (a misspelt name matches nothing), so that upgrading
    changes no access key's rights; ``hsmkms doctor`` reports them (``stored_policy_problem``)."""
    return parse_policy(text, check_names=False)


def stored_policy_problem(text: str) -> str | None:
    """Why a stored document would be refused today (None when it would be accepted)."""
    try:
        parse_policy(text)
    except PolicyError as exc:
        return str(exc)
    return None


# --- warnings -----------------------------------------------------------------------------------------------


def policy_warnings(policy: Policy) -> list[str]:
    """What a valid policy lets a caller do that its author probably did not mean (shown when it is stored).

    A Deny on kms:Decrypt is no Deny while kms:ReEncryptFrom is allowed on the same key: the caller
    re-encrypts the ciphertext under a key it may decrypt with, then decrypts it there.  For each statement
    that denies Decrypt and each that allows ReEncryptFrom, this looks for a key ARN that both match and no
    statement denying ReEncryptFrom does (exactly, with the same automata as validation; see ``_witness``).
    """
    warnings = _alias_only_decrypt_denies(policy)
    denies_from = [s for s in policy.statements if s.effect == "Deny" and s.matches_action(RE_ENCRYPT_HALVES[0])]
    outside = _pattern_automaton(r for s in denies_from for r in s.resources)
    for deny_index, deny in enumerate(policy.statements, start=1):
        if deny.effect != "Deny" or not deny.matches_action(ACTION_PREFIX + "Decrypt"):
            continue
        denied = _pattern_automaton(deny.resources)
        for allow_index, allow in enumerate(policy.statements, start=1):
            if allow.effect != "Allow" or not allow.matches_action(RE_ENCRYPT_HALVES[0]):
                continue
            found = _witness(_KEY_ARNS, [denied, _pattern_automaton(allow.resources)], outside)
            if found is False:
                continue
            example = "" if found is True else f" (for example {found})"
            warnings.append(
                f"Statement {deny_index} denies kms:Decrypt, but statement {allow_index} still allows "
                f"kms:ReEncryptFrom on some of the same keys{example}. A caller can ReEncrypt a ciphertext of such "
                "a key under a key it may decrypt with, then Decrypt it there, which gets around the Deny. "
                "Deny kms:ReEncrypt (or kms:ReEncryptFrom) on those keys too."
            )
            break
    return warnings


def _alias_only_decrypt_denies(policy: Policy) -> list[str]:
    """A Deny on kms:Decrypt that can match no key ARN denies no Decrypt: a ciphertext names its key, never
    an alias, so Decrypt is checked on the key ARN alone."""
    warnings = []
    for index, statement in enumerate(policy.statements, start=1):
        if statement.effect != "Deny" or not statement.matches_action(ACTION_PREFIX + "Decrypt"):
            continue
        if all(_mismatch(resource, _KEY_ARNS) is not None for resource in statement.resources):
            warnings.append(
                f"Statement {index} denies kms:Decrypt only on resources that are not keys (aliases, or the "
                "account), so it denies no Decrypt: a ciphertext names its key, and Decrypt is checked on the "
                "key's ARN. Name the key ARN (acs:kms:<region>:<account>:key/<key-id>) to deny it."
            )
    return warnings


ALLOW_ALL = parse_policy('{"Version": "1", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}')
"""The policy of an access key that has none: every KMS action on every resource."""
