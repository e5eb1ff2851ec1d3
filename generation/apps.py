from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = _("Image generation")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import pre_delete
        from wagtail.images import get_image_model

        from generation import (
            checks,  # noqa: F401 - registers the price check
            costs,  # noqa: F401 - connects the estimate to every save
            monitoring,
            services,
        )

        monitoring.register()  # what the job monitor shows and does for the pipeline

        def source_image_deleted(sender, instance, **kwargs) -> None:
            services.source_image_deleted(instance.pk)

        # Connected to pre_delete because, once the row is gone, SET_NULL hides which
        # requests it was the source of.
        pre_delete.connect(
            source_image_deleted,
            sender=get_image_model(),
            weak=False,
            dispatch_uid="generation.source_image_deleted",
        )
