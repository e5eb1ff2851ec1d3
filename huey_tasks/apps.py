from django.apps import AppConfig


class HueyTasksConfig(AppConfig):
    name = "huey_tasks"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from huey.contrib.djhuey import HUEY

        from huey_tasks import ledger

        HUEY.signal()(ledger.on_signal)
        if hasattr(HUEY, "on_consumer_event"):
            HUEY.on_consumer_event(ledger.worker_event)
