#!/usr/bin/env python3
"""Checks docs/fleet/compose.yaml and its Grafana provisioning without a
container engine: both parse as YAML, and they say what docs/fleet.md says
they do (the services, the demo's settings, the trace-to-profiles link)."""
import pathlib
import sys

import yaml  # Debian: python3-yaml

here = pathlib.Path(__file__).resolve().parent
compose = yaml.safe_load((here / "compose.yaml").read_text())
datasources = yaml.safe_load((here / "grafana-datasources.yaml").read_text())

services = compose["services"]
assert set(services) == {"pyroscope", "jaeger", "grafana", "demo"}, services
demo = services["demo"]["environment"]
assert demo["PYROSCOPE_SERVER_ADDRESS"] == "http://pyroscope:4040", demo
assert demo["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318", demo
assert demo["SMOLDER_HTTP_TOKEN"], "beyond loopback the agent needs a token"
assert "4040:4040" in services["pyroscope"]["ports"]
assert "16686:16686" in services["jaeger"]["ports"]
mount = services["grafana"]["volumes"][0].split(":")
assert (here / mount[0]).resolve() == here / "grafana-datasources.yaml", mount
assert mount[1].startswith("/etc/grafana/provisioning/datasources/"), mount
assert (here / services["demo"]["volumes"][0].split(":")[0] / "Cargo.toml").exists()

by_uid = {d["uid"]: d for d in datasources["datasources"]}
assert by_uid["pyroscope"]["type"] == "grafana-pyroscope-datasource"
link = by_uid["jaeger"]["jsonData"]["tracesToProfiles"]
assert link["datasourceUid"] == "pyroscope", link
assert link["profileTypeId"] == "process_cpu:cpu:nanoseconds:cpu:nanoseconds", link
assert {"key": "service.name", "value": "service_name"} in link["tags"], link
print("docs/fleet: compose.yaml and grafana-datasources.yaml check out")
sys.exit(0)
