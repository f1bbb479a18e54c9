#!/usr/bin/env bash
# Refresh requirements/lock.txt: the whole stack a fresh `pip install -e ".[test,ray,app]"` resolves to today, frozen.
#
#   bash scripts/refresh_lock.sh && bash .ci/run --lock
#
# The lock is used as a constraints file (`pip install -c requirements/lock.txt -e ".[test,ray,app]"`), so it holds
# every package to its version without forcing one onto a platform that does not need it (a CPU-only torch keeps
# its CPU build; the CUDA libraries it lists are then never installed).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv="$(mktemp -d "${TMPDIR:-/tmp}/dualanodiff-lock.XXXXXX")"
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e ".[test,ray,app]"
mkdir -p requirements
{
    echo "# The tested stack: a fresh \`pip install -e \".[test,ray,app]\"\` frozen by scripts/refresh_lock.sh on $(date -u +%F)"
    echo "# ($(python3 -c 'import platform; print(f"Python {platform.python_version()}, {platform.system()} {platform.machine()}")'))."
    echo "# Use as constraints: pip install -c requirements/lock.txt -e \".[test,ray,app]\"   Tested by: bash .ci/run --lock"
    "$venv/bin/pip" freeze --exclude-editable
} >requirements/lock.txt.tmp
mv requirements/lock.txt.tmp requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
