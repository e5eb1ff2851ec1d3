"""Fetch a provider's result image safely, over https from allow-listed hosts, within size
and type limits.

Each hop resolves its host once, checks every address, and connects to a checked address
(TLS still verifies the real host name), so a rebinding DNS answer cannot redirect the
connection to an address that was never checked. The body streams into an ImageBody (a
temporary file past 1 MB), so a 20 MB result never sits in the worker's memory.
"""

from __future__ import annotations

import fnmatch
import io
import ipaddress
import re
import socket
import time
from dataclasses import dataclass
from typing import IO, NamedTuple
from urllib.parse import urljoin

import httpx
from PIL import Image, UnidentifiedImageError

from .errors import PermanentProviderError, TransientProviderError
from .images import ImageBody

ALLOWED_CONTENT_TYPES = {"image/png", "image/jpeg", "image/webp"}
MAX_REDIRECTS = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms that carry an IPv4 address, which is where the packets really go.
_IPV4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
# RFC 8215 local-use NAT64 translates into whatever the operator chose, so it is never
# public.
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")
_CONTENT_LENGTH = re.compile(r"[0-9]+")


class DownloadedImage(NamedTuple):
    body: ImageBody  # The caller closes it.
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class PinnedTarget:
    """One checked hop: where the request really goes, and the name that TLS must verify."""

    url: str  # As the provider gave it; redirects resolve against it.
    host: str  # The ASCII host name (or literal address) from the URL.
    address: str  # The checked address that the connection is made to.
    request_url: httpx.URL  # The url with its host replaced by ``address``.
    host_header: str
    sni_hostname: str | None  # None for a literal address, which has no name to send.


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed_hosts)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that an IPv4-mapped, translated or compatible, NAT64 or 6to4
    address reaches."""
    if address.sixtofour is not None:
        return address.sixtofour
    if any(
        address in network
        for network in (_IPV4_MAPPED, _IPV4_TRANSLATED, _IPV4_COMPATIBLE, _NAT64_WELL_KNOWN)
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """True only for addresses on the public internet, looking through IPv6 wrappers."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL_USE:
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            # Python 3.11 calls 64:ff9b::10.0.0.1 and 2002:a00:1:: "global", but the packets
            # would still end up at 10.0.0.1.
            return embedded.is_global
    return address.is_global


def check_url(url: str, allowed_hosts: list[str]) -> PinnedTarget:
    """Check one hop and resolve it once; return the address to connect to."""
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
    except (httpx.InvalidURL, UnicodeError):
        raise PermanentProviderError("unsafe download: invalid URL") from None
    if parsed.scheme != "https":
        raise PermanentProviderError(f"unsafe download: not https ({parsed.scheme or 'no'} scheme)")
    if not host:
        raise PermanentProviderError("unsafe download: URL has no host")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not is_public(literal):
        raise PermanentProviderError(f"unsafe download: private address {host}")
    if not host_allowed(host, allowed_hosts):
        raise PermanentProviderError(f"unsafe download: host {host} is not allowed")
    port = parsed.port or 443
    if literal is not None:
        address = str(literal)
    else:
        address = _resolve_checked(host, port)
    host_header = f"[{host}]" if ":" in host else host
    if parsed.port not in (None, 443):
        host_header = f"{host_header}:{parsed.port}"
    return PinnedTarget(
        url=url,
        host=host,
        address=address,
        # Rebuilt from parts so any user:password in the URL is never sent.
        request_url=httpx.URL(
            scheme="https", host=address, port=parsed.port, raw_path=parsed.raw_path
        ),
        host_header=host_header,
        sni_hostname=None if literal is not None else host,
    )


