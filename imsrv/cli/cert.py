"""``imsrv cert``: a self-signed certificate and its key for local TLS.

Writes ``imsrv.crt`` (PEM) and ``imsrv.key`` (PEM, unencrypted, mode 0600) into the
current directory (``--dir`` another), refusing to overwrite either unless ``--force``,
then prints what it wrote and the configuration lines that use them.  The certificate
names ``localhost``, ``127.0.0.1``, ``::1`` and this machine's host name (``--host`` adds
more, DNS names or IP addresses): a client checking host names accepts it for those once
it trusts the certificate itself (``imsrv chat --tls --ca-file imsrv.crt``, the SDK's
``Client(..., tls=True, ca_file="imsrv.crt")``).  For the internet, use a certificate of
a public CA instead (its chain and key in ``[tls] cert`` / ``key``).

Made with the ``cryptography`` package: an ECDSA P-256 key (fast handshakes, small), the
certificate valid :data:`DAYS` days, its own issuer (it is both the server's certificate
and the one the clients trust), with the extensions strict verifiers want (basic
constraints, key usage, server auth, key identifiers).
"""
import datetime
import ipaddress
import os
import socket
import sys

CERT_FILE = "imsrv.crt"
KEY_FILE = "imsrv.key"
DAYS = 825   # the longest validity clients still accept for a locally trusted certificate


def default_names():
    """localhost, 127.0.0.1, ::1 and this machine's host name (and its FQDN), in order."""
    names = ["localhost", "127.0.0.1", "::1"]
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name not in names:
            names.append(name)
    return names


def _san(names):
    from cryptography import x509
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def self_signed(names=None, days=DAYS):
    """A self-signed certificate for ``names`` (default: :func:`default_names`) -> (cert
    PEM bytes, key PEM bytes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = list(names or default_names())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imsrv (self-signed, local use)"),
                         x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Exists(Exception):
    """A file ``imsrv cert`` would overwrite (the message names it)."""


def write(directory=".", force=False, names=None):
    """Write CERT_FILE and KEY_FILE into ``directory`` -> (cert path, key path, names).
    Exists when one of them is there already, unless ``force``; the key is written with
    mode 0600."""
    cert_path = os.path.abspath(os.path.join(directory, CERT_FILE))
    key_path = os.path.abspath(os.path.join(directory, KEY_FILE))
    if not force:
        for path in (cert_path, key_path):
            if os.path.exists(path):
                raise Exists(f"{path} exists; --force overwrites it")
    names = list(names or default_names())
    cert_pem, key_pem = self_signed(names)
    if force and os.path.exists(key_path):
        os.unlink(key_path)   # so that the mode below applies
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        stream.write(key_pem)
    with open(cert_path, "wb") as stream:
        stream.write(cert_pem)
    return cert_path, key_path, names


def cmd_cert(args):
    names = default_names() + [name for name in args.host if name not in default_names()]
    try:
        cert_path, key_path, names = write(args.dir, args.force, names)
    except Exists as exc:
        print(f"imsrv cert: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"imsrv cert: cannot write into {os.path.abspath(args.dir)}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {cert_path} (self-signed, valid {DAYS} days, for {', '.join(names)})")
    print(f"wrote {key_path} (its private key, readable by you only)")
    print("\nin the server's config file:\n\n[tls]\n"
          f"cert = \"{cert_path}\"\nkey = \"{key_path}\"\n"
          f"\nor in its environment: IMSRV_TLS_CERT={cert_path} IMSRV_TLS_KEY={key_path}"
          f"\n\nclients trust it with: imsrv chat --tls --ca-file {cert_path} ...")
    return 0


def add_parser(sub):
    parser = sub.add_parser("cert", help="write a self-signed imsrv.crt and imsrv.key (local TLS)",
                            description=__doc__.split("\n\n", 1)[1].split("\n\nMade with", 1)[0])
    parser.add_argument("--dir", default=".", help="where to write them (default: the current directory)")
    parser.add_argument("--host", action="append", default=[], metavar="NAME",
                        help="another DNS name or IP address the certificate names (repeatable)")
    parser.add_argument("--force", action="store_true", help="overwrite imsrv.crt / imsrv.key if they exist")
    parser.set_defaults(fn=cmd_cert)
    return parser
