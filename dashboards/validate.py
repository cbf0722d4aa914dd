#!/usr/bin/env python3
"""Checks each dashboard against Grafana's own dashboard schema, as the Grafana Foundation SDK
(PyPI `grafana-foundation-sdk`, whose models are generated from Grafana's schemas) reads it: the
dashboard is decoded into the SDK's models and encoded back, and every field of the file must
survive. A field Grafana's schema does not know (on the dashboard, a variable, a panel, its
options or a Prometheus query) is dropped on the way and named here.

    python dashboards/validate.py dashboards/*.json   (deploy/dev.sh test runs it)"""

import json
import pathlib
import sys

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard


def dropped(ours, theirs, path=""):
    """The paths of `ours` that `theirs` (the round trip) lost or reshaped."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [path or "/"]
        lost = []
        for key, value in ours.items():
            if key not in theirs:
                lost.append(f"{path}/{key}")
            else:
                lost += dropped(value, theirs[key], f"{path}/{key}")
        return lost
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(theirs) != len(ours):
            return [path]
        return [p for i, (a, b) in enumerate(zip(ours, theirs)) for p in dropped(a, b, f"{path}[{i}]")]
    return []


def main():
    # Panel and query types (timeseries, Prometheus, …) are read with their own schemas.
    plugins.register_default_plugins()
    failed = False
    for name in sys.argv[1:]:
        ours = json.loads(pathlib.Path(name).read_text())
        theirs = json.loads(json.dumps(Dashboard.from_json(ours), cls=JSONEncoder))
        lost = dropped(ours, theirs)
        if lost:
            failed = True
            print(f"{name}: not in Grafana's dashboard schema: {', '.join(lost)}", file=sys.stderr)
        else:
            print(f"{name}: matches Grafana's dashboard schema")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
