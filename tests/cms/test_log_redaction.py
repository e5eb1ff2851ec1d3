"""Provider keys never reach the log output, whichever logger or traceback carries them."""

import io
import logging

import pytest
from django.utils.log import configure_logging

# Deliberately not key-shaped: only the configured value can catch them.
ANTHROPIC_KEY = "anthropic-configured-0123456789abcdef"
OPENAI_KEY = "openai-configured-0123456789abcdef"
FAL_KEY = "fal-id-1234:falconfiguredsecret0123456789"


@pytest.fixture
def console(settings):
    """The console handler from settings.LOGGING, writing into a buffer for the test."""
    settings.ANTHROPIC_API_KEY = ANTHROPIC_KEY
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.FAL_KEY = FAL_KEY
    handlers = [h for h in logging.getLogger().handlers if h.get_name() == "console"]
    assert handlers, "settings.LOGGING attaches no console handler to the root logger"
    handler = handlers[0]
    assert handler in logging.getLogger("huey").handlers
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    yield buffer
    handler.setStream(previous)


def assert_no_secrets(output: str) -> None:
    for secret in (ANTHROPIC_KEY, OPENAI_KEY, FAL_KEY, "falconfiguredsecret"):
        assert secret not in output


def test_root_and_huey_loggers_redact_configured_keys(console):
    logging.getLogger("generation.tasks").warning("calling fal with %s", FAL_KEY)
    logging.getLogger("huey").error(
        "task failed: anthropic=%s openai=%s", ANTHROPIC_KEY, OPENAI_KEY
    )
    logging.getLogger().warning(f"inline {OPENAI_KEY} in the message")
    output = console.getvalue()
    assert_no_secrets(output)
    assert "generation.tasks calling fal with [redacted]" in output
    assert "huey task failed: anthropic=[redacted] openai=[redacted]" in output
    assert "inline [redacted] in the message" in output


def test_tracebacks_are_redacted_but_kept_whole(console):
    def call_provider():
        raise RuntimeError(f"401 Unauthorized for {FAL_KEY}\nsecond line of the detail")

    try:
        call_provider()
    except RuntimeError:
        logging.getLogger("huey").exception("Unhandled exception in task %s", "generate_image")
    output = console.getvalue()
    assert_no_secrets(output)
    assert "Unhandled exception in task generate_image" in output
    # Unlike error reasons, log records keep their lines and length: the traceback is usable.
    assert "Traceback (most recent call last):" in output
    assert "in call_provider" in output
    assert "RuntimeError: 401 Unauthorized for [redacted]\nsecond line of the detail" in output


def test_the_metrics_token_is_redacted_like_the_provider_keys(console, settings):
    """KARASU_METRICS_TOKEN is a secret too: a line or a traceback that carries it (say, a
    scrape's Authorization header echoed in an error) shows it redacted."""
    token = "prometheus-scrape-0123456789abcdef"  # not key-shaped: only the setting catches it
    settings.KARASU_METRICS_TOKEN = token

    def scrape():
        raise PermissionError(f"指标 refused: Authorization: Bearer {token}")

    logging.getLogger("ops.views").warning("スクレイプ with Bearer %s", token)
    try:
        scrape()
    except PermissionError:
        logging.getLogger("django.request").exception("Internal Server Error: /metrics")
    output = console.getvalue()
    assert token not in output and "0123456789abcdef" not in output
    assert "スクレイプ with Bearer [redacted]" in output
    assert "PermissionError: 指标 refused: Authorization: Bearer [redacted]" in output


def test_key_shaped_strings_are_redacted_even_when_not_configured(console):
    stray = "sk-proj-unconfiguredLEAKED0123456789"
    logging.getLogger("generation.providers").warning("echoed back: %s", stray)
    logging.getLogger().error("header was Authorization: Key abcdefABCDEF0123456789xyz")
    output = console.getvalue()
    assert "unconfiguredLEAKED" not in output and "abcdefABCDEF0123456789xyz" not in output
    assert "echoed back: [redacted]" in output


def test_a_long_message_is_not_truncated(console):
    logging.getLogger().warning("x" * 1000 + " " + FAL_KEY)
    output = console.getvalue()
    assert_no_secrets(output)
    assert "x" * 1000 + " [redacted]" in output


def test_djangos_own_loggers_redact_too_with_debug_on(settings, capsys):
    """Django's DEBUG console handler and runserver's request log would print a key in
    clear; settings.LOGGING sends their records through the redacting console instead."""
    settings.DEBUG = True
    settings.FAL_KEY = FAL_KEY
    try:
        configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)  # as django.setup()
        logging.getLogger("django.request").error("Internal Server Error: /?key=%s", FAL_KEY)
        logging.getLogger("django.server").info('"GET /?key=%s HTTP/1.1" 200', FAL_KEY)
        logging.getLogger("django.security.csrf").warning("Forbidden %s", FAL_KEY)
        output = capsys.readouterr().err
    finally:
        with capsys.disabled():  # the handlers back on the real stderr
            configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)
    assert_no_secrets(output)
    assert output.count("[redacted]") == 3
    assert "django.request Internal Server Error: /?key=[redacted]" in output


@pytest.mark.parametrize("given_as", ["inline", "file", "environment form"])
def test_the_c2pa_private_key_is_redacted_whichever_way_it_is_given(settings, tmp_path, given_as):
    """The signing key reaches text as it was loaded (real line breaks), as repr() of its
    bytes, or as the environment spells it (a literal \\n): every shape is blanked."""
    from cms.provenance.signing import Credentials
    from cms.redaction import redact, redact_secrets
    from tests.support.c2pa import throwaway_certificates

    certificates = throwaway_certificates()
    key = certificates.private_key.decode()
    body = [line for line in key.splitlines() if not line.startswith("-----")]
    assert body and all(len(line) >= 8 for line in body[:-1])
    if given_as == "file":
        (tmp_path / "签名 key.pem").write_text(key)
        settings.KARASU["C2PA"] = {"PRIVATE_KEY_FILE": str(tmp_path / "签名 key.pem")}
    elif given_as == "inline":
        settings.KARASU["C2PA"] = {"PRIVATE_KEY": key}
    else:
        settings.KARASU["C2PA"] = {"PRIVATE_KEY": key.replace("\n", "\\n")}
    for text in (
        "error: " + key,
        f"signing failed «烏»: {certificates.private_key!r}",
        "env: KARASU_C2PA_PRIVATE_KEY=" + key.replace("\n", "\\n"),
    ):
        for redacted in (redact(text), redact_secrets(text)):
            assert "[redacted]" in redacted
            for line in body:
                if len(line) >= 8:
                    assert line not in redacted
    assert redact("signing failed: 证书无效 “bad”") == "signing failed: 证书无效 “bad”"
    credentials = Credentials(certificates.chain, certificates.private_key, "es256")
    shown = repr(credentials)
    assert "private_key" not in shown and body[0] not in shown
    assert "es256" in shown
