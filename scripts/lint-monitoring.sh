#!/usr/bin/env bash
# Checks deploy/monitoring/: the Grafana dashboard is JSON with a PromQL expression in every
# target and unique panel ids; the alert rules and every dashboard expression parse as PromQL
# (`promtool check rules`; the dashboard's expressions as recording rules of a scratch file), and
# the alerts' unit tests pass (`promtool test rules deploy/monitoring/alerts.test.yaml`). That each
# metric they name exists is tests/tests/monitoring.rs's job.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup-promtool.sh"
promtool=$root/.tools/promtool/promtool
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 - "$root/deploy/monitoring/helmq-dashboard.json" "$tmp/dashboard-rules.yaml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
ids, exprs = set(), []
def walk(panels):
    for p in panels:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        walk(p.get("panels", []))
        if p["type"] == "row":
            continue
        assert p.get("targets"), f"panel {p['title']!r} has no targets"
        for t in p["targets"]:
            assert t.get("expr", "").strip(), f"panel {p['title']!r} target {t.get('refId')} has no expr"
            exprs.append(t["expr"])
walk(dashboard["panels"])
assert dashboard.get("uid") and dashboard.get("title"), "the dashboard needs a uid and a title"
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        out.write(f"      - record: dashboard:expr{i}\n        expr: {json.dumps(e)}\n")
print(f"helmq-dashboard.json: {len(ids)} panels, {len(exprs)} expressions")
PY
"$promtool" check rules "$root/deploy/monitoring/alerts.yaml" "$tmp/dashboard-rules.yaml"
(cd "$root/deploy/monitoring" && "$promtool" test rules alerts.test.yaml)
