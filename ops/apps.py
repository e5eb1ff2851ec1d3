from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OpsConfig(AppConfig):
    """Operations: Prometheus metrics, health checks and the worker liveness probe."""

    name = "ops"
    verbose_name = _("Operations")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from generation.signals import provider_error
        from huey_tasks.signals import heartbeat_crashed
        from ops.counters import on_heartbeat_crash, on_provider_error

        provider_error.connect(on_provider_error, dispatch_uid="ops.count_provider_errors")
        heartbeat_crashed.connect(on_heartbeat_crash, dispatch_uid="ops.count_heartbeat_crashes")
