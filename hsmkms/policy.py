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

Parsing is strict, because a policy that silently means less (or more) than its author thinks is worse than
one that is refused: unknown keys, ``Condition`` blocks, ``NotAction`` and the like are errors, not ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hsmkms.jsonutil import loads_strict

MAX_POLICY_BYTES = 32768
POLICY_VERSION = "1"
ACTION_PREFIX = "kms:"
MAX_REMEMBERED_DECISIONS = 16384  # per policy; the same few (action, key) pairs repeat on the hot path

_STATEMENT_KEYS = frozenset({"Effect", "Action", "Resource"})
_DOCUMENT_KEYS = frozenset({"Version", "Statement"})
_EFFECTS = ("Allow", "Deny")


class PolicyError(ValueError):
    """A policy document that cannot be accepted; the message says what to fix."""


def compile_pattern(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    """Turn a RAM wildcard pattern into an anchored regex; every other character is literal."""
    body = re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".")
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile(body + r"\Z", flags)


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`Policy.evaluate`; ``denied_resource`` names what the error message reports."""

    allowed: bool
    denied_resource: str | None = None


@dataclass(frozen=True)
class Statement:
    """One statement with its patterns compiled once, at parse time."""

    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    _action_res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _resource_res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_action_res", tuple(compile_pattern(a, ignore_case=True) for a in self.actions))
        object.__setattr__(self, "_resource_res", tuple(compile_pattern(r) for r in self.resources))

    def matches_action(self, action: str) -> bool:
        return any(regex.match(action) for regex in self._action_res)

    def matches_resource(self, resource: str) -> bool:
        return any(regex.match(resource) for regex in self._resource_res)


@dataclass(frozen=True)
class Policy:
    """A validated policy document: compiled statements plus the canonical text of the original."""

    statements: tuple[Statement, ...]
    document: str  # canonical JSON of the document as given; see to_json()
    _decisions: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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
        # A policy never changes (a new document is a new Policy), so its decisions can be remembered.
        remembered = (action, *resources)
        decision = self._decisions.get(remembered)
        if decision is None:
            if len(self._decisions) >= MAX_REMEMBERED_DECISIONS:
                self._decisions.clear()
            decision = self._decisions[remembered] = self._decide(action, resources)
        return decision

    def _decide(self, action: str, resources: Sequence[str]) -> Decision:
        qualified = action if action[: len(ACTION_PREFIX)].lower() == ACTION_PREFIX else ACTION_PREFIX + action
        relevant = [s for s in self.statements if s.matches_action(qualified)]
        denies = [s for s in relevant if s.effect == "Deny"]
        allows = [s for s in relevant if s.effect == "Allow"]
        for resource in resources:
            if any(s.matches_resource(resource) for s in denies):
                return Decision(False, resource)
        for resource in resources:
            if not any(s.matches_resource(resource) for s in allows):
                return Decision(False, resource)
        return Decision(True, None)


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


def _statement(raw: object, index: int) -> Statement:
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
    for action in actions:
        if action != "*" and action[: len(ACTION_PREFIX)].lower() != ACTION_PREFIX:
            raise PolicyError(f"Statement {index}: Action {action!r} must be '*' or start with '{ACTION_PREFIX}'.")
    resources = _patterns(raw, "Resource", index)
    for resource in resources:
        # A resource that is neither '*' nor an ARN can never match and is almost certainly a typo.
        if resource != "*" and not resource.startswith("acs:"):
            raise PolicyError(f"Statement {index}: Resource {resource!r} must be '*' or an ARN starting with 'acs:'.")
    return Statement(effect=effect, actions=actions, resources=resources)


def parse_policy(text: str) -> Policy:
    """Validate a policy document strictly; raise :class:`PolicyError` saying what is wrong."""
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
    statements = tuple(_statement(item, index) for index, item in enumerate(raw_statements, start=1))
    canonical = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)
    return Policy(statements=statements, document=canonical)


ALLOW_ALL = parse_policy('{"Version": "1", "Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}')
"""The policy of an access key that has none: every KMS action on every resource."""
