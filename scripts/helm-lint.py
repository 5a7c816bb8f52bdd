"""`helm lint --strict` of the helmq chart through Helm's own lint action (helm.sh/helm/v4
pkg/action.Lint, v4.2.3, reached through helm-python-sdk: the test cluster's helm has no `lint`
command). Run with the rig's venv Python: helm-lint.py CHART VALUES-FILE...

Lints the chart with each values file (strict: warnings fail, except the "icon is recommended"
note), then checks that a typo'd key and a wrongly typed value are refused by values.schema.json,
and that every object of the schema that lists properties forbids others.
"""
import json
import os
import sys

import helm_python
import yaml

KUBE_VERSION = "v1.32.0"
IGNORED = {"icon is recommended"}


def lint(chart: str, values: dict) -> list[str]:
    report = helm_python.lint(chart, values, strict=True, namespace="helmq-system", kube_version=KUBE_VERSION)
    problems = [f"{m['path']}: {m['error'].strip()}" for m in report["messages"]
                if m["severity"] >= 2 and m["error"].strip() not in IGNORED]
    return problems + [e.strip() for e in report["errors"] if not any(e.strip() in p for p in problems)]


def open_objects(schema: dict, path: str = "") -> list[str]:
    """Where the schema lists properties but allows others (a typo there would pass)."""
    found = []
    if schema.get("properties") and schema.get("additionalProperties") is not False:
        found.append(path or "/")
    for key, sub in schema.get("properties", {}).items():
        found += open_objects(sub, f"{path}/{key}")
    if isinstance(schema.get("items"), dict):
        found += open_objects(schema["items"], f"{path}[]")
    return found


def main() -> int:
    chart, files = sys.argv[1], sys.argv[2:]
    failed = False
    with open(os.path.join(chart, "values.schema.json")) as f:
        schema = json.load(f)
    open_ = open_objects(schema)
    print(f"values.schema.json: {'every object closed' if not open_ else 'OPEN at ' + ', '.join(open_)}")
    failed |= bool(open_)
    for path in files:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        problems = lint(chart, values)
        print(f"helm lint --strict {chart} -f {path}: {'ok' if not problems else 'FAILED'}")
        for p in problems:
            print(f"  {p}")
        failed |= bool(problems)
    with open(files[0]) as f:
        base = yaml.safe_load(f) or {}
    for what, bad in [
        ("an unknown key (worker.concurency)", {"concurency": 8}),
        ("a wrong type (worker.concurrency: \"eight\")", {"concurrency": "eight"}),
    ]:
        values = {**base, "worker": {**base.get("worker", {}), **bad}}
        problems = lint(chart, values)
        schema_refused = any("don't meet the specifications of the schema" in p or "at '/worker" in p for p in problems)
        print(f"helm lint with {what}: {'refused by the schema' if schema_refused else 'ACCEPTED'}")
        failed |= not schema_refused
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
