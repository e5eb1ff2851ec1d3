from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _
from wagtail.admin.panels import FieldPanel
from wagtail.fields import StreamField
from wagtail.models import Page
from wagtail.search import index

from articles.blocks import ArticleBodyBlock


class ArticlePage(Page):
    """An article of the example site: a hero image, an intro and a body of headings,
    paragraphs and images. Articles live under the home page, which lists them."""

    intro = models.CharField(
        max_length=300,
        blank=True,
        help_text=_("A sentence or two, shown under the title and on the home page."),
    )
    # SET_NULL: deleting an image from the library leaves its articles standing.
    hero_image = models.ForeignKey(
        settings.WAGTAILIMAGES_IMAGE_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    body = StreamField(ArticleBodyBlock(), blank=True)

    content_panels = Page.content_panels + [
        FieldPanel("intro"),
        FieldPanel("hero_image"),
        FieldPanel("body"),
    ]
    search_fields = Page.search_fields + [
        index.SearchField("intro"),
        index.SearchField("body"),
    ]

    parent_page_types = ["cms.HomePage"]
    subpage_types: list[str] = []
