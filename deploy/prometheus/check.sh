#!/usr/bin/env bash
# promtool on everything in deploy/prometheus: the configuration, the alert rules, and the rules'
# unit tests (alerts.test.yml). Every rule must carry a summary and a runbook saying what it
# means, what to check and what to do, and must be tested firing and silent.
set -euo pipefail
cd "$(dirname "$0")"
promtool check config prometheus.yml
promtool check rules alerts.yml

alerts=$(sed -n 's/^      - alert: //p' alerts.yml)
for part in 'summary:' 'runbook:' 'Means:' 'Check:' 'Do:'; do
  with=$(grep -c "$part" alerts.yml || true)
  total=$(echo "$alerts" | wc -l)
  if [ "$with" -lt "$total" ]; then
    echo "only $with of $total alert rules have \"$part\" in alerts.yml" >&2
    exit 1
  fi
done
for alert in $alerts; do
  fires=$(grep -A3 "alertname: $alert\$" alerts.test.yml | grep -c 'exp_labels' || true)
  silent=$(grep -c "alertname: $alert, exp_alerts: \[\]" alerts.test.yml || true)
  if [ "$fires" -lt 1 ] || [ "$silent" -lt 1 ]; then
    echo "$alert needs a test in alerts.test.yml that fires it and one that keeps it silent" >&2
    exit 1
  fi
done

# promtool compares annotations too; the tests are about when rules fire, so they run against
# the same rules with the annotations (prose) left out.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
awk '/^        annotations:/ {skip = 1; next} /^      - alert:/ {skip = 0} !skip' alerts.yml >"$work/alerts.yml"
cp alerts.test.yml "$work/"
(cd "$work" && promtool test rules alerts.test.yml)
