import django_filters
from django import forms
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from huey.contrib.djhuey import HUEY

from huey_tasks.models import TaskRun


def task_name_choices():
    # By the name the ledger records for a run (the task class's own name, e.g.
    # "generate_image"), not the registry's dotted key, which no run carries.
    names = {task_class.__name__ for task_class in HUEY._registry._registry.values()}
    return sorted((name, name.rsplit(".", 1)[-1]) for name in names)


class TaskRunFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(label=_("Task id or error"), method="search")
    status = django_filters.ChoiceFilter(
        label=_("Status"), choices=TaskRun.Status.choices, empty_label=_("Any status")
    )
    task_name = django_filters.ChoiceFilter(
        label=_("Task"), choices=task_name_choices, empty_label=_("Any task")
    )
    request = django_filters.NumberFilter(label=_("Request #"), field_name="generation_request_id")
    enqueued_after = django_filters.DateTimeFilter(
        label=_("Enqueued after"),
        field_name="enqueued_at",
        lookup_expr="gte",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    enqueued_before = django_filters.DateTimeFilter(
        label=_("Enqueued before"),
        field_name="enqueued_at",
        lookup_expr="lte",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    class Meta:
        model = TaskRun
        fields = []

    def search(self, queryset, name, value):
        value = value.strip()
        if not value:
            return queryset
        return queryset.filter(Q(task_id__startswith=value) | Q(error_message__icontains=value))
