"""C2PA manifests for generated originals, signed with the configured certificate through
the official bindings (c2pa-python).

The certificate chain and private key are PEM, given in the environment or in files
(``settings.KARASU["C2PA"]``, see docs/configuration.md). Without both nothing is signed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from django.conf import settings

from cms.provenance.containers import sniff
from cms.provenance.xmp import SOFTWARE_AGENT, Marking

MIME_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
# ISO BMFF images by their ftyp's major brand: what a variation's source may be, though
# Karasu signs no original in these containers.
BMFF_BRANDS = {
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"heim": "image/heic",
    b"heis": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
}


def media_type(head: bytes) -> str | None:
    """The media type of a file that starts with ``head`` (16 bytes), as c2pa names it."""
    kind = sniff(head)
    if kind == "isobmff":
        return BMFF_BRANDS.get(head[8:12])
    return MIME_TYPES.get(kind or "")


ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


class SigningError(Exception):
    """The manifest could not be made or signed: the image goes unsigned, and says why."""


@dataclass(frozen=True)
class Credentials:
    certificates: bytes  # PEM: the signing certificate first, then its intermediates
    private_key: bytes = field(repr=False)  # PEM; never in a repr, a log or a traceback
    algorithm: str
    tsa_url: str = ""


@dataclass(frozen=True)
class Ingredient:
    """The image a variation was made from: opened only while its manifest is signed."""

    title: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]


def _setting(config: dict, name: str) -> bytes:
    """A PEM value given inline (NAME) or in a file (NAME_FILE)."""
    value = config.get(name) or ""
    path = config.get(f"{name}_FILE") or ""
    if value:
        return value.encode() if isinstance(value, str) else value
    if path:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SigningError(f"cannot read KARASU_C2PA_{name}_FILE ({exc.strerror})") from None
    return b""


def credentials() -> Credentials | None:
    """The configured signing credentials, or None when signing is not configured.

    A half-configured signer (a certificate without its key, an unreadable file, a key of
    an unknown kind) raises SigningError, so that the image says why it was not signed.
    """
    config = settings.KARASU.get("C2PA") or {}
    certificates = _setting(config, "CERTIFICATE")
    private_key = _setting(config, "PRIVATE_KEY")
    if not certificates and not private_key:
        return None
    if not certificates:
        raise SigningError("a C2PA private key is configured without its certificate")
    if not private_key:
        raise SigningError("a C2PA certificate is configured without its private key")
    algorithm = (config.get("ALGORITHM") or "").lower() or key_algorithm(private_key)
    if algorithm not in ALGORITHMS:
        raise SigningError(f"unknown C2PA signing algorithm {algorithm!r}")
    return Credentials(certificates, private_key, algorithm, config.get("TSA_URL") or "")


@functools.lru_cache(maxsize=4)
def key_algorithm(private_key: bytes) -> str:
    """The C2PA algorithm that goes with a PEM private key."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"the C2PA private key cannot be read ({exc})") from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise SigningError("the C2PA private key is of a kind C2PA does not sign with")


def manifest_definition(marking: Marking, title: str, edited: bool) -> dict:
    """The manifest: Karasu as the claim generator, and what the image model did."""
    action = {
        "action": "c2pa.edited" if edited else "c2pa.created",
        "digitalSourceType": marking.source_type_uri,
        "softwareAgent": {"name": marking.generator},
        "description": (
            f"Made from the source image by {marking.generator}"
            if edited
            else f"Generated by {marking.generator}"
        ),
    }
    return {
        "claim_generator_info": [{"name": SOFTWARE_AGENT}],
        "title": title,
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}],
    }


def sign(
    src: IO[bytes],
    dst: IO[bytes],
    marking: Marking,
    credentials: Credentials,
    *,
    title: str,
    ingredient: Ingredient | None = None,
) -> str:
    """Write ``src`` into ``dst`` with a signed manifest, and return the manifest's label.

    A generated image's action is ``c2pa.created``; a variation's is ``c2pa.edited``, after
    the ``c2pa.opened`` of its source, which is its parent ingredient (with the source's
    own manifest, if it has one). The result is read back and must validate.
    """
    import c2pa

    src.seek(0)
    kind = sniff(src.read(16))
    if kind not in MIME_TYPES:
        raise SigningError(f"C2PA signing does not handle this file ({kind or 'unknown'})")
    mime = MIME_TYPES[kind]
    try:
        info = c2pa.C2paSignerInfo(
            alg=credentials.algorithm.encode(),
            sign_cert=credentials.certificates,
            private_key=credentials.private_key,
            ta_url=credentials.tsa_url.encode() or None,
        )
        # No thumbnail: it would decode the image and add its bytes to every original.
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        with c2pa.Signer.from_info(info) as signer:
            definition = manifest_definition(marking, title, edited=ingredient is not None)
            with c2pa.Builder(definition, context) as builder:
                if ingredient is not None:
                    # EDIT: the parent ingredient below gets the c2pa.opened action.
                    builder.set_intent(c2pa.C2paBuilderIntent.EDIT)
                    with ingredient.open() as source:
                        source.seek(0)
                        source_type = media_type(source.read(16))
                        source.seek(0)
                        if source_type is None:
                            raise SigningError("the source image is of a kind C2PA cannot read")
                        builder.add_ingredient(
                            {"title": ingredient.title, "relationship": "parentOf"},
                            source_type,
                            source,
                        )
                src.seek(0)
                builder.sign(signer, mime, src, dst)
        dst.seek(0)
        with c2pa.Reader(mime, dst) as reader:
            store = json.loads(reader.json())
            state = reader.get_validation_state()
    except c2pa.C2paError as exc:
        raise SigningError(f"C2PA: {exc}") from exc
    if state not in ("Valid", "Trusted"):
        failures = [status.get("code") for status in store.get("validation_status", [])]
        raise SigningError(f"the signed manifest does not validate ({', '.join(failures)})")
    dst.seek(0)
    return store["active_manifest"]
