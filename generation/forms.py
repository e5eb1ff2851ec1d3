from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from wagtail.admin.forms import WagtailAdminModelForm

from generation import costs
from generation.models import MAX_COUNT, GenerationRequest
from generation.providers import MAX_PROMPT_CHARS, available_image_models, available_llms

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
            costs.prices_json(), self.model_field,
            super().render(name, value, attrs, renderer), self.estimate_text(value),
        )


class GenerationRequestForm(WagtailAdminModelForm):
    llm = forms.ChoiceField(label="LLM", choices=[])
    image_model = forms.ChoiceField(choices=[])

    class Meta:
        model = GenerationRequest
        fields = [
            "theme", "brief", "style", "count", "aspect_ratio", "llm", "image_model",
            "collection", "tags", "auto_generate",
        ]
        widgets = {"count": CountWithEstimate}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["llm"].choices = available_llms()
        self.fields["image_model"].choices = available_image_models()
        # Each model with its price per image; the count shows the estimate as it changes.
        self.fields["image_model"].choices = [
            (name, costs.price_label(label, costs.price_per_image(name)))
            for name, label in self.fields["image_model"].choices
        ]
        self.fields["count"].widget.attrs.update(min=1, max=MAX_COUNT)
        self.fields["count"].widget.model = self["image_model"].value() or ""
        if self.instance.pk and self.instance.jobs_total:
            for name in LOCKED_AFTER_START:
                self.fields[name].disabled = True
                self.fields[name].help_text = "Fixed once the prompts have been written."

    def clean_theme(self) -> str:
        theme = " ".join(self.cleaned_data["theme"].split())
        if not theme:
            raise ValidationError("Enter a theme.")
        return theme

    def clean(self):
        cleaned_data = super().clean()
        count, model = cleaned_data.get("count"), cleaned_data.get("image_model")
        # New requests (copies too), and drafts whose count or model changes: once prompts
        # exist both are fixed, and a draft's other edits do not change what it will cost.
        new = self.instance.pk is None
        if count and model and not self.instance.jobs_total and (
            new or {"count", "image_model"} & set(self.changed_data)
        ):
            error = costs.budget_error(count, model, exclude_pk=self.instance.pk)
            if error:
                # Nothing is saved, so nothing is started ("Save and generate", the CLI).
                self.add_error(None, error)
        return cleaned_data


class PromptForm(forms.Form):
    prompt = forms.CharField(max_length=MAX_PROMPT_CHARS, strip=True)

    def clean_prompt(self) -> str:
        prompt = " ".join(self.cleaned_data["prompt"].split())
        if len(prompt.split()) < 3:
            raise ValidationError("A prompt needs at least three words.")
        return prompt

