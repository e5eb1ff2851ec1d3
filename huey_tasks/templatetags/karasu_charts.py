"""Activity charts (huey_tasks/charts.py) in templates.

``{% load karasu_charts %}{% activity_chart chart %}`` draws a chart computed by a view
(the job monitor's; a generation request's has its own tag in ``generation_charts``).
"""

from __future__ import annotations

from django import template

from huey_tasks.charts import ActivityChart

register = template.Library()


@register.inclusion_tag("huey_tasks/activity_chart.html")
def activity_chart(chart: ActivityChart, chart_id: str = "karasu-activity") -> dict:
    """Render an already computed chart."""
    return {"chart": chart, "chart_id": chart_id}
