"""The example site: articles under the home page, showing generated images with the alt
text the LLM wrote for them (as hero, as a StreamField image and inside rich text)."""

from __future__ import annotations

from html import escape, unescape
from html.parser import HTMLParser

import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from wagtail.images import get_image_model
from wagtail.models import PageViewRestriction
from wagtail.search.backends import get_search_backend
from wagtail.test.utils.form_data import nested_form_data, rich_text, streamfield

from articles.blocks import PARAGRAPH_FEATURES
from articles.models import ArticlePage
from cms.models import HomePage
from tests.support.images import jpeg

pytestmark = pytest.mark.django_db
Image = get_image_model()

# What the LLM wrote, with what a template must escape in it.
ALT = "京都の空を飛ぶ一羽の烏 🐦‍⬛ — “夕暮れ” <script>alert(1)</script>"
IMAGE_TITLE = "烏 · 京都の夕暮れ 🌇"
ARTICLE_TITLE = "京都の烏 & “夜明け” <i>🐦‍⬛</i>"
CAPTION = "鴨川の上で «黄昏» 🌆"


class Elements(HTMLParser):
    """The attributes of every img of a page, and the text of every h1–h3."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.headings: list[tuple[str, str]] = []
        self._heading: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("h1", "h2", "h3"):
            self._heading = tag
            self.headings.append((tag, ""))

    def handle_endtag(self, tag):
        if tag == self._heading:
            self._heading = None

    def handle_data(self, data):
        if self._heading:
            tag, text = self.headings[-1]
            self.headings[-1] = (tag, text + data)


def generated_image(collections, alt: str = ALT) -> Image:
    """A library image as ingest files one: its description is the LLM's alt text."""
    return Image.objects.create(
        title=IMAGE_TITLE,
        description=alt,
        file=ContentFile(jpeg((1600, 900)), name="crow.jpg"),
        collection=collections,
        prompt="A lone crow over Kyoto at dusk, ink wash",
        generation_request_id=1,
        generation_job_id=1,
    )


def home() -> HomePage:
    return HomePage.objects.get()


def publish(article: ArticlePage, parent: HomePage | None = None) -> ArticlePage:
    (parent or home()).add_child(instance=article)
    article.save_revision().publish()
    return article


def test_article_shows_generated_images_with_their_alt_text(client, collections):
    image = generated_image(collections)
    # The alt chosen in the rich text's format step, which the editor may have changed.
    embedded_alt = "烏の横顔 🐦‍⬛ “拡大” <b>"
    article = publish(
        ArticlePage(
            title=ARTICLE_TITLE,
            slug="crows",
            intro="カラスは賢い — “知恵” 🧠",
            hero_image=image,
            body=[
                ("heading", "夕暮れの鴨川 🌆"),
                (
                    "paragraph",
                    '<p>川の上を飛ぶ。</p><embed embedtype="image" format="left" '
                    f'id="{image.pk}" alt="{escape(embedded_alt)}"/>',
                ),
                ("image", {"image": image, "caption": CAPTION}),
            ],
        )
    )

    response = client.get(article.url)

    assert response.status_code == 200
    page = response.content.decode()
    found = Elements(page)
    assert [alt for alt in (img.get("alt") for img in found.images)] == [ALT, embedded_alt, ALT]
    hero, in_text, figure = found.images
    assert "article-hero" in hero["class"] and hero["srcset"].count("w,") == 1
    assert "richtext-image left" in in_text["class"]
    assert figure["srcset"].count("w,") == 1
    # One h1, the title; the body's heading under it.
    assert found.headings == [("h1", ARTICLE_TITLE), ("h2", "夕暮れの鴨川 🌆")]
    assert f"<figcaption>{CAPTION}</figcaption>" in page
    assert "カラスは賢い — “知恵” 🧠" in page
    # LLM and editor text is escaped wherever it lands.
    assert "<script>" not in page and "<i>🐦" not in page and "<b>" not in page
    assert '<html lang="en">' in page and "<main>" in page


def test_home_page_lists_live_articles_with_their_hero_images(client, collections):
    image = generated_image(collections)
    article = publish(ArticlePage(title=ARTICLE_TITLE, slug="crows", hero_image=image))
    publish(ArticlePage(title="文字だけ 📝", slug="text-only", intro="画像なし"))
    draft = ArticlePage(title="下書き 🚧", slug="draft", live=False)
    home().add_child(instance=draft)
    private = publish(ArticlePage(title="会員限定 🔒", slug="members"))
    PageViewRestriction.objects.create(page=private, restriction_type="login")

    response = client.get("/")

    page = response.content.decode()
    found = Elements(page)
    assert [img["alt"] for img in found.images] == [ALT]
    assert ("h3", ARTICLE_TITLE) in found.headings and ("h3", "文字だけ 📝") in found.headings
    assert f'href="{article.url}"' in page
    assert "下書き" not in page
    assert "会員限定" not in page


