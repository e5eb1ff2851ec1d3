"""``GET /healthz`` (open) and ``GET /metrics`` (Prometheus, behind a bearer token)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.views.decorators.cache import never_cache

from ops import health
from ops import metrics as karasu_metrics

ALLOWED_METHODS = ["GET", "HEAD"]


@never_cache
def healthz(request):
    """200 {"database": "ok", "queue": "ok"} when both answer, else 503 naming the one that
    failed. It needs no authentication, so it says nothing beyond ok or failed. The checks
    run at most once a second per process (health.CHECK_INTERVAL), and no answer comes from
    a result more than a few seconds old (health.LatestResults)."""
    if request.method not in ALLOWED_METHODS:
        return HttpResponseNotAllowed(ALLOWED_METHODS)
    results = health.latest_results.get()
    healthy = all(value == "ok" for value in results.values())
    return JsonResponse(
        {"status": "ok" if healthy else "failed", **results}, status=200 if healthy else 503
    )


def bearer_token(request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authorized(request, expected: str) -> bool:
    given = bearer_token(request)
    # Constant-time, on bytes (compare_digest refuses non-ASCII str).
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def unauthorized() -> HttpResponse:
    response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="karasu metrics"'
    return response


@never_cache
def metrics(request):
    """The Prometheus text format, computed now from the database and the queue storage.

    404 unless KARASU_METRICS_TOKEN is set; 401 without "Authorization: Bearer <token>".
    """
    expected = settings.KARASU_METRICS_TOKEN.strip()
    if not expected:
        raise Http404("metrics are not enabled")
    if not authorized(request, expected):  # first, so nothing is told without the token
        return unauthorized()
    if request.method not in ALLOWED_METHODS:
        return HttpResponseNotAllowed(ALLOWED_METHODS)
    body, content_type = karasu_metrics.render(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
