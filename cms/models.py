from django.db import models
from wagtail.fields import RichTextField
from wagtail.images.models import AbstractImage, AbstractRendition, Image
from wagtail.models import Page
from wagtail.search import index

GENERATED_IMAGES_COLLECTION = "Generated images"


class HomePage(Page):
    intro = RichTextField(blank=True)

    content_panels = Page.content_panels + ["intro"]
    max_count = 1


class KarasuImage(AbstractImage):
    """The image library. Generated images carry their provenance; uploads leave it blank.

    The generation references are plain ids rather than foreign keys so the CMS does not
    depend on the generation app; the unique job id is what makes ingest idempotent. A
    variation's source is another library image, so it is a foreign key (to this model).
    """

    prompt = models.TextField(blank=True, default="")
    image_model = models.CharField(max_length=100, blank=True, default="")
    llm = models.CharField("LLM", max_length=100, blank=True, default="")
    seed = models.BigIntegerField(null=True, blank=True)
    generation_request_id = models.PositiveBigIntegerField(null=True, blank=True, db_index=True)
    generation_job_id = models.PositiveBigIntegerField(null=True, blank=True, unique=True)
    provider_request_id = models.CharField(max_length=255, blank=True, default="")
    # A variation's source image; SET_NULL: deleting the source leaves its variations.
    source_image = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="variations",
        editable=False,
    )

    admin_form_fields = Image.admin_form_fields
    search_fields = AbstractImage.search_fields + [
        index.SearchField("prompt"),
        index.FilterField("generation_request_id"),
    ]

    @property
    def is_generated(self) -> bool:
        return self.generation_job_id is not None


class KarasuRendition(AbstractRendition):
    image = models.ForeignKey(KarasuImage, on_delete=models.CASCADE, related_name="renditions")

    class Meta:
        unique_together = (("image", "filter_spec", "focal_point_key"),)