def test_add_child_page_under_home_offers_the_article_form(editor):
    response = editor.get(reverse("wagtailadmin_pages:add_subpage", args=[home().pk]))

    # The article is the only page type Home takes, so Wagtail goes straight to its form.
    assert response.status_code == 302
    form_url = reverse("wagtailadmin_pages:add", args=["articles", "articlepage", home().pk])
    assert response["Location"] == form_url
    form = editor.get(form_url).content.decode()
    assert 'name="intro"' in form and 'name="hero_image"' in form
    assert '<div id="body" data-block data-controller="w-block"' in form
    # The paragraph's toolbar has the image button, which opens the image chooser.
    settings = unescape(form)
    assert '"type": "IMAGE"' in settings
    assert '"imageChooser": "/admin/images/chooser/"' in settings


def test_article_written_in_the_admin_is_published_under_home(editor, client, collections):
    image = generated_image(collections)
    embedded_alt = "川面の烏 🐦‍⬛ “近景”"
    paragraph = (
        "<p>烏は<b>賢い</b>。</p>"
        f'<embed embedtype="image" format="fullwidth" id="{image.pk}" alt="{embedded_alt}"/>'
    )
    data = nested_form_data(
        {
            "title": ARTICLE_TITLE,
            "slug": "kyoto-crows",
            "intro": "鴨川の烏について 🐦‍⬛",
            "hero_image": image.pk,
            "body": streamfield(
                [
                    ("heading", "見たもの"),
                    ("paragraph", rich_text(paragraph, features=PARAGRAPH_FEATURES)),
                    ("image", {"image": image.pk, "caption": CAPTION}),
                ]
            ),
            "action-publish": "action-publish",
        }
    )

    response = editor.post(
        reverse("wagtailadmin_pages:add", args=["articles", "articlepage", home().pk]), data
    )

    assert response.status_code == 302, response.content.decode()[:3000]
    article = ArticlePage.objects.get(slug="kyoto-crows")
    assert article.live and article.get_parent().specific == home()
    assert article.hero_image == image
    assert [block.block_type for block in article.body] == ["heading", "paragraph", "image"]

    listed = Elements(client.get("/").content.decode())
    assert ("h3", ARTICLE_TITLE) in listed.headings
    assert [img["alt"] for img in listed.images] == [ALT]
    shown = Elements(client.get(article.url).content.decode())
    # The hero, the image kept in the rich text with its format step's alt, the figure.
    assert [img["alt"] for img in shown.images] == [ALT, embedded_alt, ALT]


def test_article_intro_and_body_are_in_the_search_index(collections):
    """The admin's page search matches titles only (autocomplete); a site search runs
    this query, and finds articles by their words."""
    article = publish(
        ArticlePage(
            title="烏の記事 🐦‍⬛",
            slug="searchable",
            intro="“Corvidae” の話",
            body=[("paragraph", "<p>Karasumori shrine at dawn 🌅</p>")],
        )
    )
    get_search_backend().add(article)  # what the worker's index task does after a save

    for words in ("Karasumori", "Corvidae"):
        assert list(ArticlePage.objects.live().search(words)) == [article], words


def test_articles_disclose_ai_generated_images_and_not_uploaded_ones(client, collections):
    """The example pages use {% ai_disclosure %}: next to a generated hero image, on the
    article and on the home page's card, and in an image block's caption; never next to an
    uploaded photo."""
    from cms.provenance import TRAINED_ALGORITHMIC_MEDIA

    generated = generated_image(collections)
    Image.objects.filter(pk=generated.pk).update(digital_source_type=TRAINED_ALGORITHMIC_MEDIA)
    uploaded = Image.objects.create(
        title="A photo 写真", file=ContentFile(jpeg((800, 600)), name="photo.jpg")
    )
    with_ai = publish(
        ArticlePage(
            title="烏の記事",
            slug="ai",
            hero_image=generated,
            body=[("image", {"image": generated, "caption": ""})],
        )
    )
    without = publish(
        ArticlePage(
            title="写真の記事",
            slug="photo",
            hero_image=uploaded,
            body=[("image", {"image": uploaded, "caption": "鴨川"})],
        )
    )
    assert client.get(with_ai.url).content.decode().count(">AI-generated</span>") == 2
    assert ">AI-generated</span>" not in client.get(without.url).content.decode()
    assert client.get(home().url).content.decode().count(">AI-generated</span>") == 1
