"""Fetch a provider's result image safely: https, allow-listed hosts, size and type limits."""

from __future__ import annotations

import fnmatch
import io
import ipaddress
import socket
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from .errors import PermanentProviderError, TransientProviderError

ALLOWED_CONTENT_TYPES = {"image/png", "image/jpeg", "image/webp"}
MAX_REDIRECTS = 3


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed_hosts)


def _is_public(address: str) -> bool:
    return ipaddress.ip_address(address).is_global


def check_url(url: str, allowed_hosts: list[str]) -> None:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https":
        raise PermanentProviderError(f"unsafe download: not https ({parts.scheme or 'no'} scheme)")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not literal.is_global:
        raise PermanentProviderError(f"unsafe download: private address {host}")
    if not host_allowed(host, allowed_hosts):
        raise PermanentProviderError(f"unsafe download: host {host} is not allowed")
    if literal is None:
        # Defence in depth against an allow-listed name pointing inside the network.
        try:
            infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
        except OSError:
            return  # unresolvable: the request itself will fail
        if any(not _is_public(info[4][0]) for info in infos):
            raise PermanentProviderError(f"unsafe download: {host} resolves to a private address")


def download_image(
    url: str,
    *,
    allowed_hosts: list[str],
    max_bytes: int,
    max_pixels: int,
    timeout: float = 60,
    client: httpx.Client | None = None,
) -> tuple[bytes, str, int, int]:
    """Return (data, content_type, width, height) or raise a provider error."""
    client = client or httpx.Client(timeout=timeout, follow_redirects=False)
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, allowed_hosts)
        try:
            with client.stream("GET", url, timeout=timeout) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    error = TransientProviderError if response.status_code >= 500 else (
                        PermanentProviderError
                    )
                    raise error(f"download failed: HTTP {response.status_code}")
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                if content_type not in ALLOWED_CONTENT_TYPES:
                    raise PermanentProviderError(
                        f"download is not an image ({content_type or 'no content type'})"
                    )
                declared = int(response.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise PermanentProviderError(f"download too large ({declared} bytes)")
                data = bytearray()
                for chunk in response.iter_bytes():
                    data.extend(chunk)
                    if len(data) > max_bytes:
                        raise PermanentProviderError(f"download too large (> {max_bytes} bytes)")
        except httpx.TimeoutException:
            raise TransientProviderError("download timed out") from None
        except httpx.HTTPError as exc:
            raise TransientProviderError(f"download failed: {exc.__class__.__name__}") from None
        width, height = verify_image(bytes(data), max_pixels)
        return bytes(data), content_type, width, height
    raise PermanentProviderError(f"download redirected more than {MAX_REDIRECTS} times")


def verify_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Check the bytes really are an image Pillow can decode, without a decompression bomb."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PermanentProviderError(f"image too large ({width}x{height} pixels)")
            image.verify()
    except PermanentProviderError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
        raise PermanentProviderError(
            f"download is not a valid image ({exc.__class__.__name__})"
        ) from None
    return width, height
