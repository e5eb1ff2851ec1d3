"""Result downloads under attack: DNS rebinding, sneaky addresses, slow drips, bad headers."""

import socket
import ssl
import struct
import threading
import time

import httpx
import pytest
import respx

from generation.providers import PermanentProviderError, TransientProviderError
from generation.providers.download import download_image
from tests.support.images import jpeg

IMAGE_URL = "https://v3.fal.media/files/crow/result.jpg"
ALLOWED = ["fal.media", "*.fal.media"]
PUBLIC = "34.120.0.1"


def image_response(**kwargs) -> httpx.Response:
    kwargs.setdefault("content", jpeg())
    kwargs.setdefault("headers", {"content-type": "image/jpeg"})
    return httpx.Response(200, **kwargs)


def download(url=IMAGE_URL, **kwargs):
    kwargs.setdefault("allowed_hosts", ALLOWED)
    kwargs.setdefault("max_bytes", 1024 * 1024)
    kwargs.setdefault("max_pixels", 1_000_000)
    return download_image(url, **kwargs)


class FakeDNS:
    """getaddrinfo with scripted answers; each host's answers are used in turn."""

    def __init__(self):
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def set(self, host: str, *answers: list[str]) -> None:
        self.answers[host] = list(answers)

    def __call__(self, host, port, *args, **kwargs):
        self.lookups.append(host)
        answers = self.answers.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDNS()
    fake.set("v3.fal.media", [PUBLIC])
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as router:
        yield router


# Pinning ----------------------------------------------------------------------------------
def test_request_goes_to_the_checked_address_and_tls_names_the_real_host(dns, router):
    route = router.get(f"https://{PUBLIC}/files/crow/result.jpg").mock(
        return_value=image_response()
    )
    body, content_type, width, height = download()
    assert (content_type, width, height) == ("image/jpeg", 64, 48) and body.read() == jpeg()
    request = route.calls.last.request
    assert request.url.host == PUBLIC
    assert request.headers["host"] == "v3.fal.media"
    assert request.extensions["sni_hostname"] == "v3.fal.media"
    assert dns.lookups == ["v3.fal.media"]


def test_a_rebinding_dns_answer_cannot_move_the_connection(dns, router):
    # First answer public (what the check sees), every later answer loopback.
    dns.set("v3.fal.media", [PUBLIC], ["127.0.0.1"])
    route = router.get(host=PUBLIC).mock(return_value=image_response())
    loopback = router.get(host="127.0.0.1").mock(return_value=image_response())
    router.get(host="v3.fal.media").mock(return_value=image_response())
    download()
    assert route.call_count == 1 and not loopback.called
    assert dns.lookups == ["v3.fal.media"]


def test_real_http_stack_connects_to_the_pinned_address_verifying_the_host_name(dns, monkeypatch):
    """No respx: watch httpcore open the TCP connection and start TLS."""
    # Proxy settings in the environment must not be used (trust_env=False).
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.internal:3128")
    listener = socket.create_server(("127.0.0.1", 0))
    connected, handshakes = [], []

    def fake_create_connection(address, *args, **kwargs):
        connected.append(address)
        # A plain connect: socket.create_connection would ask the (faked) getaddrinfo.
        sock = socket.socket()
        sock.connect(listener.getsockname())
        return sock

    def fake_wrap_socket(context, sock, *args, server_hostname=None, **kwargs):
        handshakes.append((server_hostname, context.check_hostname, context.verify_mode))
        raise ssl.SSLError("stop before the handshake")

    monkeypatch.setattr(socket, "create_connection", fake_create_connection)
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", fake_wrap_socket)
    try:
        with pytest.raises(TransientProviderError, match="download failed"):
            download(timeout=5)
    finally:
        listener.close()
    assert connected == [(PUBLIC, 443)]
    assert handshakes == [("v3.fal.media", True, ssl.CERT_REQUIRED)]
    assert dns.lookups == ["v3.fal.media"]


