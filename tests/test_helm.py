"""The Helm chart, checked with a real helm: `helm lint --strict` (values typed by values.schema.json)
and `helm template` for every values variant, the rendered Kubernetes objects validated with
kubernetes-validate --strict, the KServe objects against KServe's own CRDs, and the Accel container's
rendered args and environment used to start the real binary."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import fetch_helm
import kserve_crds
from conftest import ACCEL_BIN, ROOT, free_port, infer_input, ort_library

CHART = os.path.join(ROOT, "helm", "accel")
VARIANTS = [None] + sorted(os.path.basename(p) for p in glob.glob(os.path.join(CHART, "ci", "*-values.yaml")))
KUBE_VERSION = "1.33.0"
# KServe's CRDs are not part of this repository: CI has them in the shared folder beside it. This one
# check reads them from there, and is skipped (saying so) where they are absent.
KSERVE_CRDS = os.environ.get("ACCEL_KSERVE_CRDS", os.path.join(ROOT, "..", "shared", "data", "kserve-crds"))


@pytest.fixture(scope="module")
def kserve_schemas():
    if not os.path.isdir(KSERVE_CRDS):
        pytest.skip(f"KServe CRDs not found at {KSERVE_CRDS} (they live outside this repository)")
    return kserve_crds.load(KSERVE_CRDS)


@pytest.fixture(scope="module")
def helm():
    path = fetch_helm.helm_path()
    if not os.path.exists(path):
        pytest.fail("helm is missing: run `python3 tests/fetch_helm.py` first (scripts/test.sh does)")
    return path


def values_args(variant):
    return ["-f", os.path.join(CHART, "ci", variant)] if variant else []


def render(helm, variant=None, extra=()):
    r = subprocess.run([helm, "template", "accel", CHART, "--namespace", "default", "--kube-version", KUBE_VERSION,
                        *values_args(variant), *extra], capture_output=True, text=True, timeout=60)
    return r


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v or "defaults")
def test_lint_render_and_validate(helm, variant, tmp_path):
    lint = subprocess.run([helm, "lint", "--strict", "--kube-version", KUBE_VERSION, *values_args(variant), CHART],
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    r = render(helm, variant)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(r.stdout)
    kv = os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    v = subprocess.run([kv, "--strict", "-k", KUBE_VERSION, str(out)], capture_output=True, text=True, timeout=120)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "passed" in v.stdout + v.stderr or "Couldn't find schema" in v.stdout + v.stderr


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v or "defaults")
def test_kserve_objects_match_kserve_crds(helm, kserve_schemas, variant):
    docs = list(yaml.safe_load_all(render(helm, variant).stdout))
    kinds = {d["kind"] for d in docs if d}
    errors = kserve_crds.validate(docs, kserve_schemas)
    assert not errors, errors
    if variant in ("kserve-values.yaml", "cluster-runtime-values.yaml"):
        assert kinds & {"ServingRuntime", "ClusterServingRuntime"}, kinds


def test_the_crd_check_catches_mistakes(helm, kserve_schemas):
    docs = list(yaml.safe_load_all(render(helm, "kserve-values.yaml").stdout))
    runtime = next(d for d in docs if d and d["kind"] == "ServingRuntime")
    runtime["spec"]["multiModel"] = "yes"
    runtime["spec"]["containers"][0]["imagePullPolicy"] = 3
    runtime["spec"]["supportedModelFormat"] = []
    errors = kserve_crds.validate([runtime], kserve_schemas)
    assert any("multiModel" in e for e in errors), errors
    assert any("supportedModelFormat" in e for e in errors), errors


def test_bad_values_are_refused(helm):
    cases = [
        (["--set", "accel.grpcPort=http"], "grpcPort"),
        (["--set", "mode=statefulset"], "mode"),
        (["--set", "accel.grpcPorts=8001"], "grpcPorts"),
        (["--set", "terminationGracePeriodSeconds=10"], "exitTimeoutSecs"),
        (["--set", "modelRepository.source=pvc"], "claimName"),
        (["--set", "accel.defaultBackend=tensorrt"], "defaultBackend"),
    ]
    for args, needle in cases:
        r = render(helm, None, args)
        assert r.returncode != 0, args
        assert needle in r.stderr, (args, r.stderr)


def objects(helm, variant, extra=()):
    r = render(helm, variant, extra)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def pod_spec(docs):
    for d in docs:
        if d["kind"] == "Deployment":
            return d["spec"]["template"]["spec"]
        if d["kind"] in ("ServingRuntime", "ClusterServingRuntime"):
            return d["spec"]
    raise AssertionError("no pod spec rendered")


def test_pod_shape(helm):
    gpu = pod_spec(objects(helm, "gpu-values.yaml"))
    accel = next(c for c in gpu["containers"] if c["name"] == "accel")
    assert accel["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "ACCEL_GPU", "value": "0"} in accel["env"], "models go on the GPU the pod gets"
    assert gpu["terminationGracePeriodSeconds"] > int(next(e["value"] for e in accel["env"] if e["name"] == "ACCEL_EXIT_TIMEOUT_SECS"))
    assert accel["securityContext"]["readOnlyRootFilesystem"] is True
    assert accel["securityContext"]["allowPrivilegeEscalation"] is False
    assert accel["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {v["name"] for v in gpu["volumes"]} >= {"model-repository", "dshm", "accel-socket"}
    shm = next(v for v in gpu["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    runtime = pod_spec(objects(helm, "kserve-values.yaml"))
    names = [c["name"] for c in runtime["containers"]]
    assert names == ["kserve-container", "accel"]
    predictor, accel = runtime["containers"]
    assert "nvidia.com/gpu" in accel["resources"]["limits"], "the GPU goes to Accel"
    assert "nvidia.com/gpu" not in predictor["resources"].get("limits", {}), "and only to Accel"
    assert {m["mountPath"] for m in predictor["volumeMounts"]} >= {"/dev/shm", "/var/run/accel"}
    cpu = pod_spec(objects(helm, "cpu-values.yaml"))
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert all(e["name"] != "ACCEL_GPU" for e in cpu["containers"][0]["env"])
    assert cpu["initContainers"][0]["volumeMounts"][0]["name"] == "model-repository"


@pytest.mark.parametrize("variant", ["deployment-values.yaml", "cluster-runtime-values.yaml"])
def test_rendered_container_starts_accel(helm, variant, tmp_path):
    """The Accel container's rendered args and environment, run with the real binary on this machine."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    docs = objects(helm, variant, ["--set", f"accel.grpcPort={grpc_port}", "--set", f"accel.httpPort={http_port}",
                                   "--set", f"accel.metricsPort={metrics_port}", "--set", "accel.metricsAddress=127.0.0.1",
                                   "--set", "accel.httpAddress=127.0.0.1", "--set", "accel.grpcAddress=127.0.0.1",
                                   "--set", "modelRepository.mountPath=" + os.path.join(ROOT, "examples", "model_repository"),
                                   "--set", "accel.onnxruntimeLibrary=" + ort_library()])
    spec = pod_spec(docs)
    container = next(c for c in spec["containers"] if c["image"].startswith("ghcr.io/accel-serving/accel:"))
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(k.startswith("ACCEL_") for k in env)
    proc = subprocess.Popen([ACCEL_BIN, *container["args"]], env={"PATH": os.environ.get("PATH", ""), **env},
                            stdout=open(tmp_path / "accel.log", "w"), stderr=subprocess.STDOUT)
    try:
        import time
        import urllib.request

        import tritonclient.grpc as grpcclient

        ready_url = f"http://127.0.0.1:{http_port}{container['readinessProbe']['httpGet']['path']}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "accel.log").read_text()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        y = client.infer("mlp", [infer_input("INPUT0", np.zeros((2, 256), np.float32))]).as_numpy("OUTPUT0")
        assert y.shape == (2, 256)
        # The library the values name was loaded, and the example's ONNX models run on it.
        assert client.get_model_config("mlp", as_json=True)["config"]["backend"] == "onnxruntime"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"nv_inference_request_success" in r.read()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
