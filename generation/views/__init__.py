"""The pipeline's admin views, by page: requests (listing, add, copy, edit), a request's page and
its live part, the actions on requests and prompts, and the image chooser's Generate tab."""

from generation.views.actions import JobGenerateView, JobPromptView, RequestActionView
from generation.views.chooser import ChooserGenerateView, ChooserRecentView
from generation.views.request_page import RequestInspectView, RequestLiveView
from generation.views.requests import (
    ProgressColumn,
    RequestCopyView,
    RequestCreateView,
    RequestEditView,
    RequestIndexView,
    SaveAndGenerateMenuItem,
)

__all__ = [
    "ChooserGenerateView",
    "ChooserRecentView",
    "JobGenerateView",
    "JobPromptView",
    "ProgressColumn",
    "RequestActionView",
    "RequestCopyView",
    "RequestCreateView",
    "RequestEditView",
    "RequestIndexView",
    "RequestInspectView",
    "RequestLiveView",
    "SaveAndGenerateMenuItem",
]
