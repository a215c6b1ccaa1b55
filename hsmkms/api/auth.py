"""Request authentication: the two signature schemes the official clients use.

- V1, HMAC-SHA1 over the sorted, percent-encoded parameters, in the ``Signature`` parameter: the legacy
  Python SDK, the Node SDK, Terraform, and the Tea SDK with ``signature_algorithm='v2'``.
- V3, ``ACS3-HMAC-SHA256`` over a canonical request, in the ``Authorization`` header: the Tea SDKs' default.

The string builders are pure functions (pinned by the reference's known-answer vectors in the unit tests);
``Authenticator`` adds the checks that need state: the access key, the clock window and nonce replay.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from hsmkms.errors import (
    IllegalTimestamp,
    IncompleteSignature,
    InvalidParameter,
    InvalidTimeStampExpired,
    MissingParameter,
    SignatureDoesNotMatch,
    SignatureNonceUsed,
    StsTokenNotSupported,
)
from hsmkms.service.access_keys import Credential
from hsmkms.store.nonces import NonceStore

V3_ALGORITHM = "ACS3-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_NONCE_CHARS = 128
# Parameters whose values never go back to the client inside an error message.
SENSITIVE_PARAMETERS = frozenset({"Plaintext"})

# The HMAC state of each secret after its key, made once: a signature then only copies it (a third cheaper than
# keying HMAC afresh).  Emptied when full, like the timestamps.
_V1_MACS_KEPT = 64
_v1_macs: dict[str, hmac.HMAC] = {}
_TIMESTAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?Z\Z")
# Timestamps parsed lately (a handful of distinct seconds are in flight at any time); emptied when full.
_RECENT_TIMESTAMPS = 64
_recent_timestamps: dict[str | None, float] = {}
_V3_FIELD = re.compile(r"\s*(Credential|SignedHeaders|Signature)=([^,\s]*)\s*")


def same(expected: str, given: str) -> bool:
    """Constant-time comparison that any client text can go through (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*\Z")
_UNRESERVED_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.~-"
# str.translate tables for text seen as its UTF-8 bytes (one character 0-255 per byte, see _encode); a list
# is translate's fastest table. _PCT_TWICE is pct() applied twice: the '%' of each escape escaped as %25.
_PCT = [chr(b) if b in _UNRESERVED_BYTES else f"%{b:02X}" for b in range(256)]
_PCT_TWICE = [chr(b) if b in _UNRESERVED_BYTES else f"%25{b:02X}" for b in range(256)]


def _encode(text: str, table: list[str]) -> str:
    # The same text.encode("utf-8") as quote() did, so a lone surrogate raises the same UnicodeEncodeError.
    return text.encode("utf-8").decode("latin-1").translate(table)


def pct(text: str) -> str:
    """RFC 3986 encoding as both schemes define it: unreserved characters kept, the rest %XX upper-case."""
    if _UNRESERVED.match(text):  # most names and values: nothing to encode
        return text
    return _encode(text, _PCT)


# --- V1 ------------------------------------------------------------------------------------------------


def v1_string_to_sign(method: str, params: Mapping[str, str]) -> str:
    """``method&%2F&`` + pct(canonical query), the canonical query being ``pct(k)=pct(v)`` joined by '&'.

    Built in one pass: pct(pct(x)) for each name and value, joined by the separators' escapes %3D and %26.
    """
    unreserved = _UNRESERVED.match
    names = sorted(params)  # distinct keys: the order of sorted(params.items())
    plain_names = unreserved("".join(names))  # parameter names rarely need encoding: check them all at once
    parts = []
    for name in names:
        if name == "Signature":
            continue
        value = params[name]
        if not plain_names and not unreserved(name):
            name = _encode(name, _PCT_TWICE)
        if not unreserved(value):
            value = _encode(value, _PCT_TWICE)
        parts.append(f"{name}%3D{value}")
    return f"{method}&%2F&{'%26'.join(parts)}"


def v1_string_to_sign_as_sent(method: str, encoded: Sequence[str]) -> str:
    """The V1 string to sign built from the ``name=value`` fields as the client percent-encoded them (the
    query, and a form body), sorted, without the Signature field.

    It equals ``v1_string_to_sign`` of the decoded parameters when the client encoded every name and value as
    pct() does, as the official SDKs do; it is one sort and three replacements, without a pct() of each part.
    It never equals the string to sign of other parameters: each side is the same reversible escape of '%', '&'
    and '=' applied to '&'-joined fields, so equal strings mean that every field as sent is exactly
    ``pct(name)=pct(value)`` of a signed parameter, which decodes to that parameter.  Fields encoded otherwise
    ('+' for a space, a lower-case escape, an unescaped ':') make it differ, and the caller then checks the
    canonical string.
    """
    fields = "&".join(encoded).split("&")
    fields.sort()  # in C: empty fields first, and the Signature field, if any, where bisect finds it
    at = bisect.bisect_left(fields, "Signature=")
    while at < len(fields) and fields[at].startswith("Signature="):
        del fields[at]
    first = bisect.bisect_right(fields, "")
    return f"{method}&%2F&" + "&".join(fields[first:]).replace("%", "%25").replace("&", "%26").replace("=", "%3D")


def v1_signature(secret: str, string_to_sign: str) -> str:
    mac = _v1_macs.get(secret)
    if mac is None:
        if len(_v1_macs) >= _V1_MACS_KEPT:
            _v1_macs.clear()
        mac = _v1_macs[secret] = hmac.new(f"{secret}&".encode(), digestmod="sha1")
    mac = mac.copy()
    mac.update(string_to_sign.encode("utf-8"))
    return base64.b64encode(mac.digest()).decode("ascii")


# --- V3 ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class V3Authorization:
    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def parse_v3_authorization(value: str) -> V3Authorization:
    algorithm, _, rest = value.partition(" ")
    if algorithm != V3_ALGORITHM:
        raise IncompleteSignature(f"Unsupported signature algorithm; use {V3_ALGORITHM}.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _V3_FIELD.fullmatch(part)
        if not match or match.group(1) in fields:
            raise IncompleteSignature()
        fields[match.group(1)] = match.group(2)
    if set(fields) != {"Credential", "SignedHeaders", "Signature"} or not all(fields.values()):
        raise IncompleteSignature()
    return V3Authorization(
        access_key_id=fields["Credential"],
        signed_headers=tuple(fields["SignedHeaders"].lower().split(";")),
        signature=fields["Signature"].lower(),
    )


def v3_canonical_request(method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
                         signed_headers: Sequence[str], payload_hash: str) -> str:
    canonical_query = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed_headers)
    return "\n".join(
        [method, path, canonical_query, canonical_headers, ";".join(signed_headers), payload_hash]
    )


def v3_string_to_sign(canonical_request: str) -> str:
    return f"{V3_ALGORITHM}\n{hashlib.sha256(canonical_request.encode('utf-8')).hexdigest()}"


def v3_signature(secret: str, string_to_sign: str) -> str:
    return hmac.new(secret.encode(), string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


# --- checks with state ---------------------------------------------------------------------------------


def parse_timestamp(value: str | None) -> float:
    """``YYYY-MM-DDThh:mm:ss[.fff]Z`` (UTC) as unix seconds; IllegalTimestamp when absent or malformed."""
    seconds = _recent_timestamps.get(value)  # requests signed in the same second carry the same text
    if seconds is not None:
        return seconds
    match = _TIMESTAMP.match(value or "")
    if not match:
        raise IllegalTimestamp()
    try:
        seconds = datetime(*map(int, match.groups()), tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise IllegalTimestamp() from None
    if len(_recent_timestamps) >= _RECENT_TIMESTAMPS:
        _recent_timestamps.clear()
    _recent_timestamps[value] = seconds
    return seconds


@dataclass(slots=True)
class SignedRequest:
    """What authentication reads from an HTTP request."""

    method: str
    path: str
    query: Sequence[tuple[str, str]]  # decoded URL query pairs (V3 signs only these)
    params: Mapping[str, str]  # query and form body merged (V1 signs all of them)
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    encoded: tuple[str, ...] = ()  # the texts ``params`` were decoded from, as sent (the query, a form body)


class Authenticator:
    def __init__(self, credentials: Callable[[str], Credential], nonces: NonceStore,
                 clock: Callable[[], float], skew_seconds: int):
        self._credentials = credentials
        self._nonces = nonces
        self._clock = clock
        self._skew = skew_seconds

    def authenticate(self, request: SignedRequest) -> Credential:
        """Verify the request's signature; return the credential (access key and its policy) that signed it."""
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("ACS3-"):
            return self._v3(request, authorization)
        if "Signature" in request.params:
            return self._v1(request)
        raise MissingParameter("Signature")

    def _v1(self, request: SignedRequest) -> Credential:
        params = request.params
        if "SecurityToken" in params:
            raise StsTokenNotSupported()
        if params.get("SignatureMethod") != "HMAC-SHA1":
            raise IncompleteSignature("SignatureMethod must be HMAC-SHA1.")
        if params.get("SignatureVersion") != "1.0":
            raise IncompleteSignature("SignatureVersion must be 1.0.")
        access_key_id = params.get("AccessKeyId") or _missing("AccessKeyId")
        timestamp = parse_timestamp(params.get("Timestamp"))
        nonce = params.get("SignatureNonce") or _missing("SignatureNonce")
        credential = self._credentials(access_key_id)
        if not _v1_signed(request, credential.secret):
            redacted = {k: ("***" if k in SENSITIVE_PARAMETERS else v) for k, v in params.items()}
            raise SignatureDoesNotMatch(v1_string_to_sign(request.method, redacted))
        self._check_fresh(access_key_id, timestamp, nonce)
        return credential

    def _v3(self, request: SignedRequest, authorization: str) -> Credential:
        headers = request.headers
        if "x-acs-security-token" in headers:
            raise StsTokenNotSupported()
        parsed = parse_v3_authorization(authorization)
        timestamp = parse_timestamp(headers.get("x-acs-date"))
        nonce = headers.get("x-acs-signature-nonce") or _missing("x-acs-signature-nonce")
        payload_hash = headers.get("x-acs-content-sha256") or _missing("x-acs-content-sha256")
        unsigned = {"host", *(name for name in headers if name.startswith("x-acs-"))} - set(parsed.signed_headers)
        if request.body and "content-type" not in parsed.signed_headers:
            # Content-Type decides whether the body's parameters are read at all: unsigned, it could be changed
            # in transit to drop them (an EncryptionContext, say) while the signature still held.
            unsigned.add("content-type")
        if unsigned:
            raise IncompleteSignature(f"SignedHeaders must include {', '.join(sorted(unsigned))}.")
        credential = self._credentials(parsed.access_key_id)
        canonical = v3_canonical_request(request.method, request.path, request.query, headers,
                                         parsed.signed_headers, payload_hash)
        string_to_sign = v3_string_to_sign(canonical)
        if not same(v3_signature(credential.secret, string_to_sign), parsed.signature):
            raise SignatureDoesNotMatch(string_to_sign.replace("\n", "\\n"))
        # The signature covers the declared hash; the body must match it.
        if not same(hashlib.sha256(request.body).hexdigest(), payload_hash.lower()):
            raise SignatureDoesNotMatch("x-acs-content-sha256 does not match the request body")
        self._check_fresh(parsed.access_key_id, timestamp, nonce)
        return credential

    def _check_fresh(self, access_key_id: str, timestamp: float, nonce: str) -> None:
        now = self._clock()
        if abs(now - timestamp) > self._skew:
            raise InvalidTimeStampExpired()
        if len(nonce) > MAX_NONCE_CHARS:
            raise InvalidParameter("SignatureNonce", f"It must not exceed {MAX_NONCE_CHARS} characters.")
        # Remembered until the request's timestamp leaves the window: no replay can pass the clock after.
        if not self._nonces.claim(access_key_id, nonce, now, timestamp + self._skew):
            raise SignatureNonceUsed()
        # A claim that waited (for the nonce store's lock) until the request left its window is refused: the
        # store may have let another worker reuse an expired slot meanwhile, judged by a later clock.
        if self._clock() - timestamp > self._skew:
            raise InvalidTimeStampExpired()


def _v1_signed(request: SignedRequest, secret: str) -> bool:
    """Whether the V1 Signature is right.  The string to sign built from the fields as sent matches for clients
    that encode canonically (see v1_string_to_sign_as_sent); the canonical one is built only when it does not."""
    signature = request.params["Signature"]
    if request.encoded and same(v1_signature(secret, v1_string_to_sign_as_sent(request.method, request.encoded)),
                                signature):
        return True
    return same(v1_signature(secret, v1_string_to_sign(request.method, request.params)), signature)


def _missing(name: str):
    raise MissingParameter(name)
