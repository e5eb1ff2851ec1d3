"""Image model classes for the tests, named by settings (``IMAGE_MODELS[...]["CLASS"]``)."""

import threading

from generation.providers import TransientProviderError
from generation.providers.demo import DemoImageModel


class TextOnlyDemo(DemoImageModel):
    """A model that makes images from prompts but cannot edit one."""

    @classmethod
    def can_edit(cls, options):
        return False


class RateLimitedDemo(DemoImageModel):
    """The demo model behind a provider's rate limit: the first submission of each prompt
    (in this process) is answered as a 429 with ``RETRY_AFTER`` seconds in its Retry-After
    header would be, the next ones make images as the demo model does."""

    def __init__(self, name: str, **options):
        super().__init__(name, **options)
        self.retry_after = float(options["RETRY_AFTER"])
        self._refused: set[str] = set()
        self._refused_lock = threading.Lock()

    def _submit(self, kind, prompt, aspect_ratio, seed, source):
        with self._refused_lock:
            first = prompt not in self._refused
            self._refused.add(prompt)
        if first:
            raise TransientProviderError(
                f"{self.name}: HTTP 429: rate limited",
                retry_after=self.retry_after,
                rate_limited=True,
            )
        return super()._submit(kind, prompt, aspect_ratio, seed, source)
