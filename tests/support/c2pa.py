"""A throwaway C2PA signing certificate, and reading a file's manifest back.

C2PA wants a chain, not a self-signed certificate: a root CA, an intermediate CA and an
end-entity certificate for signing (ES256 here, P-256 keys) that may sign documents
(digitalSignature, nonRepudiation) for e-mail protection, as c2pa-python's own test
certificates do. The root is not in the chain the signer sends: a reader trusts it only
when told to (``trust_anchors``), which is what makes "Trusted" mean something.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cms.provenance.containers import sniff
from cms.provenance.signing import MIME_TYPES


@dataclass(frozen=True)
class Certificates:
    chain: bytes  # PEM: the signing certificate, then the intermediate
    private_key: bytes  # PEM, PKCS#8
    root: bytes  # PEM: the trust anchor


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Karasu tests 烏"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(subject, issuer, public_key, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


@functools.cache
def throwaway_certificates() -> Certificates:
    """One chain per test process: making it takes a few milliseconds, but the same one
    serves every test."""
    root_key, middle_key, signer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in "abc")
    root_name, middle_name = _name("Karasu test root"), _name("Karasu test intermediate")
    root = _certificate(root_name, root_name, root_key.public_key(), root_key, ca=True)
    middle = _certificate(middle_name, root_name, middle_key.public_key(), root_key, ca=True)
    signer = _certificate(
        _name("Karasu test signer"), middle_name, signer_key.public_key(), middle_key, ca=False
    )

    def pem(certificate: x509.Certificate) -> bytes:
        return certificate.public_bytes(serialization.Encoding.PEM)

    key = signer_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Certificates(pem(signer) + pem(middle), key, pem(root))


def read_manifest_store(data: bytes, *, trust: bytes | None = None) -> tuple[dict, str]:
    """(the manifest store, its validation state) of a file, read with c2pa-python's
    Reader; with ``trust``, that root is a trust anchor."""
    import c2pa

    config = {"trust": {"trust_anchors": trust.decode()}} if trust else {}
    with c2pa.Context.from_dict(config) as context:
        with c2pa.Reader(MIME_TYPES[sniff(data[:16])], io.BytesIO(data), context=context) as reader:
            return json.loads(reader.json()), reader.get_validation_state()
