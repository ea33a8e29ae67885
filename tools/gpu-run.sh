#!/usr/bin/env bash
# fedssl on the GPU machine (issue 18): the run script of the bundle that tools/gpu-bundle
# builds (copied there as run.sh). One command, within --budget seconds (default 500):
#   1. libraries: the binaries' CUDA 13 sonames (libcublas.so.13, libcublasLt.so.13,
#      libnvrtc.so.13, libcudart.so.13, libcurand.so.10) found under the python's
#      site-packages/nvidia (PyTorch's), torch/lib, /usr/local/cuda*, nvcc's toolkit or the
#      loader's cache, linked into one folder on LD_LIBRARY_PATH with unversioned names too
#      (libcublas.so, as cudarc's dynamic loading would look for); a missing libcurand.so.10
#      is replaced by the bundle's stand-in (lib-fallback/, see tools/gpu-bundle);
#   2. gpu_check --device cuda (fedssl's CPU ops against candle's CUDA ops, one round of every
#      pretext task on the GPU);
#   3. bench_conv --device cuda, batch 128 and 512 (ResNet, VGG-11-BN, ViT), beside
#      bench/pytorch_bench.py --device cuda in eager mode;
#   4. quickstart and cifar10-rotation (on the bundle's CIFAR-10 subset) with clients on
#      --device cuda, then the same on the CPU with the same seed; GPU memory per client from
#      nvidia-smi;
#   5. pytorch_bench.py with torch.compile, in the time left.
# Results: at most 8 files directly under $OUT (env.json, gpu_check.json, bench.json,
# scenarios.json, results.json, table.md, log.txt) and a printed table.
#
# Usage: bash run.sh [--dry-run] [--budget SECONDS] [--out DIR] [--steps LIST]
#   --dry-run  the same steps on the CPU with small sizes (no CUDA: the "GPU" legs run on the
#              CPU and what needs nvidia-smi or CUDA is skipped, with the reason printed)
#   --steps    comma-separated subset of check,bench,torch,quickstart,cifar,compile
# Environment: OUT (default <bundle>/out), WORK (default ${TMPDIR:-/tmp}/fedssl-gpu),
#   PYTHON (default: the first of python3, python, ... that imports torch), DEVICE (default cuda).
#
# How the runs reach the GPU: `fedssl-coordinator simulate` starts its in-process clients on
# the CPU and has no --device, so each scenario runs as `fedssl-coordinator serve` on
# 127.0.0.1 plus one `fedssl-client --device cuda` process per client (the same protocol,
# over loopback QUIC; federation.min_clients is set to the client count so that the first
# round waits for all of them, as a simulation does). The coordinator's evaluation gets
# --device only if its `serve --help` offers one; otherwise it runs on the CPU and the results
# say so. Each client process gets RAYON_NUM_THREADS = cores / clients.
set -uo pipefail

