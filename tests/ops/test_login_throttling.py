"""The admin's sign-in is throttled (django-axes): failed sign-ins per user name and per
address lock both out for the cool-off, and administrators see and lift lock-outs in the
Wagtail admin. Through Django's test client and the real sign-in form, with the settings'
defaults (5 failures, 15 minutes)."""

import datetime

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/"
LOCKOUTS = "/admin/login-lockouts/"
NAME, PASSWORD = "管理者", "鴉は夜明けに鳴く"
LOCKED_PAGE = "Too many failed sign-ins. Try again in 15 minutes"


@pytest.fixture
def staff(django_user_model):
    """A user who may use the admin, with a password to guess."""
    user = django_user_model.objects.create_user(NAME, "kanri@example.com", PASSWORD)
    group = Group.objects.create(name="管理画面")
    group.permissions.add(Permission.objects.get(codename="access_admin"))
    user.groups.add(group)
    return user


def sign_in(username: str, password: str, address: str = "203.0.113.10", **headers):
    """One sign-in through the admin's form from ``address``; the response and the client."""
    client = Client(REMOTE_ADDR=address, **headers)
    response = client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})
    return response, client


def signed_in(response, client) -> bool:
    return response.status_code == 302 and client.get("/admin/").status_code == 200


def test_the_defaults_are_five_failures_and_a_quarter_of_an_hour():
    assert django_settings.AXES_FAILURE_LIMIT == 5
    assert django_settings.AXES_COOLOFF_TIME == datetime.timedelta(minutes=15)


def test_five_failures_for_a_user_name_lock_it_from_every_address(staff, django_user_model):
    for i in range(4):
        response, _ = sign_in(NAME, f"違うパスワード{i}", address=f"203.0.113.{i + 1}")
        assert response.status_code == 200  # the form again, with its error
    # The fifth failure is answered with the lock-out.
    response, _ = sign_in(NAME, "違うパスワード4", address="203.0.113.5")
    assert response.status_code == 429 and LOCKED_PAGE in response.content.decode()
    # The right password, from yet another address: refused, and nothing signed in.
    response, client = sign_in(NAME, PASSWORD, address="198.51.100.99")
    assert response.status_code == 429
    assert LOCKED_PAGE in response.content.decode()
    assert client.get("/admin/").status_code == 302  # to the sign-in page
    # Other users, from those addresses too, are not locked out by it.
    django_user_model.objects.create_superuser("編集者", "h@example.com", "別の合言葉")
    assert signed_in(*sign_in("編集者", "別の合言葉", address="203.0.113.1"))


def test_five_failures_from_an_address_lock_every_user_name_there(staff):
    for i in range(4):
        response, _ = sign_in(f"鴉{i}", "当てずっぽう", address="198.51.100.7")
        assert response.status_code == 200
    assert sign_in("鴉4", "当てずっぽう", address="198.51.100.7")[0].status_code == 429
    response, _ = sign_in(NAME, PASSWORD, address="198.51.100.7")
    assert response.status_code == 429 and LOCKED_PAGE in response.content.decode()
    assert signed_in(*sign_in(NAME, PASSWORD, address="198.51.100.8"))


def test_the_lock_lifts_after_the_cool_off(staff):
    for _ in range(5):
        sign_in(NAME, "違う")
    assert sign_in(NAME, PASSWORD)[0].status_code == 429
    # A quarter of an hour and a minute later (the failures are dated back).
    AccessAttempt.objects.update(attempt_time=timezone.now() - datetime.timedelta(minutes=16))
    assert signed_in(*sign_in(NAME, PASSWORD))


def test_signing_in_to_ones_own_account_does_not_reset_the_guessing(staff, django_user_model):
    django_user_model.objects.create_superuser("内部の人", "n@example.com", "自分の合言葉")
    for _ in range(4):
        assert sign_in(NAME, "違う")[0].status_code == 200
    assert signed_in(*sign_in("内部の人", "自分の合言葉"))  # from the same address
    assert sign_in(NAME, "違う")[0].status_code == 429
    assert sign_in(NAME, PASSWORD, address="198.51.100.1")[0].status_code == 429


