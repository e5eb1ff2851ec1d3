"""A fake fal.ai queue API: a real HTTP server on 127.0.0.1 that the real fal-client talks to.

It speaks fal's queue wire format (https://docs.fal.ai/model-apis/model-endpoints/queue):

- ``POST /{owner}/{app}[/path]`` submits: ``{request_id, status_url, response_url,
  cancel_url}`` (URLs on owner/app only, as fal's are);
- ``GET /{owner}/{app}/requests/{id}/status``: 202 ``IN_QUEUE`` / ``IN_PROGRESS`` while the
  image is being made (``latency`` seconds per image), 200 ``COMPLETED`` (with ``error`` and
  ``error_type`` when it failed);
- ``GET /{owner}/{app}/requests/{id}``: the result, ``images: [{url, width, height,
  content_type}]`` and ``seed``; 400 while in progress;
- ``PUT /{owner}/{app}/requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED``, 400
  ``ALREADY_COMPLETED``;
- 404 for a request it does not know or that expired (``expire()``).

The result's image URL names fal's CDN (``https://v3.fal.media/files/…``), so the download
goes through Karasu's safety checks unchanged; ``route_cdn(monkeypatch)`` resolves that
host to a public address and connects those sockets (without TLS) to this same server.

Billing is counted on the provider's side: one bill per submission that completes (its
latency passed, not cancelled before, not failed). Failures are injected on chosen calls
(``fail("status", times=3, status=500)``).
"""

from __future__ import annotations

import io
import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, ImageDraw

CDN_HOST = "v3.fal.media"
CDN_ADDRESS = "34.120.0.1"  # a public address the download is pinned to
REQUEST_PATH = re.compile(r"^/([^/]+)/([^/]+)/requests/([0-9a-f-]+)(/status|/cancel)?$")
FILE_PATH = re.compile(r"^/files/([0-9a-f-]+)\.jpeg$")


@dataclass
class Submission:
    request_id: str
    endpoint: str  # the full endpoint id the client posted to (owner/app/path)
    arguments: dict
    submitted_at: float
    ready_at: float
    error: tuple[str, str] | None = None  # (message, error_type): failed at the provider
    cancelled: bool = False
    expired: bool = False

    @property
    def app(self) -> str:
        return "/".join(self.endpoint.split("/")[:2])

    def completed(self, now: float) -> bool:
        return self.cancelled or now >= self.ready_at

    def billed(self, now: float) -> bool:
        return now >= self.ready_at and not self.cancelled and self.error is None


@dataclass
class Fault:
    times: int
    status: int
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)


