#!/usr/bin/env python3
"""A picture of what ops will see: renders the key panels of pregon's dashboards to one PNG,
from the same queries Grafana runs, read from a Prometheus over its HTTP API.

    deploy/snapshot.py --prometheus http://127.0.0.1:9090 --out snapshot.png [--minutes 5]

Needs matplotlib (`deploy/dev.sh snapshot` installs it from PyPI into a virtual environment of
its own). The panels are those named in KEY_PANELS, looked up by title in dashboards/*.json, so
the picture cannot drift from the dashboards."""

import argparse
import json
import pathlib
import time
import urllib.parse
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
KEY_PANELS = [
    ("overview.json", "Messages /s by outcome"),
    ("overview.json", "Enqueue → accepted latency"),
    ("overview.json", "Ready messages by lane"),
    ("overview.json", "Retries /s by error code"),
    ("senders.json", "Messaging limit used (unique recipients, moving 24 h)"),
    ("senders.json", "Sends /s against the mps cap"),
    ("senders.json", "Deferrals /s by reason"),
    ("campaigns.json", "Campaign messages planned and handed over /s"),
]


def grafana_to_promql(expr):
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")


def legend(template, labels):
    text = template
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value)
    return text or ",".join(f"{k}={v}" for k, v in labels.items())


def query_range(prometheus, expr, start, end, step):
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=30) as answer:
        body = json.load(answer)
    if body.get("status") != "success":
        raise SystemExit(f"{expr}: {body}")
    return body["data"]["result"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus")
    parser.add_argument("--out")
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--check-panels", action="store_true", help="only check that every key panel exists")
    args = parser.parse_args()
    dashboards = {p.name: json.loads(p.read_text()) for p in (ROOT / "dashboards").glob("*.json")}
    missing = [
        f"{file}: {title}"
        for file, title in KEY_PANELS
        if not any(p["title"] == title for p in dashboards.get(file, {}).get("panels", []))
    ]
    if missing:
        raise SystemExit("key panels not in the dashboards: " + "; ".join(missing))
    if args.check_panels:
        return
    if not args.prometheus or not args.out:
        parser.error("--prometheus and --out are needed to render")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = time.time()
    start = end - args.minutes * 60
    step = max(1, int(args.minutes * 60 / 300))
    columns = 2
    rows = (len(KEY_PANELS) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(14, 3.2 * rows), squeeze=False)
    figure.suptitle("pregon: key panels", fontsize=14)
    for (file, title), ax in zip(KEY_PANELS, axes.flat):
        panel = next(p for p in dashboards[file]["panels"] if p["title"] == title)
        ax.set_title(title, fontsize=10)
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(args.prometheus, grafana_to_promql(target["expr"]), start, end, step):
                xs = [float(t) - end for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]), linewidth=1.2)
                drawn += 1
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_ylabel({"ops": "/s", "s": "seconds"}.get(unit, ""), fontsize=8)
        ax.set_xlabel("seconds before the snapshot", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
    for ax in list(axes.flat)[len(KEY_PANELS):]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
