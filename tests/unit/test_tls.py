"""The development CA and server certificate: contents, permissions, reuse, renewal and a real TLS handshake."""

from __future__ import annotations

import datetime
import fcntl
import http.server
import ipaddress
import os
import ssl
import stat
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from hsmkms.tls import DevCertificates, ensure_dev_certificates

WAIT = 5.0
def now() -> datetime.datetime:
    # Read when used: a module-level "now" goes stale when the suite reaches this file minutes after collection.
    return datetime.datetime.now(datetime.timezone.utc)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify(certs: DevCertificates, name: x509.DNSName | x509.IPAddress, when: datetime.datetime | None = None) -> None:
    verifier = PolicyBuilder().store(Store([cert(certs.ca_cert)])).time(when or now()).build_server_verifier(name)
    verifier.verify(cert(certs.server_cert), [])


def serials(certs: DevCertificates) -> tuple[int, int]:
    return cert(certs.ca_cert).serial_number, cert(certs.server_cert).serial_number


@pytest.fixture
def certs(tmp_path: Path, loose_umask) -> DevCertificates:
    return ensure_dev_certificates(tmp_path / "tls")


# --- what is created -------------------------------------------------------------------------------------


def test_files_exist_with_private_keys_0600(certs: DevCertificates, tmp_path: Path):
    assert certs == DevCertificates(
        ca_cert=tmp_path / "tls" / "ca.pem",
        ca_key=tmp_path / "tls" / "ca-key.pem",
        server_cert=tmp_path / "tls" / "server.pem",
        server_key=tmp_path / "tls" / "server-key.pem",
    )
    assert mode(certs.ca_key) == 0o600
    assert mode(certs.server_key) == 0o600
    assert mode(certs.ca_cert) == 0o644
    assert mode(certs.server_cert) == 0o644
    assert mode(tmp_path / "tls") == 0o700
    leftovers = [p.name for p in (tmp_path / "tls").iterdir()]
    assert sorted(leftovers) == [".lock", "ca-key.pem", "ca.pem", "server-key.pem", "server.pem"]


def test_keys_are_p256_and_match_their_certificates(certs: DevCertificates):
    for cert_path, key_path in ((certs.ca_cert, certs.ca_key), (certs.server_cert, certs.server_key)):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert key.public_key() == cert(cert_path).public_key()


