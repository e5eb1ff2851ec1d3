from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)
# A fixed key is fine on a developer's machine; production refuses to start without one.
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-karasu-development-only")
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
