from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from wagtail.admin.forms import WagtailAdminModelForm

from generation.models import MAX_COUNT, GenerationRequest
from generation.providers import MAX_PROMPT_CHARS, available_image_models, available_llms

# Once prompts exist these would no longer describe what was generated.
LOCKED_AFTER_START = ["theme", "brief", "style", "count", "llm", "image_model", "aspect_ratio"]


class GenerationRequestForm(WagtailAdminModelForm):
    llm = forms.ChoiceField(label="LLM", choices=[])
    image_model = forms.ChoiceField(choices=[])

    class Meta:
        model = GenerationRequest
        fields = [
            "theme", "brief", "style", "count", "aspect_ratio", "llm", "image_model",
            "collection", "tags", "auto_generate",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["llm"].choices = available_llms()
        self.fields["image_model"].choices = available_image_models()
        self.fields["count"].widget.attrs.update(min=1, max=MAX_COUNT)
        if self.instance.pk and self.instance.jobs_total:
            for name in LOCKED_AFTER_START:
                self.fields[name].disabled = True
                self.fields[name].help_text = "Fixed once the prompts have been written."

    def clean_theme(self) -> str:
        theme = " ".join(self.cleaned_data["theme"].split())
        if not theme:
            raise ValidationError("Enter a theme.")
        return theme


class PromptForm(forms.Form):
    prompt = forms.CharField(max_length=MAX_PROMPT_CHARS, strip=True)

    def clean_prompt(self) -> str:
        prompt = " ".join(self.cleaned_data["prompt"].split())
        if len(prompt.split()) < 3:
            raise ValidationError("A prompt needs at least three words.")
        return prompt

