#!/usr/bin/env python3
"""What one API request of each kind helmq makes costs the rig's kube-apiserver and etcd in CPU.

Usage: scripts/rig-api-cost.py [N]   (the rig running: `just rig-up`, then
`source .tools/rig/env.sh`; N requests of each kind, default 400)

One client on one kept-alive HTTPS connection (as helmq's kube client) sends N requests of each
kind, one after another, against a Component of its own in a namespace of its own, and reads
the CPU time of the kube-apiserver and etcd processes (`/proc/<pid>/stat`) before and after
each kind. Prints milliseconds of CPU per request. The Component CRD is applied from
deploy/crds/ with kubectl first; the namespace is deleted at the end.
docs/BENCHMARKS.md ("Where helmq's extra CPU goes") quotes a run.
"""

import http.client
import json
import os
import ssl
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
RIG = os.environ.get("HELMQ_RIG") or os.path.join(ROOT, ".tools", "rig")
NAMESPACE = "helmq-api-cost"
GROUP = "/apis/deployment-orchestrator.io/v1alpha1"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def connect():
    context = ssl.create_default_context(cafile=os.path.join(RIG, "pki", "ca.crt"))
    return http.client.HTTPSConnection("127.0.0.1", 16443, context=context)


def request(conn, method, path, body=None, content_type="application/json", ok=(200, 201)):
    headers = {"Authorization": "Bearer rig-admin-token"}
    if body is not None:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status not in ok:
        sys.exit(f"{method} {path}: {response.status} {data[:300]!r}")
    return data


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def pid_of(name):
    with open(os.path.join(RIG, "run", f"{name}.pid")) as f:
        return int(f.read().strip())


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    apiserver, etcd = pid_of("kube-apiserver"), pid_of("etcd")
    subprocess.run(
        ["kubectl", "apply", "-f", os.path.join(ROOT, "deploy", "crds")],
        check=True,
        env={**os.environ, "KUBECONFIG": os.path.join(RIG, "kubeconfig")},
    )
    subprocess.run(
        ["kubectl", "wait", "--for=condition=Established", "crd/components.deployment-orchestrator.io"],
        check=True,
        env={**os.environ, "KUBECONFIG": os.path.join(RIG, "kubeconfig")},
    )
    conn = connect()
    request(conn, "POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}, ok=(201, 409))
    components = f"{GROUP}/namespaces/{NAMESPACE}/components"
    component = {
        "apiVersion": "deployment-orchestrator.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "probe"},
        "spec": {"name": "probe", "handler": "none", "config": {}},
    }
    request(conn, "POST", components, component, ok=(201, 409))
    one = f"{components}/probe"

    def status(i):
        return {
            "status": {
                "phase": "Deploying",
                "message": f"attempt {i}",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "Deploying",
                        "message": f"attempt {i}",
                        "lastTransitionTime": "2026-12-07T00:00:00Z",
                    }
                ],
            }
        }

    def event(i):
        return {
            "metadata": {"name": f"probe.{time.time_ns()}.{i}"},
            "eventTime": "2026-12-07T00:00:00.000000Z",
            "reportingController": "helmq.io/api-cost",
            "reportingInstance": "probe",
            "action": "Apply",
            "reason": "Deploying",
            "type": "Normal",
            "note": f"attempt {i}",
            "regarding": {"kind": "Component", "namespace": NAMESPACE, "name": "probe"},
        }

    kinds = [
        ("GET a namespace (for scale)", lambda i: request(conn, "GET", f"/api/v1/namespaces/{NAMESPACE}")),
        ("GET a Component, resourceVersion=0 (watch cache)", lambda i: request(conn, "GET", f"{one}?resourceVersion=0")),
        ("GET a Component (etcd)", lambda i: request(conn, "GET", one)),
        (
            "PATCH a Component's status (merge patch)",
            lambda i: request(conn, "PATCH", f"{one}/status", status(i), "application/merge-patch+json"),
        ),
        (
            "POST an events.k8s.io/v1 Event",
            lambda i: request(conn, "POST", f"/apis/events.k8s.io/v1/namespaces/{NAMESPACE}/events", event(i)),
        ),
    ]
    print(f"{n} requests of each kind, one connection; CPU per request:")
    for name, send in kinds:
        api0, etcd0 = cpu_seconds(apiserver), cpu_seconds(etcd)
        for i in range(n):
            send(i)
        api1, etcd1 = cpu_seconds(apiserver), cpu_seconds(etcd)
        print(f"  {name:<50} kube-apiserver {1000 * (api1 - api0) / n:5.2f} ms   etcd {1000 * (etcd1 - etcd0) / n:5.2f} ms")
    request(conn, "DELETE", f"/api/v1/namespaces/{NAMESPACE}", ok=(200, 202))


if __name__ == "__main__":
    main()