B=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY=0
BUDGET=500
OUTDIR=${OUT:-$B/out}
STEPS=check,bench,torch,quickstart,cifar,compile
while (($#)); do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --budget) BUDGET=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
WORK=${WORK:-${TMPDIR:-/tmp}/fedssl-gpu}
# the python with PyTorch (its site-packages/nvidia holds the CUDA 13 libraries), else python3
PY=${PYTHON:-}
if [[ -z $PY ]]; then
  for p in python3 python /usr/bin/python3 /usr/local/bin/python3 /opt/conda/bin/python; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch' 2>/dev/null; then PY=$(command -v "$p"); break; fi
  done
  PY=${PY:-python3}
fi
DEV=${DEVICE:-cuda}
((DRY)) && DEV=cpu
T0=$(date +%s)
rm -rf "$WORK"
mkdir -p "$WORK"/{bin,lib,runs,bench,mem} "$OUTDIR"
exec > >(tee -a "$WORK/log.txt") 2>&1
NPROC=$(nproc)
FAILED=()
note() { printf '[%4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
want() { [[ ",$STEPS," == *",$1,"* ]]; }
step_log() { # name rc seconds [reason]
  printf '{"step": "%s", "rc": %s, "seconds": %s, "note": "%s"}\n' "$1" "$2" "$3" "${4:-}" >>"$WORK/steps.jsonl"
  [[ $2 == 0 || $2 == skipped ]] || FAILED+=("$1")
}
# run_step NAME CAP CMD... : CMD under a timeout of min(CAP, time left - 15 s)
run_step() {
  local name=$1 cap=$2; shift 2
  local t; t=$(($(left) - 15)); ((t > cap)) && t=$cap
  if ((t < 10)); then
    note "$name: skipped, no time left in the ${BUDGET}s budget"
    step_log "$name" '"skipped"' 0 "no time left"
    return 0
  fi
  note "$name (timeout ${t}s): $*"
  local s rc; s=$(date +%s)
  timeout -k 5 "$t" "$@"; rc=$?
  ((rc == 124 || rc == 137)) && note "$name: timed out after ${t}s"
  note "$name: exit $rc after $(($(date +%s) - s))s"
  step_log "$name" "$rc" "$(($(date +%s) - s))"
  return $rc
}
skip() { note "$1: skipped: $2"; step_log "$1" '"skipped"' 0 "$2"; }

note "fedssl GPU run: bundle $B, work $WORK, out $OUTDIR, device $DEV, budget ${BUDGET}s$( ((DRY)) && echo ', DRY RUN on the CPU')"

# --- binaries -------------------------------------------------------------------------------
if command -v xz >/dev/null; then
  xz -dc "$B/bin/binaries.tar.xz" | tar -C "$WORK/bin" -xf -
else
  "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$B/bin/binaries.tar.xz" "$WORK/bin"
fi
chmod +x "$WORK"/bin/*
note "binaries: $(cd "$WORK/bin" && echo *)"
BIN=$WORK/bin

# --- libraries ------------------------------------------------------------------------------
# Folders that may hold CUDA 13 libraries, best first.
lib_dirs() {
  "$PY" - <<'EOF' 2>/dev/null
import os
seen = []
def add(d):
    if os.path.isdir(d) and d not in seen:
        seen.append(d)
try:
    import nvidia
    for p in list(nvidia.__path__):
        for r, _, files in os.walk(p):
            if any(f.startswith("lib") and ".so" in f for f in files):
                add(r)
except Exception:
    pass
try:
    import importlib.util
    spec = importlib.util.find_spec("torch")
    if spec and spec.origin:
        add(os.path.join(os.path.dirname(spec.origin), "lib"))
except Exception:
    pass
print("\n".join(seen))
EOF
  local nv; nv=$(command -v nvcc 2>/dev/null || true)
  [[ -n $nv ]] && for d in "$(dirname "$(readlink -f "$nv")")/../lib64" "$(dirname "$(readlink -f "$nv")")/../targets/x86_64-linux/lib"; do
    [[ -d $d ]] && readlink -f "$d"
  done
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13*/lib64 \
    /usr/local/cuda-13*/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [[ -d $d ]] && echo "$d"
  done
}
mapfile -t DIRS < <(lib_dirs | awk '!seen[$0]++')
NEEDED=$("$PY" -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["needed"]))' "$B/manifest.json")
declare -A FOUND
for so in $NEEDED; do
  case $so in
    libc.so*|libm.so*|libgcc_s.so*|libstdc++.so*|ld-linux*|libpthread.so*|libdl.so*|librt.so*|libcuda.so*) continue ;;
  esac
  for d in "${DIRS[@]}"; do
    if [[ -e $d/$so ]]; then FOUND[$so]=$(readlink -f "$d/$so"); break; fi
  done
  if [[ -z ${FOUND[$so]:-} ]]; then
    p=$("$(command -v ldconfig || echo /sbin/ldconfig)" -p 2>/dev/null | awk -v s="$so" '$1 == s {print $NF; exit}')
    [[ -n $p ]] && FOUND[$so]=$(readlink -f "$p")
  fi
  if [[ -z ${FOUND[$so]:-} && $so == libcurand.so.10 ]]; then
    FOUND[$so]=$B/lib-fallback/libcurand.so.10
    note "libraries: no libcurand.so.10 on this machine: using the bundle's cuRAND stand-in (fedssl draws no random numbers on the GPU; Tensor::rand on CUDA would fail)"
  fi
  if [[ -n ${FOUND[$so]:-} ]]; then
    ln -sf "${FOUND[$so]}" "$WORK/lib/$so"
    ln -sf "${FOUND[$so]}" "$WORK/lib/${so%%.so.*}.so"
    note "libraries: $so -> ${FOUND[$so]}"
  else
    note "libraries: $so NOT FOUND in ${DIRS[*]}"
  fi
done
LDP=$WORK/lib
for d in "${DIRS[@]}"; do
  case $d in /usr/lib/x86_64-linux-gnu|/usr/lib64) ;; *) LDP=$LDP:$d ;; esac