def test_behind_a_proxy_the_address_is_the_one_the_proxy_saw(staff, settings):
    settings.KARASU_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    # One client guessing, whatever it claims further left in X-Forwarded-For.
    for i in range(5):
        sign_in(f"鴉{i}", "当てずっぽう", proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, 203.0.113.66")
    assert sign_in(NAME, PASSWORD, proxy, HTTP_X_FORWARDED_FOR="203.0.113.66")[0].status_code == 429
    # Another client through the same proxy is not locked out by it.
    assert signed_in(*sign_in(NAME, PASSWORD, proxy, HTTP_X_FORWARDED_FOR="203.0.113.67"))
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.66"}


def test_administrators_see_lockouts_and_superusers_lift_them(staff, editor, limited_editor):
    for i in range(5):
        sign_in(NAME, "違う", address=f"203.0.113.{i + 1}")
    for i in range(2):
        sign_in(f"鴉{i}", "当てずっぽう", address="198.51.100.7")

    root = editor  # a superuser
    assert LOCKOUTS in root.get("/admin/").content.decode()  # in the Settings menu
    page = root.get(LOCKOUTS)
    assert page.status_code == 200
    body = page.content.decode()
    assert body.count("Locked out (user name)") == 5  # its five addresses, none locked
    assert body.count("Counting") == 2 and "鴉1" in body and "198.51.100.7" in body
    assert body.count("Unlock user name") == 7 and body.count("Unlock address") == 7

    # Without a permission on lock-outs, nothing of them; with the view one, no unlocking.
    nobody = limited_editor()
    assert LOCKOUTS not in nobody.get("/admin/").content.decode()
    refused = nobody.get(LOCKOUTS)
    assert refused.status_code in (302, 403) and NAME not in refused.content.decode()
    viewer = limited_editor("view_accessattempt")
    body = viewer.get(LOCKOUTS).content.decode()
    assert body.count("Locked out (user name)") == 5 and "Unlock" not in body
    viewer.post(reverse("login_lockouts:reset"), {"username": NAME})
    assert sign_in(NAME, PASSWORD)[0].status_code == 429

    response = root.post(reverse("login_lockouts:reset"), {"username": NAME}, follow=True)
    assert f"User name “{NAME}” unlocked." in response.content.decode()
    assert "Locked out" not in response.content.decode()
    assert signed_in(*sign_in(NAME, PASSWORD))
    root.post(reverse("login_lockouts:reset"), {"ip_address": "198.51.100.7"})
    assert not AccessAttempt.objects.exists()


# What proxies and clients put in X-Forwarded-For besides a bare address: the address with
# a port, an IPv6 one in brackets (with a port or not), and the same address spelt otherwise.
SAME_CLIENT_SPELLINGS = {
    "203.0.113.66": [
        "203.0.113.66:5678",
        "203.0.113.66:40001",
        "203.0.113.66",
        "::ffff:203.0.113.66",
    ],
    "2001:db8::1": ["[2001:db8::1]:443", "[2001:DB8::1]:52000", "[2001:db8::1]", "2001:db8:0::1"],
}


@pytest.mark.parametrize("address", sorted(SAME_CLIENT_SPELLINGS))
def test_a_forwarded_address_with_a_port_or_brackets_counts_as_that_address(
    staff, settings, address
):
    settings.KARASU_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    # One client guessing from a new source port each time: five failures lock it out.
    spellings = SAME_CLIENT_SPELLINGS[address]
    for i, forwarded in enumerate([*spellings, spellings[0]]):
        response, _ = sign_in(f"鴉{i}", "当てずっぽう", proxy, HTTP_X_FORWARDED_FOR=forwarded)
        assert response.status_code == (200 if i < 4 else 429), forwarded
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {address}
    response, _ = sign_in(NAME, PASSWORD, proxy, HTTP_X_FORWARDED_FOR=spellings[0])
    assert response.status_code == 429
    # The proxy's other clients still sign in.
    assert signed_in(*sign_in(NAME, PASSWORD, proxy, HTTP_X_FORWARDED_FOR="203.0.113.67:443"))


@pytest.mark.parametrize(
    "forwarded",
    ["unknown", "203.0.113.66:http", "[2001:db8::1", "fe80::1%eth0", "東京", "203.0.113.300"],
)
def test_a_forwarded_entry_that_is_not_an_address_counts_as_the_connection(
    staff, settings, forwarded
):
    settings.KARASU_PROXY_COUNT = 1
    proxy = "10.0.0.2"
    response, _ = sign_in(NAME, "違う", proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.1, {forwarded}")
    assert response.status_code == 200  # the form again, with its error
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == [proxy]
    assert signed_in(*sign_in(NAME, PASSWORD, proxy, HTTP_X_FORWARDED_FOR=forwarded))


def test_on_postgresql_every_forwarded_spelling_signs_in_and_unlocks(staff, editor):
    """PostgreSQL stores the address in an inet column, which refuses anything but an
    address: there an unparsed X-Forwarded-For entry failed every sign-in with a 500."""
    from django.db import DataError, connection, transaction
    from django.test import override_settings

    if connection.vendor != "postgresql":
        pytest.skip("runs on PostgreSQL (TEST_DATABASE_URL)")
    # The refusal the sign-in would otherwise meet: psycopg's own (ValueError) before the
    # value is sent, or the server's (DataError).
    with pytest.raises((DataError, ValueError)), transaction.atomic():
        AccessAttempt.objects.create(username="x", ip_address="203.0.113.66:5678", user_agent="")

    root = editor  # a superuser
    with override_settings(KARASU_PROXY_COUNT=1):
        for i, forwarded in enumerate(["203.0.113.66:5678", "[2001:db8::1]:443", "unknown"]):
            response, _ = sign_in(f"鴉{i}", "違う", "10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
            assert response.status_code == 200, forwarded
        assert signed_in(*sign_in(NAME, PASSWORD, "10.0.0.2", HTTP_X_FORWARDED_FOR="[::1]:8"))
    body = root.get(LOCKOUTS).content.decode()
    assert all(a in body for a in ["203.0.113.66", "2001:db8::1", "10.0.0.2"])
    root.post(reverse("login_lockouts:reset"), {"ip_address": "2001:db8::1"})
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {
        "203.0.113.66",
        "10.0.0.2",
    }
