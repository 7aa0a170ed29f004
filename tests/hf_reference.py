"""An independent reference for Hugging Face sentence encoders: BERT's forward pass written in numpy
from the safetensors file (float64), tokenized with the `tokenizers` Python package, pooled and
normalised as the directory's sentence-transformers files say. Nothing here shares code with Accel."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf)(x)


class Encoder:
    def __init__(self, directory: str):
        self.dir = directory
        with open(os.path.join(directory, "config.json")) as f:
            self.config = json.load(f)
        self.w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(directory, "model.safetensors")).items()
                  if v.dtype != np.int64}
        if any(k.startswith("bert.") for k in self.w):
            self.w = {k.removeprefix("bert."): v for k, v in self.w.items()}
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.no_padding()
        max_len = self.config["max_position_embeddings"]
        sbert = os.path.join(directory, "sentence_bert_config.json")
        if os.path.exists(sbert):
            with open(sbert) as f:
                max_len = json.load(f).get("max_seq_length", max_len)
        elif self.tokenizer.truncation:
            max_len = self.tokenizer.truncation["max_length"]
        self.max_len = min(max_len, self.config["max_position_embeddings"])
        self.tokenizer.enable_truncation(self.max_len)
        self.pooling, self.normalize = "mean", False
        modules = os.path.join(directory, "modules.json")
        pooling_dir = "1_Pooling"
        if os.path.exists(modules):
            with open(modules) as f:
                for m in json.load(f):
                    if m["type"].endswith(".Normalize"):
                        self.normalize = True
                    if m["type"].endswith(".Pooling") and m.get("path"):
                        pooling_dir = m["path"]
        pool = os.path.join(directory, pooling_dir, "config.json")
        if os.path.exists(pool):
            with open(pool) as f:
                p = json.load(f)
            self.pooling = ("cls" if p.get("pooling_mode_cls_token") else "max" if p.get("pooling_mode_max_tokens")
                            else "mean")

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.config.get("layer_norm_eps", 1e-12)) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def states(self, text: str) -> np.ndarray:
        enc = self.tokenizer.encode(text)
        ids, types = np.array(enc.ids), np.array(enc.type_ids)
        n = len(ids)
        x = self.w["embeddings.word_embeddings.weight"][ids] + self.w["embeddings.position_embeddings.weight"][:n]
        if "embeddings.token_type_embeddings.weight" in self.w:
            x = x + self.w["embeddings.token_type_embeddings.weight"][types]
        x = self._ln(x, "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        dh = x.shape[-1] // heads
        for layer in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{layer}"
            split = lambda t: t.reshape(n, heads, dh).transpose(1, 0, 2)  # noqa: E731
            q, k, v = (split(self._lin(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
            s = q @ k.transpose(0, 2, 1) / np.sqrt(dh)
            s = np.exp(s - s.max(-1, keepdims=True))
            ctx = (s / s.sum(-1, keepdims=True)) @ v
            ctx = ctx.transpose(1, 0, 2).reshape(n, -1)
            x = self._ln(self._lin(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            h = self._lin(x, f"{p}.intermediate.dense")
            h = 0.5 * h * (1 + _erf(h / np.sqrt(2)))
            x = self._ln(self._lin(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        return x

    def embed(self, text: str) -> np.ndarray:
        x = self.states(text)
        e = {"cls": lambda: x[0], "max": lambda: x.max(0), "mean": lambda: x.mean(0)}[self.pooling]()
        if self.normalize:
            e = e / max(np.linalg.norm(e), 1e-12)
        return e
