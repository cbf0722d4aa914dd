#!/usr/bin/env python3
"""pregon's Grafana dashboards, written as code: one per question ops ask (overview.json,
senders.json, campaigns.json). The JSON files beside this script are what Grafana loads; run
`python3 dashboards/generate.py` after changing a panel, and `--check` (CI) to fail when a JSON
file is not what this script writes.

Every panel reads the Prometheus data source chosen in the `datasource` variable.
`tests/it/observability.rs` evaluates every query here against a real Prometheus."""

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def panel(title, targets, unit="short", kind="timeseries", width=12, description=""):
    """A panel; `targets` is a list of (expr, legend) pairs."""
    return {
        "title": title,
        "description": description,
        "type": kind,
        "datasource": DATASOURCE,
        "targets": [
            {"expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i), "datasource": DATASOURCE}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "_width": width,
    }


def dashboard(uid, title, description, panels):
    """Lays the panels out left to right, two a row unless a panel is wider."""
    x, y, laid = 0, 0, []
    for i, p in enumerate(panels, start=1):
        width = p.pop("_width")
        if x + width > 24:
            x, y = 0, y + 8
        p["id"] = i
        p["gridPos"] = {"h": 8, "w": width, "x": x, "y": y}
        laid.append(p)
        x += width
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["pregon", "whatsapp"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [
            {"title": "pregon", "type": "dashboards", "tags": ["pregon"], "asDropdown": False}
        ],
        "panels": laid,
    }


def overview():
    return dashboard(
        "pregon-overview",
        "pregon · Overview",
        "Is pregon sending, how fast, and is anything stuck?",
        [
            panel(
                "Messages /s by outcome",
                [(f"sum by (outcome) (rate(pregon_messages_total[{RATE}]))", "{{outcome}}")],
                unit="ops",
            ),
            panel(
                "Sent /s by category",
                [(f'sum by (category) (rate(pregon_messages_total{{outcome="sent"}}[{RATE}]))', "{{category}}")],
                unit="ops",
            ),
            panel(
                "Enqueue → accepted latency",
                [
                    (f"histogram_quantile({q}, sum by (le) (rate(pregon_enqueue_to_accepted_seconds_bucket[5m])))", f"p{label}")
                    for q, label in [("0.5", "50"), ("0.95", "95"), ("0.99", "99")]
                ],
                unit="s",
            ),
            panel(
                "Ready messages by lane",
                [("sum by (lane) (pregon_lane_depth)", "{{lane}}")],
                description="tx: transactional (OTPs, order updates); mkt: marketing.",
            ),
            panel(
                "Oldest ready message's wait by lane",
                [("max by (lane) (pregon_lane_head_wait_seconds)", "{{lane}}")],
                unit="s",
                description="How long the message each lane handed out last had been ready to send.",
            ),
            panel(
                "Retries /s by error code",
                [(f"sum by (code) (rate(pregon_retries_total[{RATE}]))", "{{code}}")],
                unit="ops",
            ),
            panel(
                "Failures /s by error code",
                [(f"sum by (code) (rate(pregon_failures_total[{RATE}]))", "{{code}}")],
                unit="ops",
            ),
            panel(
                "Dead letters waiting",
                [("max(pregon_dead_jobs)", "dead jobs")],
                description="pregon dead list · pregon dead redrive ID",
            ),
            panel(
                "Webhook intake /s by outcome",
                [(f"sum by (outcome) (rate(pregon_webhook_requests_total[{RATE}]))", "{{outcome}}")],
                unit="ops",
                description="bad_signature: a rotated app secret, or forgery.",
            ),
            panel(
                "Webhook events waiting and retrying",
                [
                    ("max(pregon_webhook_backlog)", "waiting"),
                    ("max(pregon_webhook_events_retrying)", "retrying"),
                ],
            ),
            panel(
                "Event outbox and callbacks",
                [
                    ("max(pregon_event_outbox_depth)", "events waiting"),
                    (f"sum by (outcome) (rate(pregon_callback_deliveries_total[{RATE}]))", "callbacks {{outcome}} /s"),
                ],
            ),
            panel(
                "Dependencies (1 up, 0 down)",
                [("min by (service) (pregon_dependency_up)", "{{service}}")],
                description="Checked by each pregon process at every scrape; the lowest is shown.",
            ),
            panel(
                "Redis's copy of PostgreSQL's state (1 whole)",
                [("min(pregon_state_copy_complete)", "copy complete")],
            ),
        ],
    )


def senders():
    return dashboard(
        "pregon-senders",
        "pregon · Senders",
        "Per WhatsApp number: its limits, its health, and what slows it down.",
        [
            panel(
                "Messaging limit used (unique recipients, moving 24 h)",
                [
                    ("sum by (counter) (pregon_tier_usage)", "{{counter}} used"),
                    ("sum by (counter) (pregon_tier_limit > 0)", "{{counter}} limit"),
                ],
            ),
            panel(
                "Share of the messaging limit",
                [("pregon_tier_usage / (pregon_tier_limit > 0)", "{{counter}}")],
                unit="percentunit",
            ),
            panel(
                "Sends /s against the mps cap",
                [
                    (f'sum by (sender) (rate(pregon_messages_total{{outcome=~"sent|failed"}}[{RATE}]))', "{{sender}} sends"),
                    ("max by (sender) (pregon_sender_mps)", "{{sender}} cap"),
                ],
                unit="ops",
            ),
            panel(
                "Quality (3 GREEN, 2 YELLOW, 1 RED)",
                [("max by (sender) (pregon_sender_quality)", "{{sender}}")],
            ),
            panel(
                "Paused senders (1 paused)",
                [("max by (sender) (pregon_sender_paused)", "{{sender}}")],
            ),
            panel(
                "Ready messages by sender and lane",
                [("sum by (sender, lane) (pregon_lane_depth)", "{{sender}} {{lane}}")],
            ),
            panel(
                "Oldest ready message's wait by sender and lane",
                [("max by (sender, lane) (pregon_lane_head_wait_seconds)", "{{sender}} {{lane}}")],
                unit="s",
            ),
            panel(
                "Deferrals /s by reason",
                [(f"sum by (reason) (rate(pregon_deferrals_total[{RATE}]))", "{{reason}}")],
                unit="ops",
            ),
            panel(
                "Pacing wait (s per s) by sender and limit",
                [(f"sum by (sender, limit) (rate(pregon_pacing_wait_seconds_total[{RATE}]))", "{{sender}} {{limit}}")],
            ),
            panel(
                "Lane holds /s by reason",
                [(f"sum by (sender, reason) (rate(pregon_lane_holds_total[{RATE}]))", "{{sender}} {{reason}}")],
                unit="ops",
            ),
            panel(
                "Throttles /s (130429, 131056)",
                [(f'sum by (code) (rate(pregon_retries_total{{code=~"130429|131056|80007|4"}}[{RATE}]))', "{{code}}")],
                unit="ops",
            ),
            panel(
                "Cloud API request duration p99",
                [(f"histogram_quantile(0.99, sum by (le, outcome) (rate(pregon_cloud_api_request_seconds_bucket[5m])))", "{{outcome}}")],
                unit="s",
            ),
        ],
    )


def campaigns():
    return dashboard(
        "pregon-campaigns",
        "pregon · Campaigns",
        "Campaigns as they run: planning, hand-over, pauses and their causes.",
        [
            panel(
                "Campaign messages planned and handed over /s",
                [
                    (f"sum(rate(pregon_campaign_planned_total[{RATE}]))", "planned"),
                    (f"sum(rate(pregon_campaign_handed_total[{RATE}]))", "handed to RabbitMQ"),
                ],
                unit="ops",
            ),
            panel(
                "Progress by campaign (share of messages in a final state)",
                [(
                    'sum by (name) (max by (campaign, name, status) (pregon_campaign_messages{status!~"planned|queued|deferred|excluded"}))'
                    ' / sum by (name) (max by (campaign, name, status) (pregon_campaign_messages{status!="excluded"}))',
                    "{{name}}",
                )],
                unit="percentunit",
                description="Campaigns running, paused or finished within the hour (the newest 20).",
            ),
            panel(
                "Send rate by campaign",
                [(
                    'deriv(sum by (name) (max by (campaign, name, status) (pregon_campaign_messages{status!~"planned|queued|deferred|excluded"}))[2m:])',
                    "{{name}}",
                )],
                unit="ops",
                description="Messages reaching a final state per second, from the per-campaign counts (refreshed every 10 s).",
            ),
            panel(
                "Funnel by campaign: sent, delivered, read, replied, failed",
                [
                    (
                        f'sum by (name) (max by (campaign, name, status) (pregon_campaign_messages{{status=~"{reached}"}}))',
                        "{{name}} " + step,
                    )
                    for step, reached in [
                        # A read message was delivered and sent: each step counts what reached it.
                        ("sent", "sent|delivered|read"),
                        ("delivered", "delivered|read"),
                        ("read", "read"),
                        ("replied", "replied"),
                        ("failed", "failed"),
                    ]
                ],
                description="Messages that reached each step (a read message counts as sent and delivered too); "
                "replied counts messages answered by their recipient.",
            ),
            panel(
                "Estimated vs billed cost by campaign",
                [(
                    "max by (name, kind, currency) (pregon_campaign_cost)",
                    "{{name}} {{kind}} ({{currency}})",
                )],
                description="Estimated: the planned messages priced by the rate card in the campaign's category. "
                "Billed: billable templates Meta reported delivered, priced in the category Meta reported.",
            ),
            panel(
                "Messages still to send by campaign",
                [(
                    'sum by (name) (max by (campaign, name, status) (pregon_campaign_messages{status=~"planned|queued|deferred"})) or vector(0)',
                    "{{name}}",
                )],
            ),
            panel(
                "Marketing messages /s by outcome",
                [(f'sum by (outcome) (rate(pregon_messages_total{{category="marketing"}}[{RATE}]))', "{{outcome}}")],
                unit="ops",
            ),
            panel(
                "Campaign transitions by event and cause",
                [(f"sum by (event, cause) (increase(pregon_campaign_transitions_total[5m]))", "{{event}} {{cause}}")],
            ),
            panel(
                "Longest current pause",
                [("max(pregon_campaign_longest_pause_seconds)", "longest pause")],
                unit="s",
            ),
            panel(
                "Contacts imported /s",
                [(f"sum by (outcome) (rate(pregon_contacts_imported_total[{RATE}]))", "{{outcome}}")],
                unit="ops",
            ),
        ],
    )


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, build in [("overview", overview), ("senders", senders), ("campaigns", campaigns)]:
        path = HERE / f"{name}.json"
        text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python3 dashboards/generate.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
