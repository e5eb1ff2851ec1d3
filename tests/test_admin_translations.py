"""Karasu's admin in Chinese (zh-hans) and Japanese (ja): each of its screens, rendered with
the editor's Wagtail language preference, keeps none of Karasu's English labels; the
catalogues are complete, their compiled .mo files agree with them, and makemessages finds
nothing in the code that they lack."""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import django
import polib
import pytest
import wagtail
import wagtail_modeladmin
from axes.models import AccessAttempt
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone, translation
from wagtail.models import Collection
from wagtail.users.models import UserProfile

from cms.models import DIGITAL_SOURCE_TYPES
from generation import costs
from generation.models import GenerationRequest
from huey_tasks.models import TaskRun
from tests.support.admin import NS, action_url, page_url
from tests.support.factories import make_request_with_results

LOCALE = Path(settings.BASE_DIR) / "locale"
LANGUAGES = {"zh-hans": "zh_Hans", "ja": "ja"}
# The text an editor reads: text nodes, and these attributes (labels, tooltips, buttons).
TEXT_ATTRIBUTES = {"title", "aria-label", "placeholder", "value", "data-w-progress-active-value"}
PLACEHOLDER = re.compile(r"%\(\w+\)s|\{\w+\}|<[^>]+>")


class VisibleText(HTMLParser):
    """The visible text of a page, one piece a line, without scripts and styles."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.hidden += 1
        for name, value in attrs:
            if name in TEXT_ATTRIBUTES and value:
                self.pieces.append(value)

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden and data.strip():
            self.pieces.append(" ".join(data.split()))


def visible_text(html: str) -> str:
    """The page's text, less the names of collections: content, not labels (the images'
    collection is "Generated images" in every language)."""
    parser = VisibleText()
    parser.feed(html)
    text = "\n".join(parser.pieces)
    for name in Collection.objects.values_list("name", flat=True):
        text = text.replace(name, "")
    return text


def labels(msgid: str) -> list[str]:
    """What of a msgid shows verbatim on a page: the whole text, or for a text with
    placeholders its literal parts of two words or more."""
    parts = [" ".join(part.split()) for part in PLACEHOLDER.split(msgid)]
    if len(parts) == 1:
        return parts
    return [part.strip(" ,.;:()") for part in parts if len(re.findall(r"[A-Za-z]{2,}", part)) > 1]


def catalogue(language: str) -> dict[str, str]:
    """Each English label of Karasu's catalogue (the .po, whatever the compiled .mo that
    the pages use says), with its translation."""
    found = {}
    for entry in polib.pofile(str(LOCALE / LANGUAGES[language] / "LC_MESSAGES" / "django.po")):
        if not entry.msgid or entry.msgid_plural:
            continue
        for label in labels(entry.msgid):
            # A label its translation keeps as it is ("LLM", "C2PA") cannot be told apart.
            if label and label not in entry.msgstr:
                found[label] = entry.msgstr
    return found


def shows(text: str, label: str) -> bool:
    """Whether the page shows the label: a label of several words anywhere in its text, a
    single word as a piece of text of its own (a heading, a column, a button). Wagtail's own
    screens leave a few words untranslated inside their sentences ("Filter by", "2 karasu
    images"), which are not Karasu's labels."""
    if " " not in label:
        return label in {piece.strip(" ·") for piece in text.splitlines()}
    return re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", text) is not None


@pytest.fixture
def screens(editor, django_user_model, collections):
    """Each of Karasu's admin screens, as a name and a function of the client giving the
    page's HTML."""
    request = make_request_with_results(6, prompt="烏が鳥居にとまる「習作 {i}」")
    # Its timeline: the prompts written, the first and last images, a failure.
    now = timezone.now()
    request.expansion_started_at = request.expansion_finished_at = now
    request.save(update_fields=["expansion_started_at", "expansion_finished_at"])
    request.jobs.update(finished_at=now)
    image = request.jobs.exclude(image=None).first().image
    # Marked as generated, so its edit page shows its provenance in full.
    image.digital_source_type = DIGITAL_SOURCE_TYPES[0][0]
    image.provenance_marked = True
    image.save(update_fields=["digital_source_type", "provenance_marked"])
    # Started from the chooser by this editor, generating: the Generate tab lists it with a
    # filed, a failed and a pending candidate, and its request page says where it started.
    editor_user = django_user_model.objects.get(username="editor")
    GenerationRequest.objects.filter(pk=request.pk).update(
        from_chooser=True, created_by=editor_user
    )
    job = request.jobs.get(index=1)
    run = TaskRun.objects.create(
        task_name="generate_image",
        task_id="t-翻訳",
        status=TaskRun.Status.FAILED,
        args=[job.pk],
        attempts=2,
        deliveries=2,
        generation_request=request,
        generation_job=job,
        error_class="PermanentProviderError",
        error_message="demo: rejected 🐦",
        started_at=timezone.now(),
        finished_at=timezone.now(),
        duration=1.25,
    )
    AccessAttempt.objects.create(
        username="田中",
        ip_address="203.0.113.9",
        user_agent="Mozilla/5.0",
        http_accept="*/*",
        path_info="/admin/login/",
        attempt_time=timezone.now(),
        get_data="",
        post_data="",
        failures_since_start=5,
    )

    def get(url: str, **params):
        def render(client) -> str:
            response = client.get(url, params)
            assert response.status_code == 200, url
            return response.content.decode()

        return render

    def chooser(client) -> str:
        response = client.get(reverse("wagtailimages_chooser:choose"))
        assert response.status_code == 200
        return response.json()["html"]

    return {
        "request listing": get(reverse(f"{NS}:list")),
        "add form": get(reverse(f"{NS}:add")),
        "request page": get(page_url(request)),
        "edit form": get(reverse(f"{NS}:edit", args=[request.pk])),
        "request action": get(action_url("cancel", request)),
        "chooser's Generate tab": chooser,
        "job monitor": get(reverse("job_monitor:index")),
        "task run": get(reverse("job_monitor:run", args=[run.pk])),
        "retry a run": get(reverse("job_monitor:run_retry", args=[run.pk])),
        "task run browser": get(reverse("huey_tasks_taskrun_modeladmin_index")),
        "task run record": get(
            reverse("huey_tasks_taskrun_modeladmin_inspect", kwargs={"instance_pk": run.pk})
        ),
        "dead letters": get(reverse("job_monitor:dead_letters")),
        "dashboard": get(reverse("wagtailadmin_home")),
        "lock-outs": get(reverse("login_lockouts:index")),
        "image edit page": get(reverse("wagtailimages:edit", args=[image.pk])),
        "image library": get(reverse("wagtailimages:index")),
    }


def set_language(django_user_model, language: str) -> None:
    profile = UserProfile.get_for_user(django_user_model.objects.get(username="editor"))
    profile.preferred_language = language
    profile.save()


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_no_screen_keeps_karasus_english_labels(language, screens, editor, django_user_model):
    translations = catalogue(language)
    checked, untranslated = {}, {}
    for name, render in screens.items():
        set_language(django_user_model, "en")
        english = visible_text(render(editor))
        set_language(django_user_model, language)
        translated = visible_text(render(editor))
        ours = [label for label in translations if shows(english, label)]
        # Every screen shows labels of Karasu's own, so the check below is not vacuous.
        assert len(ours) >= 3, (name, ours)
        if left := [label for label in ours if shows(translated, label)]:
            untranslated[name] = left
        checked[name] = len(ours)
    assert untranslated == {}
    assert sum(checked.values()) > 150, checked


@pytest.mark.django_db
def test_messages_follow_the_language(editor, django_user_model, collections):
    request = make_request_with_results(3, prompt="乌鸦在雪中 “{i}”")
    pending = request.jobs.get(status="pending")
    set_language(django_user_model, "zh-hans")
    response = editor.post(
        reverse(f"{NS}:job_prompt", args=[pending.pk]), {"prompt": "乌鸦"}, follow=True
    )
    assert "提示词 #3 未保存：提示词至少需要三个词。" in response.content.decode()
    set_language(django_user_model, "ja")
    response = editor.post(action_url("cancel", request), follow=True)
    page = response.content.decode()
    assert f"「{request}」をキャンセルしました。" in page
    assert "キャンセル済み" in page  # the request's new status


@pytest.mark.django_db
def test_the_chooser_tab_label_and_the_cost_estimate_follow_the_language(
    screens, editor, django_user_model
):
    set_language(django_user_model, "ja")
    html = screens["chooser's Generate tab"](editor)
    assert "生成" in visible_text(html)
    # The estimate script rewrites the text from these, so it stays in the editor's language.
    assert 'data-karasu-cost-estimate-text-value="見積もり費用：%(total)s' in html
    assert 'data-karasu-cost-estimate-empty-text-value="見積もり費用：' in html


@pytest.mark.parametrize("language", LANGUAGES.values())
def test_every_message_is_translated(language):
    po = polib.pofile(str(LOCALE / language / "LC_MESSAGES" / "django.po"))
    assert len(po) > 250
    assert [entry.msgid for entry in po.untranslated_entries()] == []
    assert [entry.msgid for entry in po.fuzzy_entries()] == []
    for entry in po:
        # Each placeholder of the English text is in its translation.
        wanted = sorted(PLACEHOLDER.findall(entry.msgid))
        for text in [entry.msgstr] if not entry.msgid_plural else entry.msgstr_plural.values():
            assert sorted(PLACEHOLDER.findall(text)) == wanted, entry.msgid


def messages_of(entries) -> dict:
    return {
        (entry.msgctxt, entry.msgid): (
            dict(entry.msgstr_plural) if entry.msgid_plural else entry.msgstr
        )
        for entry in entries
        if entry.msgid and not entry.obsolete
    }


@pytest.mark.parametrize("language", LANGUAGES.values())
def test_each_mo_file_is_its_po_file_compiled(language):
    folder = LOCALE / language / "LC_MESSAGES"
    compiled = polib.mofile(str(folder / "django.mo"))
    source = polib.pofile(str(folder / "django.po"))
    assert messages_of(compiled) == messages_of(source.translated_entries())


@pytest.mark.skipif(shutil.which("xgettext") is None, reason="GNU gettext is not installed")
def test_makemessages_finds_nothing_the_catalogues_lack(tmp_path, settings):
    # A copy of the sources, so makemessages writes its catalogue into tmp_path, not locale/.
    source = tmp_path / "src"
    for folder in ["articles", "cms", "generation", "huey_tasks", "ops", "templates"]:
        shutil.copytree(
            Path(settings.BASE_DIR) / folder,
            source / folder,
            ignore=shutil.ignore_patterns("__pycache__", "static", "*.pyc"),
        )
    settings.LOCALE_PATHS = [tmp_path / "locale"]
    for language in LANGUAGES.values():
        (tmp_path / "locale" / language / "LC_MESSAGES").mkdir(parents=True)
    cwd = Path.cwd()
    try:
        os.chdir(source)
        call_command("makemessages", locale=list(LANGUAGES.values()), verbosity=0)
    finally:
        os.chdir(cwd)
    for language in LANGUAGES.values():
        found = polib.pofile(str(tmp_path / "locale" / language / "LC_MESSAGES" / "django.po"))
        committed = polib.pofile(str(LOCALE / language / "LC_MESSAGES" / "django.po"))
        missing = set(messages_of(found)) - set(messages_of(committed))
        assert not missing, f"run makemessages and translate these ({language}): {missing}"
        assert len(found) > 250


def test_usd_amounts_are_exact_with_the_languages_separators():
    assert costs.usd(Decimal("1234.5")) == "$1,234.50"
    assert costs.usd(Decimal("0.0035")) == "$0.0035"
    assert costs.usd(Decimal("1234567.1234")) == "$1,234,567.1234"
    with translation.override("ja"):
        assert costs.usd(Decimal("1234.5")) == "$1,234.50"
    # A language with other separators (Wagtail offers German) gets them, to the cent.
    with translation.override("de"):
        assert costs.usd(Decimal("1234.0035")) == "$1.234,0035"


@pytest.mark.django_db
def test_the_commands_speak_the_active_language(monkeypatch):
    # A command runs in the site's LANGUAGE_CODE; here Japanese and Chinese in turn.
    monkeypatch.setenv("KARASU_ADMIN_USER", "管理者")
    monkeypatch.setenv("KARASU_ADMIN_PASSWORD", "パスワード-🐦-“x”")
    out = io.StringIO()
    with translation.override("ja"):
        call_command("ensure_admin", stdout=out)
        call_command("ensure_admin", stdout=out)
    with translation.override("zh-hans"):
        call_command("ensure_admin", stdout=out)
    assert out.getvalue().splitlines() == [
        "管理者ユーザー '管理者' を作成しました。",
        "管理者ユーザーはすでに存在します。",
        "管理员用户已存在。",
    ]


def wagtail_and_django_texts() -> list[re.Pattern]:
    """Every text Wagtail and Django may show (their English catalogues' msgids, markup
    dropped, placeholders matching anything): theirs to translate, not Karasu's."""
    texts = set()
    for package in (wagtail, wagtail_modeladmin, django):
        pattern = str(Path(package.__file__).parent / "**" / "locale" / "en" / "LC_MESSAGES")
        for path in glob.glob(pattern + "/*.po", recursive=True):
            for entry in polib.pofile(path):
                for msgid in filter(None, (entry.msgid, entry.msgid_plural)):
                    text = " ".join(re.sub(r"<[^>]+>", " ", msgid).split())
                    parts = [re.escape(part) for part in re.split(r"%\(\w+\)[sd]|%[sd]", text)]
                    texts.add(".*".join(parts))
    return [re.compile(text) for text in texts if re.search(r"[A-Za-z]{3}", text)]


# What the screens show of the test's own data and of other packages' models: not labels.
DATA = re.compile(
    r"^[-a-z_.]+$"  # codes: statuses, task names, field names in sort links
    r"|Crows over Kyoto|demo|generate_image|Mozilla|PermanentProviderError|job\d+\w*\.jpg"
    r"|^Karasu$|access attempt|^LLM$"  # the site's name; django-axes's; kept as is in both
    r"|^(Ctrl|Alt|Shift|Esc)\b"  # keyboard keys
    # Wagtail's admin base, in no catalogue: its <noscript> and unsaved-edits texts.
    r"|^(Here are the|instructions how to enable JavaScript in your web browser|to disable "
    r"them\.|You have|unsaved edits|JavaScript is required to use Wagtail.*)$"
)


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_no_screen_shows_english_that_is_not_in_a_catalogue(
    language, screens, editor, django_user_model
):
    """A label never marked for translation is in no catalogue, so the test above cannot
    see it: here every piece of text a screen shows the same in English and in ``language``
    must be Wagtail's or Django's (their catalogues), or data."""
    theirs = wagtail_and_django_texts()
    left = {}
    for name, render in screens.items():
        set_language(django_user_model, "en")
        english = set(visible_text(render(editor)).splitlines())
        set_language(django_user_model, language)
        translated = set(visible_text(render(editor)).splitlines())
        same = [
            piece
            for piece in english & translated
            if re.search(r"[A-Za-z]{3}", piece)
            and not DATA.search(piece)
            and not any(text.fullmatch(piece) or text.search(piece) for text in theirs)
        ]
        if same:
            left[name] = sorted(same)
    assert left == {}, "\n".join(f"{name}: {pieces}" for name, pieces in left.items())
