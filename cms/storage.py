"""Where media (image originals and renditions) is stored: the local disk, or an S3 bucket.

The settings build ``STORAGES["default"]`` with :func:`media_storage` from the ``MEDIA_S3_*``
environment variables. Credentials are never settings: boto3 finds them itself
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
an instance or container role), and django-storages passes the environment's keys on.

Nothing here imports Django models: the settings import it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

LOCAL_MEDIA = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
# django-storages' S3Storage, reusing signed URLs for a while (see cms/s3_storage.py).
S3_BACKEND = "cms.s3_storage.MediaS3Storage"

# An hour. A name is reused only after its image is deleted and another file is uploaded
# under that name, so a browser or CDN serves a stale copy for at most that long.
CACHE_CONTROL = "max-age=3600"


def public_url_parts(public_url: str) -> tuple[str, str]:
    """Split a public URL into the url_protocol and custom_domain django-storages wants
    (a host[/path], no scheme): ``https://cdn.example.com/media`` gives (``https:``,
    ``cdn.example.com/media``)."""
    parts = urlsplit(public_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ImproperlyConfigured(
            f"MEDIA_S3_PUBLIC_URL must be an http(s) URL such as https://cdn.example.com, "
            f"not {public_url!r}"
        )
    if parts.query or parts.fragment:
        raise ImproperlyConfigured("MEDIA_S3_PUBLIC_URL must not have a query or a fragment")
    return f"{parts.scheme}:", parts.netloc + parts.path.rstrip("/")


def media_storage(
    bucket: str = "",
    *,
    endpoint_url: str = "",
    region: str = "",
    public_url: str = "",
    addressing_style: str = "",
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_attempts: int = 3,
) -> dict:
    """Build ``STORAGES["default"]``: the local disk without a bucket, else S3, or any
    service speaking its API (MinIO, Cloudflare R2, Ceph RGW…) through ``endpoint_url``.

    - Stored names are never overwritten (``file_overwrite=False``): Wagtail files uploads
      under their own name (``original_images/photo.jpg``), and two uploads of one name
      must both be kept. A taken name gets a random suffix, as on the local disk.
    - Objects get no ACL (``default_acl=None``); the bucket's policy decides access.
    - Without ``public_url`` the bucket is private and every URL is signed (valid for an
      hour, the same URL reused for five minutes); with it, URLs point there unsigned (a
      CDN or a public bucket).
    - botocore retries (its "standard" mode: throttling, 5xx, connection errors) within
      bounded timeouts; what still fails raises, and a worker retries the job later.
    """
    if not bucket:
        return dict(LOCAL_MEDIA)
    if addressing_style not in ("", "auto", "path", "virtual"):
        raise ImproperlyConfigured(
            f"MEDIA_S3_ADDRESSING_STYLE must be auto, path or virtual, not {addressing_style!r}"
        )
    from botocore.config import Config  # only with a bucket, so settings load faster

    config = {
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "retries": {"mode": "standard", "max_attempts": max_attempts},
        # Signature V4 for requests and signed URLs alike (botocore would sign URLs with the
        # legacy V2, which newer AWS regions and R2 refuse).
        "signature_version": "s3v4",
        # MinIO, Ceph RGW and R2 all answer path-style requests (endpoint/bucket/key);
        # virtual-hosted ones (bucket.endpoint) need DNS set up for it. AWS itself gets auto.
        "s3": {"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
    }
    if endpoint_url:
        # Checksums only where the API requires them: newer botocore adds CRC headers to
        # every upload by default, which not every S3-compatible service accepts.
        config["request_checksum_calculation"] = "when_required"
        config["response_checksum_validation"] = "when_required"
    options = {
        "bucket_name": bucket,
        "endpoint_url": endpoint_url or None,
        "region_name": region or None,
        "file_overwrite": False,
        "default_acl": None,
        "querystring_auth": not public_url,
        "object_parameters": {"CacheControl": CACHE_CONTROL},
        "client_config": Config(**config),
    }
    if public_url:
        options["url_protocol"], options["custom_domain"] = public_url_parts(public_url)
    return {"BACKEND": S3_BACKEND, "OPTIONS": options}
