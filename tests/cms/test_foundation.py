import io
import subprocess
import sys
import threading
import time

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection, connections, transaction
from django.urls import reverse
from PIL import Image as PILImage
from wagtail.images import get_image_model
from wagtail.models import Collection

from cms.models import GENERATED_IMAGES_COLLECTION, KarasuImage


def png_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


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


@pytest.mark.django_db
def test_generated_images_collection_exists():
    collection = Collection.objects.get(name=GENERATED_IMAGES_COLLECTION)
    assert collection.get_parent().is_root()


@pytest.mark.django_db
def test_custom_image_model_is_the_image_library():
    assert get_image_model() is KarasuImage


@pytest.mark.django_db
def test_uploaded_image_lands_in_custom_model_and_collection(admin_client_logged_in):
    collection = Collection.objects.get(name=GENERATED_IMAGES_COLLECTION)
    response = admin_client_logged_in.post(
        reverse("wagtailimages:add"),
        {
            "title": "A red square",
            "file": SimpleUploadedFile("red.png", png_bytes(), content_type="image/png"),
            "collection": collection.pk,
            "tags": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    image = KarasuImage.objects.get(title="A red square")
    assert image.collection == collection
    assert (image.width, image.height) == (64, 48)
    assert not image.is_generated


@pytest.mark.django_db
def test_image_edit_view_shows_provenance_read_only(admin_client_logged_in):
    image = KarasuImage.objects.create(
        title="generated",
        file=SimpleUploadedFile("g.png", png_bytes(), content_type="image/png"),
        prompt="A <script>alert(1)</script> crow at dawn",
        image_model="flux-schnell",
        llm="claude",
        seed=42,
        generation_request_id=7,
        generation_job_id=70,
        provider_request_id="req-abc",
    )
    response = admin_client_logged_in.get(reverse("wagtailimages:edit", args=[image.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Provenance" in body
    assert "flux-schnell" in body and "req-abc" in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<script>alert(1)</script>" not in body
    # Read-only: the provenance fields are not form inputs.
    assert 'name="prompt"' not in body


def test_production_settings_refuse_to_start_without_secret_key(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "KARASU_DATA_DIR": str(tmp_path), "SECRET_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-c", "import cms.settings.production"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_settings_pass_check_deploy(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "KARASU_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "cms.settings.production",
        "SECRET_KEY": "x" * 64 + "-long-random-production-key",
        "ALLOWED_HOSTS": "karasu.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.sqlite_only
@pytest.mark.django_db
def test_sqlite_connection_is_in_wal_mode():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"
        cursor.execute("PRAGMA busy_timeout")
        assert cursor.fetchone()[0] >= 5000


def read_then_write_concurrently(rounds: int = 5) -> list[BaseException]:
    """Two threads, each running ``rounds`` read-then-write transactions at the same time.

    This is what locks SQLite: two transactions that both read first hold read snapshots,
    and when one commits a write the other can no longer upgrade to a writer ("database is
    locked", at once, whatever the busy timeout). IMMEDIATE transactions take the write
    lock at BEGIN, so the second waits for the first instead.
    """
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(prefix: str) -> None:
        try:
            for _ in range(rounds):
                barrier.wait(timeout=60)  # both transactions start together every round
                with transaction.atomic():
                    done = KarasuImage.objects.filter(title__startswith=f"{prefix}-").count()
                    time.sleep(0.05)  # the other thread's transaction begins meanwhile
                    KarasuImage.objects.create(
                        title=f"{prefix}-{done}",
                        file=f"original_images/{prefix}-{done}.png",
                        width=1,
                        height=1,
                    )
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            barrier.abort()  # do not leave the other thread waiting
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.django_db(transaction=True)
def test_two_threads_writing_at_once_do_not_lock(collections):
    errors = read_then_write_concurrently()
    assert errors == []
    titles = set(KarasuImage.objects.values_list("title", flat=True))
    assert titles == {f"{prefix}-{n}" for prefix in "ab" for n in range(5)}


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_the_same_load_locks_sqlite_with_deferred_transactions(collections, monkeypatch):
    """The control: without IMMEDIATE, the load above does lock, so that test means something.

    With Django's own backend: Karasu's (cms.sqlite3) also makes a process's threads take
    turns, which hides the problem within one process but not between processes.
    """
    # New connections (one per thread) read these settings when they are created.
    settings = connections.settings["default"]
    monkeypatch.setitem(settings, "ENGINE", "django.db.backends.sqlite3")
    monkeypatch.setitem(settings["OPTIONS"], "transaction_mode", "DEFERRED")
    errors = read_then_write_concurrently()
    assert any("database is locked" in str(error) for error in errors), errors
