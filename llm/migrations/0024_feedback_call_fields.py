"""Copy each rated call's timestamp and model onto its ratings (UserFeedback.call_timestamp and
model_name), so the feedback figures need not join ratings to calls (issue 14)."""

from django.db import migrations, models
from django.db.models import OuterRef, Subquery

BATCH = 10_000


def fill(apps, schema_editor):
    # In batches of ids: one UPDATE per batch, never the whole table in one statement.
    Feedback = apps.get_model("llm", "UserFeedback")
    Log = apps.get_model("llm", "LLMRequestLog")
    call = Log.objects.filter(id=OuterRef("request_id"))
    ids = Feedback.objects.using(schema_editor.connection.alias)
    last = ids.order_by("-id").values_list("id", flat=True).first() or 0
    for start in range(0, last + 1, BATCH):
        ids.filter(id__gte=start, id__lt=start + BATCH).update(
            call_timestamp=Subquery(call.values("timestamp")[:1]),
            model_name=Subquery(call.values("model_name")[:1]),
        )


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0023_raw_insert_defaults"),
    ]

    operations = [
        migrations.AddField(
            model_name="userfeedback",
            name="call_timestamp",
            field=models.DateTimeField(editable=False, null=True),
        ),
        migrations.AddField(
            model_name="userfeedback",
            name="model_name",
            field=models.CharField(editable=False, max_length=200, null=True),
        ),
        migrations.RunPython(fill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="userfeedback",
            name="call_timestamp",
            field=models.DateTimeField(editable=False),
        ),
        migrations.AlterField(
            model_name="userfeedback",
            name="model_name",
            field=models.CharField(editable=False, max_length=200),
        ),
        migrations.AddIndex(
            model_name="userfeedback",
            index=models.Index(fields=["call_timestamp"], name="feedback_call_time"),
        ),
        migrations.AddIndex(
            model_name="userfeedback",
            index=models.Index(fields=["model_name", "call_timestamp"], name="feedback_call_model_time"),
        ),
    ]
