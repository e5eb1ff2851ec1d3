"""``{% load generation_charts %}{% request_activity_chart object %}`` on a generation
request's page: its images per minute over the last hour, one query."""

from __future__ import annotations

from django import template

from generation.charts import request_chart

register = template.Library()


@register.inclusion_tag("generation/request_activity.html")
def request_activity_chart(generation_request) -> dict:
    """A request's images per minute over the last hour (or its last hour, once final)."""
    return {
        "chart": request_chart(generation_request),
        "chart_id": f"karasu-request-{generation_request.pk}-activity",
    }
