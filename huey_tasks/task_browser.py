"""The raw TaskRun browser, on wagtail-modeladmin (index with filters + inspect view).

Kept in this one module so it can move to a ``ModelViewSet`` in one step.
"""

from wagtail_modeladmin.helpers import PermissionHelper
from wagtail_modeladmin.options import ModelAdmin

from huey_tasks.models import TaskRun


class ReadOnlyPermissionHelper(PermissionHelper):
    """The ledger is written by Huey's signals only."""

    def user_can_create(self, user):
        return False

    def user_can_edit_obj(self, user, obj):
        return False

    def user_can_delete_obj(self, user, obj):
        return False


class TaskRunAdmin(ModelAdmin):
    model = TaskRun
    menu_label = "Task runs"
    menu_icon = "list-ul"
    menu_order = 901
    add_to_settings_menu = True
    permission_helper_class = ReadOnlyPermissionHelper
    inspect_view_enabled = True
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
