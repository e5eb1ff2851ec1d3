from __future__ import annotations

import html

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db.models import QuerySet
from django.utils.formats import get_format
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from wagtail.admin.forms import WagtailAdminModelForm
from wagtail.images import get_image_model
from wagtail.models import Collection
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
from generation.providers.prompting import MIN_PROMPT_WORDS, word_count

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
            return _("Estimated cost: enter the number of images.")
        price = costs.price_per_image(self.model)
        return _("Estimated cost: %(total)s (%(count)s × %(price)s per image)") % {
            "total": costs.usd(costs.estimate(count, self.model)),
            "count": count,
            "price": costs.usd(price),
        }

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {
            **(attrs or {}),
            "data-karasu-cost-estimate-target": "count",
            "data-action": "input->karasu-cost-estimate#update",
        }
        # The script writes the same texts as estimate_text(), in the editor's language: they
        # come from here, with the active language's number separators.
        return format_html(
            '<div data-controller="karasu-cost-estimate" '
            'data-karasu-cost-estimate-prices-value="{}" '
            'data-karasu-cost-estimate-model-field-value="{}" '
            'data-karasu-cost-estimate-empty-text-value="{}" '
            'data-karasu-cost-estimate-text-value="{}" '
            'data-karasu-cost-estimate-decimal-separator-value="{}" '
            'data-karasu-cost-estimate-thousand-separator-value="{}">{}'
            '<p class="help" data-karasu-cost-estimate-target="output" aria-live="polite">'
            "{}</p></div>",
            costs.prices_json(),
            self.model_field,
            _("Estimated cost: enter the number of images."),
            _("Estimated cost: %(total)s (%(count)s × %(price)s per image)"),
            get_format("DECIMAL_SEPARATOR"),
            get_format("THOUSAND_SEPARATOR"),
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


def collections_for(user) -> QuerySet[Collection]:
    """The collections ``user`` may file a request's images into: those where they may add
    images (collection permissions). Without a user (the CLI), every collection."""
    if user is None:
        return Collection.objects.all()
    policy = policy_registry.get_by_type(get_image_model())
    return policy.collections_user_has_permission_for(user, "add")


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
    """The request's source image: a hidden id, shown as a thumbnail and its title.

    The add form gets it from "Generate variations" on the image's edit page."""

    queryset = None  # the images this form's user may use (set by the form)
    kept_pk = None  # a saved request's source the user may not use, kept but never shown

    def render(self, name, value, attrs=None, renderer=None):
        hidden = super().render(name, value, attrs, renderer)
        image = None
        pk = image_pk(value)
        # Only an image the user may use (the queryset) is shown. Another image's posted id,
        # or a saved draft's source they may not choose or change, must not reveal its title
        # or thumbnail. A malformed id shows nothing.
        if pk is not None and self.queryset is not None:
            image = self.queryset.filter(pk=pk).first()
        if image is None:
            if pk is not None and pk == self.kept_pk:
                # The editor still needs to know the request edits an image (its model must
                # be an image-editing one), without learning which.
                return format_html(
                    '<section class="w-panel karasu-source-image" aria-label="{}">'
                    '<h2 class="w-label-3">{}</h2><p>{}</p>{}</section>',
                    _("Source image"),
                    _("Variations of a library image"),
                    element_text(
                        _(
                            "The source image is in a collection you may not use, so it is not "
                            "shown. It stays this request's source."
                        )
                    ),
                    hidden,
                )
            return hidden
        try:
            thumbnail = image.get_rendition("max-165x165")
            preview = format_html(
                '<img src="{}" width="{}" height="{}" alt="">',
                thumbnail.url,
                thumbnail.width,
                thumbnail.height,
            )
        except Exception:  # the file is missing, and the title says enough
            preview = ""
        description = format_html(
            _(
                "Source image: <strong>{title}</strong> (#{pk}). Each image is made by editing "
                "it with the image model below."
            ),
            title=image.title,
            pk=image.pk,
        )
        return format_html(
            '<section class="w-panel karasu-source-image" aria-label="{}">'
            '<h2 class="w-label-3">{}</h2>{}<p>{}</p>{}</section>',
            _("Source image"),
            _("Variations of a library image"),
            preview,
            description,
            hidden,
        )


def element_text(text: str) -> SafeString:
    """Text for an element's content, escaped as such: quotes and apostrophes are left as
    they are (they need escaping only in attributes)."""
    return mark_safe(html.escape(text, quote=False))


def image_pk(value) -> int | None:
    """An image id from user input; None for anything but plain ASCII digits ("²" too)."""
    text = str(value or "")
    return int(text) if text.isascii() and text.isdigit() else None


class GenerationRequestForm(WagtailAdminModelForm):
    llm = forms.ChoiceField(label=gettext_lazy("LLM"), choices=[])
    image_model = forms.ChoiceField(label=gettext_lazy("Image model"), choices=[])
    # This is not a panel of the snippet's edit handler. It is declared here, rendered with
    # the form's other unclaimed fields, and set on the instance in clean().
    source_image = forms.ModelChoiceField(
        queryset=get_image_model().objects.none(),
        required=False,
        widget=SourceImageInput,
        error_messages={
            "invalid_choice": gettext_lazy("That image does not exist or you may not use it.")
        },
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
        error_messages = {
            "collection": {
                "invalid_choice": gettext_lazy(
                    "You may not add images to that collection. Choose one of those listed."
                )
            }
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["llm"].choices = available_llms()
        usable = source_images_for(self.for_user)
        sources = usable
        source_id = self.instance.source_image_id
        if source_id:
            self.initial.setdefault("source_image", source_id)
        if self.instance.pk and source_id:
            # A saved draft keeps its source whoever edits it now, but it is shown only to
            # those who may use it. A copy is a new instance (RequestCopyView), so copying
            # never opens an image the user may not use.
            sources = sources | get_image_model().objects.filter(pk=source_id)
            self.fields["source_image"].widget.kept_pk = source_id
        self.fields["source_image"].queryset = sources
        self.fields["source_image"].widget.queryset = usable
        collections = collections_for(self.for_user)
        if self.instance.pk and self.instance.collection_id:
            # Likewise a saved request keeps its collection whoever edits it now. Another
            # collection may be chosen only among those this user may add images to.
            collections = collections | Collection.objects.filter(pk=self.instance.collection_id)
        self.fields["collection"].queryset = collections
        editing = bool(self["source_image"].value())
        # Each model is listed with its price per image, and the count shows the estimate
        # as it changes. Every available model validates, and clean() explains a misfit. The
        # list offers the models that fit: editing models for variations of a source image,
        # the others otherwise.
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
            # These are fixed once generation starts, because the LLM is asked for this many
            # prompts of this kind.
            for name in [*LOCKED_AFTER_START, "source_image"]:
                self.fields[name].disabled = True
                self.fields[name].help_text = _("Fixed once generation has started.")

    def clean_theme(self) -> str:
        theme = " ".join(self.cleaned_data["theme"].split())
        if not theme:
            raise ValidationError(_("Enter a theme."))
        return theme

    def clean(self):
        cleaned_data = super().clean()
        count, model = cleaned_data.get("count"), cleaned_data.get("image_model")
        source = cleaned_data.get("source_image")
        if model and not self.fields["image_model"].disabled:
            self.check_model_fits(model, source)
        if "source_image" in self.errors:
            # A hidden input shows no errors of its own, so report them with the form's.
            self.add_error(
                None,
                _("Source image: %(errors)s") % {"errors": " ".join(self.errors["source_image"])},
            )
        elif not self.fields["source_image"].disabled:
            self.instance.source_image = source
        # Check the budget for new requests (copies too) and for drafts whose count or model
        # changes. Once prompts exist both are fixed, and a draft's other edits do not change
        # what it will cost.
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
            if editing:
                message = _(
                    "%(model)s cannot edit an image, so it cannot make variations of a source "
                    "image. Choose an image-editing model: %(models)s."
                )
            else:
                message = _(
                    "%(model)s cannot edit an image, so it cannot make variations of a source "
                    "image. Choose an image-editing model (none is configured)."
                )
            self.add_error(
                "image_model", message % {"model": labels.get(model, model), "models": editing}
            )
        elif source is None and not image_model_can_generate(model):
            self.add_error(
                "image_model",
                _(
                    "%(model)s edits an existing image: start from “Generate variations” on "
                    "the image's page, or choose another model."
                )
                % {"model": labels.get(model, model)},
            )


class PromptForm(forms.Form):
    prompt = forms.CharField(max_length=MAX_PROMPT_CHARS, strip=True)

    def clean_prompt(self) -> str:
        prompt = " ".join(self.cleaned_data["prompt"].split())
        # Counted as the LLM's prompts are, so a Japanese or Chinese prompt (no spaces)
        # is not taken for one word.
        if word_count(prompt) < MIN_PROMPT_WORDS:
            raise ValidationError(_("A prompt needs at least three words."))
        return prompt


# The Generate tab of the image chooser asks for a handful of candidates to choose from.
CHOOSER_MAX_COUNT = 8
CHOOSER_DEFAULT_COUNT = 4


def chooser_collections_for(user) -> QuerySet[Collection]:
    """Where the chooser files its candidates: collections where ``user`` may add images
    and choose them, so every candidate can be chosen."""
    policy = policy_registry.get_by_type(get_image_model())
    return collections_for(user) & policy.collections_user_has_permission_for(user, "choose")


class ChooserGenerationForm(forms.ModelForm):
    """The Generate tab's form: a prompt (the request's theme) and a few candidates."""

    image_model = forms.ChoiceField(label=gettext_lazy("Image model"), choices=[])

    class Meta:
        model = GenerationRequest
        fields = ["theme", "count", "image_model", "aspect_ratio", "collection"]
        labels = {"theme": gettext_lazy("Prompt")}
        help_texts = {"theme": gettext_lazy("What the images should show, in any language.")}
        widgets = {
            "theme": forms.Textarea(attrs={"rows": 3}),
            "count": CountWithEstimate,
        }
        error_messages = GenerationRequestForm.Meta.error_messages

    # Its fields' ids must not clash with those of the edit form behind the modal.
    prefix = "karasu-generate"

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["count"].widget.model_field = self.add_prefix("image_model")
        self.fields["image_model"].choices = [
            (name, costs.price_label(label, costs.price_per_image(name)))
            for name, label in available_image_models(editing=False)
        ]
        self.fields["count"].validators.append(MaxValueValidator(CHOOSER_MAX_COUNT))
        self.fields["count"].widget.attrs.update(min=1, max=CHOOSER_MAX_COUNT)
        collections = chooser_collections_for(user)
        self.fields["collection"].queryset = collections
        self.fields["collection"].empty_label = None
        if not self.is_bound:
            self.initial["count"] = CHOOSER_DEFAULT_COUNT
            self.initial["image_model"] = default_image_model(editing=False)
            # "Generated images" (the model's default) where the user may use it.
            default = self.get_initial_for_field(self.fields["collection"], "collection")
            if not collections.filter(pk=default).exists():
                self.initial["collection"] = getattr(collections.first(), "pk", None)
        self.fields["count"].widget.model = self["image_model"].value() or ""

    def clean_theme(self) -> str:
        # Blank input is refused as required; line breaks and runs of spaces are folded.
        return " ".join(self.cleaned_data["theme"].split())

    def clean(self):
        cleaned_data = super().clean()
        count, model = cleaned_data.get("count"), cleaned_data.get("image_model")
        if count and model:
            # Checked again under the budget lock as the request starts (the view).
            if error := costs.budget_error(count, model):
                self.add_error(None, error)
        return cleaned_data
