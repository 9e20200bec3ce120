#!/usr/bin/env bash
# The GPU check of the CUDA backend in two halves (DESIGN.md §4):
#
#   scripts/device-check.sh build     # here (Rust toolchain, no GPU needed): compiles the test
#                                     # binaries and mpm-bench (release) into device-out/bin
#   scripts/device-check.sh gpu       # on the GPU machine (no Rust there), from the repo root:
#                                     # runs the GPU tests, then the benchmarks, saving all
#                                     # output under $OUT (default device-out/results)
#   scripts/device-check.sh attack-build / attack   # the GPU AutoAttack comparison (see below)
#   scripts/device-check.sh all       # gpu, then attack when attack-build was run: one call,
#                                     # one machine start (carry device-out/bin, device-out/aa)
#   scripts/device-check.sh session   # the parts in priority order under one deadline (below):
#                                     # the command for a 15-minute GPU session
#   scripts/device-check.sh ddp       # NCCL at world size 1 (issue #19): the dist_nccl test and
#                                     # mpm-bench --ddp-overhead (also a part of gpu and session)
#
# GPU side: cuBLAS 13 and cuDNN 9 come from python's site-packages (nvidia/cublas/lib,
# nvidia/cudnn/lib, nvidia/cu13/lib); they are put on LD_LIBRARY_PATH. Never touches the
# GPU's settings. Per-part timeouts keep the whole GPU side under ~8 minutes:
#   GPU tests 200 s | mpm-bench bf16 (kernels + end to end, batch 128) 170 s |
#   mpm-bench f32 (end to end only, batch 128) 110 s
# Each part's output goes to its own file; summary.txt collects the return codes and figures.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=device-out/bin

build() {
  set -e
  mkdir -p "$BIN"
  cargo build --release --bin mpm-bench
  cp target/release/mpm-bench "$BIN/"
  # Test executables: cargo prints their paths as JSON "executable" fields.
  cargo test --release --no-run --message-format=json \
      --test cuda_parity --test kernels_compile --test train_gpu --test dist_nccl 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m["target"]["kind"] == ["test"]:
        shutil.copy(exe, sys.argv[1] + "/" + m["target"]["name"]); print("copied", m["target"]["name"])
' "$BIN"
  # Debug info makes each binary ~75 MB; without it ~4 MB (symbols kept for backtraces), small
  # enough to copy to the GPU machine.
  if command -v strip >/dev/null; then strip --strip-debug "$BIN"/*; fi
  ls -l "$BIN"
}

setup_libs() {
  sp=""
  sp=$(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true)
  for d in $sp; do
    for lib in "$d"/nvidia/*/lib; do
      [ -d "$lib" ] && LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
    done
  done
  # cudarc opens cuDNN/cuBLAS by bare names, `libcudnn.so` first; a system copy of another
  # version found that way mixes with the wheel's sub-libraries (CUDNN_STATUS_SUBLIBRARY_
  # VERSION_MISMATCH). Links named as cudarc asks, first on the path, pin the wheel's copies.
  pin=/tmp/mpm-cuda-links
  mkdir -p "$pin"
  for d in $sp; do
    for f in "$d"/nvidia/cudnn/lib/libcudnn.so.9 "$d"/nvidia/cu13/lib/libcublas.so.13 \
             "$d"/nvidia/cu13/lib/libcublasLt.so.13 "$d"/nvidia/cublas/lib/libcublas.so.13 \
             "$d"/nvidia/cublas/lib/libcublasLt.so.13 "$d"/nvidia/nccl/lib/libnccl.so.2 \
             "$d"/nvidia/cu13/lib/libnccl.so.2; do
      [ -f "$f" ] && ln -sfn "$f" "$pin/$(basename "${f%.*}")"
    done
  done
  LD_LIBRARY_PATH="$pin:$LD_LIBRARY_PATH"
  export LD_LIBRARY_PATH MPM_KERNEL_CACHE="${MPM_KERNEL_CACHE:-/tmp/mpm-kernel-cache}"
}

