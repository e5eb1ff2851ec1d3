from django.urls import path

from huey_tasks import registry, views

app_name = "job_monitor"
urlpatterns = [
    path("", views.MonitorView.as_view(), name="index"),
    path("live/", views.LiveView.as_view(), name="live"),
    path("runs/<int:pk>/", views.RunDetailView.as_view(), name="run"),
    path("runs/<int:pk>/retry/", views.RetryRunView.as_view(), name="run_retry"),
    path("runs/<int:pk>/revoke/", views.RevokeRunView.as_view(), name="run_revoke"),
    path("dead-letters/", views.DeadLettersView.as_view(), name="dead_letters"),
    path(
        "dead-letters/<slug:action>/",
        views.DeadLetterActionView.as_view(),
        name="dead_letters_all",
    ),
    path(
        "dead-letters/<str:message_id>/<slug:action>/",
        views.DeadLetterActionView.as_view(),
        name="dead_letter",
    ),
]
# Views of the applications whose tasks the monitor shows (huey_tasks.registry).
urlpatterns += registry.urls()
