"""The image library's listing, with a filter for AI-generated images.

Wagtail 8 has no viewset for the image library and no hook for its filters, so its two
listing URLs (the page and the results that its filters fetch) are registered again here,
ahead of Wagtail's own (``order=-1``), with Wagtail's view and a filter set that adds one
filter. Their names, permissions, templates and everything else stay Wagtail's.
"""

from __future__ import annotations

import django_filters
from django import forms
from django.urls import path
from django.utils.translation import gettext_lazy as _
from wagtail import hooks
from wagtail.images.views.images import ImagesFilterSet, IndexView

ORIGINS = [("ai", _("AI-generated")), ("uploaded", _("Uploaded"))]


class KarasuImagesFilterSet(ImagesFilterSet):
    origin = django_filters.ChoiceFilter(
        label=_("Origin"),
        choices=ORIGINS,
        method="filter_origin",
        empty_label=_("Any"),
        widget=forms.RadioSelect,
    )

    class Meta(ImagesFilterSet.Meta):
        fields = []

    def filter_origin(self, queryset, name, value):
        # digital_source_type is set on every generated image, and a FilterField, so this
        # also narrows a search.
        if value == "ai":
            return queryset.exclude(digital_source_type="")
        if value == "uploaded":
            return queryset.filter(digital_source_type="")
        return queryset


class KarasuImageIndexView(IndexView):
    filterset_class = KarasuImagesFilterSet


@hooks.register("register_admin_urls", order=-1)
def image_library_with_origin_filter():
    return [
        path("images/", KarasuImageIndexView.as_view()),
        path("images/results/", KarasuImageIndexView.as_view(results_only=True)),
    ]
