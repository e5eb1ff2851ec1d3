import pytest
from django.conf import settings
from django.db import connection


def pytest_report_header(config):
    url = "TEST_DATABASE_URL (PostgreSQL)" if settings.DATABASES["default"]["ENGINE"].endswith(
        "postgresql"
    ) else "SQLite file"
    return f"karasu: database tests run on {url}"


def pytest_collection_modifyitems(config, items):
    on_postgres = connection.vendor == "postgresql"
    skip_sqlite = pytest.mark.skip(reason="SQLite-specific; this run is on PostgreSQL")
    for item in items:
        if on_postgres and "sqlite_only" in item.keywords:
            item.add_marker(skip_sqlite)


@pytest.fixture
def admin_client_logged_in(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client
