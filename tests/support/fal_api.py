"""fal.ai's HTTP API mocked with respx, for tests of what the fal clients send and how they
read fal's answers. (``tests/support/fal_queue.py`` is a real server instead, for the
pipeline's tests.) The ``fal`` fixture in ``tests/generation/conftest.py`` sets it up."""

from __future__ import annotations

import socket

import httpx

FAL_KEY = "fal-key-id:SECRETSECRETSECRETfalsecret"
QUEUE = "https://queue.fal.run"
# fal's CDN resolves to this public address; PRIVATE_HOST resolves to a private one.
FAL_MEDIA_ADDRESS = "34.120.0.1"
PRIVATE_HOST = "evil.fal.media"


def route_fal_dns(monkeypatch) -> None:
    """Resolve fal's CDN hosts without a network: to FAL_MEDIA_ADDRESS, and PRIVATE_HOST to
    10.1.2.3, which the download's safety checks refuse."""
    real_getaddrinfo = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):
        if host == PRIVATE_HOST:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 443))]
        if host.endswith("fal.media"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (FAL_MEDIA_ADDRESS, 443))]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)


def queue_routes(router, endpoint, result, status=None, request_id="req-123"):
    """One request through fal's queue API at ``endpoint``: it is submitted, reports
    ``status`` (completed by default) and answers ``result``. Returns the submit and cancel
    routes."""
    base = f"{QUEUE}/{endpoint}/requests/{request_id}"
    submit = router.post(f"{QUEUE}/{endpoint}").mock(
        return_value=httpx.Response(
            200,
            json={
                "request_id": request_id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
            },
        )
    )
    router.get(f"{base}/status").mock(
        return_value=httpx.Response(200, json=status or {"status": "COMPLETED", "logs": None})
    )
    router.get(base).mock(return_value=httpx.Response(200, json=result))
    cancel = router.put(f"{base}/cancel").mock(return_value=httpx.Response(202, json={}))
    return submit, cancel


def pinned(url: str) -> dict:
    """Route for a download: it is sent to the checked address, named by its Host header."""
    parts = httpx.URL(url)
    return {"url": str(parts.copy_with(host=FAL_MEDIA_ADDRESS)), "headers": {"host": parts.host}}
