from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from wagtail.admin.forms import WagtailAdminModelForm
from wagtail.images import get_image_model
from wagtail.permissions import policy_registry

from generation import costs
from generation.models import MAX_COUNT, GenerationRequest
from generation.providers import (
    MAX_PROMPT_CHARS,
    available_image_models,
    available_llms,
    image_model_can_edit,
    image_model_can_generate,
)

# Once prompts exist these would no longer describe what was generated.
LOCKED_AFTER_START = ["theme", "brief", "style", "count", "llm", "image_model", "aspect_ratio"]


class CountWithEstimate(forms.NumberInput):
    """The number of images with the request's cost estimate under it, kept current as the
    editor types or picks another model (karasu-cost-estimate, a Stimulus controller)."""

    model_field = "image_model"

    class Media:
        js = ["generation/cost-estimate.js"]

    def __init__(self, attrs=None):
        super().__init__(attrs)
        self.model = ""  # the image model the form shows (GenerationRequestForm sets it)

    def estimate_text(self, value) -> str:
        try:
            count = int(value)
        except (TypeError, ValueError):
            count = 0
        if count < 1 or self.model not in costs.prices():
            return "Estimated cost: enter the number of images."
        price = costs.price_per_image(self.model)
        return (
            f"Estimated cost: {costs.usd(costs.estimate(count, self.model))} "
            f"({count} × {costs.usd(price)} per image)"
        )

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {
            **(attrs or {}),
            "data-karasu-cost-estimate-target": "count",
            "data-action": "input->karasu-cost-estimate#update",
        }
        return format_html(
            '<div data-controller="karasu-cost-estimate" '
            'data-karasu-cost-estimate-prices-value="{}" '
            'data-karasu-cost-estimate-model-field-value="{}">{}'
            '<p class="help" data-karasu-cost-estimate-target="output" aria-live="polite">'
            "{}</p></div>",
            costs.prices_json(),
            self.model_field,
            super().render(name, value, attrs, renderer),
            self.estimate_text(value),
        )


def source_images_for(user):
    """The library images ``user`` may use as a source: those they may choose or edit
    (collection permissions). Without a user (the CLI), every image."""
    if user is None:
        return get_image_model().objects.all()
    policy = policy_registry.get_by_type(get_image_model())
    return policy.instances_user_has_any_permission_for(user, ["choose", "change"])


def default_image_model(editing: bool) -> str:
    """The default image model if it fits the request (editing a source image or making
    images from prompts), else the first available one that does."""
    default = settings.KARASU["DEFAULT_IMAGE_MODEL"]
    fits = image_model_can_edit if editing else image_model_can_generate
    if fits(default):
        return default
    choices = available_image_models(editing=editing)
    return choices[0][0] if choices else default


class SourceImageInput(forms.HiddenInput):
    queryset = None  # the images this form's user may use (set by the form)

    """The request's source image: a hidden id, shown as a thumbnail and its title.

    The add form gets it from "Generate variations" on the image's edit page."""

    def render(self, name, value, attrs=None, renderer=None):
        hidden = super().render(name, value, attrs, renderer)
        image = None
        # Only an image the user may use (the field's queryset): a posted id of another
        # must not show its title or thumbnail; a malformed one shows nothing.
        if (pk := image_pk(value)) is not None and self.queryset is not None:
            image = self.queryset.filter(pk=pk).first()
        if image is None:
            return hidden
        try:
            thumbnail = image.get_rendition("max-165x165")
            preview = format_html(
                '<img src="{}" width="{}" height="{}" alt="">',
                thumbnail.url,
                thumbnail.width,
                thumbnail.height,
            )
        except Exception:  # a missing file: the title says enough
            preview = ""
        return format_html(
            '<section class="w-panel karasu-source-image" aria-label="Source image">'
            '<h2 class="w-label-3">Variations of a library image</h2>'
            "{}<p>Source image: <strong>{}</strong> (#{}). Each image is made by editing "
            "it with the image model below.</p>{}</section>",
            preview,
            image.title,
            image.pk,
            hidden,
        )


