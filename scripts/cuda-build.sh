#!/usr/bin/env bash
# Builds the CUDA binaries of this workspace on a machine without a GPU and packs them, stripped
# and compressed, into a git-ignored folder (default gpu-bin/) that scripts/gpu-check.sh runs on a
# machine with an NVIDIA GPU and no Rust toolchain.
#
# Usage: scripts/cuda-build.sh [--out DIR] [--max-mib N] [--gzip] [--no-build]
#
#   --out DIR     where to pack the binaries (default: gpu-bin/ in the repo)
#   --max-mib N   fail when the packed folder exceeds N MiB (default 64)
#   --gzip        gzip -9 instead of xz -9e (each binary is ~50 MB, mostly candle's PTX kernels:
#                 ~13 MB gzipped, ~7 MB with xz; gzip packs five binaries into ~64 MiB)
#   --no-build    pack what the last build left in the target folder
#
# Toolkit: an `nvcc` already on PATH (a real CUDA toolkit, CUDA_HOME set) is used as is.
# Otherwise CUDA 13.0 from PyPI wheels: ~/.cache/cuda13-wheels/env.sh when present, else it is
# made by ../shared/cuda/setup-toolkit.sh (compiler, cudart, cublas, curand, nvrtc wheels, and a
# link-time stand-in for libcuda). Without either, the steps are printed and the script stops.
#
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200; 80 A100, 89 L4/4090),
# CARGO_TARGET_DIR (default target-cuda/, so CPU builds are not invalidated).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$repo/gpu-bin
max_mib=64
build=1
compress=xz
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --max-mib) max_mib=$2; shift 2 ;;
    --gzip) compress=gzip; shift ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cuda-build: unknown argument \`$1\` (see --help)" >&2; exit 2 ;;
  esac
done
case $max_mib in ''|*[!0-9]*) echo "cuda-build: --max-mib expects a number, got \`$max_mib\`" >&2; exit 2 ;; esac

cd "$repo"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

# --- toolkit -------------------------------------------------------------------------------
wheels=${CUDA_WHEELS_DIR:-$HOME/.cache/cuda13-wheels}
if command -v nvcc >/dev/null 2>&1; then
  echo "cuda-build: using nvcc from PATH: $(command -v nvcc)"
elif [ -f "$wheels/env.sh" ]; then
  # shellcheck disable=SC1091
  source "$wheels/env.sh"
elif [ -f "$repo/../shared/cuda/setup-toolkit.sh" ]; then
  bash "$repo/../shared/cuda/setup-toolkit.sh" "$wheels"
  # shellcheck disable=SC1091
  source "$wheels/env.sh"
else
  cat >&2 <<'MSG'
cuda-build: no CUDA toolkit. Either install CUDA 13.0 (nvcc on PATH, CUDA_HOME set), or set up
the compiler and libraries from PyPI wheels (no GPU needed), as ../shared/cuda/setup-toolkit.sh does:
  python3 -m pip install --target DEST/py nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  then: unversioned lib*.so links in DEST/py/nvidia/cu13/lib, a stub libcuda.so (soname
  libcuda.so.1) defining the driver functions cudarc binds, and
  CUDA_HOME=DEST/py/nvidia/cu13 PATH=$CUDA_HOME/bin:$PATH LIBRARY_PATH=$CUDA_HOME/lib:<stub dir>
MSG
  exit 1
fi
nvcc_version=$(nvcc --version | tail -1)
echo "cuda-build: $nvcc_version, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target $CARGO_TARGET_DIR"

# --- build ---------------------------------------------------------------------------------
# Prints the executables a cargo command built (from its JSON messages), one per line.
executables() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"] + "\t" + m["executable"])
'
}

list=$(mktemp)
trap 'rm -f "$list"' EXIT
started=$(date +%s)
run_cargo() { # run_cargo <required: 1|0> <cargo args...>
  local required=$1; shift
  local log; log=$(mktemp)
  if cargo "$@" --release --features cuda --message-format=json-render-diagnostics >"$log"; then
    executables <"$log" >>"$list"
    rm -f "$log"
  elif [ "$required" = 1 ]; then
    rm -f "$log"; echo "cuda-build: \`cargo $*\` failed" >&2; exit 1
  else
    rm -f "$log"; echo "cuda-build: warning: \`cargo $*\` failed; not packed" >&2
  fi
}
if [ "$build" = 1 ]; then
  run_cargo 1 test --no-run --test gpu_suite
  run_cargo 1 build --example bench_layers --example vram_check --example bench_train \
    --example bench_generate
  # The fine-tuning example may be absent or not build yet: gpu-check.sh reports it missing.
  if [ -e examples/finetune/main.rs ] || [ -e examples/finetune.rs ]; then
    run_cargo 0 build --example finetune
  fi
  run_cargo 1 build -p adapters-runtime --bin adapters
else
  rel=$CARGO_TARGET_DIR/release
  for f in "$rel"/deps/gpu_suite-*; do
    [ -x "$f" ] && [ -f "$f" ] && printf 'gpu_suite\t%s\n' "$f" >>"$list"
  done
  for e in bench_layers vram_check bench_train finetune; do
    [ -x "$rel/examples/$e" ] && printf '%s\t%s\n' "$e" "$rel/examples/$e" >>"$list"
  done
  [ -x "$rel/adapters" ] && printf 'adapters\t%s\n' "$rel/adapters" >>"$list"
fi
echo "cuda-build: built in $(( $(date +%s) - started )) s"

# --- pack ----------------------------------------------------------------------------------
rm -rf "$out"
mkdir -p "$out"
manifest=$out/manifest.tsv
{
  echo "# adapters CUDA binaries: name, file, sha256 of the unpacked binary, bytes unpacked, bytes packed"
  echo "# built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty'), $nvcc_version, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
} >"$manifest"
# The newest executable per name (cargo lists every one it built).
sort -u "$list" | while IFS=$'\t' read -r name path; do
  printf '%s\t%s\t%s\n' "$(stat -c %Y "$path")" "$name" "$path"
done | sort -k2,2 -k1,1nr | awk -F'\t' '!seen[$2]++ { print $2 "\t" $3 }' |
while IFS=$'\t' read -r name path; do
  tmp=$out/$name
  cp "$path" "$tmp"
  strip "$tmp"
  sum=$(sha256sum "$tmp" | cut -d' ' -f1)
  raw=$(stat -c %s "$tmp")
  if [ "$compress" = xz ]; then xz -9e -T1 "$tmp"; ext=xz; else gzip -9 -n "$tmp"; ext=gz; fi
  packed=$(stat -c %s "$tmp.$ext")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$name.$ext" "$sum" "$raw" "$packed" >>"$manifest"
  awk -v n="$name" -v r="$raw" -v p="$packed" -v c="$compress" \
    'BEGIN { printf "cuda-build: %-13s %6.1f MiB stripped, %5.1f MiB with %s\n", n, r / 1048576, p / 1048576, c }'
done
total=$(du -sb "$out" | cut -f1)
awk -v o="$out" -v t="$total" -v m="$max_mib" \
  'BEGIN { printf "cuda-build: %s holds %.1f MiB (limit %s MiB)\n", o, t / 1048576, m }'
if [ "$total" -gt $(( max_mib * 1048576 )) ]; then
  echo "cuda-build: $out exceeds $max_mib MiB" >&2
  exit 1
fi
echo "cuda-build: done; on the GPU machine run: bash scripts/gpu-check.sh"
