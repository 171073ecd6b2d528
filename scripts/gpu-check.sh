#!/usr/bin/env bash
# Runs the CUDA checks on a machine with an NVIDIA GPU and no Rust toolchain, from the binaries
# scripts/cuda-build.sh packed into gpu-bin/: the CUDA test suite, a short fine-tune of the
# example, the training-memory measurement, the layer benchmark in bf16, and PEFT's benchmark of
# the same layers on the same card (scripts/peft_bench.py; needs torch + peft), and model-level
# training of a ~1B Llama (bf16, 4 × 1024 tokens, r = 16) against PEFT in the same call
# (scripts/peft_train_compare.py with bench_train; needs torch + transformers + peft), and the same
# with an NF4 base against PEFT over bitsandbytes 4-bit (QLoRA / QDoRA; needs bitsandbytes), and
# KV-cache decoding of a 1B-like Llama (bf16) against transformers + PEFT (bench_generate and
# scripts/bench_generate.py). A short table is printed last; everything is also written under --out.
#
# Usage: scripts/gpu-check.sh [--bin DIR] [--out DIR] [--steps N] [--runs N] [--only LIST] [--dry-run]
#
#   --bin DIR     the packed binaries (default: gpu-bin/ in the repo)
#   --out DIR     results: logs and JSON (default: /tmp/adapters-gpu-check)
#   --steps N     fine-tuning steps of the example (default 60)
#   --runs N      timed runs per benchmark figure (default 20)
#   --only LIST   comma-separated subset of: tests,finetune,vram,bench,peft,train,qlora,generate (default: all)
#   --dry-run     check the arguments, the GPU and the binaries, run nothing
#
# Environment: CUDA_LIB_DIR (default /usr/local/cuda/lib64) is put first on LD_LIBRARY_PATH;
# FINETUNE_ARGS replaces the fine-tune's extra arguments; PYTHON (default python3).
# Exit status: 0 when every step that ran passed, 1 when one failed, 2 for bad arguments or no GPU.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$repo/gpu-bin
out=/tmp/adapters-gpu-check
steps=60
runs=20
only=tests,finetune,vram,bench,peft,train,qlora,generate
dry=0
die() { echo "gpu-check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --bin) [ $# -ge 2 ] || die "--bin needs a folder"; bin=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift 2 ;;
    --steps) [ $# -ge 2 ] || die "--steps needs a number"; steps=$2; shift 2 ;;
    --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a list"; only=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done
for v in "$steps" "$runs"; do
  case $v in ''|*[!0-9]*|0) die "--steps and --runs expect positive numbers, got \`$v\`" ;; esac
done
IFS=, read -ra parts <<<"$only"
for p in "${parts[@]}"; do
  case $p in tests|finetune|vram|bench|peft|train|qlora|generate) ;; *) die "--only: unknown step \`$p\` (tests,finetune,vram,bench,peft,train,qlora,generate)" ;; esac
done
wants() { [[ ",$only," == *",$1,"* ]]; }
PYTHON=${PYTHON:-python3}

# --- the GPU -------------------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  die "no NVIDIA GPU: nvidia-smi is not installed (this script runs on a machine with an NVIDIA GPU and driver)"
fi
if ! gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1) || [ -z "$gpu" ]; then
  die "no NVIDIA GPU: nvidia-smi failed: $gpu"
fi
case $gpu in *"failed"*|*"No devices"*|*"couldn't"*) die "no NVIDIA GPU: $gpu" ;; esac
echo "gpu-check: GPU $gpu"

