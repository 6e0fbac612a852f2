#!/usr/bin/env bash
# Installs what the test suite needs on a fresh machine. Idempotent: skips what is there.
set -euo pipefail

need_apt=()
command -v bash >/dev/null || need_apt+=(bash)
command -v cc >/dev/null || need_apt+=(gcc)
# Prometheus and promtool: the metrics tests lint the exposition with `promtool check
# metrics` and scrape a running turnstile with a real Prometheus.
command -v prometheus >/dev/null && command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y --no-install-recommends "${need_apt[@]}"
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
