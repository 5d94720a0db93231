"""TLS for `--serve` on a network address (browsers give the camera only to secure pages): a
self-signed certificate made and reused, or one given, loaded into a server context.

The certificate is made with `cryptography` (a declared dependency, except on 32-bit ARM) or,
where it is not installed, the `openssl` command.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
from pathlib import Path

from dermedge.edge.serve_errors import ServeError

SUBJECT = "dermedge edge-classify (self-signed)"
VALID_DAYS = 365
RENEW_BEFORE_S = 7 * 86400  # a cached certificate this close to expiry is made anew


def cert_names(cert: str | os.PathLike[str]) -> set[str]:
    """The DNS names in a certificate's subjectAltName (needs `cryptography`; else none)."""
    try:
        from cryptography import x509
    except ImportError:
        return set()
    try:
        c = x509.load_pem_x509_certificate(Path(cert).read_bytes())
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return set()
    return {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}


def _cert_dir() -> Path:
    """Where self-signed certificates are kept between runs (a private temp folder if no cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "dermedge" / "tls"
    try:
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        return d
    except OSError:
        return Path(tempfile.mkdtemp(prefix="dermedge-tls-"))


def _san_names(host: str) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a certificate for `host` should name: loopback, machine, host."""
    dns = {"localhost"}
    ips = {"127.0.0.1", "::1"}
    names = [host] if host not in ("0.0.0.0", "::", "") else []
    try:
        hostname = socket.gethostname()
        names.append(hostname)
        for info in socket.getaddrinfo(hostname, None):
            names.append(str(info[4][0]))
    except OSError:
        pass
    for n in names:
        try:
            ips.add(str(ipaddress.ip_address(n.strip("[]").split("%")[0])))
        except ValueError:
            if n:
                dns.add(n)
    return sorted(dns), sorted(ips)


def _self_signed_cryptography(cert: Path, key: Path, dns: list[str], ips: list[str]) -> None:
    """Write a self-signed P-256 certificate and key with `cryptography` (ImportError without)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT)])
    now = _dt.datetime.now(_dt.timezone.utc)
    alt = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    server_auth = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    c = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(server_auth, critical=False)
        .sign(pk, hashes.SHA256())
    )
    key.write_bytes(
        pk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key, 0o600)
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))


def _self_signed_openssl(cert: Path, key: Path, dns: list[str], ips: list[str]) -> None:
    """Write a self-signed P-256 certificate and key with the `openssl` command."""
    exe = shutil.which("openssl")
    if not exe:
        raise ServeError(
            "--self-signed needs the `cryptography` package or the `openssl` command: "
            "pip install cryptography, or pass --tls-cert/--tls-key"
        )
    san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    cmd = [
        exe,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        str(VALID_DAYS),
        "-subj",
        f"/CN={SUBJECT}",
        "-addext",
        f"subjectAltName={san}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise ServeError(
            f"openssl could not make a certificate: {r.stderr.strip().splitlines()[-1:]}"
        )
    os.chmod(key, 0o600)


def _cert_expiry(cert: Path) -> float | None:
    """When a certificate expires (epoch seconds), via `cryptography` or `openssl`; None if unknown."""
    try:
        from cryptography import x509

        return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()
    except ImportError:
        pass
    cmd = ["openssl", "x509", "-enddate", "-noout", "-in", str(cert)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
        return ssl.cert_time_to_seconds(out.strip().split("=", 1)[1])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return None


def _reusable(cert: Path, key: Path) -> bool:
    """Whether a cached certificate and key load together and stay valid a while longer."""
    if not (cert.is_file() and key.is_file()):
        return False
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        expires = _cert_expiry(cert)
    except (ssl.SSLError, OSError, KeyError, ValueError, AttributeError):
        return False
    return expires is not None and expires - _dt.datetime.now().timestamp() > RENEW_BEFORE_S


def self_signed_certificate(host: str, directory: Path | None = None) -> tuple[Path, Path]:
    """A self-signed certificate for `host` (reused while valid), via `cryptography` or `openssl`."""
    d = directory or _cert_dir()
    dns, ips = _san_names(host)
    tag = hashlib.sha256(",".join(dns + ips).encode()).hexdigest()[:10]
    cert, key = d / f"self-signed-{tag}.crt", d / f"self-signed-{tag}.key"
    if _reusable(cert, key):
        return cert, key
    try:
        _self_signed_cryptography(cert, key, dns, ips)
    except ImportError:
        _self_signed_openssl(cert, key, dns, ips)
    return cert, key


def certificate_fingerprint(cert: str | os.PathLike[str]) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as browsers show it (AB:CD:...)."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    h = hashlib.sha256(der).hexdigest().upper()
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS 1.2+ server context for a certificate and key; ServeError if they do not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise ServeError(f"cannot load TLS certificate/key ({cert}, {key}): {e}") from e
    return ctx