cuda_lib=${CUDA_LIB_DIR:-/usr/local/cuda/lib64}
[ -d "$cuda_lib" ] || echo "gpu-check: warning: $cuda_lib does not exist; relying on the loader's path for libcublas / libcurand / libnvrtc (CUDA 13)"
export LD_LIBRARY_PATH=$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# --- the binaries --------------------------------------------------------------------------
manifest=$bin/manifest.tsv
[ -f "$manifest" ] || die "no $manifest: build the binaries with scripts/cuda-build.sh (on a machine with Rust) and carry $bin here"
sed -n 's/^# //p' "$manifest" | sed -n 2p | sed 's/^/gpu-check: binaries /'
# unpack FILE.xz|FILE.gz DEST: with xz / gunzip, else with Python's lzma / gzip modules.
unpack() {
  case $1 in
    *.xz) if command -v xz >/dev/null 2>&1; then xz -dc "$1" >"$2"; else
            "${PYTHON:-python3}" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi ;;
    *.gz) if command -v gunzip >/dev/null 2>&1; then gunzip -c "$1" >"$2"; else
            "${PYTHON:-python3}" -c 'import gzip, shutil, sys; shutil.copyfileobj(gzip.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi ;;
    *) cp "$1" "$2" ;;
  esac
}
work=$(mktemp -d /tmp/adapters-gpu-bin.XXXXXX)
trap 'rm -rf "$work"' EXIT
declare -A exe
while IFS=$'\t' read -r name file sum _raw _packed; do
  case $name in '#'*|'') continue ;; esac
  [ -f "$bin/$file" ] || die "$bin/$file listed in the manifest is missing"
  unpack "$bin/$file" "$work/$name" || die "cannot unpack $bin/$file"
  got=$(sha256sum "$work/$name" | cut -d' ' -f1)
  [ "$got" = "$sum" ] || die "$file: sha256 $got, the manifest says $sum (corrupt or stale copy)"
  chmod +x "$work/$name"
  missing=$(ldd "$work/$name" 2>/dev/null | grep 'not found' | awk '{print $1}' | tr '\n' ' ')
  [ -z "$missing" ] || die "$name needs libraries the loader cannot find: $missing(add their folder to CUDA_LIB_DIR / LD_LIBRARY_PATH)"
  exe[$name]=$work/$name
done <"$manifest"
echo "gpu-check: unpacked ${!exe[*]}"
fixtures=$repo/tests/fixtures
[ -d "$fixtures/peft" ] || die "no fixtures at $fixtures/peft (run from a checkout of the repo)"
if [ "$dry" = 1 ]; then
  echo "gpu-check: dry run: arguments, GPU and binaries are fine; would run: $only"
  exit 0
fi

mkdir -p "$out"
status=0
declare -A result
record() { result[$1]=$2; case $2 in FAIL*) status=1 ;; esac; }

# --- 1. the CUDA test suite ----------------------------------------------------------------
if wants tests; then
  if [ -n "${exe[gpu_suite]:-}" ]; then
    echo "gpu-check: [tests] gpu_suite on cuda"
    # Run in $out: files the tests leave (proptest's regression seeds) stay out of the repo.
    (cd "$out" && ADAPTERS_TEST_DEVICE=cuda ADAPTERS_FIXTURES=$fixtures ADAPTERS_SHOW_ERRORS=1 \
      PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 "${exe[gpu_suite]}" --test-threads=4) >"$out/tests.log" 2>&1
    rc=$?
    summary=$(grep -E '^test result:' "$out/tests.log" | tail -1 | sed 's/^test result: //; s/; finished.*//')
    if [ $rc = 0 ]; then record tests "ok: $summary"; else
      record tests "FAIL (exit $rc): ${summary:-see $out/tests.log}"
      grep -E '^test .* FAILED|panicked' "$out/tests.log" | head -20
    fi
  else record tests "FAIL: gpu_suite not in $bin"; fi
fi

# --- 2. a short fine-tune of the example on cuda ---------------------------------------------
if wants finetune; then
  ft=${exe[finetune]:-}
  if [ -z "$ft" ]; then
    record finetune "FAIL: the finetune example is not in $bin (it did not build when packing)"
  elif ft_help=$("$ft" --help 2>&1); [[ $ft_help != *--device* ]]; then
    record finetune "FAIL: this finetune binary has no --device flag"
  else
    args=${FINETUNE_ARGS:-"--steps $steps"}
    echo "gpu-check: [finetune] --device cuda $args --out $out/finetune"
    rm -rf "$out/finetune"
    # shellcheck disable=SC2086
    if "$ft" --device cuda $args --out "$out/finetune" >"$out/finetune.log" 2>&1; then
      record finetune "ok: $(grep -iE 'final|trained|accuracy' "$out/finetune.log" | tail -2 | tr '\n' ' ')"
    else
      record finetune "FAIL (exit $?): $(tail -3 "$out/finetune.log" | tr '\n' ' ')"
    fi
  fi
