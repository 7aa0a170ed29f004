"""An independent reference for Hugging Face sentence encoders: BERT's forward pass written in numpy
from the safetensors file (float64), tokenized with the `tokenizers` Python package, pooled and
normalised as the directory's sentence-transformers files say. Nothing here shares code with Accel."""

from __future__ import annotations

import json
import os
import re

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
        for prefix in ("bert.", "roberta.", "distilbert."):
            if any(k.startswith(prefix) for k in self.w):
                self.w = {k.removeprefix(prefix): v for k, v in self.w.items()}
        self.classifier = self.config.get("architectures", [""])[0].endswith("ForSequenceClassification")
        self.family = {"roberta": "roberta", "xlm-roberta": "roberta", "distilbert": "distilbert"}.get(
            self.config["model_type"], "bert")
        if self.family == "distilbert":
            c = self.config
            self.config = {**c, "num_attention_heads": c["n_heads"], "num_hidden_layers": c["n_layers"]}
            self._distil_names()
        self.offset = self.config.get("pad_token_id", 1) + 1 if self.family == "roberta" else 0
        self.tokenizer = Tokenizer.from_file(os.path.join(directory, "tokenizer.json"))
        self.tokenizer.no_padding()
        max_len = self.config["max_position_embeddings"]
        sbert = os.path.join(directory, "sentence_bert_config.json")
        if os.path.exists(sbert):
            with open(sbert) as f:
                max_len = json.load(f).get("max_seq_length", max_len)
        elif self.tokenizer.truncation:
            max_len = self.tokenizer.truncation["max_length"]
        self.max_len = min(max_len, self.config["max_position_embeddings"] - (
            self.config.get("pad_token_id", 1) + 1 if self.config["model_type"] in ("roberta", "xlm-roberta") else 0))
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

    def _distil_names(self):
        """DistilBERT's weights under BERT's names."""
        self.w = rename_layers(self.w, {d: b for b, d in DISTILBERT_NAMES.items()}, "transformer.layer.", "encoder.layer.")

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def _ln(self, x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + self.config.get("layer_norm_eps", 1e-12)) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _lin(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def states(self, text: str, pair: str | None = None) -> np.ndarray:
        enc = self.tokenizer.encode(text, pair) if pair is not None else self.tokenizer.encode(text)
        ids, types = np.array(enc.ids), np.array(enc.type_ids)
        n = len(ids)
        positions = self.w["embeddings.position_embeddings.weight"][self.offset:self.offset + n]
        x = self.w["embeddings.word_embeddings.weight"][ids] + positions
        if "embeddings.token_type_embeddings.weight" in self.w and self.family != "distilbert":
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

    def logits(self, text: str, pair: str | None = None) -> np.ndarray:
        """A *ForSequenceClassification head over the first token."""
        first = self.states(text, pair)[0]
        lin = lambda x, name: x @ self.w[name + ".weight"].T + self.w[name + ".bias"]  # noqa: E731
        if self.family == "bert":
            return lin(np.tanh(lin(first, "pooler.dense")), "classifier")
        if self.family == "roberta":
            return lin(np.tanh(lin(first, "classifier.dense")), "classifier.out_proj")
        return lin(np.maximum(lin(first, "pre_classifier"), 0), "classifier")

    def embed(self, text: str) -> np.ndarray:
        x = self.states(text)
        e = {"cls": lambda: x[0], "max": lambda: x.max(0), "mean": lambda: x.mean(0)}[self.pooling]()
        if self.normalize:
            e = e / max(np.linalg.norm(e), 1e-12)
        return e


# A BERT layer's weight names and DistilBERT's for the same weights.
DISTILBERT_NAMES = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
                    "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
                    "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
                    "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}


def rename_layers(weights: dict, names: dict, src: str, dst: str) -> dict:
    """`weights` with each `{src}{i}.{name}.{weight|bias}` renamed `{dst}{i}.{names[name]}.{...}`; others kept."""
    pattern = re.compile(re.escape(src) + r"(\d+)\.(.+)\.(weight|bias)$")
    out = {}
    for k, v in weights.items():
        m = pattern.search(k)
        if m and m.group(2) in names:
            k = k[:m.start()] + f"{dst}{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"
        out[k] = v
    return out


def random_checkpoint(directory: str, model_type: str, seed: int = 0, hidden: int = 32, layers: int = 2,
                      heads: int = 4, ffn: int = 64, prefix: str = "", pooling: str = "mean",
                      normalize: bool = True, labels: list[str] | None = None) -> str:
    """A small random-weight checkpoint of `model_type` (bert, roberta, xlm-roberta, distilbert) as
    the Hub lays it out: config.json, model.safetensors, a WordPiece tokenizer.json built with the
    `tokenizers` package, and sentence-transformers' modules.json / 1_Pooling / sentence_bert_config."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer as Tok
    from tokenizers import models, normalizers, pre_tokenizers, processors

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
        "the", "model", "serves", "many", "embeddings", "##s", "##ing", "text", "of", "and"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tok(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # BERT's second segment has token type 1; RoBERTa's tokenizers give every token type 0.
    second = 1 if model_type == "bert" else 0
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       pair=f"[CLS] $A [SEP] $B:{second} [SEP]:{second}",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.save(os.path.join(directory, "tokenizer.json"))
    positions = 66 if model_type in ("roberta", "xlm-roberta") else 64
    w = {}

    def t(name, *shape, scale=0.2):
        w[prefix + name] = (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(name):
        w[prefix + name + ".weight"] = (1 + rng.standard_normal(hidden) * 0.1).astype(np.float32)
        w[prefix + name + ".bias"] = (rng.standard_normal(hidden) * 0.1).astype(np.float32)

    t("embeddings.word_embeddings.weight", len(vocab), hidden, scale=0.5)
    t("embeddings.position_embeddings.weight", positions, hidden, scale=0.5)
    norm("embeddings.LayerNorm")
    if model_type == "distilbert":
        config = {"model_type": "distilbert", "architectures": ["DistilBertModel"], "dim": hidden, "n_layers": layers,
                  "n_heads": heads, "hidden_dim": ffn, "max_position_embeddings": positions, "activation": "gelu",
                  "vocab_size": len(vocab)}
    else:
        arch = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel"}[model_type]
        config = {"model_type": model_type, "architectures": [arch], "hidden_size": hidden, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "intermediate_size": ffn, "max_position_embeddings": positions,
                  "type_vocab_size": 2 if model_type == "bert" else 1, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
                  "vocab_size": len(vocab), "pad_token_id": 0 if model_type == "bert" else 1}
        t("embeddings.token_type_embeddings.weight", config["type_vocab_size"], hidden, scale=0.5)
    # Every family's layers under BERT's names, then DistilBERT's renamed.
    for l in range(layers):
        p = f"encoder.layer.{l}"
        for m in ("self.query", "self.key", "self.value", "output.dense"):
            t(f"{p}.attention.{m}.weight", hidden, hidden)
            t(f"{p}.attention.{m}.bias", hidden, scale=0.05)
        norm(f"{p}.attention.output.LayerNorm")
        t(f"{p}.intermediate.dense.weight", ffn, hidden)
        t(f"{p}.intermediate.dense.bias", ffn, scale=0.05)
        t(f"{p}.output.dense.weight", hidden, ffn)
        t(f"{p}.output.dense.bias", hidden, scale=0.05)
        norm(f"{p}.output.LayerNorm")
    if model_type == "distilbert":
        w = rename_layers(w, DISTILBERT_NAMES, prefix + "encoder.layer.", prefix + "transformer.layer.")
    if labels is not None:
        n = len(labels)
        config["architectures"] = [config["architectures"][0].replace("Model", "ForSequenceClassification")]
        config["id2label"] = {str(i): l for i, l in enumerate(labels)}
        config["label2id"] = {l: i for i, l in enumerate(labels)}
        head = {"bert": [("pooler.dense", hidden, prefix), ("classifier", n, "")],
                "roberta": [("classifier.dense", hidden, ""), ("classifier.out_proj", n, "")],
                "xlm-roberta": [("classifier.dense", hidden, ""), ("classifier.out_proj", n, "")],
                "distilbert": [("pre_classifier", hidden, ""), ("classifier", n, "")]}[model_type]
        for name, out, p in head:
            w[p + name + ".weight"] = (rng.standard_normal((out, hidden)) * 0.3).astype(np.float32)
            w[p + name + ".bias"] = (rng.standard_normal(out) * 0.1).astype(np.float32)
    save_file(w, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    with open(os.path.join(directory, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
    with open(os.path.join(directory, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": hidden, "pooling_mode_cls_token": pooling == "cls",
                   "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max"}, f)
    with open(os.path.join(directory, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 48}, f)
    return directory
