"""The blocks an article's body is written in, after Wagtail's bakerydemo."""

from django.utils.translation import gettext_lazy as _
from wagtail import blocks
from wagtail.images.blocks import ImageChooserBlock

# What the paragraph editor offers. "image" puts Draftail's image button in the toolbar,
# which opens the image chooser; the chosen image's alt text comes from its format step.
PARAGRAPH_FEATURES = ["h2", "h3", "bold", "italic", "link", "ol", "ul", "image"]


class FigureBlock(blocks.StructBlock):
    """An image from the library with an optional caption. Its alt text is the image's own
    (for a generated image, the one the LLM wrote), so it is not asked for again here."""

    image = ImageChooserBlock()
    caption = blocks.CharBlock(required=False, max_length=255)

    class Meta:
        icon = "image"
        label = _("Image")
        template = "articles/blocks/figure.html"


class ArticleBodyBlock(blocks.StreamBlock):
    heading = blocks.CharBlock(
        max_length=255,
        form_classname="title",
        icon="title",
        template="articles/blocks/heading.html",
    )
    paragraph = blocks.RichTextBlock(features=PARAGRAPH_FEATURES, icon="pilcrow")
    image = FigureBlock()
