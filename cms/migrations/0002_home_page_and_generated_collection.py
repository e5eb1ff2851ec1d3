from django.db import migrations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
STEPLEN = 4
COLLECTION_NAME = "Generated images"


def next_child_path(parent, model):
    """Treebeard materialised path for a new last child (historical models lack its API)."""
    last = model.objects.filter(path__startswith=parent.path, depth=parent.depth + 1).order_by(
        "-path"
    ).first()
    number = 1
    if last is not None:
        number = int(last.path[-STEPLEN:], 36) + 1
    step = ""
    while number:
        number, digit = divmod(number, 36)
        step = ALPHABET[digit] + step
    return parent.path + step.rjust(STEPLEN, "0")


def create_home_page_and_collection(apps, schema_editor):
    ContentType = apps.get_model("contenttypes.ContentType")
    Page = apps.get_model("wagtailcore.Page")
    Site = apps.get_model("wagtailcore.Site")
    Locale = apps.get_model("wagtailcore.Locale")
    Collection = apps.get_model("wagtailcore.Collection")
    HomePage = apps.get_model("cms.HomePage")

    # Replace Wagtail's placeholder welcome page with our home page.
    page_type = ContentType.objects.get(model="page", app_label="wagtailcore")
    Page.objects.filter(content_type=page_type, slug="home", depth=2).delete()
    root = Page.objects.get(depth=1)
    home_type, _ = ContentType.objects.get_or_create(model="homepage", app_label="cms")
    home = HomePage.objects.create(
        title="Karasu",
        draft_title="Karasu",
        slug="home",
        content_type=home_type,
        path=next_child_path(root, Page),
        depth=2,
        numchild=0,
        url_path="/home/",
        locale=Locale.objects.order_by("pk").first(),
        intro="<p>A Wagtail CMS with an AI image-generation pipeline built in.</p>",
    )
    Page.objects.filter(pk=root.pk).update(numchild=Page.objects.filter(depth=2).count())
    Site.objects.all().delete()
    Site.objects.create(hostname="localhost", port=80, root_page=home, is_default_site=True)

    root_collection = Collection.objects.get(depth=1)
    if not Collection.objects.filter(name=COLLECTION_NAME, depth=2).exists():
        Collection.objects.create(
            name=COLLECTION_NAME,
            path=next_child_path(root_collection, Collection),
            depth=2,
            numchild=0,
        )
        Collection.objects.filter(pk=root_collection.pk).update(
            numchild=Collection.objects.filter(depth=2).count()
        )


def remove_home_page_and_collection(apps, schema_editor):
    apps.get_model("cms.HomePage").objects.filter(slug="home", depth=2).delete()
    Collection = apps.get_model("wagtailcore.Collection")
    Collection.objects.filter(name=COLLECTION_NAME, depth=2).delete()


class Migration(migrations.Migration):
    dependencies = [("cms", "0001_initial")]

    operations = [
        migrations.RunPython(create_home_page_and_collection, remove_home_page_and_collection),
    ]
