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
