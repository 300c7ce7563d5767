#!/usr/bin/env bash
# The one prepared GPU run of issue 17 (docs/cuda.md): kaon's CUDA path vs transformers.
#
#   scripts/gpu_check.sh --prepare   # CPU machine, once: .gpu_check/{wheels,tokenizer} (needs PyPI)
#   scripts/gpu_check.sh --dry-run   # CPU machine: validate .gpu_check, run every phase on a toy shape
#   scripts/gpu_check.sh             # GPU machine (carry .gpu_check): the real run, results in $OUT
#
# KAON_GPU_CHECK_DIR overrides the inputs folder (default: .gpu_check in the repository root).
# --no-prepare makes --dry-run fail on missing inputs instead of preparing them.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check_dir="${KAON_GPU_CHECK_DIR:-$repo/.gpu_check}"
mode=run
prepare_missing=1
for arg in "$@"; do
  case "$arg" in
    --prepare) mode=prepare ;;
    --dry-run) mode=dry-run ;;
    --no-prepare) prepare_missing=0 ;;
    *) echo "usage: $0 [--prepare | --dry-run [--no-prepare]]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

case "$mode" in
  prepare)
    PYTHONPATH="$repo" exec "$python" "$repo/scripts/gpu_check_inputs.py" prepare "$check_dir"
    ;;
  dry-run)
    if [ ! -d "$check_dir/wheels" ] && [ "$prepare_missing" = 1 ]; then
      PYTHONPATH="$repo" "$python" "$repo/scripts/gpu_check_inputs.py" prepare "$check_dir"
    fi
    PYTHONPATH="$repo" "$python" "$repo/scripts/gpu_check_inputs.py" validate "$check_dir"
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
    # Every phase on the toy shape, on CPU; then every module it imported must exist on the GPU.
    PYTHONPATH="$repo" "$python" - "$repo" "$out" "$check_dir" <<'PY'
import json, runpy, sys
repo, out, check_dir = sys.argv[1:4]
sys.argv = [repo + "/scripts/gpu_check.py", "--toy", "--device", "cpu", "--out", out,
            "--work", out + "/work", "--tokenizer", check_dir + "/tokenizer"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit_:
    code = exit_.code or 0
else:
    code = 0
stdlib = set(sys.stdlib_module_names)
used = sorted({name.split(".")[0] for name in sys.modules} - stdlib - {"kaon", "__main__"})
used = [name for name in used if not name.startswith("_")]
json.dump(used, open(out + "/modules.json", "w"))
sys.exit(code)
PY
    PYTHONPATH="$repo" "$python" "$repo/scripts/gpu_check_inputs.py" validate "$check_dir" \
      --modules "$out/modules.json"
    "$python" - "$out/results.json" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))
errors = {name: phase["error"] for name, phase in results["phases"].items() if "error" in phase}
print("dry run:", "FAILED " + json.dumps(errors) if errors else "all phases ran", flush=True)
sys.exit(1 if errors else 0)
PY
    ;;
  run)
    out="${OUT:-$repo/gpu_check_out}"
    mkdir -p "$out"
    site=/tmp/kaon_gpu_check_site
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$check_dir"/wheels/*.whl
    export PYTHONPATH="$repo:$site"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/nvidia_smi.txt" || true
    "$python" "$repo/scripts/gpu_check_inputs.py" validate "$check_dir"
    timeout 470 "$python" "$repo/scripts/gpu_check.py" --device cuda --out "$out" \
      --tokenizer "$check_dir/tokenizer" --work /tmp/kaon_gpu_check 2>&1 | tee "$out/log.txt"
    ;;
esac
