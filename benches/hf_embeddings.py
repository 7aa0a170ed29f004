"""Text in, embeddings out: all-MiniLM-L6-v2 (the sentence-transformers directory tests/fetch_models.py
fetches) served by Accel from the untouched directory, against onnxruntime in-process on the same
weights (an ONNX graph this script writes from the safetensors) with the `tokenizers` package, the
same thread count, tokenization included on both sides, in one run. Sentences of 8..128 tokens,
batch-1 requests; Accel at concurrency 1, 16 and 64 (Python tritonclient gRPC threads);
onnxruntime one sentence at a time. Prints Markdown for BENCHMARKS.md.

    .venv/bin/python benches/hf_embeddings.py [--bin target/release/accel] [--seconds 15] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import fetch_models  # noqa: E402


def onnx_from_safetensors(directory: str, path: str) -> None:
    """BertModel + mean pooling + L2 normalisation as an ONNX graph, from the checkpoint itself."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(directory, "config.json")))
    w = load_file(os.path.join(directory, "model.safetensors"))
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    nodes, inits = [], []

    def c(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def init(name):
        inits.append(numpy_helper.from_array(w[name].astype(np.float32), name))
        return name

    def n(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def linear(x, name):
        inits.append(numpy_helper.from_array(w[name + ".weight"].T.copy().astype(np.float32), name + ".wt"))
        return n("Add", [n("MatMul", [x, name + ".wt"], name + ".mm"), init(name + ".bias")], name + ".y")

    def ln(x, name):
        return n("LayerNormalization", [x, init(name + ".weight"), init(name + ".bias")], name + ".out",
                 axis=-1, epsilon=cfg.get("layer_norm_eps", 1e-12))

    c("i0", 0, np.int64), c("i1", 1, np.int64), c("ax0", [0], np.int64), c("ax12", [1, 2], np.int64)
    c("ax1", [1], np.int64), c("axl", [-1], np.int64), c("one", 1.0), c("neg", -10000.0), c("heads_dh", [heads, h // heads], np.int64)
    c("m1", [-1], np.int64), c("scale", 1.0 / np.sqrt(h // heads)), c("sqrt2", np.sqrt(2.0)), c("half", 0.5)
    seq = n("Gather", [n("Shape", ["input_ids"], "shp"), "i1"], "seq", axis=0)
    pos = n("Unsqueeze", [n("Range", ["i0", seq, "i1"], "pos"), "ax0"], "pos2")
    x = n("Add", [n("Gather", [init("embeddings.word_embeddings.weight"), "input_ids"], "we", axis=0),
                  n("Gather", [init("embeddings.position_embeddings.weight"), pos], "pe", axis=0)], "e1")
    tt = n("Mul", ["input_ids", c("zero_i", 0, np.int64)], "tt")
    x = n("Add", [x, n("Gather", [init("embeddings.token_type_embeddings.weight"), tt], "te", axis=0)], "e2")
    x = ln(x, "embeddings.LayerNorm")
    maskf = n("Cast", [n("Unsqueeze", ["attention_mask", "ax12"], "m4")], "m4f", to=TensorProto.FLOAT)
    ext = n("Mul", [n("Sub", ["one", maskf], "inv"), "neg"], "ext")
    b = n("Unsqueeze", [n("Gather", [n("Shape", [x], "sx"), "i0"], "b0", axis=0), "ax0"], "b1")
    s_ = n("Unsqueeze", [seq, "ax0"], "s1")
    split_shape = n("Concat", [b, s_, "heads_dh"], "split", axis=0)
    merge_shape = n("Concat", [b, s_, "m1"], "merge", axis=0)
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}"
        heads_of = lambda t, perm, tag: n("Transpose", [n("Reshape", [t, split_shape], tag + "r")], tag + "t", perm=perm)  # noqa: E731
        q = heads_of(linear(x, f"{p}.attention.self.query"), [0, 2, 1, 3], f"{p}q")
        k = heads_of(linear(x, f"{p}.attention.self.key"), [0, 2, 3, 1], f"{p}k")
        v = heads_of(linear(x, f"{p}.attention.self.value"), [0, 2, 1, 3], f"{p}v")
        scores = n("Add", [n("Mul", [n("MatMul", [q, k], f"{p}qk"), "scale"], f"{p}sc"), ext], f"{p}masked")
        ctx = n("Transpose", [n("MatMul", [n("Softmax", [scores], f"{p}pr", axis=-1), v], f"{p}ctx")], f"{p}ct", perm=[0, 2, 1, 3])
        att = linear(n("Reshape", [ctx, merge_shape], f"{p}mg"), f"{p}.attention.output.dense")
        x = ln(n("Add", [att, x], f"{p}r1"), f"{p}.attention.output.LayerNorm")
        hh = linear(x, f"{p}.intermediate.dense")
        g = n("Mul", [n("Mul", [hh, n("Add", [n("Erf", [n("Div", [hh, "sqrt2"], f"{p}d")], f"{p}erf"), "one"], f"{p}e1")], f"{p}hm"), "half"], f"{p}gelu")
        x = ln(n("Add", [linear(g, f"{p}.output.dense"), x], f"{p}r2"), f"{p}.output.LayerNorm")
    m3 = n("Cast", [n("Unsqueeze", ["attention_mask", "axl"], "m3")], "m3f", to=TensorProto.FLOAT)
    mean = n("Div", [n("ReduceSum", [n("Mul", [x, m3], "xm"), "ax1"], "sum", keepdims=0),
                     n("ReduceSum", [m3, "ax1"], "cnt", keepdims=0)], "mean")
    norm = n("ReduceL2", [mean, "axl"], "l2", keepdims=1)
    n("Div", [mean, norm], "embedding")
    graph = helper.make_graph(nodes, "minilm",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["b", h])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ("retrieval augmented generation embeds every passage of a corpus once and each query at request time "
             "so that the nearest passages by cosine similarity are given to the language model as context").split()
    # 8..128 tokens: about one token per word here, plus [CLS] and [SEP].
    return [" ".join(rng.choice(words, size=int(rng.integers(6, 127)))) for _ in range(count)]


def port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def closed_loop(send, concurrency: int, seconds: float, warmup: float = 2.0) -> tuple[float, float, int]:
    """`concurrency` threads calling `send(k, i)` (thread k's i-th call) back to back: calls/s and p99 ms
    over `seconds` after `warmup`, and the calls that raised."""
    done, lat, errors, stop = [0], [], [0], threading.Event()
    lock = threading.Lock()

    def worker(k):
        i = k
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                send(k, i)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
            else:
                with lock:
                    done[0] += 1
                    lat.append(time.monotonic() - t0)
            i += concurrency

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    with lock:
        base, lat[:] = done[0], []
    t0 = time.monotonic()
    time.sleep(seconds)
    with lock:
        count, window = done[0] - base, list(lat)
    elapsed = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join()
    return count / elapsed, float(np.percentile(window, 99) * 1e3), errors[0]


def text_input(text: str):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("text", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    return inp


def run_accel(url: str, texts: list[str], concurrency: int, seconds: float) -> tuple[float, float]:
    import tritonclient.grpc as grpcclient

    clients = [grpcclient.InferenceServerClient(url) for _ in range(concurrency)]
    rate, p99, _ = closed_loop(lambda k, i: clients[k].infer("minilm", [text_input(texts[i % len(texts)])]),
                               concurrency, seconds)
    return rate, p99


def run_onnxruntime(path: str, directory: str, texts: list[str], seconds: float, threads: int) -> float:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        ids = np.array([tok.encode(texts[n % len(texts)]).ids], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        n += 1
    return n / (time.monotonic() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(HERE, "..", "target", "release", "accel"))
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    directory = fetch_models.fetch_directories()["all-minilm-l6-v2"]
    work = tempfile.mkdtemp()
    repo = os.path.join(work, "repo")
    shutil.copytree(directory, os.path.join(repo, "minilm", "1"))
    with open(os.path.join(repo, "minilm", "config.pbtxt"), "w") as f:
        f.write(f'backend: "huggingface"\nmax_batch_size: 64\ndynamic_batching {{ }}\n'
                f'instance_group [ {{ count: {a.instances} kind: KIND_CPU }} ]\n')
    onnx_path = os.path.join(work, "minilm.onnx")
    onnx_from_safetensors(directory, onnx_path)
    texts = sentences(512)
    g = port()
    proc = subprocess.Popen([a.bin, "serve", "--model-repository", repo, "--grpc-port", str(g), "--http-port", "0",
                             "--metrics-port", "0", "--model-control-mode", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import tritonclient.grpc as grpcclient

    url = f"127.0.0.1:{g}"
    for _ in range(600):
        try:
            if grpcclient.InferenceServerClient(url).is_server_ready():
                break
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    # Rounds interleave onnxruntime and Accel (the server idles while onnxruntime runs): these shared
    # cores drift by a third within minutes, so each round's ratio is taken against its own
    # onnxruntime figure, and the medians are reported.
    levels = (1, 16, 64)
    ort_rates, rates, p99s = [], {c: [] for c in levels}, {c: [] for c in levels}
    try:
        for r in range(a.rounds):
            ort_rates.append(run_onnxruntime(onnx_path, directory, texts, a.seconds, a.instances))
            print(f"round {r}: onnxruntime in-process {ort_rates[-1]:.1f}/s", file=sys.stderr)
            for c in levels:
                rate, p99 = run_accel(url, texts, c, a.seconds)
                rates[c].append(rate)
                p99s[c].append(p99)
                print(f"round {r}: accel c={c}: {rate:.1f}/s p99 {p99:.0f} ms", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait()
    median = statistics.median
    print(f"\nall-MiniLM-L6-v2, sentences of 8..128 tokens, batch-1 requests; Accel with {a.instances} instances "
          f"(one thread each), onnxruntime with {a.instances} threads; medians of {a.rounds} interleaved rounds\n")
    print("| | sentences/s | p99 ms | vs onnxruntime in-process (per round) |")
    print("|---|---|---|---|")
    print(f"| onnxruntime in-process (tokenizers + session.run, one at a time; rounds "
          f"{', '.join(f'{x:.1f}' for x in ort_rates)}) | {median(ort_rates):.1f} | | 1.00x |")
    for c in levels:
        ratios = [x / o for x, o in zip(rates[c], ort_rates)]
        print(f"| Accel, concurrency {c} (text in over gRPC) | {median(rates[c]):.1f} | {median(p99s[c]):.0f} | "
              f"{median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) |")

if __name__ == "__main__":
    main()
