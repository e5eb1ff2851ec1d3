from django.templatetags.static import static
from django.urls import path
from django.utils.html import format_html
from wagtail import hooks
from wagtail.admin.panels import FieldPanel, FieldRowPanel, MultiFieldPanel, ObjectList
from wagtail.admin.ui.tables import Column, UpdatedAtColumn
from wagtail.snippets.models import register_snippet
from wagtail.snippets.views.snippets import SnippetViewSet

from generation.costs import cost_cell
from generation.forms import GenerationRequestForm
from generation.models import GenerationRequest
from generation.views import (
    JobGenerateView,
    JobPromptView,
    ProgressColumn,
    RequestActionView,
    RequestCreateView,
    RequestEditView,
    RequestIndexView,
    RequestInspectView,
    RequestLiveView,
    SaveAndGenerateMenuItem,
)


class GenerationRequestViewSet(SnippetViewSet):
    model = GenerationRequest
    icon = "image"
    menu_label = "Generation requests"
    menu_order = 250
    add_to_admin_menu = True
    index_view_class = RequestIndexView
    add_view_class = RequestCreateView
    edit_view_class = RequestEditView
    inspect_view_class = RequestInspectView
    inspect_view_enabled = True
    copy_view_enabled = True
    list_display = [
        "theme",
        Column("status", label="Status", accessor="get_status_display", sort_key="status"),
        ProgressColumn("progress", label="Progress"),
        Column("image_model", label="Image model", sort_key="image_model"),
        Column("count", label="Images", sort_key="count"),
        Column("cost", label="Cost (USD)", accessor=cost_cell, sort_key="cost_spent"),
        UpdatedAtColumn(),
    ]
    list_filter = ["status", "image_model", "llm"]
    list_per_page = 25
    search_fields = ["theme", "brief"]
    edit_handler = ObjectList(
        [
            FieldPanel("theme"),
            FieldPanel("brief"),
            FieldPanel("style"),
            FieldRowPanel([FieldPanel("count"), FieldPanel("aspect_ratio")]),
            MultiFieldPanel(
                [FieldRowPanel([FieldPanel("llm"), FieldPanel("image_model")])],
                heading="Models",
            ),
            MultiFieldPanel(
                [FieldPanel("collection"), FieldPanel("tags"), FieldPanel("auto_generate")],
                heading="Image library",
            ),
        ],
        base_form_class=GenerationRequestForm,
    )

    def get_urlpatterns(self):
        common = {
            "permission_policy": self.permission_policy,
            "inspect_url_name": self.get_url_name("inspect"),
        }
        # The request page's live part: the inspect view's permissions and options.
        live_view = self.construct_view(
            RequestLiveView,
            **self.get_inspect_view_kwargs(template_name=RequestLiveView.template_name),
        )
        return super().get_urlpatterns() + [
            path("live/<int:pk>/", live_view, name="live"),
            path(
                "action/<int:pk>/<slug:action>/",
                RequestActionView.as_view(**common),
                name="action",
            ),
            path("job/<int:job_id>/prompt/", JobPromptView.as_view(**common), name="job_prompt"),
            path(
                "job/<int:job_id>/generate/",
                JobGenerateView.as_view(**common),
                name="job_generate",
            ),
        ]


register_snippet(GenerationRequestViewSet)


@hooks.register("register_snippet_action_menu_item")
def save_and_generate_menu_item(model):
    # Before Save (order 0): the primary action of a new request; Save keeps a draft.
    if model is GenerationRequest:
        return SaveAndGenerateMenuItem(order=-10)
    return None


@hooks.register("insert_global_admin_css")
def generation_admin_css():
    return format_html('<link rel="stylesheet" href="{}">', static("generation/admin.css"))
