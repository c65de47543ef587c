# Sourced by test.sh and demo.sh: make .venv once and install the pinned requirements into it.
if ! [ -x .venv/bin/python ] || ! cmp -s requirements-dev.txt .venv/.installed-requirements 2>/dev/null \
    || ! cmp -s cudeso_requirements.txt .venv/.installed-runtime 2>/dev/null; then
    python3 -m venv .venv || { echo "python3 -m venv failed: on Debian run 'apt-get install python3-venv'" >&2; exit 2; }
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
    cp requirements-dev.txt .venv/.installed-requirements
    cp cudeso_requirements.txt .venv/.installed-runtime
fi
