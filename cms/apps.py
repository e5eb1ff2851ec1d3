from django.apps import AppConfig


class CmsConfig(AppConfig):
    name = "cms"
    verbose_name = "Karasu CMS"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for what they register: the settings check, and the receiver that
        # re-indexes an image whose tags change without a save.
        from cms import checks, signals  # noqa: F401
