"""Cerebras' and OpenAI's published prices (USD per million tokens) at the time of writing, beside
Groq's (0002, now marked `groq`); edit them in admin. Patterns price dated snapshots
(`gpt-4o-2024-08-06`): the longest matching pattern wins, so `gpt-4o-mini*` beats `gpt-4o*`."""

from decimal import Decimal

from django.db import migrations

# provider: {model name or pattern: (input, output, cached input or None)}
PROVIDER_PRICES = {
    "cerebras": {
        "llama3.1-8b": ("0.10", "0.10", None),
        "llama-3.3-70b": ("0.85", "1.20", None),
        "llama-4-scout-17b-16e-instruct": ("0.65", "0.85", None),
        "qwen-3-32b": ("0.40", "0.80", None),
        "qwen-3-235b-a22b-instruct-2507": ("0.60", "1.20", None),
        "gpt-oss-120b": ("0.25", "0.69", None),
    },
    "openai": {
        "gpt-4o": ("2.50", "10.00", "1.25"),
        "gpt-4o*": ("2.50", "10.00", "1.25"),
        "gpt-4o-mini": ("0.15", "0.60", "0.075"),
        "gpt-4o-mini*": ("0.15", "0.60", "0.075"),
        "gpt-4.1": ("2.00", "8.00", "0.50"),
        "gpt-4.1*": ("2.00", "8.00", "0.50"),
        "gpt-4.1-mini": ("0.40", "1.60", "0.10"),
        "gpt-4.1-mini*": ("0.40", "1.60", "0.10"),
        "gpt-4.1-nano": ("0.10", "0.40", "0.025"),
        "gpt-4.1-nano*": ("0.10", "0.40", "0.025"),
        "o3-mini": ("1.10", "4.40", "0.55"),
        "o3-mini*": ("1.10", "4.40", "0.55"),
        "o4-mini": ("1.10", "4.40", "0.275"),
    },
}


def seed_prices(apps, schema_editor):
    ModelPrice = apps.get_model("llm", "ModelPrice")
    for provider, prices in PROVIDER_PRICES.items():
        for model_name, (input_price, output_price, cached_price) in prices.items():
            ModelPrice.objects.get_or_create(
                provider=provider,
                model_name=model_name,
                defaults={
                    "input_per_million": Decimal(input_price),
                    "output_per_million": Decimal(output_price),
                    "cached_input_per_million": Decimal(cached_price) if cached_price else None,
                },
            )


def unseed_prices(apps, schema_editor):
    ModelPrice = apps.get_model("llm", "ModelPrice")
    for provider, prices in PROVIDER_PRICES.items():
        ModelPrice.objects.filter(provider=provider, model_name__in=prices).delete()


class Migration(migrations.Migration):
    dependencies = [("llm", "0013_provider_prices")]
    operations = [migrations.RunPython(seed_prices, unseed_prices)]