class FakeFalQueue:
    """The fake queue; ``url`` is what ``fal_client.client.QUEUE_URL_FORMAT`` is set to."""

    def __init__(self, latency: float = 0.2, key: str = ""):
        self.latency = latency
        self.key = key  # when set, requests must carry ``Authorization: Key <key>``
        self.submissions: dict[str, Submission] = {}
        self.calls: Counter[str] = Counter()  # submit, status, result, cancel, file
        self.cancels: list[str] = []
        self.unauthorised = 0
        self._faults: dict[str, list[Fault]] = defaultdict(list)
        self._fail_next_results: list[tuple[str, str]] = []
        self._reply_delays: list[float] = []
        self._lock = threading.Lock()
        queue = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                queue._handle(self, "POST")

            def do_GET(self):  # noqa: N802
                queue._handle(self, "GET")

            def do_PUT(self):  # noqa: N802
                queue._handle(self, "PUT")

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # What the tests set up -------------------------------------------------------------
    def fail(
        self, kind: str, times: int = 1, status: int = 500, headers: dict | None = None, **body
    ) -> None:
        """The next ``times`` calls of ``kind`` (submit, status, result, cancel, file)
        answer ``status`` with ``body`` (fal's error shape: ``detail``) and ``headers``
        (``{"retry-after": "120"}``)."""
        with self._lock:
            self._faults[kind].append(
                Fault(times, status, body or {"detail": f"injected {status}"}, headers or {})
            )

    def fail_next_submission(self, message: str, error_type: str = "") -> None:
        """The next submission completes with an error (fal bills no failed output)."""
        with self._lock:
            self._fail_next_results.append((message, error_type))

    def delay_submit_replies(self, seconds: float, times: int = 1) -> None:
        """The next ``times`` submissions are accepted (and billed like any other) but
        answered ``seconds`` late: a reply lost to the client's timeout."""
        with self._lock:
            self._reply_delays.extend([seconds] * times)

    def expire(self, request_id: str) -> None:
        """Forget a request, as fal does once its result's retention has passed."""
        with self._lock:
            self.submissions[request_id].expired = True

    # What the tests read ---------------------------------------------------------------
    def bills(self) -> Counter[str]:
        """Bills per prompt: submissions that completed (provider-side)."""
        now = time.time()
        with self._lock:
            return Counter(
                s.arguments.get("prompt", "") for s in self.submissions.values() if s.billed(now)
            )

    def submitted(self) -> Counter[str]:
        """Submissions per prompt."""
        with self._lock:
            return Counter(s.arguments.get("prompt", "") for s in self.submissions.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # The wire --------------------------------------------------------------------------
    def _take_fault(self, kind: str) -> Fault | None:
        with self._lock:
            faults = self._faults[kind]
            while faults:
                fault = faults[0]
                if fault.times > 0:
                    fault.times -= 1
                    return fault
                faults.pop(0)
        return None

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        if FILE_PATH.match(path) and method == "GET":
            return self._file(handler, FILE_PATH.match(path).group(1))
        if self.key and handler.headers.get("authorization") != f"Key {self.key}":
            self.unauthorised += 1
            return _json(handler, 401, {"detail": "Unauthorized"})
        match = REQUEST_PATH.match(path)
        if match and method in ("GET", "PUT"):
            owner, app, request_id, action = match.groups()
            kind = {"/status": "status", "/cancel": "cancel", None: "result"}[action]
            if (kind == "cancel") != (method == "PUT"):
                return _json(handler, 405, {"detail": "Method not allowed"})
            self.calls[kind] += 1
            if fault := self._take_fault(kind):
                return _json(handler, fault.status, fault.body, request_id, headers=fault.headers)
            with self._lock:
                submission = self.submissions.get(request_id)
            if submission is None or submission.expired or submission.app != f"{owner}/{app}":
                return _json(
                    handler,
                    404,
                    {"detail": "Request not found"}
                    if kind != "cancel"
                    else {"status": "NOT_FOUND"},
                )
            return getattr(self, f"_{kind}")(handler, submission)
        if method == "POST" and path.count("/") >= 2:
            self.calls["submit"] += 1
            if fault := self._take_fault("submit"):
                return _json(handler, fault.status, fault.body, "none", headers=fault.headers)
            return self._submit(handler, path.strip("/"), json.loads(body or b"{}"))
        return _json(handler, 404, {"detail": "Not found"})

    def _submit(self, handler, endpoint: str, arguments: dict) -> None:
        request_id = str(uuid.uuid4())
        now = time.time()
        with self._lock:
            error = self._fail_next_results.pop(0) if self._fail_next_results else None
            submission = Submission(request_id, endpoint, arguments, now, now + self.latency, error)
            self.submissions[request_id] = submission
            delay = self._reply_delays.pop(0) if self._reply_delays else 0.0
        if delay:
            time.sleep(delay)  # accepted: the request runs while its reply is late
        base = f"{self.url}{submission.app}/requests/{request_id}"
        _json(
            handler,
            200,
            {
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": 0,
            },
            fal_request_id=request_id,
        )

    def _status(self, handler, submission: Submission) -> None:
        now = time.time()
        if not submission.completed(now):
            state = "IN_QUEUE" if now < submission.submitted_at + 0.01 else "IN_PROGRESS"
            return _json(
                handler,
                202,
                {
                    "status": state,
                    "queue_position": 0,
                    "logs": None,
                    "request_id": submission.request_id,
                },
            )
        answer = {
            "status": "COMPLETED",
            "logs": None,
            "metrics": {},
            "request_id": submission.request_id,
        }
        if submission.cancelled:
            answer.update(error="Request cancelled", error_type="request_cancelled")
        elif submission.error:
            answer.update(error=submission.error[0], error_type=submission.error[1])
        _json(handler, 200, answer)

    def _result(self, handler, submission: Submission) -> None:
        if not submission.completed(time.time()):
            return _json(handler, 400, {"detail": "Request is still in progress"})
        if submission.cancelled or submission.error:
            message = "Request cancelled" if submission.cancelled else submission.error[0]
            return _json(handler, 500, {"detail": message}, fal_request_id="x")
        seed = submission.arguments.get("seed", 1234)
        _json(
            handler,
            200,
            {
                "images": [
                    {
                        "url": f"https://{CDN_HOST}/files/{submission.request_id}.jpeg",
                        "width": 64,
                        "height": 48,
                        "content_type": "image/jpeg",
                    }
                ],
                "seed": seed,
                "has_nsfw_concepts": [False],
                "prompt": submission.arguments.get("prompt", ""),
            },
        )

    def _cancel(self, handler, submission: Submission) -> None:
        self.cancels.append(submission.request_id)
        if submission.completed(time.time()):
            return _json(handler, 400, {"status": "ALREADY_COMPLETED"})
        submission.cancelled = True
        _json(handler, 202, {"status": "CANCELLATION_REQUESTED"})

    def _file(self, handler, request_id: str) -> None:
        self.calls["file"] += 1
        if fault := self._take_fault("file"):
            return _json(handler, fault.status, fault.body)
        with self._lock:
            submission = self.submissions.get(request_id)
        if submission is None or not submission.billed(time.time()):
            return _json(handler, 404, {"detail": "Not found"})
        buffer = io.BytesIO()
        image = Image.new("RGB", (64, 48), (20, 40, 60))
        ImageDraw.Draw(image).text((2, 2), request_id[:8], fill=(255, 255, 255))
        image.save(buffer, "JPEG")
        data = buffer.getvalue()
        handler.send_response(200)
        handler.send_header("content-type", "image/jpeg")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # Downloads from "fal's CDN" ----------------------------------------------------------
    def route_cdn(self, monkeypatch) -> None:
        """Resolve the CDN host to a public address, connect sockets for that address to
        this server, and leave TLS out for the CDN host only, so the download code runs
        unchanged (https, allow-listed host, public address) against this server."""
        real_getaddrinfo = socket.getaddrinfo
        real_create_connection = socket.create_connection
        real_wrap_socket = ssl.SSLContext.wrap_socket

        def getaddrinfo(host, *args, **kwargs):
            if host == CDN_HOST:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (CDN_ADDRESS, 443))]
            return real_getaddrinfo(host, *args, **kwargs)

        def create_connection(address, *args, **kwargs):
            if address[0] == CDN_ADDRESS:
                return real_create_connection(("127.0.0.1", self.port), *args, **kwargs)
            return real_create_connection(address, *args, **kwargs)

        def wrap_socket(context, sock, *args, server_hostname=None, **kwargs):
            if server_hostname == CDN_HOST:
                return sock
            return real_wrap_socket(context, sock, *args, server_hostname=server_hostname, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(ssl.SSLContext, "wrap_socket", wrap_socket)


def _json(
    handler, status: int, body: dict, fal_request_id: str = "", headers: dict | None = None
) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if fal_request_id:
        # fal's own answers carry it; fal-client then never mistakes them for an ingress error.
        handler.send_header("x-fal-request-id", fal_request_id)
    handler.end_headers()
    handler.wfile.write(data)
