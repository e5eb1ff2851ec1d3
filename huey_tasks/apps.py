from django.apps import AppConfig


class HueyTasksConfig(AppConfig):
    name = "huey_tasks"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"
