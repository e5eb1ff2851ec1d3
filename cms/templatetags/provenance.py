"""Disclosing AI-generated images on the site.

    {% load provenance %}
    {% image page.photo width-800 %}
    {% ai_disclosure page.photo %}

renders ``<span class="ai-disclosure">AI-generated</span>`` next to an AI-generated image
(generated, or a variation), and nothing next to an uploaded one. A template that wants its
own markup tests ``image.is_ai_generated`` (or shows ``image.ai_disclosure``, the words).
"""

from __future__ import annotations

from django import template
from django.utils.html import format_html

register = template.Library()


@register.simple_tag
def ai_disclosure(image, css_class: str = "ai-disclosure") -> str:
    """The disclosure of an image (or of a rendition's image), or "" when it needs none."""
    image = getattr(image, "image", image)  # a rendition stands for its image
    words = getattr(image, "ai_disclosure", "")
    if not words:
        return ""
    return format_html(
        '<span class="{}" data-digital-source-type="{}">{}</span>',
        css_class,
        image.digital_source_type,
        words,
    )
