"""Prometheus alert rules rendered from the metric spec (YAML is a superset of JSON, so the
rules file is written as JSON that Prometheus and any YAML parser read)."""

import json

from verifier.core.metrics import alert_rules


def render_rules() -> str:
    return json.dumps(alert_rules(), indent=2) + "\n"
