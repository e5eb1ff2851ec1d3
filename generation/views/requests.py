"""The request listing, add, copy and edit views, and the add form's "Save and generate"."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from wagtail.admin.ui.tables import Column
from wagtail.admin.widgets.button import Button
from wagtail.permission_policies.base import BasePermissionPolicy
from wagtail.snippets.action_menu import ActionMenuItem
from wagtail.snippets.views.snippets import CopyView, CreateView, EditView, IndexView

from generation.actions import (
    ACTIONS,
    run,
)
from generation.forms import (
    GenerationRequestForm,
    collections_for,
    default_image_model,
    image_pk,
    source_images_for,
)
from generation.models import GenerationJob, GenerationRequest
from generation.providers import image_model_can_generate


class ProgressColumn(Column):
    cell_template_name = "generation/progress_cell.html"


def action_url(viewset_namespace: str, request: GenerationRequest, name: str) -> str:
    return reverse(f"{viewset_namespace}:action", args=[request.pk, name])


class ActionButtonsMixin:
    """Offer the actions that apply to the request, to users who may change it."""

    def action_buttons(self, instance: GenerationRequest, priority: int = 50) -> list[Button]:
        if not self.permission_policy.user_has_permission(self.request.user, "change"):
            return []
        namespace = self.index_url_name.rsplit(":", 1)[0]
        return [
            Button(
                action.label,
                url=action_url(namespace, instance, action.name),
                icon_name=action.icon,
                priority=priority + i,
            )
            for i, action in enumerate(ACTIONS.values())
            if action.allowed(instance)
        ]


class RequestIndexView(ActionButtonsMixin, IndexView):
    def get_base_queryset(self):
        pending = GenerationJob.objects.filter(
            request=OuterRef("pk"), status=GenerationJob.Status.PENDING
        )
        return super().get_base_queryset().annotate(pending_jobs_exist=Exists(pending))

    def get_list_more_buttons(self, instance):
        return super().get_list_more_buttons(instance) + self.action_buttons(instance)


class RequestEditView(ActionButtonsMixin, EditView):
    @cached_property
    def header_more_buttons(self):
        return self.action_buttons(self.object, priority=5) + super().header_more_buttons


def can_generate(user: Any, permission_policy: BasePermissionPolicy) -> bool:
    """Starting a request needs the change permission, as RequestActionView does."""
    return permission_policy.user_has_permission(user, "change")


class SaveAndGenerateMenuItem(ActionMenuItem):
    """The add form's "Save and generate", sent as ``action-generate`` (RequestCreateView).

    Registered through Wagtail's register_snippet_action_menu_item hook with an order before
    Save's, so it is the form's primary button and Save (a draft) moves to the drop-up.
    """

    name = "action-generate"
    label = gettext_lazy("Save and generate")
    icon_name = "resubmit"
    template_name = "generation/action_menu/save_and_generate.html"

    def is_shown(self, context: dict) -> bool:
        # Only on the add form, where copies post too. An existing request has its own actions.
        return context["view"] == "create" and can_generate(
            context["request"].user, context["model"].snippet_viewset.permission_policy
        )


class RequestCreateView(CreateView):
    """Save, or save and start the request in one step ("Save and generate").

    Wagtail's create view picks ``self.action`` from the ``action-<name>`` button that was
    pressed, among get_available_actions(), and runs ``<name>_action()`` once the form is
    saved; invalid input never gets there, so nothing is started.
    """

    # Set by the viewset (its common view kwargs), where "Save and generate" lands.
    inspect_url_name = None
    generate_message = ""

    def get_initial(self) -> dict[str, Any]:
        """With ``?source_image=<id>`` (from "Generate variations" on an image's edit page),
        start a request for variations of that image with an image-editing model, if the user
        may use it."""
        initial = super().get_initial()
        source_id = self.request.GET.get("source_image", "")
        if self.request.method != "GET" or not source_id:
            return initial
        image = None
        if (pk := image_pk(source_id)) is not None:
            image = source_images_for(self.request.user).filter(pk=pk).first()
        if image is None:
            messages.warning(
                self.request, _("That image does not exist or you may not use it as a source.")
            )
            return initial
        theme = _("Variations of “%(title)s”") % {"title": image.title}
        initial.update(
            source_image=image.pk,
            image_model=default_image_model(editing=True),
            theme=theme if len(theme) <= 500 else theme[:499] + "…",
        )
        return initial

    def get_available_actions(self) -> list[str]:
        actions = [*super().get_available_actions()]
        if self.request.method == "POST" and can_generate(
            self.request.user, self.permission_policy
        ):
            actions.append("generate")
        return actions

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any):
        # Wagtail would quietly fall back to a plain save; refuse instead, before saving.
        if request.POST.get("action-generate") and self.action != "generate":
            raise PermissionDenied
        return super().post(request, *args, **kwargs)

    def generate_action(self) -> None:
        # Run the request page's "Generate" under its own rule, which a new request (a draft
        # without jobs) meets.
        action = ACTIONS["generate"]
        error = None
        if action.allowed(self.object):
            # The budget is checked again as the request starts, under the budget lock. The
            # form's check ran before this save, and another request may have started since.
            self.generate_message, error = run(action, self.object)
        if error:
            messages.warning(self.request, _("Saved as a draft: %(error)s") % {"error": error})
        elif not self.generate_message:
            messages.warning(
                self.request, _("Saved as a draft: generation could not start. Try “Generate”.")
            )
        return None  # Wagtail then answers as for a save (message, get_success_url())

    def get_success_message(self, instance=None) -> str:
        message = super().get_success_message(instance)
        if self.action == "generate" and self.generate_message:
            return f"{message} {self.generate_message}"
        return message

    def get_success_url(self) -> str:
        if self.action == "generate":
            # The request's page, which follows the work as it happens.
            return reverse(self.inspect_url_name, args=[self.object.pk])
        return super().get_success_url()


# What a copy takes from its original: what the editor chose on the form, not what happened
# since. Tags are many-to-many, so they are set on the copy apart.
COPIED_FIELDS = [name for name in GenerationRequestForm.Meta.fields if name != "tags"]


class RequestCopyView(CopyView):
    """A new request with the original's choices, as the add form shows it.

    Wagtail's copy view gives the form the original itself (its pk set), so the form would
    treat the copy as that saved request: the fields fixed once it started disabled, and its
    source image and collection kept whoever copies it. The form gets an unsaved request
    instead, without what this user may not use, and the page says what was left out; the
    copy is posted to the add view, which checks it again as any new request.

    Wagtail's copy view would also accept a POST itself and save the form onto the request
    it copies. That would let users who may only add and view requests edit one, bypassing
    the checks of a new request, so this view answers GET only.
    """

    http_method_names = ["get", "head", "options"]

    def get_initial_form_instance(self) -> GenerationRequest:
        original = super().get_initial_form_instance()  # needs the view or change permission
        copy = GenerationRequest(**{name: getattr(original, name) for name in COPIED_FIELDS})
        copy.tags.set(list(original.tags.all()))
        user = self.request.user
        if original.source_image_id:
            if source_images_for(user).filter(pk=original.source_image_id).exists():
                copy.source_image_id = original.source_image_id
            else:
                messages.warning(
                    self.request,
                    _(
                        "The original makes variations of a library image you may not use: "
                        "this copy starts without it."
                    ),
                )
                if not image_model_can_generate(copy.image_model):
                    # An image-editing model cannot make images from prompts alone.
                    copy.image_model = default_image_model(editing=False)
        allowed = collections_for(user)
        if not allowed.filter(pk=original.collection_id).exists():
            default = GenerationRequest._meta.get_field("collection").get_default()
            copy.collection = allowed.filter(pk=default).first() or allowed.order_by("path").first()
            messages.warning(
                self.request,
                _(
                    "The original files its images into a collection you may not add images "
                    "to: choose one of yours for this copy."
                ),
            )
        return copy
