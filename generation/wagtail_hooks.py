from django.templatetags.static import static
from django.urls import path
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from wagtail import hooks
from wagtail.admin.panels import FieldPanel, FieldRowPanel, MultiFieldPanel, ObjectList
from wagtail.admin.ui.tables import Column, UpdatedAtColumn
from wagtail.snippets.models import register_snippet
from wagtail.snippets.views.snippets import SnippetViewSet

from generation.costs import cost_cell
from generation.forms import GenerationRequestForm
from generation.models import GenerationRequest
from generation.views import (
    ChooserGenerateView,
    ChooserRecentView,
    JobGenerateView,
    JobPromptView,
    ProgressColumn,
    RequestActionView,
    RequestCopyView,
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
    menu_label = _("Generation requests")
    menu_order = 250
    add_to_admin_menu = True
    index_view_class = RequestIndexView
    add_view_class = RequestCreateView
    edit_view_class = RequestEditView
    inspect_view_class = RequestInspectView
    inspect_view_enabled = True
    copy_view_enabled = True
    copy_view_class = RequestCopyView
    list_display = [
        "theme",
        Column("status", label=_("Status"), accessor="get_status_display", sort_key="status"),
        ProgressColumn("progress", label=_("Progress")),
        Column("image_model", label=_("Image model"), sort_key="image_model"),
        Column("count", label=_("Images"), sort_key="count"),
        Column("cost", label=_("Cost (USD)"), accessor=cost_cell, sort_key="cost_spent"),
        UpdatedAtColumn(),
    ]
    list_filter = ["status", "image_model", "llm", "from_chooser"]
    list_per_page = 25
    # No search_fields: the listing searches GenerationRequest's own index, which the search
    # backend can read (SQLite FTS5 has no "theme" column) and which holds the CJK pieces.
    edit_handler = ObjectList(
        [
            FieldPanel("theme"),
            FieldPanel("brief"),
            FieldPanel("style"),
            FieldRowPanel([FieldPanel("count"), FieldPanel("aspect_ratio")]),
            MultiFieldPanel(
                [FieldRowPanel([FieldPanel("llm"), FieldPanel("image_model")])],
                heading=_("Models"),
            ),
            MultiFieldPanel(
                [FieldPanel("collection"), FieldPanel("tags"), FieldPanel("auto_generate")],
                heading=_("Image library"),
            ),
        ],
        base_form_class=GenerationRequestForm,
    )

    def get_urlpatterns(self):
        common = {
            "permission_policy": self.permission_policy,
            "inspect_url_name": self.get_url_name("inspect"),
        }
        # The request page's live part takes the inspect view's permissions and options.
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
            # The image chooser's Generate tab (its own permission checks).
            path("chooser/generate/", ChooserGenerateView.as_view(), name="chooser_generate"),
            path("chooser/recent/", ChooserRecentView.as_view(), name="chooser_recent"),
        ]


register_snippet(GenerationRequestViewSet)


@hooks.register("register_snippet_action_menu_item")
def save_and_generate_menu_item(model):
    # Ordered before Save (order 0), so it is a new request's primary action and Save
    # keeps a draft.
    if model is GenerationRequest:
        return SaveAndGenerateMenuItem(order=-10)
    return None


@hooks.register("insert_global_admin_css")
def generation_admin_css():
    return format_html('<link rel="stylesheet" href="{}">', static("generation/admin.css"))


@hooks.register("insert_global_admin_js")
def chooser_generate_js():
    # Every admin page may open the image chooser, whose Generate tab needs these two; both
    # are deferred until Wagtail's own scripts have run.
    return format_html(
        '<script defer src="{}"></script><script defer src="{}"></script>',
        static("generation/chooser-generate.js"),
        static("generation/cost-estimate.js"),
    )
