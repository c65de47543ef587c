#!/usr/bin/env bash
# The whole sync against local stand-ins of MISP, Entra and Graph seeded with real CIRCL events.
set -euo pipefail
cd "$(dirname "$0")"
. ./setup-venv.sh
exec .venv/bin/python demo.py "$@"
