from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: Prometheus metrics, health checks and the worker liveness probe."""

    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"
