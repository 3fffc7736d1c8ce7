"""WeeklyUserRollup: one user's calls of a local week and model (and of all models, model_name
""), the sums of DailyUserRollup's rows of the week, filled from them here (as
llm.rollups.fill_weekly_users, copied: a migration keeps the meaning of its day)."""

from django.db import migrations, models


def fill_from_daily_user_rollups(apps, schema_editor):
    connection = schema_editor.connection
    # The Monday of the day's week: ISO weeks in PostgreSQL; SQLite's 'weekday 0' is the Sunday on or after.
    if connection.vendor == "postgresql":
        week = "CAST(date_trunc('week', day) AS date)"
    else:
        week = "date(day, 'weekday 0', '-6 days')"
    errors = "SUM(CASE WHEN status = 'error' THEN requests ELSE 0 END)"
    sums = f"SUM(requests), {errors}, SUM(total_tokens), SUM(cost_units)"
    rows = "FROM llm_dailyuserrollup WHERE user_id <> ''"
    columns = "week, model_name, user_id, requests, errors, total_tokens, cost_units"
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO llm_weeklyuserrollup ({columns})"
            f" SELECT {week}, model_name, user_id, {sums} {rows} GROUP BY 1, 2, 3"
            f" UNION ALL SELECT {week}, '', user_id, {sums} {rows} GROUP BY 1, 3"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("llm", "0035_user_rollup_sum_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="WeeklyUserRollup",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("week", models.DateField(help_text="The Monday the week starts on.")),
                ("model_name", models.CharField(blank=True, max_length=200)),
                ("user_id", models.CharField(max_length=200)),
                ("requests", models.BigIntegerField(default=0)),
                ("errors", models.BigIntegerField(default=0)),
                ("total_tokens", models.BigIntegerField(default=0)),
                ("cost_units", models.BigIntegerField(default=0)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("model_name", "week", "user_id"), name="llm_weeklyuserrollup_key")
                ],
            },
        ),
        migrations.RunPython(fill_from_daily_user_rollups, migrations.RunPython.noop),
    ]
