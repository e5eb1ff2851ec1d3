from django.contrib.auth.models import Permission
from django.urls import include, path, reverse
from django.utils.translation import gettext_lazy as _
from wagtail import hooks

from ops.logins import LoginLockoutsMenuItem, LoginLockoutsView, ResetLockoutView

lockout_urls = [
    path("", LoginLockoutsView.as_view(), name="index"),
    path("results/", LoginLockoutsView.as_view(results_only=True), name="results"),
    path("reset/", ResetLockoutView.as_view(), name="reset"),
]


@hooks.register("register_admin_urls")
def register_login_lockout_urls():
    return [
        path(
            "login-lockouts/",
            include((lockout_urls, "login_lockouts"), namespace="login_lockouts"),
        )
    ]


@hooks.register("register_settings_menu_item")
def register_login_lockouts_menu_item():
    return LoginLockoutsMenuItem(
        _("Login lock-outs"), reverse("login_lockouts:index"), icon_name="lock", order=910
    )


@hooks.register("register_permissions")
def login_lockout_permissions():
    # So that a group can be allowed to see the lock-outs (lifting one stays a superuser's).
    return Permission.objects.filter(content_type__app_label="axes", codename="view_accessattempt")
