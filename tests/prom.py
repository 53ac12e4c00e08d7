"""Read a /metrics page the way Prometheus does (prometheus_client's parser), not by prefix."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels, or None if it is not exported."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return found.value
    return None


def total(text: str, name: str) -> float:
    """The sum of every labelled sample named `name` (0.0 when none is exported yet)."""
    return sum(
        found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    )
