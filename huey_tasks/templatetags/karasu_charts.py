"""Activity charts (huey_tasks/charts.py) in templates.

``{% load karasu_charts %}{% request_activity_chart object %}`` on a generation request's
page: its images per minute, one query. The job monitor's chart comes from its view.
"""

from __future__ import annotations

from django import template

from huey_tasks.charts import ActivityChart, request_chart

register = template.Library()


@register.inclusion_tag("huey_tasks/activity_chart.html")
def activity_chart(chart: ActivityChart, chart_id: str = "karasu-activity") -> dict:
    """Render an already computed chart."""
    return {"chart": chart, "chart_id": chart_id}


@register.inclusion_tag("huey_tasks/request_activity.html")
def request_activity_chart(generation_request) -> dict:
    """A request's images per minute over the last hour (or its last hour, once final)."""
    return {
        "chart": request_chart(generation_request),
        "chart_id": f"karasu-request-{generation_request.pk}-activity",
    }