fi

# --- 3. training memory ------------------------------------------------------------------
if wants vram; then
  if [ -n "${exe[vram_check]:-}" ]; then
    echo "gpu-check: [vram] vram_check --device cuda"
    # The default cases, then the 7B-shaped layer at the same tokens in shorter sequences, which
    # separates the attention's seq² activations from the per-token ones.
    if "${exe[vram_check]}" --device cuda --require-gpu --json "$out/vram.json" >"$out/vram.log" 2>&1 &&
      "${exe[vram_check]}" --device cuda --require-gpu --case block --block-batch 16,256 \
        --json "$out/vram_short.json" >>"$out/vram.log" 2>&1; then
      record vram ok
    else record vram "FAIL (exit $?): $(tail -3 "$out/vram.log" | tr '\n' ' ')"; fi
  else record vram "FAIL: vram_check not in $bin"; fi
fi

# --- 4. the layer benchmark, ours and PEFT's -----------------------------------------------
shapes=(--shape 4096,4096,16,4096 --shape 4096,11008,16,4096)
if wants bench; then
  if [ -n "${exe[bench_layers]:-}" ]; then
    echo "gpu-check: [bench] bench_layers --device cuda --dtype bf16 ${shapes[*]}"
    if "${exe[bench_layers]}" --device cuda --dtype bf16 "${shapes[@]}" --runs "$runs" --warmup 5 \
      --json "$out/bench_candle.json" >"$out/bench_candle.log" 2>&1; then
      record bench ok
    else record bench "FAIL (exit $?): $(tail -3 "$out/bench_candle.log" | tr '\n' ' ')"; fi
  else record bench "FAIL: bench_layers not in $bin"; fi
fi
if wants peft; then
  if ! "$PYTHON" -c 'import torch, peft' 2>/dev/null; then
    record peft "skipped: $PYTHON cannot import torch and peft"
  else
    echo "gpu-check: [peft] scripts/peft_bench.py --dtype bf16 ${shapes[*]}"
    if "$PYTHON" "$repo/scripts/peft_bench.py" --dtype bf16 "${shapes[@]}" --runs "$runs" --warmup 5 \
      --json "$out/bench_peft.json" >"$out/bench_peft.log" 2>&1; then
      record peft ok
    else record peft "FAIL (exit $?): $(tail -3 "$out/bench_peft.log" | tr '\n' ' ')"; fi
  fi
fi

# --- 5 and 6. model-level training, ours and PEFT's in the same call: dense (train) and over an
# NF4 base against PEFT + bitsandbytes 4-bit (qlora) ------------------------------------------
# compare STEP MODULES [EXTRA ARGS...]: the 1B shape, bf16, 4 × 1024 tokens, r = 16.
compare() {
  local step=$1 modules=$2; shift 2
  wants "$step" || return 0
  if [ -z "${exe[bench_train]:-}" ]; then record "$step" "FAIL: bench_train not in $bin"; return 0; fi
  if ! "$PYTHON" -c "import $modules" 2>/dev/null; then
    record "$step" "skipped: $PYTHON cannot import $modules"; return 0
  fi
  echo "gpu-check: [$step] peft_train_compare.py $* --preset llama-1b --dtype bf16 --batch 4 --seq 1024 --rank 16"
  if "$PYTHON" "$repo/scripts/peft_train_compare.py" --bin "${exe[bench_train]}" --device cuda "$@" \
    --dtype bf16 --preset llama-1b --batch 4 --seq 1024 --rank 16 --rounds 1 --steps 5 \
    --json "$out/${step}_compare.json" >"$out/${step}_compare.log" 2>&1; then
    record "$step" ok
  else record "$step" "FAIL (exit $?): $(tail -3 "$out/${step}_compare.log" | tr '\n' ' ')"; fi
}
compare train "torch, transformers, peft"
compare qlora "torch, transformers, peft, bitsandbytes" --quant nf4

# --- 7. generation: decode with the KV cache, ours and transformers + PEFT's, a 1B-like shape ----
gen_shape=(--hidden 2048 --layers 16 --heads 32 --kv-heads 8 --intermediate 8192 --vocab 128256
  --prompt 512 --new 128 --dtype bf16 --rounds 2 --uncached none)