def test_each_redirect_hop_is_rechecked_and_pinned_to_its_own_address(dns, router):
    dns.set("cdn.fal.media", ["34.120.0.2"])
    first = router.get(f"https://{PUBLIC}/files/crow/result.jpg").mock(
        return_value=httpx.Response(302, headers={"location": "https://cdn.fal.media/final.jpg"})
    )
    second = router.get("https://34.120.0.2/final.jpg").mock(return_value=image_response())
    assert download()[2:] == (64, 48)
    assert first.calls.last.request.headers["host"] == "v3.fal.media"
    request = second.calls.last.request
    assert request.headers["host"] == "cdn.fal.media"
    assert request.extensions["sni_hostname"] == "cdn.fal.media"
    assert dns.lookups == ["v3.fal.media", "cdn.fal.media"]


def test_a_redirect_to_a_name_resolving_inside_the_network_is_refused(dns, router):
    dns.set("evil.fal.media", ["10.1.2.3"])
    router.get(host=PUBLIC).mock(
        return_value=httpx.Response(302, headers={"location": "https://evil.fal.media/x.jpg"})
    )
    inside = router.get(host="10.1.2.3").mock(return_value=image_response())
    with pytest.raises(PermanentProviderError, match="evil.fal.media resolves to a private"):
        download()
    assert not inside.called


def test_a_literal_public_address_is_fetched_without_a_lookup(dns, router):
    route = router.get("https://34.120.0.9/x.jpg").mock(return_value=image_response())
    download("https://34.120.0.9/x.jpg", allowed_hosts=["34.120.0.9"])
    request = route.calls.last.request
    assert request.headers["host"] == "34.120.0.9"
    assert "sni_hostname" not in request.extensions
    assert dns.lookups == []


# Addresses hidden inside IPv6 -------------------------------------------------------------
HIDDEN_PRIVATE = [
    "64:ff9b::a00:1",  # NAT64 well-known prefix -> 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 -> 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254, the cloud metadata service
    "64:ff9b:1::808:808",  # local-use NAT64: translated however the operator likes
    "2002:a00:1::1",  # 6to4 -> 10.0.0.1
    "2002:c0a8:101::1",  # 6to4 -> 192.168.1.1
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:0:a00:1",  # IPv4-translated
    "::10.0.0.1",  # IPv4-compatible
    "::127.0.0.1",
]


@pytest.mark.parametrize("address", HIDDEN_PRIVATE)
def test_literal_ipv6_hiding_a_private_ipv4_is_refused(dns, router, address):
    sent = router.route().mock(return_value=image_response())
    with pytest.raises(PermanentProviderError, match="unsafe download: private address"):
        download(f"https://[{address}]/x.jpg", allowed_hosts=["*"])
    assert not sent.called


@pytest.mark.parametrize("address", HIDDEN_PRIVATE)
def test_a_name_resolving_to_ipv6_hiding_a_private_ipv4_is_refused(dns, router, address):
    dns.set("v3.fal.media", [address])
    sent = router.route().mock(return_value=image_response())
    with pytest.raises(PermanentProviderError, match="v3.fal.media resolves to a private"):
        download()
    assert not sent.called


def test_one_private_answer_among_public_ones_is_refused(dns, router):
    dns.set("v3.fal.media", [PUBLIC, "64:ff9b::a00:1", "34.120.0.3"])
    sent = router.route().mock(return_value=image_response())
    with pytest.raises(PermanentProviderError, match="resolves to a private"):
        download()
    assert not sent.called


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "2606:4700::1"])
def test_public_destinations_behind_ipv6_forms_still_download(dns, router, address):
    # DNS64 on an IPv6-only host answers 64:ff9b::<public IPv4>: that must keep working.
    dns.set("v3.fal.media", [address])
    route = router.get(f"https://[{address}]/files/crow/result.jpg").mock(
        return_value=image_response()
    )
    assert download()[1] == "image/jpeg"
    assert route.calls.last.request.headers["host"] == "v3.fal.media"


