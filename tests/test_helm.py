"""The Helm chart, checked with a real helm: `helm lint --strict` (values typed by values.schema.json)
and `helm template` for every values variant, the rendered Kubernetes objects validated with
kubernetes-validate --strict, the KServe objects against KServe's own CRDs, and the Accel container's
rendered args and environment used to start the real binary."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

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
    if variant in ("kserve-values.yaml", "kserve-colocated-values.yaml", "cluster-runtime-values.yaml"):
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
        # A Unix socket only a container in the pod can reach, and no such container.
        (["--set", "unixSocket.enabled=true"], "needs a predictor container"),
        (["--set", "mode=clusterServingRuntime", "--set", "unixSocket.enabled=true"], "needs a predictor container"),
        (["--set", "predictor.enabled=true", "--set", "unixSocket.enabled=true", "--set", "unixSocket.http=true",
          "--set", "accel.allowMetrics=false"], "allowMetrics"),
        (["--set-string", "unixSocket.mode=999"], "mode"),
        (["--set", "unixSocket.mode=660"], "mode"),
        (["--set", "unixSocket.dir=run/accel"], "dir"),
        (["--set", "sharedMemory.allowedUids={alice}"], "allowedUids"),
        (["--set", "sharedMemory.cudaIPC=true"], "cudaIPC"),
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
    assert {v["name"] for v in gpu["volumes"]} >= {"model-repository", "tmp"}
    runtime = pod_spec(objects(helm, "kserve-values.yaml"))
    names = [c["name"] for c in runtime["containers"]]
    assert names == ["kserve-container", "accel"]
    predictor, accel = runtime["containers"]
    assert "nvidia.com/gpu" in accel["resources"]["limits"], "the GPU goes to Accel"
    assert "nvidia.com/gpu" not in predictor["resources"].get("limits", {}), "and only to Accel"
    assert {"name": "ACCEL_GRPC_URL", "value": "localhost:8001"} in predictor["env"]
    cpu = pod_spec(objects(helm, "cpu-values.yaml"))
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert all(e["name"] != "ACCEL_GPU" for e in cpu["containers"][0]["env"])
    assert cpu["initContainers"][0]["volumeMounts"][0]["name"] == "model-repository"


def containers(spec):
    return {c["name"]: c for c in spec["containers"]}


def env_of(container):
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate variables in {container['name']}: {names}"
    return {e["name"]: e.get("value") for e in container["env"]}


def mounts_of(container):
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def volumes_of(spec):
    return {v["name"]: v for v in spec["volumes"]}


COLOCATION_ENV = ("ACCEL_ALLOW_CLIENT_SHM", "ACCEL_SHM_ALLOWED_UIDS", "ACCEL_SHM_MAX_REGIONS", "ACCEL_SHM_DIR",
                  "ACCEL_UNIX_SOCKET_MODE")


@pytest.mark.parametrize("variant", [v for v in VARIANTS if not (v or "").endswith("colocated-values.yaml")],
                         ids=lambda v: v or "defaults")
def test_colocation_is_off_unless_asked_for(helm, variant):
    """The defaults and the plain variants: no /dev/shm or socket volume, no shm or socket flags, TCP
    listeners, no shared process namespace."""
    docs = objects(helm, variant)
    spec = pod_spec(docs)
    assert not set(volumes_of(spec)) & {"dshm", "accel-socket"}, volumes_of(spec)
    assert "shareProcessNamespace" not in spec
    for d in docs:
        if d["kind"] == "InferenceService":
            assert "shareProcessNamespace" not in d["spec"]["predictor"]
    for c in spec["containers"]:
        assert "/dev/shm" not in mounts_of(c) and "/var/run/accel" not in mounts_of(c), c["name"]
        env = env_of(c)
        assert not set(env) & set(COLOCATION_ENV), (c["name"], env)
        assert "ACCEL_SOCKET_DIR" not in env
        assert not (env.get("ACCEL_GRPC_ADDRESS") or "").startswith("unix:")
        assert not (env.get("ACCEL_HTTP_ADDRESS") or "").startswith("unix:")
        assert not (env.get("ACCEL_GRPC_URL") or "").startswith("unix:")
    # cudaIpc alone (without sharedMemory.enabled) changes nothing either.
    if variant == "deployment-values.yaml":
        assert "shareProcessNamespace" not in pod_spec(objects(helm, variant, ["--set", "sharedMemory.cudaIpc=true"]))


def test_colocated_deployment(helm):
    """ci/colocated-values.yaml: /dev/shm and the socket directory shared by Accel and the predictor,
    Accel told to accept client shm and to serve gRPC on the socket, and a shared PID namespace."""
    docs = objects(helm, "colocated-values.yaml")
    spec = pod_spec(docs)
    volumes = volumes_of(spec)
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}
    assert "emptyDir" in volumes["accel-socket"]
    cs = containers(spec)
    assert set(cs) == {"accel", "predictor"}
    for c in cs.values():
        assert mounts_of(c).get("/dev/shm") == "dshm", c["name"]
        assert mounts_of(c).get("/var/run/accel") == "accel-socket", c["name"]
    accel, predictor = env_of(cs["accel"]), env_of(cs["predictor"])
    assert accel["ACCEL_ALLOW_CLIENT_SHM"] == "true"
    assert accel["ACCEL_SHM_ALLOWED_UIDS"] == "1000"
    assert accel["ACCEL_SHM_MAX_REGIONS"] == "1024"
    assert accel["ACCEL_GRPC_ADDRESS"] == "unix:/var/run/accel/grpc.sock"
    assert accel["ACCEL_UNIX_SOCKET_MODE"] == "660"
    assert accel["ACCEL_HTTP_ADDRESS"] == "0.0.0.0", "REST stays on TCP for the kubelet's probes"
    assert predictor["ACCEL_GRPC_URL"] == "unix:///var/run/accel/grpc.sock"
    assert predictor["ACCEL_HTTP_URL"] == "http://localhost:8000"
    assert not set(predictor) & set(COLOCATION_ENV), "Accel's flags go to Accel only"
    assert spec["shareProcessNamespace"] is True, "CUDA IPC needs the other side's PID"
    # gRPC has no TCP port left; REST and the probes keep theirs.
    assert {p["name"] for p in cs["accel"]["ports"]} == {"http", "metrics"}
    assert cs["accel"]["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert cs["accel"]["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    # Large uids are written as integers, several of them joined with commas.
    many = env_of(containers(pod_spec(objects(helm, "colocated-values.yaml", [
        "--set", "sharedMemory.allowedUids={1000,4294967294}"])))["accel"])
    assert many["ACCEL_SHM_ALLOWED_UIDS"] == "1000,4294967294"


def test_colocated_runtime(helm):
    """ci/kserve-colocated-values.yaml: the ServingRuntime declares both volumes and mounts them in
    kserve-container and Accel; REST on its socket too, the probes on the metrics port; the shared
    process namespace goes on the InferenceService, the runtime having no such field."""
    docs = objects(helm, "kserve-colocated-values.yaml")
    runtime = next(d for d in docs if d["kind"] == "ServingRuntime")
    spec = runtime["spec"]
    volumes = volumes_of(spec)
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert "emptyDir" in volumes["accel-socket"]
    cs = containers(spec)
    assert list(cs) == ["kserve-container", "accel"]
    for c in cs.values():
        assert mounts_of(c).get("/dev/shm") == "dshm", c["name"]
        assert mounts_of(c).get("/var/run/accel") == "accel-socket", c["name"]
    accel, predictor = env_of(cs["accel"]), env_of(cs["kserve-container"])
    assert accel["ACCEL_ALLOW_CLIENT_SHM"] == "true"
    assert "ACCEL_SHM_ALLOWED_UIDS" not in accel, "no uids given, none set"
    assert accel["ACCEL_GRPC_ADDRESS"] == "unix:/var/run/accel/grpc.sock"
    assert accel["ACCEL_HTTP_ADDRESS"] == "unix:/var/run/accel/http.sock"
    assert predictor["ACCEL_GRPC_URL"] == "unix:///var/run/accel/grpc.sock"
    assert predictor["ACCEL_HTTP_URL"] == "unix:///var/run/accel/http.sock"
    assert [p["name"] for p in cs["accel"]["ports"]] == ["metrics"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert cs["accel"][probe]["httpGet"] == {"path": "/metrics", "port": 8002}, probe
    assert "shareProcessNamespace" not in spec
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    assert isvc["spec"]["predictor"]["shareProcessNamespace"] is True
    # The same with the socket's REST in deployment mode: the Service keeps only the metrics port.
    deployment = objects(helm, "colocated-values.yaml", ["--set", "unixSocket.http=true", "--set", "unixSocket.dir=/run/a"])
    spec = pod_spec(deployment)
    accel = env_of(containers(spec)["accel"])
    assert accel["ACCEL_HTTP_ADDRESS"] == "unix:/run/a/http.sock"
    assert accel["ACCEL_GRPC_ADDRESS"] == "unix:/run/a/grpc.sock"
    assert mounts_of(containers(spec)["predictor"]).get("/run/a") == "accel-socket"
    service = next(d for d in deployment if d["kind"] == "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


@pytest.mark.parametrize("variant", ["deployment-values.yaml", "cluster-runtime-values.yaml", "colocated-values.yaml"])
def test_rendered_container_starts_accel(helm, variant, tmp_path):
    """The Accel container's rendered args and environment, run with the real binary on this machine
    (the colocated variant: gRPC on the rendered Unix socket, an input through system shared memory)."""
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    # A short directory: a socket's path must fit in 108 bytes.
    socket_dir = tempfile.mkdtemp(prefix="accel-helm-", dir="/tmp")
    docs = objects(helm, variant, ["--set", f"accel.grpcPort={grpc_port}", "--set", f"accel.httpPort={http_port}",
                                   "--set", f"accel.metricsPort={metrics_port}", "--set", "accel.metricsAddress=127.0.0.1",
                                   "--set", "accel.httpAddress=127.0.0.1", "--set", "accel.grpcAddress=127.0.0.1",
                                   "--set", "unixSocket.dir=" + socket_dir,
                                   "--set", "modelRepository.mountPath=" + os.path.join(ROOT, "examples", "model_repository"),
                                   "--set", "accel.onnxruntimeLibrary=" + ort_library()])
    spec = pod_spec(docs)
    container = next(c for c in spec["containers"] if c["image"].startswith("ghcr.io/accel-serving/accel:"))
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(k.startswith("ACCEL_") for k in env)
    grpc_target = f"127.0.0.1:{grpc_port}"
    if env.get("ACCEL_GRPC_ADDRESS", "").startswith("unix:"):
        assert env["ACCEL_GRPC_ADDRESS"] == f"unix:{socket_dir}/grpc.sock"
        grpc_target = "unix://" + env["ACCEL_GRPC_ADDRESS"][len("unix:"):]
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
        client = grpcclient.InferenceServerClient(grpc_target)
        y = client.infer("mlp", [infer_input("INPUT0", np.zeros((2, 256), np.float32))]).as_numpy("OUTPUT0")
        assert y.shape == (2, 256)
        if grpc_target.startswith("unix://"):
            assert os.stat(grpc_target[len("unix://"):]).st_mode & 0o777 == int(env["ACCEL_UNIX_SOCKET_MODE"], 8)
        if env.get("ACCEL_ALLOW_CLIENT_SHM") == "true":
            import tritonclient.utils.shared_memory as shm

            x = np.ones((2, 256), np.float32)
            key = f"/accel_helm_{os.getpid()}"
            region = shm.create_shared_memory_region("helm_input", key, x.nbytes)
            try:
                shm.set_shared_memory_region(region, [x])
                client.register_system_shared_memory("helm_input", key, x.nbytes)
                i = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
                i.set_shared_memory("helm_input", x.nbytes)
                through_shm = client.infer("mlp", [i]).as_numpy("OUTPUT0")
                inline = client.infer("mlp", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
                np.testing.assert_allclose(through_shm, inline, rtol=1e-6)
                client.unregister_system_shared_memory("helm_input")
            finally:
                shm.destroy_shared_memory_region(region)
        # The library the values name was loaded, and the example's ONNX models run on it.
        assert client.get_model_config("mlp", as_json=True)["config"]["backend"] == "onnxruntime"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"nv_inference_request_success" in r.read()
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
        shutil.rmtree(socket_dir, ignore_errors=True)
        assert code == 0
