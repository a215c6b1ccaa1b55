"""A development certificate authority and a server certificate it signs, for serving HTTPS locally.

Alibaba Cloud SDKs default to HTTPS, so a development endpoint that speaks it lets clients run unchanged
apart from trusting ``ca.pem``.  This is for development and tests only: the CA key sits unencrypted next to
the certificates.  Production deployments use certificates from their own PKI.

:func:`ensure_dev_certificates` is idempotent.  It keeps what is present while it is sound (the CA valid for
30 more days; the server certificate chaining to it, valid for 30 more days and naming every requested
host), regenerates only the server certificate when that alone is stale (so ``ca.pem`` that clients already
trust stays valid), and regenerates everything otherwise.  The checks use cryptography's own X.509 path
validation, so "sound" means what a verifying client will think.  A lock file serialises concurrent callers
(several server workers starting at once).
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import re
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

CA_NAME = "hsmkms development CA"
CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)  # the longest validity Apple's TLS clients accept
MIN_REMAINING = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)  # tolerate a client clock slightly behind ours
DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost")

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")

KEY_MODE = 0o600
CERT_MODE = 0o644


@dataclass(frozen=True)
class DevCertificates:
    """Where the PEM files are: give ``ca_cert`` to clients, the server pair to the HTTPS server."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context using the server certificate and key."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the development CA (and only it)."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def san_entry(hostname: str) -> x509.IPAddress | x509.DNSName:
    """An IP address SAN for an IP-like name, a DNS name SAN otherwise (ASCII, no wildcard)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    name = hostname.lower().rstrip(".")
    if not _DNS_NAME.match(name):
        raise ValueError(f"{hostname!r} is neither an IP address nor a DNS name (ASCII A-labels, no wildcard)")
    return x509.DNSName(name)


def ensure_dev_certificates(directory: Path, hostnames: Sequence[str] = DEFAULT_HOSTNAMES, *,
                            now: datetime.datetime | None = None) -> DevCertificates:
    """Create, or reuse when still sound, the development CA and server certificate in ``directory``.

    ``now`` is for tests: it is the moment certificates are issued and checked at.
    """
    if isinstance(hostnames, str):
        raise TypeError("hostnames must be a sequence of names, not a string")
    names = list(dict.fromkeys(san_entry(h.strip()) for h in hostnames if h.strip()))
    if not names:
        raise ValueError("at least one hostname is needed")
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = DevCertificates(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
    )
    with _locked(directory / ".lock"):
        ca = _load_pair(paths.ca_cert, paths.ca_key)
        if ca is None or not _ca_is_sound(ca[0], moment):
            ca_cert, ca_key = _issue_ca(moment)
            _write_key(paths.ca_key, ca_key)
            _write_cert(paths.ca_cert, ca_cert)
        else:
            ca_cert, ca_key = ca
            paths.ca_key.chmod(KEY_MODE)  # a reused key, too, must not be readable by others
        server = _load_pair(paths.server_cert, paths.server_key)
        if server is None or not _server_is_sound(server[0], ca_cert, names, moment):
            server_cert, server_key = _issue_server(ca_cert, ca_key, names, moment)
            _write_key(paths.server_key, server_key)
            _write_cert(paths.server_cert, server_cert)
        else:
            paths.server_key.chmod(KEY_MODE)
    return paths


# --- checking what is there ----------------------------------------------------------------------------


def _load_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its private key, or None if either is missing, unreadable or they do not match."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    return cert, key


def _ca_is_sound(ca: x509.Certificate, moment: datetime.datetime) -> bool:
    if ca.subject != ca.issuer or not (ca.not_valid_before_utc <= moment and
                                       ca.not_valid_after_utc >= moment + MIN_REMAINING):
        return False
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _server_is_sound(cert: x509.Certificate, ca: x509.Certificate, names: Sequence[x509.GeneralName],
                     moment: datetime.datetime) -> bool:
    """True if a client would accept ``cert`` for every name, now and still in MIN_REMAINING."""
    store = Store([ca])
    for when in (moment, moment + MIN_REMAINING):
        policy = PolicyBuilder().store(store).time(when)
        for name in names:
            try:
                policy.build_server_verifier(name).verify(cert, [])
            except VerificationError:
                return False
    return True


# --- issuing -------------------------------------------------------------------------------------------


def _issue_ca(moment: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    start = moment - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_server(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[x509.GeneralName],
                  moment: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    first = names[0]
    common_name = str(first.value)
    start = moment - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


# --- files ---------------------------------------------------------------------------------------------


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a new file created with ``mode`` and rename it over ``path``: never a half-written PEM."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_atomically(path, pem, KEY_MODE)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
