"""What the generation request form posts, for the admin tests."""

from wagtail.models import Collection


def request_form_data(**fields) -> dict:
    """A valid add form for the demo models; ``fields`` override or add fields."""
    return {
        "theme": "Crows over Kyoto",
        "brief": "",
        "style": "",
        "count": 4,
        "llm": "demo",
        "image_model": "demo",
        "aspect_ratio": "1:1",
        "collection": Collection.objects.get(name="Generated images").pk,
        "tags": "",
        "auto_generate": "on",
        **fields,
    }
