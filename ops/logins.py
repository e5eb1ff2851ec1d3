"""Login throttling with django-axes: the client's address behind proxies, the page a locked
out sign-in gets, and the admin's list of lock-outs with their reset.

Axes counts failed sign-ins per user name and per address (``AXES_LOCKOUT_PARAMETERS``) and
refuses both once either reaches ``AXES_FAILURE_LIMIT`` within ``AXES_COOLOFF_TIME`` (see
cms/settings/base.py). Its own screens are Django admin ones, which Karasu does not serve:
administrators see and lift lock-outs here, in the Wagtail admin.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any

from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from axes.utils import reset
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views import View
from wagtail.admin.menu import MenuItem
from wagtail.admin.ui.tables import Column, DateColumn
from wagtail.admin.views.reports import ReportView
from wagtail.permission_policies import ModelPermissionPolicy

permission_policy = ModelPermissionPolicy(AccessAttempt)

# "[2001:db8::1]", "[2001:db8::1]:443" and "1.2.3.4:5678" (one colon, so never a bare IPv6).
HOST_AND_PORT = re.compile(r"\[(?P<ipv6>[^\]]*)\](?::[0-9]{1,5})?|(?P<host>[^:]*):[0-9]{1,5}")


def client_ip_address(request: HttpRequest) -> str | None:
    """The address a sign-in came from (``AXES_CLIENT_IP_CALLABLE``), in its canonical form.

    Behind ``KARASU_PROXY_COUNT`` reverse proxies that each append the address they were
    reached from to X-Forwarded-For, the client is the ``count``-th entry from the end. The
    outermost proxy wrote it, and anything further left is the client's own claim. Without
    proxies, with fewer entries than proxies (a request that did not come through them), or
    when that entry is not an address, it is the connection's own address, or None when that
    is not an address either.
    """
    count = settings.KARASU_PROXY_COUNT
    forwarded = [
        part.strip()
        for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        if part.strip()
    ]
    if count and len(forwarded) >= count:
        address = ip_address_or_none(forwarded[-count])
        if address is not None:
            return address
    return ip_address_or_none(request.META.get("REMOTE_ADDR", ""))


def ip_address_or_none(text: str) -> str | None:
    """``text`` as an IPv4 or IPv6 address in canonical form, without the port or brackets
    some proxies write (``1.2.3.4:5678``, ``[2001:db8::1]:443``); None when it is not one.

    Axes stores the address in a GenericIPAddressField. On PostgreSQL (an ``inet`` column)
    anything else fails the sign-in with a database error, and two spellings of one address
    would be counted apart.
    """
    text = text.strip()
    if with_port := HOST_AND_PORT.fullmatch(text):
        text = with_port["ipv6"] if with_port["ipv6"] is not None else with_port["host"]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A zone (fe80::1%eth0) means something only on the proxy's host, and inet refuses it.
    if getattr(address, "scope_id", None):
        return None
    # A dual-stack proxy writes an IPv4 client as ::ffff:1.2.3.4; count it as that client.
    return str(getattr(address, "ipv4_mapped", None) or address)


def cool_off_minutes() -> int:
    cool_off = get_cool_off() or timedelta(0)
    return max(1, round(cool_off.total_seconds() / 60))


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """The sign-in page's answer once a user name or address is locked out
    (``AXES_LOCKOUT_CALLABLE``). It is a 429 in the admin's look that does not say which of
    the two is locked, since that would tell a guesser whether the user name exists."""
    # Rendered now, because the middleware answers after the view, when responses are no
    # longer rendered.
    return render(request, "ops/login_locked_out.html", {"minutes": cool_off_minutes()}, status=429)


def may_reset(user: Any) -> bool:
    """Only superusers may lift a lock-out, as that lets password guessing go on."""
    return bool(user.is_active and user.is_superuser)


class LockoutActionsColumn(Column):
    cell_template_name = "ops/lockout_actions_cell.html"

    def get_cell_context_data(self, instance, parent_context):
        context = super().get_cell_context_data(instance, parent_context)
        request = parent_context["request"]
        # The table's cells are rendered without the request, but the forms need its token.
        context.update(
            csrf_token=get_token(request),
            can_reset=may_reset(request.user),
            reset_url=reverse("login_lockouts:reset"),
        )
        return context


def lock_status(attempt: AccessAttempt) -> str:
    if attempt.username_locked and attempt.address_locked:
        return _("Locked out (user name and address)")
    if attempt.username_locked:
        return _("Locked out (user name)")
    if attempt.address_locked:
        return _("Locked out (address)")
    return _("Counting")


class LoginLockoutsView(ReportView):
    """Failed sign-ins as axes counts them, newest first, with what each one locks."""

    page_title = gettext_lazy("Login lock-outs")
    header_icon = "lock"
    index_url_name = "login_lockouts:index"
    index_results_url_name = "login_lockouts:results"
    permission_policy = permission_policy
    permission_required = "view"
    model = AccessAttempt
    default_ordering = "-attempt_time"
    paginate_by = 50
    columns = [
        Column("username", label=gettext_lazy("User name"), sort_key="username"),
        Column("ip_address", label=gettext_lazy("Address"), sort_key="ip_address"),
        Column(
            "failures_since_start",
            label=gettext_lazy("Failed sign-ins"),
            sort_key="failures_since_start",
        ),
        DateColumn("attempt_time", label=gettext_lazy("Last failure"), sort_key="attempt_time"),
        Column("status", label=gettext_lazy("Status"), accessor=lock_status),
        Column("user_agent", label=gettext_lazy("Browser")),
        LockoutActionsColumn("actions", label=""),
    ]

    def decorate_paginated_queryset(self, object_list):
        """Mark each row with whether its user name and its address are locked out now,
        that is, whether their failures within the cool-off, over all rows, reach the limit
        (as axes decides). Two queries for the page, whatever its length."""
        attempts = list(object_list)
        recent = AccessAttempt.objects.filter(
            attempt_time__gte=timezone.now() - (get_cool_off() or timedelta(days=36500))
        )
        limit = settings.AXES_FAILURE_LIMIT
        by_username = dict(
            recent.filter(username__in={a.username for a in attempts if a.username})
            .values("username")
            .annotate(failures=Sum("failures_since_start"))
            .values_list("username", "failures")
        )
        by_address = dict(
            recent.filter(ip_address__in={a.ip_address for a in attempts if a.ip_address})
            .values("ip_address")
            .annotate(failures=Sum("failures_since_start"))
            .values_list("ip_address", "failures")
        )
        for attempt in attempts:
            attempt.username_locked = by_username.get(attempt.username, 0) >= limit
            attempt.address_locked = by_address.get(attempt.ip_address, 0) >= limit
        return attempts

    def get_context_data(self, *args, **kwargs):
        context = super().get_context_data(*args, **kwargs)
        context["no_results_message"] = _("No failed sign-ins are recorded.")
        return context


class ResetLockoutView(View):
    """POST ``username`` or ``ip_address``: forget that user name's or address's failed
    sign-ins, which lifts its lock-out."""

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> HttpResponse:
        if not may_reset(request.user):
            raise PermissionDenied
        username = request.POST.get("username", "")
        address = request.POST.get("ip_address", "")
        if username:
            reset(username=username)
            messages.success(request, _("User name “%(name)s” unlocked.") % {"name": username})
        elif address:
            reset(ip=address)
            messages.success(request, _("Address %(address)s unlocked.") % {"address": address})
        else:
            messages.error(request, _("Name a user name or an address to unlock."))
        return redirect("login_lockouts:index")


class LoginLockoutsMenuItem(MenuItem):
    def is_shown(self, request: HttpRequest) -> bool:
        return permission_policy.user_has_permission(request.user, "view")