if wants generate; then
  if [ -z "${exe[bench_generate]:-}" ]; then record generate "FAIL: bench_generate not in $bin"
  else
    echo "gpu-check: [generate] bench_generate --device cuda ${gen_shape[*]}"
    if "${exe[bench_generate]}" --device cuda "${gen_shape[@]}" --json "$out/generate.json" \
      >"$out/generate.log" 2>&1; then
      if "$PYTHON" -c 'import torch, transformers, peft' 2>/dev/null; then
        "$PYTHON" "$repo/scripts/bench_generate.py" --device cuda "${gen_shape[@]}" \
          --json "$out/generate_peft.json" >"$out/generate_peft.log" 2>&1 ||
          echo "gpu-check: [generate] the PyTorch side failed: $(tail -2 "$out/generate_peft.log")"
      fi
      record generate ok
    else record generate "FAIL (exit $?): $(tail -3 "$out/generate.log" | tr '\n' ' ')"; fi
  fi
fi

# --- the table -----------------------------------------------------------------------------
echo
echo "== adapters on $gpu"
for step in tests finetune vram bench peft train qlora generate; do
  wants "$step" && printf '%-9s %s\n' "$step" "${result[$step]:-not run}"
done
if [ -f "$out/train_compare.log" ]; then
  echo; echo "model-level training (scripts/peft_train_compare.py)"
  sed -n '/^| method/,$p' "$out/train_compare.log"
fi
if [ -f "$out/qlora_compare.log" ]; then
  echo; echo "QLoRA / QDoRA, NF4 base (scripts/peft_train_compare.py --quant nf4)"
  sed -n '/^| method/,$p' "$out/qlora_compare.log"
fi
for f in generate generate_peft; do
  [ -f "$out/$f.log" ] && { echo; echo "generation ($f)"; grep -E '^(impl|adapters|pytorch) ' "$out/$f.log"; }
done
if command -v "$PYTHON" >/dev/null 2>&1; then
  "$PYTHON" - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
vram = (load("vram.json") or []) + (load("vram_short.json") or [])
if vram:
    gib = lambda b: "-" if b is None else (f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB")
    print("\ntraining memory, one step (forward + backward + AdamW)")
    print(f"{'case':<6} {'batch':>9} {'estimate':>10} {'measured':>10} {'driver':>10} {'ratio':>6} {'step ms':>8}")
    for r in vram:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
        ms = "-" if r["step_ms"] is None else f"{r['step_ms']:.1f}"
        batch = f"{r.get('batch', '?')}x{r.get('seq', '?')}"
        print(f"{r['case']:<6} {batch:>9} {gib(r['estimate_bytes']):>10} "
              f"{gib(r['measured_peak_bytes']):>10} {gib(r['driver_bytes']):>10} {ratio:>6} {ms:>8}")
ours, peft = load("bench_candle.json") or [], load("bench_peft.json") or []
if ours or peft:
    key = lambda r: (r["kind"], r["din"], r["dout"], r["r"], r["tokens"], r["dtype"])
    theirs = {key(r): r for r in peft}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    print("\nlayer benchmark, median ms (fwd / fwd+bwd), bf16")
    print(f"{'shape':<11} {'kind':<12} {'ours fwd':>9} {'ours f+b':>9} {'PEFT fwd':>9} {'PEFT f+b':>9} {'f+b ours/PEFT':>13}")
    rows = ours or peft
    for r in rows:
        p = theirs.get(key(r), {}) if ours else r
        o = r if ours else {}
        a, b = o.get("fwd_bwd_ms"), p.get("fwd_bwd_ms")
        ratio = f"{a / b:.2f}" if a and b else "-"
        print(f"{r['din']}x{r['dout']:<6} {r['kind']:<12} {fmt(o.get('fwd_ms')):>9} {fmt(o.get('fwd_bwd_ms')):>9} "
              f"{fmt(p.get('fwd_ms')):>9} {fmt(p.get('fwd_bwd_ms')):>9} {ratio:>13}")
PY
fi
echo "results and logs: $out"
exit $status