# Deadlines --------------------------------------------------------------------------------
class Drip(httpx.SyncByteStream):
    """A server that sends a few bytes, then one more every ``interval`` seconds."""

    def __init__(self, data: bytes, interval: float):
        self.data, self.interval = data, interval

    def __iter__(self):
        for i in range(0, len(self.data), 16):
            yield self.data[i : i + 16]
            time.sleep(self.interval)


def test_a_slow_drip_download_is_cut_off_at_the_overall_deadline(dns, router):
    data = jpeg()  # a valid image: only the clock can fail this download
    router.get(host=PUBLIC).mock(
        return_value=httpx.Response(
            200, headers={"content-type": "image/jpeg"}, stream=Drip(data, 0.1)
        )
    )
    assert len(data) / 16 * 0.1 > 3  # the whole drip would take longer than 3 s
    started = time.monotonic()
    with pytest.raises(TransientProviderError, match="download timed out"):
        download(timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_the_deadline_covers_every_redirect_hop_together(dns, router):
    dns.set("cdn.fal.media", ["34.120.0.2"])

    def slow_redirect(request):
        time.sleep(0.4)
        return httpx.Response(302, headers={"location": "https://cdn.fal.media/final.jpg"})

    def slow_image(request):
        time.sleep(0.4)
        return image_response()

    router.get(host=PUBLIC).mock(side_effect=slow_redirect)
    router.get(host="34.120.0.2").mock(side_effect=slow_image)
    # Each hop alone fits in 0.6 s; both together do not.
    with pytest.raises(TransientProviderError, match="download timed out"):
        download(timeout=0.6)


# Headers and clients ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-5", "1e3", "10, 10", ""])
def test_a_malformed_content_length_is_an_unsafe_download(dns, router, value):
    router.get(host=PUBLIC).mock(
        return_value=image_response(headers={"content-type": "image/jpeg", "content-length": value})
    )
    with pytest.raises(PermanentProviderError) as error:
        download()
    assert error.value.reason == "unsafe download: malformed Content-Length header"


class RawServer:
    """A local TCP server answering each request with raw bytes, for the real httpx/h11 stack.

    download_image connects to the pinned public address: ``socket.create_connection`` is
    redirected here, and TLS is left out (``wrap_socket`` hands the plain socket back), so
    httpcore and h11 parse exactly the bytes below. TLS itself is covered by the test above.
    """

    def __init__(self, monkeypatch, response: bytes, *, reset: bool = False):
        self.response, self.reset = response, reset
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.connections: list[tuple[str, int]] = []
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

        def create_connection(address, *args, **kwargs):
            self.connections.append(address)
            sock = socket.socket()  # a plain connect: no (faked) getaddrinfo
            sock.connect(self.listener.getsockname())
            return sock

        def wrap_socket(context, sock, *args, server_hostname=None, **kwargs):
            return sock

        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(ssl.SSLContext, "wrap_socket", wrap_socket)

    def _serve(self):
        try:
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        data = conn.recv(65536)
                        if not data:
                            break
                        request += data
                    self.requests.append(request)
                    conn.sendall(self.response)
                    if self.reset:  # close with RST instead of FIN
                        conn.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
        except OSError:  # listener closed or timed out
            pass

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def serve(dns, monkeypatch):
    servers: list[RawServer] = []

    def start(response: bytes, **kwargs) -> RawServer:
        servers.append(RawServer(monkeypatch, response, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def raw_image_response(*header_lines: str, body: bytes | None = None) -> bytes:
    body = jpeg() if body is None else body
    head = ["HTTP/1.1 200 OK", "Content-Type: image/jpeg", *header_lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_the_real_stack_harness_downloads_a_well_formed_image(serve):
    data = jpeg()
    server = serve(raw_image_response(f"Content-Length: {len(data)}"))
    body, content_type, width, height = download(timeout=5)
    assert body.read() == data and (content_type, width, height) == ("image/jpeg", 64, 48)
    assert server.connections == [(PUBLIC, 443)]
    assert b"\r\nhost: v3.fal.media\r\n" in server.requests[0].lower()


def test_over_the_real_stack_repeated_equal_content_lengths_are_one_length(serve):
    # h11 folds identical values into one (RFC 9110 section 8.6); only conflicts are refused.
    data = jpeg()
    serve(raw_image_response(f"Content-Length: {len(data)}", f"Content-Length: {len(data)}"))
    assert download(timeout=5).body.read() == data


@pytest.mark.parametrize(
    "header_lines",
    [
        ["Content-Length: abc"],
        ["Content-Length: -5"],
        ["Content-Length: 1e3"],
        ["Content-Length: "],
        ["Content-Length: 123456789012345678901"],  # past h11's 20 digits
        ["Content-Length: 10, 11"],
        ["Content-Length: 10", "Content-Length: 11"],
    ],
    ids=["abc", "negative", "exponent", "empty", "21-digits", "list-conflict", "two-headers"],
)
def test_over_the_real_stack_a_malformed_content_length_is_an_unsafe_download(serve, header_lines):
    """h11 refuses these before our code sees the headers: permanent, not a paid retry."""
    server = serve(raw_image_response(*header_lines, body=b"0123456789"))
    with pytest.raises(PermanentProviderError) as error:
        download(timeout=5)
    assert error.value.reason == "unsafe download: malformed Content-Length header"
    assert len(server.connections) == 1


def test_over_the_real_stack_an_unsupported_transfer_encoding_is_an_unsafe_download(serve):
    serve(raw_image_response("Transfer-Encoding: gzip", body=b"0123456789"))
    with pytest.raises(PermanentProviderError) as error:
        download(timeout=5)
    assert error.value.reason == "unsafe download: malformed Transfer-Encoding header"


def test_over_the_real_stack_a_body_cut_short_is_transient(serve):
    data = jpeg()
    # Content-Length promises the whole image; the peer closes (FIN) after half of it.
    serve(raw_image_response(f"Content-Length: {len(data)}", body=data[: len(data) // 2]))
    with pytest.raises(TransientProviderError) as error:
        download(timeout=5)
    assert error.value.reason == "download failed: RemoteProtocolError"


def test_over_the_real_stack_a_connection_reset_mid_body_is_transient(serve):
    data = jpeg()
    serve(raw_image_response(f"Content-Length: {len(data)}", body=data[:100]), reset=True)
    with pytest.raises(TransientProviderError, match="download failed"):
        download(timeout=5)


@pytest.mark.parametrize(
    "response",
    [b"", b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Len"],
    ids=["no-response", "cut-in-headers"],
)
def test_over_the_real_stack_a_peer_closing_before_the_body_is_transient(serve, response):
    serve(response)
    with pytest.raises(TransientProviderError, match="download failed: RemoteProtocolError"):
        download(timeout=5)


def test_the_client_download_image_creates_is_closed(dns, router, monkeypatch):
    created = []

    class RecordingClient(httpx.Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "Client", RecordingClient)
    route = router.get(host=PUBLIC).mock(return_value=image_response())
    download()
    route.mock(return_value=httpx.Response(404))
    with pytest.raises(PermanentProviderError, match="HTTP 404"):
        download()
    assert len(created) == 2
    assert all(client.is_closed for client in created)
    assert not any(client.trust_env for client in created)


def test_a_client_passed_in_is_used_and_left_open(dns):
    seen = []

    def handler(request):
        seen.append(request)
        return image_response()

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        download(client=client)
        assert not client.is_closed
        download(client=client)
    assert [r.url.host for r in seen] == [PUBLIC, PUBLIC]
    assert seen[0].extensions["sni_hostname"] == "v3.fal.media"