def image_pk(value) -> int | None:
    """An image id from user input; None for anything but plain ASCII digits ("²" too)."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() else None


class GenerationRequestForm(WagtailAdminModelForm):
    llm = forms.ChoiceField(label="LLM", choices=[])
    image_model = forms.ChoiceField(choices=[])
    # Not a panel of the snippet's edit handler: declared here, rendered with the form's
    # other unclaimed fields, and set on the instance in clean().
    source_image = forms.ModelChoiceField(
        queryset=get_image_model().objects.none(),
        required=False,
        widget=SourceImageInput,
        error_messages={"invalid_choice": "That image does not exist or you may not use it."},
    )

    class Meta:
        model = GenerationRequest
        fields = [
            "theme",
            "brief",
            "style",
            "count",
            "aspect_ratio",
            "llm",
            "image_model",
            "collection",
            "tags",
            "auto_generate",
        ]
        widgets = {"count": CountWithEstimate}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["llm"].choices = available_llms()
        sources = source_images_for(self.for_user)
        if self.instance.pk and self.instance.source_image_id:
            # A saved draft keeps its source, whoever edits it now (not a copy: copying
            # must not open an image the user may not see).
            sources = sources | get_image_model().objects.filter(pk=self.instance.source_image_id)
            self.initial.setdefault("source_image", self.instance.source_image_id)
        self.fields["source_image"].queryset = sources
        self.fields["source_image"].widget.queryset = sources
        editing = bool(self["source_image"].value())
        # Each model with its price per image; the count shows the estimate as it changes.
        # Every available model validates (clean() explains a misfit); the list offers the
        # ones that fit: editing models for variations of a source image, else the others.
        self.fields["image_model"].choices = [
            (name, costs.price_label(label, costs.price_per_image(name)))
            for name, label in available_image_models()
        ]
        fitting = {name for name, _ in available_image_models(editing=editing)}
        current = self["image_model"].value()
        self.fields["image_model"].widget.choices = [
            (name, label)
            for name, label in self.fields["image_model"].choices
            if name in fitting or (name == current and not self.is_bound)
        ]
        self.fields["count"].widget.attrs.update(min=1, max=MAX_COUNT)
        self.fields["count"].widget.model = self["image_model"].value() or ""
        started = self.instance.status not in (
            GenerationRequest.Status.DRAFT,
            GenerationRequest.Status.FAILED,
        )
        if self.instance.pk and (self.instance.jobs_total or started):
            # From the start on: the LLM is asked for this many prompts of this kind.
            for name in [*LOCKED_AFTER_START, "source_image"]:
                self.fields[name].disabled = True
                self.fields[name].help_text = "Fixed once generation has started."

    def clean_theme(self) -> str:
        theme = " ".join(self.cleaned_data["theme"].split())
        if not theme:
            raise ValidationError("Enter a theme.")
        return theme

    def clean(self):
        cleaned_data = super().clean()
        count, model = cleaned_data.get("count"), cleaned_data.get("image_model")
        source = cleaned_data.get("source_image")
        if model and not self.fields["image_model"].disabled:
            self.check_model_fits(model, source)
        if "source_image" in self.errors:
            # A hidden input shows no errors of its own: say it where the form's errors are.
            self.add_error(None, "Source image: " + " ".join(self.errors["source_image"]))
        elif not self.fields["source_image"].disabled:
            self.instance.source_image = source
        # New requests (copies too), and drafts whose count or model changes: once prompts
        # exist both are fixed, and a draft's other edits do not change what it will cost.
        new = self.instance.pk is None
        if (
            count
            and model
            and not self.instance.jobs_total
            and (new or {"count", "image_model"} & set(self.changed_data))
        ):
            error = costs.budget_error(count, model, exclude_pk=self.instance.pk)
            if error:
                # Nothing is saved, so nothing is started ("Save and generate", the CLI).
                self.add_error(None, error)
        return cleaned_data

    def check_model_fits(self, model: str, source) -> None:
        labels = dict(available_image_models())
        if source is not None and not image_model_can_edit(model):
            editing = ", ".join(label for _, label in available_image_models(editing=True))
            self.add_error(
                "image_model",
                f"{labels.get(model, model)} cannot edit an image, so it cannot make variations "
                f"of a source image. Choose an image-editing model"
                + (f": {editing}." if editing else " (none is configured)."),
            )
        elif source is None and not image_model_can_generate(model):
            self.add_error(
                "image_model",
                f"{labels.get(model, model)} edits an existing image: start from "
                "“Generate variations” on the image's page, or choose another model.",
            )


class PromptForm(forms.Form):
    prompt = forms.CharField(max_length=MAX_PROMPT_CHARS, strip=True)

    def clean_prompt(self) -> str:
        prompt = " ".join(self.cleaned_data["prompt"].split())
        if len(prompt.split()) < 3:
            raise ValidationError("A prompt needs at least three words.")
        return prompt
