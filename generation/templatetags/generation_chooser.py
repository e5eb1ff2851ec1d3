from django import template

from generation.views.chooser import can_generate_in_chooser, tab_context

register = template.Library()


@register.simple_tag(takes_context=True)
def generate_tab(context) -> dict | None:
    """The image chooser's Generate tab, or None where it is not shown: to users who may not
    start requests, and when several images are chosen at once (candidates are chosen one by
    one)."""
    request = context.get("request")
    if request is None or context.get("is_multiple_choice"):
        return None
    if not can_generate_in_chooser(request.user):
        return None
    return tab_context(request)
