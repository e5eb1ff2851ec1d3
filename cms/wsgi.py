import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cms.settings.production")

application = get_wsgi_application()

# A web server runs no system checks, so refuse here to serve with settings that
# `manage.py check` refuses (a numeric KARASU_* variable out of range, a malformed price).
from cms.checks import refuse_to_start_on_bad_settings  # noqa: E402

refuse_to_start_on_bad_settings()