gpu() {
  local out="${OUT:-device-out/results}"
  mkdir -p "$out"
  setup_libs
  {
    date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ls -l "$pin"
    echo "system cuDNN/cuBLAS:"; ldconfig -p 2>/dev/null | grep -Ei "cudnn|cublas" | head -20
    for d in $sp; do ls "$d"/nvidia/*/lib 2>/dev/null | grep -Ei "cudnn|cublas" | head -30; done
  } > "$out/env.txt"
  echo "== GPU tests" | tee "$out/summary.txt"
  # Per-part limits (seconds) can be shortened for a quick first look: T_PARITY, T_TRAIN,
  # T_BF16, T_F32, T_TF32 (0 skips that part; T_TF32 is 0 unless set).
  timeout "${T_PARITY:-200}" "$BIN/cuda_parity" --test-threads 1 --nocapture > "$out/cuda_parity.txt" 2>&1
  echo "cuda_parity rc=$? (124 = timed out)" | tee -a "$out/summary.txt"
  grep -E "^test |panicked|FAILED|failures:|test result" "$out/cuda_parity.txt" | tee -a "$out/summary.txt"
  if [ "${T_TRAIN:-60}" != 0 ]; then
    timeout "${T_TRAIN:-60}" "$BIN/train_gpu" --test-threads 1 --nocapture > "$out/train_gpu.txt" 2>&1
    echo "train_gpu rc=$? (124 = timed out)" | tee -a "$out/summary.txt"
    grep -E "^test |panicked|FAILED|failures:|test result" "$out/train_gpu.txt" | tee -a "$out/summary.txt"
  fi
  bench bf16 "${T_BF16:-170}" 3
  bench f32 "${T_F32:-110}" 2 --skip-kernels
  # TF32 (f32 tensors, TF32 tensor cores in cuBLAS/cuDNN: PyTorch's default for convolutions);
  # off unless T_TF32 is set.
  bench tf32 "${T_TF32:-0}" 2 --skip-kernels
  [ "${T_DDP:-120}" != 0 ] && ddp
}

# NCCL at world size 1 on GPU 0 (issue #19): the one-GPU check (tests/dist_nccl.rs: the
# data-parallel step through NCCL trains the plain step's model bit for bit) and the overhead
# of the full MPM step through NCCL against the plain step (mpm-bench --ddp-overhead, target
# < 3%). NCCL comes from the pip wheel (nvidia/nccl/lib/libnccl.so.2), linked as libnccl.so
# (the name cudarc opens) by setup_libs. T_DDP_TEST / T_DDP limit the two parts (seconds).
ddp() {
  local out="${OUT:-device-out/results}"
  mkdir -p "$out"
  setup_libs
  echo "== NCCL world size 1" | tee -a "$out/summary.txt"
  timeout "${T_DDP_TEST:-60}" "$BIN/dist_nccl" --test-threads 1 --nocapture > "$out/dist_nccl.txt" 2>&1
  echo "dist_nccl rc=$? (124 = timed out)" | tee -a "$out/summary.txt"
  grep -E "^test |skipped|NCCL|panicked|test result" "$out/dist_nccl.txt" | tee -a "$out/summary.txt"
  timeout "${T_DDP:-120}" "$BIN/mpm-bench" --device cuda:0 --precision bf16 --batch "${DDP_BATCH:-64}" \
    --repeats 5 --ddp-overhead > "$out/bench_ddp.txt" 2>&1
  echo "mpm-bench --ddp-overhead rc=$?" | tee -a "$out/summary.txt"
  tee -a "$out/summary.txt" < "$out/bench_ddp.txt"
}

# bench PRECISION LIMIT REPEATS [FLAGS...]: one mpm-bench run at batch 128 (LIMIT 0 skips it).
bench() {
  local prec="$1" limit="$2" reps="$3" out="${OUT:-device-out/results}"
  shift 3
  [ "$limit" = 0 ] && return
  echo "== benchmarks, $prec $*" | tee -a "$out/summary.txt"
  timeout "$limit" "$BIN/mpm-bench" --device cuda:0 --precision "$prec" --batch 128 \
    --repeats "$reps" "$@" > "$out/bench_$prec.txt" 2>&1
  echo "mpm-bench $prec rc=$?" | tee -a "$out/summary.txt"
  cat "$out/bench_$prec.txt" | tee -a "$out/summary.txt"
}

# GPU attack throughput, engine vs the reference PyTorch AutoAttack, same weights and data
# (build side: `attack-build` copies mpm-attack, the demo model and the reference package).
attack_build() {
  set -e
  mkdir -p "$BIN" device-out/aa
  cargo build --release --bin mpm-attack
  cp target/release/mpm-attack "$BIN/"
  if command -v strip >/dev/null; then strip --strip-debug "$BIN/mpm-attack"; fi
  cp "${AA_MODEL:?set AA_MODEL to a folder with weights.safetensors and data.safetensors}"/*.safetensors device-out/aa/
  rm -rf device-out/aa/autoattack
  cp -r "${AA_SRC:?set AA_SRC to a checkout of fra31/auto-attack}/autoattack" device-out/aa/
}

# The engine's report splits its time per attack (model passes vs attack logic) and prints
# it; AA_ENGINE_ARGS adds flags (e.g. "--pass-batch 256" to time targets one at a time).
attack() {
  local out="${OUT:-device-out/results}" n="${AA_N:-500}"
  mkdir -p "$out"
  setup_libs
  export LD_LIBRARY_PATH MPM_KERNEL_CACHE="${MPM_KERNEL_CACHE:-/tmp/mpm-kernel-cache}"
  local common=(--weights device-out/aa/weights.safetensors --data device-out/aa/data.safetensors
                --num-classes 10 --norm Linf --eps 0.03137255)
  echo "== attack, $n images, l-inf 8/255 standard" | tee "$out/attack.txt"
  ( time timeout "${T_ENGINE:-200}" "$BIN/mpm-attack" "${common[@]}" --arch resnet18 --limit "$n" \
      --batch-size "$n" --device cuda:0 --report "$out/engine.json" ${AA_ENGINE_ARGS:-} ) >> "$out/attack.txt" 2>&1
  echo "engine rc=$?" | tee -a "$out/attack.txt"
  ( time timeout "${T_REF:-240}" python3 scripts/autoattack_reference.py run "${common[@]}" \
      --arch resnet18 --act gelu --limit "$n" --batch-size "$n" --device cuda \
      --autoattack-path device-out/aa --report "$out/reference.json" ) >> "$out/attack.txt" 2>&1
  echo "reference rc=$?" | tee -a "$out/attack.txt"
  tail -n 30 "$out/attack.txt"
}

# The same comparison at the paper's scale: a ResNet-50 (1000 classes, 224x224) made on the GPU
# machine by `autoattack_reference.py scale` (random init, BN statistics from other images,
# labels = its own predictions, eps calibrated so most points survive a 10-step PGD; 100 MB of
# weights are not worth carrying). Default attacks: APGD-CE + APGD-T (100 iterations); set
# R50_ATTACKS=apgd-ce,apgd-t,fab-t,square for the whole standard list (minutes per tool).
# R50_PRECISIONS lists the engine's --precision values to time (default f32; tf32 is PyTorch's
# default convolution math); R50_ENGINE_ARGS adds other engine flags.
# A CPU dry run of the flow: R50_TORCH_DEVICE=cpu R50_ENGINE_DEVICE=cpu R50_WIDTH=8 R50_N=2.
attack_r50() {
  local out="${OUT:-device-out/results}" n="${R50_N:-32}" dir="${R50_DIR:-/tmp/mpm-r50}"
  local attacks="${R50_ATTACKS:-apgd-ce,apgd-t}"
  mkdir -p "$out"
  setup_libs
  export LD_LIBRARY_PATH MPM_KERNEL_CACHE="${MPM_KERNEL_CACHE:-/tmp/mpm-kernel-cache}"
  echo "== attack at scale: ResNet-50, 224x224, 1000 classes, $n images, $attacks" | tee "$out/attack_r50.txt"
  [ -f "$dir/scale.json" ] || python3 scripts/autoattack_reference.py scale --out "$dir" --n "$n" \
    --width "${R50_WIDTH:-64}" --device "${R50_TORCH_DEVICE:-cuda}" >> "$out/attack_r50.txt" 2>&1
  local eps
  eps=$(python3 -c "import json; print(json.load(open('$dir/scale.json'))['eps_linf'])") || return
  local common=(--weights "$dir/weights.safetensors" --data "$dir/data.safetensors" --num-classes 1000
                --norm Linf --eps "$eps" --attacks "$attacks")
  # One engine run per precision in R50_PRECISIONS (default f32; the session asks for bf16
  # and tf32), T_R50_ENGINE seconds each, reports engine_r50_<precision>.json.
  local prec
  for prec in ${R50_PRECISIONS:-f32}; do
    echo "== engine, --precision $prec" >> "$out/attack_r50.txt"
    ( time timeout "${T_R50_ENGINE:-150}" "$BIN/mpm-attack" "${common[@]}" --arch resnet50 --limit "$n" \
        --batch-size "$n" --version custom --device "${R50_ENGINE_DEVICE:-cuda:0}" --no-resume \
        --precision "$prec" --report "$out/engine_r50_$prec.json" \
        ${R50_ENGINE_ARGS:-} ) >> "$out/attack_r50.txt" 2>&1
    echo "engine $prec rc=$?" | tee -a "$out/attack_r50.txt"
  done
  ( time timeout "${T_R50_REF:-200}" python3 scripts/autoattack_reference.py run "${common[@]}" \
      --arch resnet50 --act gelu --limit "$n" --batch-size "$n" --device "${R50_TORCH_DEVICE:-cuda}" \
      --autoattack-path device-out/aa --report "$out/reference_r50.json" ) >> "$out/attack_r50.txt" 2>&1
  echo "reference rc=$?" | tee -a "$out/attack_r50.txt"
  tail -n 20 "$out/attack_r50.txt"
}

# Everything in one call (one machine start): the GPU tests and benchmarks, then the attack
# comparison when `attack-build` has put the demo model and the reference there. With a
# 600 s per-call limit, e.g.
#   T_PARITY=120 T_TRAIN=40 T_BF16=150 T_F32=0 T_ENGINE=80 T_REF=90 AA_N=256 scripts/device-check.sh all
# and, with R50_N=32 (plus T_R50_ENGINE / T_R50_REF), the ResNet-50 comparison after it.
all() {
  gpu
  if [ -f device-out/aa/weights.safetensors ] && [ -x "$BIN/mpm-attack" ]; then
    attack
    # The ResNet-50 comparison when R50_N is set (it needs the reference package too).
    [ "${R50_N:-0}" != 0 ] && attack_r50
  else
    echo "attack comparison skipped: run attack-build here first" | tee -a "${OUT:-device-out/results}/summary.txt"
  fi
}

# One GPU session in one call, the parts in the order that matters most for the open issues,
# under a total deadline (DEADLINE seconds, default 540, so a 600 s call ends with its files
# written): each part gets what its own limit asks or what is left, and is skipped when less
# than its minimum is left. Order: GPU parity tests (the kernels written without a GPU) ->
# mpm-bench bf16 (kernel % of copy bandwidth, end-to-end images/s) -> the ResNet-50 / 224 px
# attack comparison (needs device-out/aa from attack-build) -> the training GPU test -> the
# demo-model attack comparison -> mpm-bench tf32 end to end. Build side first:
#   scripts/device-check.sh build && AA_MODEL=... AA_SRC=... scripts/device-check.sh attack-build
session() {
  # The parts write a dozen files; the device tool brings back at most 8 from $OUT, so they go
  # to a working folder that is packed into $OUT/results.tgz (with summary.txt beside it)
  # after every part: a call cut short still returns what finished.
  local dest="${OUT:-}" out=device-out/results t0 deadline="${DEADLINE:-540}"
  export OUT="$out"
  mkdir -p "$out"
  pack() {
    [ -n "$dest" ] || return 0
    # (adversarial images excluded: at 224 px they would pass the 16 MB a returned file may be)
    tar czf "$dest/results.tgz" --exclude="*.adv" -C "$out" . && cp "$out/summary.txt" "$dest/"
  }
  t0=$(date +%s)
  # part NAME MIN LIMIT VAR: sets VAR to the seconds this part may use, or returns 1 to skip.
  part() {
    local left=$(( deadline - ($(date +%s) - t0) ))
    local give=$(( left < $3 ? left : $3 ))
    if [ "$give" -lt "$2" ]; then
      echo "== $1 skipped: ${left} s left of the ${deadline} s deadline" | tee -a "$out/summary.txt"
      return 1
    fi
    printf -v "$4" '%s' "$give"
  }
  local t
  : > "$out/summary.txt"
  if part "GPU tests" 60 "${T_PARITY:-150}" t; then
    T_PARITY=$t gpu_tests_only
  fi
  pack
  if part "mpm-bench bf16" 60 "${T_BF16:-150}" t; then bench bf16 "$t" 2; fi
  pack
  # ResNet-50 at 224 px, 128 images: the engine in bf16 and in tf32 (PyTorch's default
  # convolution math), the reference once; a quarter of the time for each engine run.
  if [ -f device-out/aa/autoattack/__init__.py ] && part "attack-r50" 90 "${T_R50:-220}" t; then
    T_R50_ENGINE=$(( t / 4 )) T_R50_REF=$(( t / 2 )) R50_N="${R50_N:-128}" \
      R50_PRECISIONS="${R50_PRECISIONS:-bf16 tf32}" attack_r50
    grep -E "^==|robust|images/s|rc=|^real" "$out/attack_r50.txt" >> "$out/summary.txt"
  fi
  pack
  if part "train_gpu" 30 "${T_TRAIN:-40}" t; then
    timeout "$t" "$BIN/train_gpu" --test-threads 1 --nocapture > "$out/train_gpu.txt" 2>&1
    echo "train_gpu rc=$? (124 = timed out)" | tee -a "$out/summary.txt"
    grep -E "^test |panicked|FAILED|test result" "$out/train_gpu.txt" | tee -a "$out/summary.txt"
  fi
  pack
  if [ -f device-out/aa/weights.safetensors ] && part "attack (demo model)" 60 "${T_AA:-120}" t; then
    T_ENGINE=$(( t * 2 / 5 )) T_REF=$(( t * 3 / 5 )) AA_N="${AA_N:-256}" attack
    grep -E "^==|robust|images/s|rc=|^real" "$out/attack.txt" >> "$out/summary.txt"
  fi
  pack
  if part "mpm-bench tf32" 40 "${T_TF32:-60}" t; then bench tf32 "$t" 2 --skip-kernels; fi
  pack
  if part "NCCL world size 1" 45 "${T_DDP:-100}" t; then
    T_DDP_TEST=$(( t / 3 )) T_DDP=$(( t * 2 / 3 )) ddp
  fi
  echo "session: $(( $(date +%s) - t0 )) s of ${deadline}" | tee -a "$out/summary.txt"
  pack
}

# The GPU-test part of `gpu` alone (environment, cuda_parity), for `session`.
gpu_tests_only() {
  local out="${OUT:-device-out/results}"
  setup_libs
  { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } > "$out/env.txt"
  echo "== GPU tests" | tee -a "$out/summary.txt"
  timeout "$T_PARITY" "$BIN/cuda_parity" --test-threads 1 --nocapture > "$out/cuda_parity.txt" 2>&1
  echo "cuda_parity rc=$? (124 = timed out)" | tee -a "$out/summary.txt"
  grep -E "^test |panicked|FAILED|failures:|test result" "$out/cuda_parity.txt" | tee -a "$out/summary.txt"
}

case "${1:-}" in
  build) build ;;
  session) session ;;
  all) all ;;
  gpu) gpu ;;
  ddp) ddp ;;
  attack-build) attack_build ;;
  attack) attack ;;
  attack-r50) attack_r50 ;;
  *) echo "usage: $0 build|session|gpu|ddp|attack-build|attack|attack-r50|all" >&2; exit 2 ;;
esac
