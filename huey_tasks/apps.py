from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class HueyTasksConfig(AppConfig):
    name = "huey_tasks"
    verbose_name = _("Task queue")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from huey.contrib.djhuey import HUEY

        from huey_tasks import ledger

        if not settings.KARASU.get("LEDGER", True):
            return  # the job monitor then shows queue figures only
        HUEY.signal()(ledger.on_signal)
        if hasattr(HUEY, "on_consumer_event"):
            HUEY.on_consumer_event(ledger.worker_event)
