"""Images whose tags change without a save (Wagtail's bulk "Add tags" action, or
``image.tags.add()`` anywhere) are indexed again, so a search finds their new tags.

Wagtail re-indexes an object when it is saved; taggit's ``tags.add()`` writes the tag links
alone, so the index kept the old tags. Karasu's own filing writes an image's tag links with
``bulk_create`` before Wagtail indexes it, which sends no signal and so costs no second
index update.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import m2m_changed
from django.dispatch import receiver
from modelsearch.tasks import insert_or_update_object_task

from cms.models import KarasuImage

TAG_CHANGES = {"post_add", "post_remove", "post_clear"}


@receiver(m2m_changed, sender=KarasuImage.tags.through)
def reindex_image_on_tag_change(sender, instance, action: str, **kwargs) -> None:
    # The through model (taggit's TaggedItem) is shared by every tagged model.
    if action not in TAG_CHANGES or not isinstance(instance, KarasuImage):
        return
    # After commit, as Wagtail's own save signal queues it, so the task reads the new tags.
    app_label, model_name, pk = instance._meta.app_label, instance._meta.model_name, instance.pk
    transaction.on_commit(
        lambda: insert_or_update_object_task.enqueue(app_label, model_name, str(pk))
    )
