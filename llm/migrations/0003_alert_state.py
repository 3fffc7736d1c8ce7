"""Alert rule state, fired/resolved notices and delivery claims (issue 4)."""

import django.core.validators
import llm.models
from django.conf import settings
from django.db import migrations, models


def mark_existing_alerts_delivered(apps, schema_editor):
    # Alerts written before this migration were never meant to be sent by check_alerts:
    # claim them now so the first run after an upgrade does not mail out old history.
    AlertLog = apps.get_model("llm", "AlertLog")
    AlertLog.objects.filter(delivery_claimed_at__isnull=True).update(
        delivery_claimed_at=models.F("triggered_at"), delivered_at=models.F("triggered_at")
    )


class Migration(migrations.Migration):

    dependencies = [
        ('llm', '0002_seed_model_prices'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='alertlog',
            options={'ordering': ['-triggered_at', '-id']},
        ),
        migrations.AddField(
            model_name='alertlog',
            name='acknowledged_by_name',
            field=models.CharField(blank=True, default='', max_length=200),
        ),
        migrations.AddField(
            model_name='alertlog',
            name='delivered_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='alertlog',
            name='delivery_claimed_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='alertlog',
            name='kind',
            field=models.CharField(choices=[('fired', 'Fired'), ('resolved', 'Resolved')], default='fired', max_length=8),
        ),
        migrations.AddField(
            model_name='alertrule',
            name='is_firing',
            field=models.BooleanField(default=False, editable=False),
        ),
        migrations.AddField(
            model_name='alertrule',
            name='last_checked_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='alertrule',
            name='last_notified_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='alertrule',
            name='last_value',
            field=models.FloatField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name='alertrule',
            name='cooldown_minutes',
            field=models.PositiveIntegerField(default=60, help_text='While the rule stays over its threshold, notify again only after this long.', validators=[django.core.validators.MaxValueValidator(10080)]),
        ),
        migrations.AlterField(
            model_name='alertrule',
            name='email_recipients',
            field=models.TextField(blank=True, default='', help_text='Comma-separated; blank: ALERT_EMAIL_RECIPIENTS.', validators=[llm.models.validate_email_list]),
        ),
        migrations.AlterField(
            model_name='alertrule',
            name='threshold',
            field=models.FloatField(validators=[llm.models.validate_finite, django.core.validators.MinValueValidator(0)]),
        ),
        migrations.AlterField(
            model_name='alertrule',
            name='time_window_minutes',
            field=models.PositiveIntegerField(default=60, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(10080)]),
        ),
        migrations.AlterField(
            model_name='alertrule',
            name='webhook_url',
            field=models.URLField(blank=True, default='', help_text='Blank: ALERT_WEBHOOK_URL.', validators=[django.core.validators.URLValidator(message='Enter an http:// or https:// URL.', schemes=['http', 'https'])]),
        ),
        migrations.RunPython(mark_existing_alerts_delivered, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name='alertlog',
            index=models.Index(condition=models.Q(('delivery_claimed_at__isnull', True)), fields=['alert_rule'], name='llm_alertlog_pending'),
        ),
    ]
