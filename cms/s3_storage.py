"""The media storage on S3 (MEDIA_S3_BUCKET): django-storages' S3Storage, with signed URLs
that stay the same for a while.

A signed URL carries its signing time, so signing on every render gives every image a new
URL each time a page is drawn. The request page redraws its images every 3 seconds while a
request runs: with fresh URLs, the browser would fetch every thumbnail again each time,
where with the same URL it keeps the one it has (objects are stored with a long
Cache-Control). So a signed URL is reused for five minutes, and no longer, because a URL
signed with temporary credentials (an instance or pod role) stops working when they expire,
and boto3 renews them only 10–15 minutes before that.

Kept apart from ``cms.storage`` so that the settings (and a local-disk setup) do not load
boto3.
"""

from __future__ import annotations

import threading
import time

from storages.backends.s3 import S3Storage

MAX_CACHED_URLS = 10_000
REUSE_SECONDS = 300


class MediaS3Storage(S3Storage):
    def __init__(self, **settings):
        super().__init__(**settings)
        self._signed_urls: dict[str, tuple[float, str]] = {}
        self._signed_lock = threading.Lock()

    def url(self, name, parameters=None, expire=None, http_method=None):
        if not self.querystring_auth or parameters or expire is not None or http_method:
            return super().url(name, parameters, expire, http_method)
        now = time.monotonic()
        cached = self._signed_urls.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        url = super().url(name)
        with self._signed_lock:
            if len(self._signed_urls) >= MAX_CACHED_URLS:
                self._signed_urls.clear()
            self._signed_urls[name] = (now + min(REUSE_SECONDS, self.querystring_expire / 2), url)
        return url

    def delete(self, name):
        super().delete(name)
        self._signed_urls.pop(name, None)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_signed_urls", None)
        state.pop("_signed_lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._signed_urls = {}
        self._signed_lock = threading.Lock()
