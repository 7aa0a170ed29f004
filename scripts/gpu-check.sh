#!/usr/bin/env bash
# The one-command GPU check, in two parts.
#
#   scripts/gpu-check.sh build        here (Rust, internet, no GPU): builds Accel with `cuda`
#                                     (scripts/build-cuda.sh) and the GPU tests of accel-kernels, and
#                                     packs them with the test models into target/gpu-check/bundle.tar.gz
#                                     (well under the 64 MiB a GPU machine takes).
#   scripts/gpu-check.sh run [OUT]    on the GPU machine (no Rust, no internet; Python with PyTorch
#                                     for CUDA 13): unpacks the bundle, puts the CUDA 13 libraries of
#                                     PyTorch's install on LD_LIBRARY_PATH, runs the kernels' GPU tests,
#                                     PyTorch eager on the MLP, and `accel gpu-check`; prints the table
#                                     and writes it to OUT (default $OUT/gpu-check.md or
#                                     target/gpu-check/gpu-check.md).
#
# What the table holds: NVRTC kernels against their CPU references, the pinned staging path, pinned
# vs pageable host->device bandwidth, NVML before/after one model load, GPU vs CPU results of every
# bundled model (max relative error), and the MLP 256->1024->256 at batch 1/8/64/256 against PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=target/gpu-check

build() {
    scripts/build-cuda.sh build --release -j2 -p accel --features cuda
    local kernels_test
    kernels_test=$(scripts/build-cuda.sh test --release -j2 -p accel-kernels --features cuda --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "accel_kernels" and m.get("executable"): print(m["executable"])' | tail -1)
    [ -n "$kernels_test" ] || { echo "gpu-check: the accel-kernels test binary was not built" >&2; exit 1; }
    rm -rf "$DIR/bundle" && mkdir -p "$DIR/bundle/models"
    strip -o "$DIR/bundle/accel" target/release/accel
    strip -o "$DIR/bundle/kernels-tests" "$kernels_test"
    # candle-kernels links libcudart.so.13: the wheel's copy travels with the binary (0.7 MB).
    cp "$(cat target/cuda-vendor/cuda-lib-dir)/lib/libcudart.so.13" "$DIR/bundle/"
    for m in examples/model_repository/*/1/model.onnx; do
        name=$(basename "$(dirname "$(dirname "$m")")")
        mkdir -p "$DIR/bundle/models/$name/1" && cp "$m" "$DIR/bundle/models/$name/1/"
    done
    # The real exported models the tests take from PyPI wheels, when fetched (tests/fetch_models.py).
    if [ -d tests/.cache/models ]; then
        cp -r tests/.cache/models "$DIR/bundle/models/real"
    fi
    cp benches/gpu/torch_mlp.py scripts/gpu-check.sh "$DIR/bundle/"
    tar -C "$DIR" -czf "$DIR/bundle.tar.gz" bundle
    ls -la "$DIR/bundle.tar.gz"
}

run() {
    local out=${1:-${OUT:-$DIR}/gpu-check.md}
    if [ ! -x "$DIR/bundle/accel" ]; then tar -C "$DIR" -xzf "$DIR/bundle.tar.gz"; fi
    local b=$DIR/bundle
    # The CUDA 13 libraries PyTorch installed (nvidia-* wheels), and the driver's libcuda.
    local libs
    libs=$(python3 - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
dirs = []
for r in roots:
    dirs += glob.glob(os.path.join(r, "*", "lib")) + glob.glob(os.path.join(r, "cu13", "lib"))
print(":".join(sorted(set(dirs))))
EOF
)
    export LD_LIBRARY_PATH="$b:$libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv || true
    echo "== accel-kernels tests on the GPU"
    "$b/kernels-tests" --nocapture --test-threads 1 cuda 2>&1 | grep -E "^test |skipped|panicked|test result" || true
    echo "== PyTorch eager"
    local torch=()
    if python3 "$b/torch_mlp.py" "$DIR/torch.json" 2; then torch=(--torch "$DIR/torch.json"); fi
    echo "== accel gpu-check"
    local models=()
    while IFS= read -r m; do models+=(--model "$m"); done < <(find "$b/models" -name '*.onnx' | sort)
    "$b/accel" gpu-check --mlp "$b/models/mlp/1/model.onnx" "${models[@]}" "${torch[@]}" --out "$out"
    echo "table written to $out"
}

case "${1:-}" in
    build) build ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 build | run [OUT]" >&2; exit 64 ;;
esac
