#!/usr/bin/env bash
# ansible-test sanity (and, with "units", ansible-test units) from a temporary
# ansible_collections/gpufleet/serving copy of the tracked files: ansible-test
# only runs from a physical path of that shape. Ignore files stay empty.
# VENV names the virtualenv whose ansible-test runs (default: .venv, the newest
# ansible-core claimed; the Makefile's sanity-oldest passes .cache/venv-oldest).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=$ROOT/.cache
VENV=${VENV:-$ROOT/.venv}
WHAT=${1:-sanity}
[ -x "$VENV/bin/ansible-test" ] || { echo "run.sh: no ansible-test in $VENV (VENV names a virtualenv with ansible-core)" >&2; exit 2; }
PIP_VERSION=$(python3 - "$VENV/lib/python3.11/site-packages/ansible_test/_internal/python_requirements.py" <<'PY'
import re, sys
print(re.search(r"pip='([0-9.]+)'", open(sys.argv[1]).read()).group(1))
PY
)
export HOME=$CACHE/ansible-test-home
mkdir -p "$HOME/.ansible/test/cache"
cp "$ROOT/tests/sanity/get_pip_standin.py" "$HOME/.ansible/test/cache/get_pip_${PIP_VERSION//./_}.py"

# One tree per virtualenv, so the two versions' runs never share a copy.
TREE=$CACHE/sanity/$(basename "$VENV")/ansible_collections/gpufleet/serving
rm -rf "$TREE"
mkdir -p "$TREE"
cd "$ROOT"
# Tracked and new (not ignored) files, less the collections/ link back to this tree.
git ls-files -co --exclude-standard | grep -v '^collections/' | while read -r f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | xargs -0 cp --parents -t "$TREE"
cd "$TREE"
git init -q . && git add -A >/dev/null
case "$WHAT" in
  sanity) exec "$VENV/bin/ansible-test" sanity --python 3.11 --color no "${@:2}" ;;
  units) exec "$VENV/bin/ansible-test" units --python 3.11 --requirements --color no "${@:2}" ;;
  *) echo "usage: run.sh sanity|units [ansible-test args]" >&2; exit 2 ;;
esac
