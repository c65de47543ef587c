#!/usr/bin/env bash
# Static checks CI runs before the tests: ruff (pyproject.toml [tool.ruff]) and mypy, strict on
# the pure core, the engine and the target adapters (pyproject.toml [tool.mypy]). Both must find 0.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup-venv.sh
.venv/bin/ruff check .
.venv/bin/mypy --no-error-summary *.py standins bench tests
