# Shared by the project's scripts: protoc for candle-onnx's build, and the Python environment.

# candle-onnx compiles ONNX's protobuf definitions with protoc at build time.
ensure_protoc() {
    if [ -n "${PROTOC:-}" ] || command -v protoc >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "protoc not found: installing Debian's protobuf-compiler" >&2
        apt-get install -y -q protobuf-compiler >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q protobuf-compiler >/dev/null; }
        return 0
    fi
    echo "protoc is needed to build candle-onnx: install protobuf-compiler (apt) or set PROTOC" >&2
    return 1
}

# A virtual environment with the test requirements, in $ACCEL_VENV (default .venv).
ensure_venv() {
    VENV=${ACCEL_VENV:-.venv}
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
}

# Triton's perf_analyzer, from the tritonclient 2.51.0 wheel (newer perf-analyzer wheels need a newer
# glibc than Debian 12's). It loads libcudart.so.12 even for CPU runs, which a PyPI wheel provides, and
# needs Debian's libb64-0d. Sets PERF_ANALYZER and LD_LIBRARY_PATH.
ensure_perf_analyzer() {
    BENCH_VENV=${ACCEL_BENCH_VENV:-.venv-bench}
    if ! ldconfig -p | grep -q libb64.so.0d; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then apt-get install -y -q libb64-0d >/dev/null; fi
    fi
    if [ ! -x "$BENCH_VENV/bin/perf_analyzer" ]; then
        python3 -m venv "$BENCH_VENV"
        "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check 'tritonclient[grpc,http]==2.51.0' nvidia-cuda-runtime-cu12
    fi
    LD_LIBRARY_PATH=$("$BENCH_VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], "lib"))')
    export LD_LIBRARY_PATH
    PERF_ANALYZER="$BENCH_VENV/bin/perf_analyzer"
}

# Starts target/release/accel on the example repository with extra flags; sets SERVER (its pid) and
# waits until it is ready on gRPC port $PORT.
start_example_server() {
    target/release/accel serve --model-repository examples/model_repository --grpc-port "$PORT" \
        --http-port 0 --metrics-port 0 --metrics-address 127.0.0.1 "$@" >/tmp/accel-bench.log 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do
        "$BENCH_VENV/bin/python" -c "import tritonclient.grpc as g, sys; sys.exit(0 if g.InferenceServerClient('127.0.0.1:$PORT').is_server_ready() else 1)" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "accel did not become ready:" >&2
    cat /tmp/accel-bench.log >&2
    return 1
}
