#!/usr/bin/env bash
# Run the test suite in a project virtualenv with the pinned packages (README "Quick start").
set -euo pipefail
cd "$(dirname "$0")"
. ./setup-venv.sh
exec .venv/bin/python -m pytest "$@"
