from django.core.files import File
from django.db import models
from django.db.models import prefetch_related_objects
from django.http import HttpRequest
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from wagtail.fields import RichTextField
from wagtail.images.models import AbstractImage, AbstractRendition, Filter, Image
from wagtail.models import Page
from wagtail.search import index

from cms.cjk import CJK_FIELD, cjk_index_text
from cms.provenance import mark_rendition, marking_for, xmp

GENERATED_IMAGES_COLLECTION = "Generated images"

# IPTC's digital source types of what Karasu files (cms/provenance); "" for an upload.
DIGITAL_SOURCE_TYPES = [
    (xmp.TRAINED_ALGORITHMIC_MEDIA, _("AI-generated")),
    (xmp.COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA, _("AI-edited (a variation of another image)")),
]

PROVENANCE_FIELDS = ("digital_source_type", "provenance_marked", "c2pa_manifest", "provenance_note")
FILE_REPLACED_NOTE = (
    "The generated file was replaced by an upload: this file and its renditions are not "
    "marked as AI-generated."
)


class HomePage(Page):
    """The site's root page. It takes any page type that may live under it (the example
    site's articles say so themselves, so this app need not know of them) and lists its
    live, public children, newest first."""

    intro = RichTextField(blank=True)

    content_panels = Page.content_panels + ["intro"]
    max_count = 1

    def get_context(self, request: HttpRequest, *args, **kwargs) -> dict:
        context = super().get_context(request, *args, **kwargs)
        # The listing shows no body: its StreamFields are not loaded.
        context["articles"] = (
            self.get_children()
            .live()
            .public()
            .specific()
            .defer_streamfields()
            .order_by("-first_published_at")
        )
        return context


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
    # A variation's source image. SET_NULL, so deleting the source leaves its variations.
    source_image = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="variations",
        editable=False,
    )
    # Provenance inside the files (cms/provenance). The digital source type is set when a
    # generated image is filed and never for an upload: it is what marks the original and
    # every rendition. provenance_id names the original in XMP (xmpMM:DocumentID and
    # InstanceID, the latter also its C2PA manifest's instance_id); the rest records what
    # was done to the original and, in provenance_note, why not more.
    digital_source_type = models.CharField(
        max_length=64, blank=True, default="", choices=DIGITAL_SOURCE_TYPES, editable=False
    )
    provenance_id = models.UUIDField(null=True, blank=True, editable=False)
    provenance_marked = models.BooleanField(
        "Original marked", default=False, editable=False, help_text="Its file carries the XMP."
    )
    c2pa_manifest = models.CharField(
        "C2PA manifest", max_length=255, blank=True, default="", editable=False
    )
    provenance_note = models.TextField(blank=True, default="", editable=False)

    admin_form_fields = Image.admin_form_fields
    search_fields = AbstractImage.search_fields + [
        index.SearchField("prompt"),
        # The words inside Chinese, Japanese and Korean text, which the database backends
        # cannot find on their own (cms/search.py): as a search field and, for the admin's
        # listing and chooser, which autocomplete, as an autocomplete field.
        index.SearchField(CJK_FIELD),
        index.AutocompleteField(CJK_FIELD),
        index.FilterField("generation_request_id"),
        index.FilterField("digital_source_type"),
    ]

    class Meta(AbstractImage.Meta):
        # As Wagtail's own image model names itself, so its translations apply.
        verbose_name = _("image")
        verbose_name_plural = _("images")

    def cjk_search_terms(self) -> str:
        """The CJK pieces of what the library's search looks at: title, alt text, tags."""
        tags = []
        if self.pk is not None:
            # The indexer reads every search field three times (title, body, autocomplete):
            # prefetched here, the tags serve every later read, Wagtail's tag field's too.
            # taggit drops them from the instance when they change.
            prefetch_related_objects([self], "tags")
            tags = [tag.name for tag in self.tags.all()]
        return cjk_index_text(self.title, self.description, *tags)

    @property
    def is_generated(self) -> bool:
        return self.generation_job_id is not None

    @property
    def is_ai_generated(self) -> bool:
        """Whether the image was made by an AI model (generated, or a variation): what a
        page discloses next to it, and what its files are marked with."""
        return bool(self.digital_source_type)

    @property
    def ai_disclosure(self) -> str:
        """The words a page shows next to the image ("AI-generated"), or "" for an
        upload."""
        return gettext("AI-generated") if self.is_ai_generated else ""

    @property
    def is_signed(self) -> bool:
        return bool(self.c2pa_manifest)

    def provenance_marking(self, rendition: bool = False) -> xmp.Marking:
        """What the XMP of this image's original (or of a rendition of it) says."""
        return marking_for(
            self.digital_source_type, self.image_model, self.provenance_id, rendition=rendition
        )

    def save(self, *args, **kwargs) -> None:
        """Save; when the file was replaced (the edit form's upload), its provenance goes:
        the new file is not the generated one, so neither it nor its renditions may say
        they are AI-generated or signed."""
        update_fields = kwargs.get("update_fields")
        if (
            self.pk is not None
            and (update_fields is None or "file" in update_fields)
            and (self.digital_source_type or self.provenance_marked or self.c2pa_manifest)
        ):
            stored = type(self).objects.filter(pk=self.pk).values_list("file", flat=True).first()
            if stored is not None and stored != self.file.name:
                self.digital_source_type = ""
                self.provenance_marked = False
                self.c2pa_manifest = ""
                self.provenance_note = FILE_REPLACED_NOTE
                if update_fields is not None:
                    kwargs["update_fields"] = {*update_fields, *PROVENANCE_FIELDS}
        super().save(*args, **kwargs)

    def generate_rendition_file(self, filter: Filter, *, source: File = None) -> File:
        """Wagtail's rendition, marked in XMP as its original is when the image is
        AI-generated. Every rendition is made here, one at a time or several at once."""
        rendition = super().generate_rendition_file(filter, source=source)
        if not self.digital_source_type:
            return rendition  # an upload is never marked
        return mark_rendition(rendition, self.provenance_marking(rendition=True))


class KarasuRendition(AbstractRendition):
    image = models.ForeignKey(KarasuImage, on_delete=models.CASCADE, related_name="renditions")

    class Meta:
        unique_together = (("image", "filter_spec", "focal_point_key"),)
