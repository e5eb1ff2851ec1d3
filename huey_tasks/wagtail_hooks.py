from django.templatetags.static import static
from django.urls import include, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from wagtail import hooks
from wagtail.admin.menu import MenuItem
from wagtail.admin.ui.components import Component
from wagtail_modeladmin.options import modeladmin_register

from huey_tasks import urls
from huey_tasks.monitor import headline
from huey_tasks.task_browser import TaskRunAdmin
from huey_tasks.views import permission_policy

modeladmin_register(TaskRunAdmin)


@hooks.register("register_admin_urls")
def register_job_monitor_urls():
    return [path("job-monitor/", include((urls, "job_monitor"), namespace="job_monitor"))]


class JobMonitorMenuItem(MenuItem):
    def is_shown(self, request):
        return permission_policy.user_has_permission(request.user, "view")


@hooks.register("register_admin_menu_item")
def register_job_monitor_menu_item():
    return JobMonitorMenuItem(
        _("Job monitor"), reverse("job_monitor:index"), icon_name="tasks", order=260
    )


class JobMonitorPanel(Component):
    name = "job_monitor"
    order = 90
    template_name = "huey_tasks/dashboard_panel.html"

    def get_context_data(self, parent_context):
        return {"stats": headline(), "monitor_url": reverse("job_monitor:index")}


@hooks.register("construct_homepage_panels")
def add_job_monitor_panel(request, panels):
    if permission_policy.user_has_permission(request.user, "view"):
        panels.append(JobMonitorPanel())


@hooks.register("insert_global_admin_js")
def monitor_poll_controller():
    return format_html('<script src="{}"></script>', static("huey_tasks/poll-controller.js"))
