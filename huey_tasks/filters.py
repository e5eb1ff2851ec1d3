import django_filters
from django import forms
from django.db.models import Q
from huey.contrib.djhuey import HUEY

from huey_tasks.models import TaskRun


def task_name_choices():
    return sorted((name, name.rsplit(".", 1)[-1]) for name in HUEY._registry._registry)


class TaskRunFilterSet(django_filters.FilterSet):
    q = django_filters.CharFilter(label="Task id or error", method="search")
    status = django_filters.ChoiceFilter(choices=TaskRun.Status.choices, empty_label="Any status")
    task_name = django_filters.ChoiceFilter(
        label="Task", choices=task_name_choices, empty_label="Any task"
    )
    request = django_filters.NumberFilter(label="Request #", field_name="generation_request_id")
    enqueued_after = django_filters.DateTimeFilter(
        label="Enqueued after",
        field_name="enqueued_at",
        lookup_expr="gte",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    enqueued_before = django_filters.DateTimeFilter(
        label="Enqueued before",
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
