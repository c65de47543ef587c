#!/usr/bin/env bash
# The performance benchmark (README "Performance"): one table, about seven minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup-venv.sh
exec .venv/bin/python bench/run.py "$@"
