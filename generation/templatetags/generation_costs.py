"""Cost figures for templates: ``{% request_costs request_obj as costs %}`` and ``|usd``."""

from django import template

from generation import costs

register = template.Library()


@register.simple_tag
def request_costs(request_obj) -> dict:
    return costs.request_costs(request_obj)


@register.filter
def usd(amount) -> str:
    return "" if amount is None else costs.usd(amount)
