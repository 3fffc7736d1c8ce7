"""Groq's published prices (USD per million tokens) at the time of writing; edit them in admin."""

from decimal import Decimal

from django.db import migrations

GROQ_PRICES = {
    "llama-3.1-8b-instant": ("0.05", "0.08"),
    "llama-3.3-70b-versatile": ("0.59", "0.79"),
    "openai/gpt-oss-120b": ("0.15", "0.60"),
    "openai/gpt-oss-20b": ("0.075", "0.30"),
    "meta-llama/llama-4-scout-17b-16e-instruct": ("0.11", "0.34"),
    "qwen/qwen3-32b": ("0.29", "0.59"),
}


def seed_prices(apps, schema_editor):
    ModelPrice = apps.get_model("llm", "ModelPrice")
    for model_name, (input_price, output_price) in GROQ_PRICES.items():
        ModelPrice.objects.get_or_create(
            model_name=model_name,
            defaults={"input_per_million": Decimal(input_price), "output_per_million": Decimal(output_price)},
        )


def unseed_prices(apps, schema_editor):
    apps.get_model("llm", "ModelPrice").objects.filter(model_name__in=GROQ_PRICES).delete()


class Migration(migrations.Migration):
    dependencies = [("llm", "0001_initial")]
    operations = [migrations.RunPython(seed_prices, unseed_prices)]
