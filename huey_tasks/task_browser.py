"""The raw TaskRun browser, on wagtail-modeladmin (index with filters + inspect view).

Kept in this one module so it can move to a ``ModelViewSet`` in one step.
"""

from django.utils.translation import gettext_lazy as _
from wagtail_modeladmin.helpers import PermissionHelper
from wagtail_modeladmin.options import ModelAdmin
from wagtail_modeladmin.views import InspectView

from huey_tasks import registry
from huey_tasks.models import TaskRun

# The ledger's links to the rows a run is for (declared by name, see models.py).
LINK_FIELDS = ("generation_request", "generation_job")


class ReadOnlyPermissionHelper(PermissionHelper):
    """The ledger is written by Huey's signals only."""

    def user_can_create(self, user):
        return False

    def user_can_edit_obj(self, user, obj):
        return False

    def user_can_delete_obj(self, user, obj):
        return False


class TaskRunInspectView(InspectView):
    """A run's links name what it is for (a request's theme, a job's prompt). Only users
    who may see content get the names; the others get the ids."""

    def get_field_display_value(self, field_name, field=None):
        if field_name in LINK_FIELDS and not registry.may_see_content(self.request.user):
            linked_id = getattr(self.instance, f"{field_name}_id")
            return (
                f"#{linked_id}"
                if linked_id
                else self.model_admin.get_empty_value_display(field_name)
            )
        return super().get_field_display_value(field_name, field)


class TaskRunAdmin(ModelAdmin):
    model = TaskRun
    menu_label = _("Task runs")
    menu_icon = "list-ul"
    menu_order = 901
    add_to_settings_menu = True
    permission_helper_class = ReadOnlyPermissionHelper
    inspect_view_enabled = True
    inspect_view_class = TaskRunInspectView
    list_display = (
        "task_id",
        "task_name",
        "status",
        "attempts",
        "deliveries",
        "enqueued_at",
        "duration",
        "error_message",
    )
    list_filter = ("status", "task_name")
    search_fields = ("task_id", "error_message")
    list_per_page = 50
    inspect_view_fields = (
        "task_name",
        "task_id",
        "status",
        "attempts",
        "deliveries",
        "args",
        "enqueued_at",
        "started_at",
        "finished_at",
        "duration",
        "worker_host",
        "worker_pid",
        "worker_thread",
        "error_class",
        "error_message",
        "traceback",
        "log",
        "generation_request",
        "generation_job",
    )
