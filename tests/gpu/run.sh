#!/usr/bin/env bash
# Runs on the GPU machine, from the repo root, with .devcarry/ from tests/gpu/pack.sh:
#   bash tests/gpu/run.sh [tests] [hf] [tok] [bench]    (default: tests hf tok)
# tests: the gpu-labelled GoogleTest binary; hf: tests/gpu/hf_compare.py against transformers;
# tok: tests/gpu/hf_tokenizer_check.py (generated tokenizers against transformers' AutoTokenizer);
# bench: kvtier-bench engine on a generated llama3-8b (16 GB of bf16 weights);
# serve: a whole cluster (tests/gpu/cluster-llama3-8b.yaml) and kvtier-bench serve with a long
# history, next to the pinned host-to-device copy bandwidth measured in the same run; twice:
# decode keeping finished blocks in its GPU pages (first tier), then with keep_blocks: false
# (every turn's history comes from the store through host memory);
# store: kvtier-bench store (shm 1 and 2 clients, tcp) on this many-core host;
# spill: kvtier-bench store --spill (control calls while spilling, spill off vs on), twice.
# Logs go to $OUT (the device tool brings them back); a summary is printed last.
set -u
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests hf tok)
OUT=${OUT:-/tmp/out}
# KVTIER_PACK names another pack (e.g. a baseline build's, to compare two builds in one lease).
pack=${KVTIER_PACK:-.devcarry/kvtier-gpu.tar.xz}
kv=/tmp/kv-$(basename "$pack" .tar.xz)
mkdir -p "$OUT" "$kv"
tar -xJf "$pack" -C "$kv"
cublas=$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH=$kv/lib:/usr/local/cuda/lib64:${cublas}:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
export UCX_MODULE_DIR=$kv/lib/ucx
BIN=$kv/bin
export PATH=$BIN:$PATH  # redis-server, redis-benchmark, ucx_perftest for the store anchors
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
ldd $BIN/kvtier-model | grep -E 'not found|cublas|cudart' || true
summary=()
for step in "${steps[@]}"; do
  case $step in
    tests)
      $BIN/engine_cuda_test --gtest_color=no >"$OUT/gpu_tests.log" 2>&1
      rc=$?
      grep -E '^\[  (FAILED|PASSED|  OK) |rel|error|Error' "$OUT/gpu_tests.log" | tail -80
      summary+=("gpu tests: rc=$rc $(grep -E '^\[  PASSED|tests? ran' "$OUT/gpu_tests.log" | tr '\n' ' ')")
      ;;
    hf)
      python3 tests/gpu/hf_compare.py --bin $BIN/kvtier-model --workdir /tmp/hfc \
        >"$OUT/hf_compare.log" 2>&1
      rc=$?
      tail -25 "$OUT/hf_compare.log"
      summary+=("hf compare: rc=$rc")
      ;;
    tok)
      python3 tests/gpu/hf_tokenizer_check.py --bin $BIN/kvtier-model --workdir /tmp/hft \
        >"$OUT/hf_tokenizer.log" 2>&1
      rc=$?
      grep -vE '^\{' "$OUT/hf_tokenizer.log" | tail -15
      summary+=("hf tokenizer: rc=$rc")
      ;;
    serve)
      python3 - >"$OUT/h2d.log" 2>&1 <<'PY'
import statistics, time, torch
x = torch.empty(1 << 30, dtype=torch.uint8).pin_memory()
x.random_()
y = torch.empty_like(x, device="cuda")
ts = []
for _ in range(6):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    y.copy_(x, non_blocking=True); torch.cuda.synchronize()
    ts.append(time.perf_counter() - t0)
print(f"pinned H2D {x.numel() / statistics.median(ts[1:]) / 1e9:.1f} GB/s (1 GiB, median of 5)")
PY
      cat "$OUT/h2d.log"
      for keep in ${SERVE_KEEP:-true false}; do
        cfg=/tmp/cluster-keep-$keep.yaml
        sed "s/^  keep_blocks: .*/  keep_blocks: $keep/" tests/gpu/cluster-llama3-8b.yaml >$cfg
        url=$($BIN/kvtier up --config $cfg 2>"$OUT/up-$keep.log")
        rc=$?
        tail -8 "$OUT/up-$keep.log"
        if [ $rc -eq 0 ]; then
          echo "== serve, decode keep_blocks: $keep"
          $BIN/kvtier-bench serve --url "${url%/v1}" --ca-file /tmp/kvrun/tls/ca.pem \
            --api-key-file /tmp/kvrun/api_key --conversations ${SERVE_CONVS:-8} --turns 2 \
            --concurrency 1 --system-prompt-tokens ${SERVE_WORDS:-4000} --user-tokens 40 \
            --max-tokens 16 --json >"$OUT/serve-$keep.log" 2>&1
          rc=$?
          sed -n 1,30p "$OUT/serve-$keep.log"
        fi
        $BIN/kvtier down --config $cfg >/dev/null 2>&1
        tar -czf "$OUT/kvrun-logs-$keep.tgz" -C /tmp/kvrun --exclude=spill . 2>/dev/null
        rm -rf /tmp/kvrun
        summary+=("serve keep_blocks=$keep: rc=$rc")
      done
      ;;
    store)
      nproc
      for args in "" "--clients 2" "--clients 4" "--transport tcp"; do
        echo "== kvtier-bench store $args"
        $BIN/kvtier-bench store $args ${STORE_ARGS:-} --json >"$OUT/store.log" 2>&1
        rc=$?
        grep -vE '^\{' "$OUT/store.log" | tail -22
        tail -1 "$OUT/store.log" >>"$OUT/store-json.log"
        summary+=("store $args: rc=$rc")
      done
      ;;
    spill)
      # Control-call latency while every put evicts, spill off vs on (issue 15), twice.
      for i in 1 2; do
        echo "== kvtier-bench store --spill ($i)"
        $BIN/kvtier-bench store --spill --seconds 5 --json >"$OUT/spill-$i.log" 2>&1
        rc=$?
        grep -vE '^\{' "$OUT/spill-$i.log" | tail -20
        summary+=("spill $i: rc=$rc")
      done
      ;;
    bench)
      t0=$(date +%s)
      [ -f /tmp/llama3-8b/config.json ] ||
        $BIN/kvtier-model init --shape llama3-8b --dtype bf16 --out /tmp/llama3-8b
      echo "init took $(( $(date +%s) - t0 )) s"
      $BIN/kvtier-bench engine --model /tmp/llama3-8b --hf-script bench/engine_hf.py --json \
        ${BENCH_ARGS:-} >"$OUT/bench.log" 2>&1
      rc=$?
      tail -30 "$OUT/bench.log"
      summary+=("bench: rc=$rc")
      ;;
  esac
done
printf '%s\n' "${summary[@]}"