def _resolve_checked(host: str, port: int) -> str:
    """Resolve the host once. Every answer must be public, because a private one means a
    hostile record."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise TransientProviderError(f"download failed: cannot resolve {host}") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise TransientProviderError(f"download failed: cannot resolve {host}")
    if any(not is_public(address) for address in addresses):
        raise PermanentProviderError(f"unsafe download: {host} resolves to a private address")
    return str(addresses[0])


_MALFORMED_CONTENT_LENGTH = "unsafe download: malformed Content-Length header"


def _declared_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not _CONTENT_LENGTH.fullmatch(value.strip()):
        raise PermanentProviderError(_MALFORMED_CONTENT_LENGTH)
    return int(value)


def _refused_framing_header(exc: httpx.HTTPError) -> str | None:
    """The unsafe-download reason when the HTTP parser refused the response's framing.

    Over the real stack, h11 checks Content-Length (digits only, no conflicting values) and
    Transfer-Encoding before httpx returns the response, and says so in its error. httpx
    raises that as ``RemoteProtocolError``, which is also the class of a body cut short,
    and a body cut short is transient. A refused header is not, because the same bad
    response would be paid for again.
    """
    if not isinstance(exc, httpx.RemoteProtocolError):
        return None
    if str(exc) in REFUSED_CONTENT_LENGTH:
        return _MALFORMED_CONTENT_LENGTH
    if str(exc) in REFUSED_TRANSFER_ENCODING:
        return "unsafe download: malformed Transfer-Encoding header"
    return None


# h11's own words for them (h11/_headers.py), matched whole, because other errors quote the
# server's bytes, which may say anything.
REFUSED_CONTENT_LENGTH = {"bad Content-Length", "conflicting Content-Length headers"}
REFUSED_TRANSFER_ENCODING = {
    "multiple Transfer-Encoding headers",
    "Only Transfer-Encoding: chunked is supported",
}


def download_image(
    url: str,
    *,
    allowed_hosts: list[str],
    max_bytes: int,
    max_pixels: int,
    timeout: float = 60,
    client: httpx.Client | None = None,
) -> DownloadedImage:
    """Return (body, content_type, width, height), or raise a provider error.

    ``timeout`` bounds the whole download, redirects included. A ``client`` passed in is
    used as it is and left open. The body is closed here on any error, and on success the
    caller owns it.
    """
    own_client = client is None
    if client is None:
        client = httpx.Client(
            follow_redirects=False,
            trust_env=False,  # No proxy or .netrc is taken from the environment.
            # Connections are not reused, because a pooled connection to an address could
            # carry a request for a different host name than the one its TLS session
            # verified.
            limits=httpx.Limits(max_keepalive_connections=0),
        )
    try:
        body, content_type = _fetch(url, allowed_hosts, max_bytes, timeout, client)
    finally:
        if own_client:
            client.close()
    try:
        width, height = verify_image(body.open(), max_pixels)
    except BaseException:
        body.close()
        raise
    return DownloadedImage(body, content_type, width, height)


def _fetch(
    url: str, allowed_hosts: list[str], max_bytes: int, timeout: float, client: httpx.Client
) -> tuple[ImageBody, str]:
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, allowed_hosts)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TransientProviderError("download timed out")
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        try:
            with client.stream(
                "GET",
                target.request_url,
                headers={"Host": target.host_header},
                extensions=extensions,
                timeout=httpx.Timeout(remaining),
                follow_redirects=False,
            ) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                return _read_body(response, max_bytes, deadline)
        except httpx.TimeoutException:
            raise TransientProviderError("download timed out") from None
        except httpx.HTTPError as exc:
            refused = _refused_framing_header(exc)
            if refused is not None:
                # This is permanent, because the provider would be paid again for the same
                # bad response.
                raise PermanentProviderError(refused) from None
            raise TransientProviderError(f"download failed: {exc.__class__.__name__}") from None
    raise PermanentProviderError(f"download redirected more than {MAX_REDIRECTS} times")


def _read_body(response: httpx.Response, max_bytes: int, deadline: float) -> tuple[ImageBody, str]:
    if response.status_code != 200:
        error = TransientProviderError if response.status_code >= 500 else PermanentProviderError
        raise error(f"download failed: HTTP {response.status_code}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in ALLOWED_CONTENT_TYPES:
        raise PermanentProviderError(
            f"download is not an image ({content_type or 'no content type'})"
        )
    declared = _declared_length(response.headers.get("content-length"))
    if declared is not None and declared > max_bytes:
        raise PermanentProviderError(f"download too large ({declared} bytes)")
    body = ImageBody()
    try:
        for chunk in response.iter_bytes():
            body.write(chunk)
            # The size is checked per chunk, because the Content-Length may be absent or a
            # lie.
            if body.size > max_bytes:
                raise PermanentProviderError(f"download too large (> {max_bytes} bytes)")
            # Per-read timeouts never fire on a server that drips a byte at a time, so the
            # whole download has a deadline.
            if time.monotonic() > deadline:
                raise TransientProviderError("download timed out")
    except BaseException:
        body.close()
        raise
    return body, content_type


def verify_image(source: bytes | IO[bytes], max_pixels: int) -> tuple[int, int]:
    """Check the bytes really are an image Pillow can decode, without a decompression bomb.

    ``source`` may be a file. Pillow reads the header and checks the rest (PNG chunk CRCs)
    from it without decoding the pixels, so this needs no memory for the image itself.
    """
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with Image.open(stream) as image:
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
