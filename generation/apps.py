from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Image generation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from generation import costs  # noqa: F401 - connects the estimate to every save
