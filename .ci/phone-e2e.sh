#!/usr/bin/env bash
# The phone page (edge-classify --serve) end to end: Debian's Chromium + chromedriver, the page's
# npm dependencies from the lock file, a check that the built assets committed in
# dermedge/edge/web/ match web/'s sources, then the server and headless-browser tests.
# Usage: .ci/phone-e2e.sh [--setup-only] [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
chromium --version 2>/dev/null | grep -v '^\s*$' | head -1 || true

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
(cd web && npm ci --no-audit --no-fund --loglevel=error)
node web/build.mjs --check

if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi
# installed tools are required here: a missing one fails instead of skipping
DERMEDGE_REQUIRE_E2E=1 python -m pytest -q tests/edge/test_serve.py tests/e2e "$@"