done
export LD_LIBRARY_PATH=$LDP${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# candle's kernels are compute-8.0 PTX: the driver JIT-compiles them for the H200 on first use
# and caches the result; a cache large and writable enough lets every later process reuse it
export CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$WORK/nv-cache} CUDA_CACHE_MAXSIZE=${CUDA_CACHE_MAXSIZE:-4294967296}
LOAD_OK=1
for b in "$BIN"/*; do
  miss=$(ldd "$b" 2>&1 | grep -E 'not found|version .* not found' || true)
  if [[ -n $miss ]]; then
    LOAD_OK=0
    note "libraries: $(basename "$b") cannot load:"
    echo "$miss"
  fi
done
if ((DRY)) && [[ ${FOUND[libcurand.so.10]:-} != "$B/lib-fallback/libcurand.so.10" ]]; then
  # the stand-in is what a GPU machine without cuRAND gets: check that the binaries load with it
  mkdir -p "$WORK/stubcheck"
  ln -sf "$B/lib-fallback/libcurand.so.10" "$WORK/stubcheck/libcurand.so.10"
  if LD_LIBRARY_PATH=$WORK/stubcheck:$LD_LIBRARY_PATH "$BIN/fedssl-client" --version >/dev/null 2>"$WORK/stubcheck/err"; then
    note "libraries: the binaries also start with the bundle's cuRAND stand-in"
  else
    note "libraries: the binaries do NOT start with the cuRAND stand-in: $(cat "$WORK/stubcheck/err")"
    LOAD_OK=0
  fi
fi
if ((!LOAD_OK)); then
  note "libraries: a binary cannot load; nothing else can run"
  step_log libraries 1 0 "a binary cannot load (see log.txt)"
fi

# --- environment ----------------------------------------------------------------------------
HAVE_SMI=0
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && HAVE_SMI=1
{
  echo "{"
  echo "\"dry_run\": $DRY, \"device\": \"$DEV\", \"nproc\": $NPROC, \"budget_s\": $BUDGET,"
  echo "\"uname\": $("$PY" -c 'import json,platform; print(json.dumps(platform.platform()))'),"
  echo "\"glibc\": $("$PY" -c 'import json,platform; print(json.dumps(" ".join(platform.libc_ver())))'),"
  echo "\"python\": $("$PY" -c 'import json,sys; print(json.dumps(sys.version.split()[0] + " " + sys.executable))'),"
  echo "\"torch\": $("$PY" -c 'import json; import torch; print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cudnn": torch.backends.cudnn.version()}))' 2>/dev/null || echo null),"
  if ((HAVE_SMI)); then
    echo "\"gpu\": $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),"
    echo "\"nvidia_smi_cuda\": $(nvidia-smi | grep -o 'CUDA Version: [0-9.]*' | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),"
  else
    echo "\"gpu\": null,"
  fi
  echo "\"libraries\": {"
  first=1
  for so in "${!FOUND[@]}"; do
    ((first)) || echo ","
    first=0
    printf '"%s": "%s"' "$so" "${FOUND[$so]}"
  done
  echo "},"
  echo "\"binaries_load\": $( ((LOAD_OK)) && echo true || echo false),"
  echo "\"manifest\": $(cat "$B/manifest.json")"
  echo "}"
} >"$OUTDIR/env.json"
cat "$OUTDIR/env.json"

# GPU memory sampler: `mem_start TAG` ... `mem_stop`: every 0.5 s the used memory of each
# compute process (nvidia-smi --query-compute-apps) and of the whole GPU, into mem/TAG.csv.
MEMPID=""
mem_start() {
  ((HAVE_SMI)) || return 0
  local f=$WORK/mem/$1.csv
  (
    while :; do
      t=$(date +%s.%N)
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        sed "s/^/$t,app,/"
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | sed "s/^/$t,gpu,,/"
      sleep 0.5
    done >"$f"
  ) &
  MEMPID=$!
}
mem_stop() { [[ -n $MEMPID ]] && kill "$MEMPID" 2>/dev/null; wait "$MEMPID" 2>/dev/null; MEMPID=""; }
HAVE_TORCH=0
"$PY" -c 'import torch' 2>/dev/null && HAVE_TORCH=1
if [[ $DEV != cpu ]] && ((HAVE_TORCH)); then
  "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' || { note "PyTorch sees no CUDA device"; HAVE_TORCH=0; }
fi

if ((LOAD_OK)); then
# --- 2. gpu_check ---------------------------------------------------------------------------
if want check; then
  run_step gpu_check 240 "$BIN/gpu_check" --device "$DEV" --out "$OUTDIR/gpu_check.json"
fi

# --- 3. bench: fedssl ---------------------------------------------------------------------
if ((DRY)); then BATCHES=(16); ITERS=1; WARM=1; else BATCHES=(128 512); ITERS=10; WARM=3; fi
if want bench; then
  for b in "${BATCHES[@]}"; do
    mem_start "bench-$b"
    extra=()
    ((DRY)) && extra=(--ops all --threads 2)
    # where a step's time goes (conv forward/backward, BatchNorm) at the ResNet's shapes
    [[ $b == "${BATCHES[0]}" ]] && extra+=(--breakdown)
    run_step "bench_conv batch $b" 150 "$BIN/bench_conv" --device "$DEV" --batch "$b" --iters "$ITERS" \
      --warmup "$WARM" --no-pytorch --vit "${extra[@]}" --out "$WORK/bench/fedssl-$b.json"
    mem_stop
  done
fi
# --- 3b. bench: PyTorch eager ---------------------------------------------------------------
TB=$(IFS=,; echo "${BATCHES[*]}")
if want torch; then
  if ((HAVE_TORCH)); then
    thr=$NPROC; ((DRY)) && thr=2
    run_step "pytorch eager" 180 "$PY" "$B/bench/pytorch_bench.py" --device "$DEV" --model resnet,vgg11,vit \
      --batch "$TB" --mode eager --iters $((ITERS * 2)) --warmup "$WARM" --threads "$thr" >"$WORK/bench/torch-eager.jsonl"
  else
    skip "pytorch eager" "no PyTorch with this device for $PY"
  fi
fi

# --- 4. scenarios ---------------------------------------------------------------------------
DATA=$WORK/cifar10
mkdir -p "$DATA/cifar-10-batches-bin"
for f in "$B"/data/cifar-10-batches-bin/*; do
  n=$(basename "$f")
  [[ $n == test_batch.head.bin ]] || ln -sf "$f" "$DATA/cifar-10-batches-bin/$n"
done
# the loader wants 10,000 records in test_batch.bin: the subset's test records, repeated
"$PY" - "$B/data/cifar-10-batches-bin/test_batch.head.bin" "$DATA/cifar-10-batches-bin/test_batch.bin" <<'EOF'
import sys
head = open(sys.argv[1], "rb").read()
R = 3073
n = len(head) // R
out = bytearray()
while len(out) < R * 10000:
    out += head
open(sys.argv[2], "wb").write(bytes(out[: R * 10000]))
EOF
TEST_N=$(($(stat -c %s "$B/data/cifar-10-batches-bin/test_batch.head.bin") / 3073))
TRAIN_N=$(($(ls "$B"/data/cifar-10-batches-bin/data_batch_*.bin | wc -l) * 10000))
EVAL_DEVICE_FLAG=0
"$BIN/fedssl-coordinator" serve --help 2>/dev/null | grep -q -- '--device' && EVAL_DEVICE_FLAG=1
PORT=47000

# run_scenario TAG ROLE TOML DEVICE CLIENTS CAP [coordinator args...]; ROLE: gpu or cpu (the
# dry run's gpu leg runs on the CPU too)
run_scenario() {
  local tag=$1 role=$2 toml=$3 dev=$4 n=$5 cap=$6; shift 6
  local out=$WORK/runs/$tag-$role port=$((PORT++)) t
  t=$(($(left) - 15)); ((t > cap)) && t=$cap
  if ((t < 20)); then skip "$tag $role" "no time left in the ${BUDGET}s budget"; return 0; fi
  local thr=$((NPROC / n)); ((thr < 1)) && thr=1
  local cargs=(serve "$toml" --out "$out" --listen "127.0.0.1:$port" --quiet --set "federation.min_clients=$n" "$@")
  ((EVAL_DEVICE_FLAG)) && cargs+=(--device "$dev")
  note "$tag, $role leg on $dev (timeout ${t}s): $n client processes, RAYON_NUM_THREADS=$thr; coordinator ${cargs[*]}"
  local s; s=$(date +%s)
  mem_start "$tag-$role"
  "$BIN/fedssl-coordinator" "${cargs[@]}" >"$out.coordinator.log" 2>&1 &
  local cpid=$! k
  for ((k = 0; k < 600; k++)); do
    [[ -f $out/cert.pem ]] && break
    kill -0 $cpid 2>/dev/null || break
    sleep 0.1
  done
  local pids=()
  if [[ -f $out/cert.pem ]]; then
    for ((k = 0; k < n; k++)); do
      local dargs=()
      [[ $* == *--data-dir* ]] && dargs=(--data "$DATA")
      RAYON_NUM_THREADS=$thr "$BIN/fedssl-client" --coordinator "127.0.0.1:$port" --ca "$out/cert.pem" \
        --shard "$k/$n" --device "$dev" --quiet --name "client-$k" "${dargs[@]}" >"$out.client-$k.log" 2>&1 &
      pids+=($!)
      echo "$k $!" >>"$out.pids"
      sleep 0.3   # join in shard order
    done
  else
    note "$tag $role: the coordinator wrote no cert.pem"
  fi
  local rc=0 waited=0 gone=0
  while kill -0 $cpid 2>/dev/null; do
    if ((waited >= t)); then note "$tag $role: timed out after ${t}s"; kill $cpid; rc=124; break; fi
    # every client gone before the rounds ended (final.safetensors comes before the clients are
    # let go, then the evaluation): the coordinator would wait for its join timeout
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    if ((!alive)) && [[ ! -f $out/final.safetensors ]]; then
      gone=$((gone + 1))
      if ((gone >= 15)); then
        note "$tag $role: every client exited and the coordinator is still running: stopped"
        kill $cpid; rc=125; break
      fi
    fi
    sleep 1; waited=$((waited + 1))
  done
  wait $cpid; local crc=$?
  ((rc == 0)) && rc=$crc
  # the clients leave when the coordinator lets them go; 10 s at most, then they are stopped
  for ((k = 0; k < 20; k++)); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  mem_stop
  note "$tag $role: exit $rc after $(($(date +%s) - s))s; $(tail -1 "$out.coordinator.log" 2>/dev/null)"
  step_log "$tag $role" "$rc" "$(($(date +%s) - s))"
  echo "{\"tag\": \"$tag\", \"role\": \"$role\", \"device\": \"$dev\", \"clients\": $n, \"out\": \"$out\", \"rc\": $rc, \"seconds\": $(($(date +%s) - s)), \"rayon_threads\": $thr, \"eval_device\": \"$( ((EVAL_DEVICE_FLAG)) && echo "$dev" || echo cpu)\", \"args\": \"$*\"}" >>"$WORK/runs.jsonl"
}

if ((DRY)); then
  QS=(--set data.train_images=240 --set data.test_images=120 --set eval.train_labels=240
      --set eval.epochs=5 --set eval.mlp_epochs=1 --set federation.rounds=2)
  CF=(--data-dir "$DATA" --set data.train_images=400 --set data.test_images=200
      --set eval.train_labels=400 --set eval.test_images=200 --set eval.epochs=5
      --set eval.mlp_epochs=1 --set federation.rounds=2)
  note "dry run: the GPU legs run on the CPU (no CUDA here), with small sizes"
else
  QS=()
  CF=(--data-dir "$DATA" --set "data.train_images=$TRAIN_N" --set "data.test_images=$TEST_N"
      --set "eval.train_labels=$TRAIN_N" --set "eval.test_images=$TEST_N")
fi
if want quickstart; then
  run_scenario quickstart gpu "$B/scenarios/quickstart.toml" "$DEV" 3 120 "${QS[@]}"
  run_scenario quickstart cpu "$B/scenarios/quickstart.toml" cpu 3 150 "${QS[@]}"
fi
if want cifar; then
  run_scenario cifar10-rotation gpu "$B/scenarios/cifar10-rotation.toml" "$DEV" 4 180 "${CF[@]}"
  run_scenario cifar10-rotation cpu "$B/scenarios/cifar10-rotation.toml" cpu 4 300 "${CF[@]}"
fi

# --- 5. PyTorch with torch.compile, in the time left ----------------------------------------
if want compile; then
  if ((HAVE_TORCH)); then
    models=resnet,vgg11,vit
    ((DRY)) && models=resnet
    run_step "pytorch compile" 400 "$PY" "$B/bench/pytorch_bench.py" --device "$DEV" --model "$models" \
      --batch "$TB" --mode compile --iters $((ITERS * 2)) --warmup "$WARM" --threads "${thr:-$NPROC}" \
      >"$WORK/bench/torch-compile.jsonl"
  else
    skip "pytorch compile" "no PyTorch with this device for $PY"
  fi
fi
fi # LOAD_OK

# --- results --------------------------------------------------------------------------------
note "collecting results"
"$PY" "$B/summarize.py" "$WORK" "$OUTDIR" "$DRY" "$DEV" || note "summarize.py failed"
note "done in $(($(date +%s) - T0))s; failed steps: ${FAILED[*]:-none}"
tail -c 4000000 "$WORK/log.txt" >"$OUTDIR/log.txt"
((${#FAILED[@]} == 0))
