"""The pages a visitor reaches first: the site's home page and the admin's sign-in."""

import pytest


@pytest.mark.django_db
def test_admin_login_page_renders(client):
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b"Sign in" in response.content


@pytest.mark.django_db
def test_home_page_renders(client):
    response = client.get("/")
    assert response.status_code == 200
    assert b"Karasu" in response.content
    assert b"Open the Karasu admin" in response.content
