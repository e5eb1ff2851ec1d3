"""Addresses of the generation request snippet's admin views, and posting its actions."""

from __future__ import annotations

from django.urls import reverse

from generation.models import GenerationRequest

NS = "wagtailsnippets_generation_generationrequest"


def action_url(name: str, request: GenerationRequest) -> str:
    return reverse(f"{NS}:action", args=[request.pk, name])


def act(client, request: GenerationRequest, action: str):
    """POST the request action ``action`` (generate, cancel, ...) as ``client``."""
    return client.post(action_url(action, request))


def page_url(request: GenerationRequest, **query: object) -> str:
    """The request page (the snippet's inspect view), with ``query`` as its query string."""
    url = reverse(f"{NS}:inspect", args=[request.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
