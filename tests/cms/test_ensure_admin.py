"""`manage.py ensure_admin`, which `make run` runs after the migrations: the first superuser
of a fresh database, and never a second one."""

import io
import re

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db
ENVIRONMENT = ("KARASU_ADMIN_USER", "KARASU_ADMIN_PASSWORD")


def ensure_admin(monkeypatch, **environment: str) -> str:
    """Run the command with exactly ``environment`` of its variables set; its output."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    return out.getvalue()


def logs_in(client, username: str, password: str) -> bool:
    """Whether the admin's login form lets this user in."""
    response = client.post(
        "/admin/login/", {"username": username, "password": password, "next": "/admin/"}
    )
    return response.status_code == 302 and response["Location"] == "/admin/"


def test_a_fresh_database_gets_admin_with_a_password_printed_once(
    monkeypatch, client, django_user_model
):
    out = ensure_admin(monkeypatch)
    [(username, password)] = re.findall(r"Created admin user '([^']+)' with password (\S+)", out)
    assert username == "admin" and len(password) >= 16
    assert logs_in(client, "admin", password)
    assert django_user_model.objects.get().is_superuser

    again = ensure_admin(monkeypatch)
    assert again.strip() == "An admin user exists already."
    assert django_user_model.objects.count() == 1
    assert django_user_model.objects.get().check_password(password)  # not replaced


def test_the_admin_named_by_the_environment(monkeypatch, client, django_user_model):
    password = "烏の-パスワード-2026"
    out = ensure_admin(monkeypatch, KARASU_ADMIN_USER="管理者", KARASU_ADMIN_PASSWORD=password)
    assert out.strip() == "Created admin user '管理者'."  # a chosen password is not printed
    assert logs_in(client, "管理者", password)
    assert list(django_user_model.objects.values_list("username", "is_superuser")) == [
        ("管理者", True)
    ]


def test_users_who_are_not_superusers_do_not_count(monkeypatch, django_user_model):
    django_user_model.objects.create_user("editor", "e@example.com", "pw", is_staff=True)
    out = ensure_admin(monkeypatch)
    assert "Created admin user 'admin' with password" in out
    assert list(
        django_user_model.objects.filter(is_superuser=True).values_list("username", flat=True)
    ) == ["admin"]