def test_server_certificate_verifies_against_the_ca(certs: DevCertificates):
    verify(certs, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    verify(certs, x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        verify(certs, x509.DNSName("example.com"))
    with pytest.raises(VerificationError):
        verify(certs, x509.IPAddress(ipaddress.ip_address("127.0.0.2")))


def test_server_certificate_does_not_verify_against_another_ca(certs: DevCertificates, tmp_path: Path):
    other = ensure_dev_certificates(tmp_path / "other")
    verifier = PolicyBuilder().store(Store([cert(other.ca_cert)])).build_server_verifier(x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        verifier.verify(cert(certs.server_cert), [])


def test_ca_certificate_profile(certs: DevCertificates):
    ca = cert(certs.ca_cert)
    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "hsmkms development CA"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(days=3650)
    assert ca.not_valid_before_utc <= now() + datetime.timedelta(minutes=1)


def test_server_certificate_profile(certs: DevCertificates):
    server = cert(certs.server_cert)
    assert server.issuer == cert(certs.ca_cert).subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert server.not_valid_after_utc - server.not_valid_before_utc == datetime.timedelta(days=825)


def test_ip_like_names_become_ip_sans_and_others_dns_sans(tmp_path: Path):
    certs = ensure_dev_certificates(tmp_path, ["::1", "10.1.2.3", "KMS.Internal.", "kms-1.example.com", "::1"])
    san = cert(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1"), ipaddress.ip_address("10.1.2.3")]
    assert san.get_values_for_type(x509.DNSName) == ["kms.internal", "kms-1.example.com"]


@pytest.mark.parametrize("hostnames", [[], [""], ["*.example.com"], ["bücher.example"], ["a b"], ["-x.example"]])
def test_bad_hostnames_are_refused(tmp_path: Path, hostnames):
    with pytest.raises(ValueError):
        ensure_dev_certificates(tmp_path, hostnames)


def test_a_single_string_is_not_a_list_of_hostnames(tmp_path: Path):
    with pytest.raises(TypeError):
        ensure_dev_certificates(tmp_path, "localhost")


def test_naive_time_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="timezone-aware"):
        ensure_dev_certificates(tmp_path, now=datetime.datetime(2030, 1, 1))


# --- reuse and renewal ------------------------------------------------------------------------------------


def test_second_call_reuses_everything(certs: DevCertificates, tmp_path: Path):
    before = {p: p.read_bytes() for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key)}
    again = ensure_dev_certificates(tmp_path / "tls")
    assert again == certs
    assert {p: p.read_bytes() for p in before} == before


def test_a_subset_of_the_names_reuses_the_certificate(certs: DevCertificates, tmp_path: Path):
    before = serials(certs)
    assert serials(ensure_dev_certificates(tmp_path / "tls", ["localhost"])) == before


def test_new_hostname_regenerates_only_the_server_certificate(certs: DevCertificates, tmp_path: Path):
    ca_serial, server_serial = serials(certs)
    again = ensure_dev_certificates(tmp_path / "tls", ["127.0.0.1", "localhost", "kms.internal"])
    assert serials(again)[0] == ca_serial  # clients that trust ca.pem keep working
    assert serials(again)[1] != server_serial
    verify(again, x509.DNSName("kms.internal"))
    assert mode(again.server_key) == 0o600


def test_server_certificate_expiring_within_30_days_is_renewed(tmp_path: Path):
    issued = now() - datetime.timedelta(days=800)  # expires in 25 days
    old = serials(ensure_dev_certificates(tmp_path, now=issued))
    renewed = ensure_dev_certificates(tmp_path)
    assert serials(renewed)[0] == old[0]
    assert serials(renewed)[1] != old[1]
    assert cert(renewed.server_cert).not_valid_after_utc > now() + datetime.timedelta(days=800)
    verify(renewed, x509.DNSName("localhost"))


def test_server_certificate_with_more_than_30_days_left_is_kept(tmp_path: Path):
    issued = now() - datetime.timedelta(days=794)  # 31 days (less the 5 minute backdate) left
    old = serials(ensure_dev_certificates(tmp_path, now=issued))
    assert serials(ensure_dev_certificates(tmp_path)) == old


def test_expiring_ca_regenerates_everything(tmp_path: Path):
    old = serials(ensure_dev_certificates(tmp_path, now=now() - datetime.timedelta(days=3640)))
    renewed = ensure_dev_certificates(tmp_path)
    assert serials(renewed)[0] != old[0]
    assert serials(renewed)[1] != old[1]
    verify(renewed, x509.DNSName("localhost"))


def test_damaged_or_missing_files_are_replaced(certs: DevCertificates, tmp_path: Path):
    ca_serial, server_serial = serials(certs)
    # A server key that does not belong to the certificate: new server pair, same CA.
    certs.server_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    fixed = ensure_dev_certificates(tmp_path / "tls")
    assert serials(fixed)[0] == ca_serial and serials(fixed)[1] != server_serial
    verify(fixed, x509.DNSName("localhost"))
    # No CA key: a new CA, and a server certificate that chains to it.
    fixed.ca_key.unlink()
    rebuilt = ensure_dev_certificates(tmp_path / "tls")
    assert serials(rebuilt)[0] != ca_serial
    verify(rebuilt, x509.DNSName("localhost"))
    # A truncated certificate.
    rebuilt.server_cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    verify(ensure_dev_certificates(tmp_path / "tls"), x509.DNSName("localhost"))


def test_reused_keys_with_loose_mode_are_tightened(certs: DevCertificates, tmp_path: Path):
    before = serials(certs)
    certs.ca_key.chmod(0o644)
    certs.server_key.chmod(0o640)
    assert serials(ensure_dev_certificates(tmp_path / "tls")) == before
    assert mode(certs.ca_key) == 0o600
    assert mode(certs.server_key) == 0o600


def test_callers_are_serialised_by_the_lock_file(tmp_path: Path):
    directory = tmp_path / "tls"
    directory.mkdir()
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process in the middle of generating would
        caller = threading.Thread(target=ensure_dev_certificates, args=(directory,))
        caller.start()
        caller.join(0.2)
        assert caller.is_alive(), "did not wait for the lock"
        assert not (directory / "ca.pem").exists()
    finally:
        os.close(fd)
    caller.join(WAIT)
    assert not caller.is_alive()
    assert (directory / "server.pem").exists()


def test_concurrent_callers_agree_on_one_set(tmp_path: Path):
    results: list[DevCertificates] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_dev_certificates(tmp_path / "tls"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert not errors and len(results) == 4
    verify(results[0], x509.DNSName("localhost"))


# --- a real handshake -------------------------------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server dispatches to
        body = b"hello over tls"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def https_url(certs: DevCertificates):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = certs.server_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://{{host}}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT)
        assert not thread.is_alive()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_client_trusting_the_ca_connects(certs: DevCertificates, https_url: str, host: str):
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    with urllib.request.urlopen(https_url.format(host=host), context=context, timeout=WAIT) as response:
        assert response.status == 200
        assert response.read() == b"hello over tls"
    with urllib.request.urlopen(https_url.format(host=host), context=certs.client_context(), timeout=WAIT) as r:
        assert r.read() == b"hello over tls"


def test_https_client_without_the_ca_is_refused(https_url: str):
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(https_url.format(host="127.0.0.1"), context=ssl.create_default_context(),
                               timeout=WAIT)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)


def test_https_client_trusting_another_ca_is_refused(https_url: str, tmp_path: Path):
    other = ensure_dev_certificates(tmp_path / "other")
    with pytest.raises(urllib.error.URLError) as info:
        urllib.request.urlopen(https_url.format(host="127.0.0.1"), context=other.client_context(), timeout=WAIT)
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
