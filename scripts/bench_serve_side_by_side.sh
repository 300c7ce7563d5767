#!/usr/bin/env bash
# kaon vs llama.cpp (llama-cpp-python's server) vs Hugging Face `transformers serve`, one server at a
# time on this machine, each measured by the same `kaon bench serve` command (streaming
# /v1/completions, greedy, random-token prompts of 32 tokens, 128 output tokens, concurrency 1, 8
# and 32). Every engine serves the default model: kaon and llama.cpp read the GGUF itself,
# transformers a float32 Hugging Face directory converted once from that GGUF.
#
# Usage: scripts/bench_serve_side_by_side.sh OUT_DIR [ENGINE...]
#   engines: kaon kaon-int4 llamacpp transformers (default: all four)
#   LLAMACPP_PYTHON: a Python with `llama-cpp-python[server]` (its own venv; default: python)
#   NUM_PROMPTS (default 4,16,64), OUTPUT_LEN (default 128)
# Writes OUT_DIR/ENGINE.json (all per-request figures), ENGINE.png, ENGINE-server.log and prints a
# Markdown table (scripts/serve_table.py) at the end. For llama.cpp's native llama-server and
# vLLM-CPU, and all of issue 12's figures, see scripts/bench_peers.sh.
set -u
OUT=${1:?usage: $0 OUT_DIR [ENGINE...]}; shift
ENGINES=${*:-kaon kaon-int4 llamacpp transformers}
mkdir -p "$OUT"
GGUF=$(python -c "from kaon.models.loader.default_model import default_model_path as p; print(p())")
HF_DIR=$OUT/smollm2-hf
LOAD=(--concurrency 1,8,32 --num-prompts "${NUM_PROMPTS:-4,16,64}" --input-len 32
      --output-len "${OUTPUT_LEN:-128}" --slo-ttft 2 --slo-tpot 0.2 --tokenizer "$GGUF")

wait_up() {  # URL PID: poll until the server answers, or give up when it died / after 10 min
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

run_one() {  # NAME PORT POLL_PATH BENCH_FLAGS -- SERVER COMMAND...
  local name=$1 port=$2 poll=$3 flags=$4; shift 5
  "$@" > "$OUT/$name-server.log" 2>&1 &
  local pid=$!
  if ! wait_up "http://127.0.0.1:$port$poll" "$pid"; then
    echo "$name did not start (see $OUT/$name-server.log)"; kill "$pid" 2>/dev/null; return
  fi
  echo "== $name (pid $pid) $(date -u +%T)"
  # shellcheck disable=SC2086  # flags is a list of words
  kaon bench serve --base-url "http://127.0.0.1:$port" "${LOAD[@]}" $flags --server-pid "$pid" \
    --output-json "$OUT/$name.json" 2> "$OUT/$name-bench.err" | tail -n 8
  kill "$pid"; wait "$pid" 2>/dev/null
}

hf_dir() {  # the GGUF dequantized to a float32 Hugging Face directory (transformers serve cannot
            # load this GGUF directly: its config comes out without `architectures`)
  [ -f "$HF_DIR/config.json" ] || python "$(dirname "$0")/gguf_to_hf.py" "$GGUF" "$HF_DIR"
}

for engine in $ENGINES; do
  case $engine in
  kaon) run_one kaon 18901 /health "" -- \
      kaon serve --port 18901 --kv-cache-memory 400M --max-num-seqs 32 --no-access-log ;;
  kaon-int4) run_one kaon-int4 18904 /health "" -- \
      kaon serve --port 18904 --kv-cache-memory 400M --max-num-seqs 32 --no-access-log \
      --quantization int4 ;;
  # llama-cpp-python's server does not know ignore_eos: a -100 logit bias on <|endoftext|> (0)
  # and <|im_end|> (2) keeps every response at the full output length instead. The wrapper turns
  # off llama.cpp's AMX weight buffers, which crash in VMs without AMX tile state (see it).
  llamacpp) run_one llamacpp 18902 /v1/models \
      "--model smollm2 --no-ignore-eos --extra-body {\"logit_bias\":{\"0\":-100,\"2\":-100}}" -- \
      "${LLAMACPP_PYTHON:-python}" "$(dirname "$0")/llamacpp_server.py" --model "$GGUF" --model_alias smollm2 \
      --n_threads 2 --n_ctx 8192 --host 127.0.0.1 --port 18902 --interrupt_requests False ;;
  # transformers serve answers ignore_eos with HTTP 422 and ignores logit_bias on
  # /v1/completions; a per-request generation config whose EOS id is outside the vocabulary does
  # the same job. --cb-num-blocks bounds its paged cache (its default sizing is made for GPU
  # memory and was OOM-killed at 13.7 GB here): 256 blocks x 32 tokens.
  transformers) hf_dir && run_one transformers 18903 /health \
      "--model $HF_DIR --no-ignore-eos --extra-body {\"generation_config\":\"{\\\"eos_token_id\\\":99999}\"}" -- \
      env HF_HUB_OFFLINE=1 transformers serve "$HF_DIR" --continuous-batching --cb-num-blocks 256 \
      --cb-block-size 32 --cb-max-batch-tokens 512 --device cpu --dtype float32 \
      --host 127.0.0.1 --port 18903 ;;
  *) echo "unknown engine $engine"; exit 2 ;;
  esac
done
python "$(dirname "$0")/serve_table.py" "$OUT"/*.json
