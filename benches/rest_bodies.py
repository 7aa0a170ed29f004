"""Large REST JSON bodies against one accel binary: a 46 MiB body's time and peak RSS growth, and the
gRPC latency of another model while two 32 MiB bodies are decoded.

    .venv/bin/python benches/rest_bodies.py target/release/accel
"""
import http.client, json, os, subprocess, sys, threading, time, tempfile, socket
import numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import modelgen
import tritonclient.grpc as grpcclient

BIN = sys.argv[1]
root = tempfile.mkdtemp()
modelgen.scale_model(f"{root}/scale/1/model.onnx")
modelgen.write_config(f"{root}/scale", 'max_batch_size: 0\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] } ]\noutput [ { name: "y" data_type: TYPE_FP32 dims: [ -1 ] } ]\n')
modelgen.mlp(f"{root}/mlp/1/model.onnx", 5, 16, 32, 8)
modelgen.write_config(f"{root}/mlp", modelgen.mlp_config("mlp", 16, 0, 16, 8))
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
g, h, m = port(), port(), port()
proc = subprocess.Popen([BIN, "serve", "--model-repository", root, "--grpc-port", str(g), "--http-port", str(h),
                         "--metrics-port", str(m), "--metrics-address", "127.0.0.1", "--model-control-mode", "none"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
c = grpcclient.InferenceServerClient(f"127.0.0.1:{g}")
for _ in range(600):
    try:
        if c.is_server_ready(): break
    except Exception: pass
    time.sleep(0.1)
else:
    proc.kill(); sys.exit("the server did not become ready in 60 s")
def hwm():
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmHWM:"): return int(line.split()[1]) * 1024
def body(n):
    return ('{"parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[%d],"datatype":"FP32","data":[%s]}]}' % (n, ",".join(["0.5"] * n))).encode()
def post(b, out):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", h, timeout=300)
    conn.request("POST", "/v2/models/scale/infer", body=b, headers={"Content-Type": "application/json"})
    r = conn.getresponse(); r.read(); out.append((r.status, time.monotonic() - t0))
b48 = body(12_000_000)
h0 = hwm(); out = []; post(b48, out); h1 = hwm()
print(f"48 MiB body ({len(b48)/2**20:.0f} MiB): status {out[0][0]}, {out[0][1]:.2f} s, peak RSS +{(h1-h0)/2**20:.0f} MiB ({(h1-h0)/len(b48):.1f}x the body)")
b32 = body(8_000_000)
lat = []; stop = threading.Event()
def witness():
    x = np.zeros((1, 16), np.float32)
    i = grpcclient.InferInput("INPUT0", [1, 16], "FP32"); i.set_data_from_numpy(x)
    while not stop.is_set():
        t0 = time.monotonic(); c.infer("mlp", [i]); lat.append(time.monotonic() - t0); time.sleep(0.002)
w = threading.Thread(target=witness); w.start(); time.sleep(0.5)
base = list(lat); out = []
ts = [threading.Thread(target=post, args=(b32, out)) for _ in range(2)]
t0 = time.monotonic(); [t.start() for t in ts]; [t.join() for t in ts]; took = time.monotonic() - t0
during = lat[len(base):]; stop.set(); w.join()
print(f"two 32 MiB bodies at once: {took:.2f} s; gRPC latency beside them: p50 {np.percentile(during, 50)*1e3:.1f} ms, max {max(during)*1e3:.0f} ms ({len(during)} requests); before them max {max(base)*1e3:.1f} ms")
proc.terminate(); proc.wait()
import shutil; shutil.rmtree(root, ignore_errors=True)
