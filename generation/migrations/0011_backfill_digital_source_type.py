# Images filed before provenance marking (cms 0004) get their digital source type, so that
# their renditions are marked from now on and the image library's filter finds them. Their
# originals stay as they were filed (provenance_marked False).

from django.db import migrations
from django.db.models import Exists, OuterRef, Q


def backfill(apps, schema_editor):
    Image = apps.get_model("cms", "KarasuImage")
    GenerationRequest = apps.get_model("generation", "GenerationRequest")
    variations = GenerationRequest.objects.filter(
        pk=OuterRef("generation_request_id"), is_variation=True
    )
    generated = Image.objects.filter(generation_request_id__isnull=False, digital_source_type="")
    # A variation whose request was deleted still has its source, unless that was deleted too.
    generated.filter(Q(Exists(variations)) | Q(source_image__isnull=False)).update(
        digital_source_type="compositeWithTrainedAlgorithmicMedia"
    )
    generated.update(digital_source_type="trainedAlgorithmicMedia")


class Migration(migrations.Migration):

    dependencies = [
        ('cms', '0004_image_provenance'),
        ('generation', '0010_chooser_requests'),
    ]

    operations = [
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
