//! Hugging Face / sentence-transformers directories (`backend: "huggingface"`): a version directory
//! with `config.json`, `model.safetensors` (or a sharded `model.safetensors.index.json`) and
//! `tokenizer.json`, plus the sentence-transformers files when present (`modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`), exactly as `SentenceTransformer.save()`
//! and the Hub write them. Text comes in as BYTES (one string per row) and is tokenized with the
//! `tokenizers` crate before the request is queued (the [`Prepare`] step, on the server's blocking
//! threads), or comes tokenized as INT64 `input_ids` (`attention_mask`, `token_type_ids`) from
//! clients that tokenize themselves; either way the queue holds token ids, batched by the padded,
//! token-budgeted batching every model has. The encoder runs on candle; embeddings come out pooled
//! and (when the directory says so) normalised as FP32 `[n, dim]`, a classifier's logits as
//! `[n, labels]`, and token-level states as `token_embeddings` when asked for.
//!
//! Every file is read through the model's `ModelFile` (confined to its directory, bounded in size).

mod bert;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use candle_core::{Device, Tensor as CTensor};
use tokenizers::Tokenizer;

use self::bert::{Bert, BertConfig, Family, Linear, Pooling, Weights};
use super::{Backend, BackendError, Batch, ExecLimits, LoadLimits, LoadedModel, ModelInstance, Prepare};
use crate::core::{
    DataType, GraphIo, ModelFile, ModelSpec, ParamValue, Parameters, Signature, Tensor, ValidatedRequest,
};

/// The engine's name in config.pbtxt.
pub const BACKEND: &str = "huggingface";
/// The file a version directory is recognised by.
pub const CONFIG_JSON: &str = "config.json";
/// The model's text input, its embedding output, and how many tokens each row was (after
/// truncation, special tokens included: what OpenAI's `usage` counts).
pub const TEXT_INPUT: &str = "text";
pub const EMBEDDING_OUTPUT: &str = "embedding";
pub const TOKENS_OUTPUT: &str = "token_count";
/// A classifier's (or cross-encoder reranker's) second text and its scores.
pub const TEXT_PAIR_INPUT: &str = "text_pair";
pub const LOGITS_OUTPUT: &str = "logits";
/// Token ids from clients that tokenize (KServe's Hugging Face transformer), INT64 `[n, len]`,
/// right-padded; what text becomes before it is queued.
pub const IDS_INPUT: &str = "input_ids";
pub const MASK_INPUT: &str = "attention_mask";
pub const TYPES_INPUT: &str = "token_type_ids";
/// The last layer's token states, FP32 `[n, len, hidden]` (zeros past each row's tokens).
pub const STATES_OUTPUT: &str = "token_embeddings";
/// The request parameter that, set to false, refuses text longer than the model's maximum
/// instead of truncating it (TEI's `truncate`).
pub const TRUNCATE_PARAMETER: &str = "truncate";
/// Every input is optional: a request gives text or token ids.
const INPUTS: [&str; 5] = [TEXT_INPUT, TEXT_PAIR_INPUT, IDS_INPUT, MASK_INPUT, TYPES_INPUT];
/// The token budget of a batch when the config sets none (TEI's `max_batch_tokens`), at least one
/// row of the longest input.
const DEFAULT_MAX_BATCH_TOKENS: usize = 16384;

/// The most a JSON file of the directory (config, pooling, modules) may hold.
const MAX_JSON_BYTES: u64 = 4 << 20;
/// The most `tokenizer.json` may hold (real ones are a few MiB).
const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// Sentence encoders from Hugging Face directories, on candle.
#[derive(Debug, Clone)]
pub struct HfBackend {
    device: Device,
    limits: ExecLimits,
}

impl HfBackend {
    pub fn on(device: Device) -> HfBackend {
        HfBackend {
            device,
            limits: ExecLimits::default(),
        }
    }

    /// What bounds one execution: a batch whose attention would hold more than `max_bytes` is
    /// refused before it runs.
    pub fn with_limits(mut self, limits: ExecLimits) -> HfBackend {
        self.limits = limits;
        self
    }
}

fn invalid(file: &ModelFile, what: impl std::fmt::Display) -> BackendError {
    BackendError::InvalidModel(format!("{}: {what}", file.shown()))
}

fn read_json(file: &ModelFile) -> Result<serde_json::Value, BackendError> {
    let text = file
        .read_to_string(MAX_JSON_BYTES)
        .map_err(|e| BackendError::Read(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| invalid(file, e))
}

/// An optional file next to `config.json`: `None` when absent, an error when it is there but not
/// a regular file inside the model's directory.
fn optional(config: &ModelFile, name: &str) -> Result<Option<ModelFile>, BackendError> {
    config
        .sibling_if_any(name)
        .map_err(|e| BackendError::Read(e.to_string()))
}

fn required(config: &ModelFile, name: &str) -> Result<ModelFile, BackendError> {
    optional(config, name)?.ok_or_else(|| BackendError::Read(format!("the directory has no {name}")))
}

/// The weights: `model.safetensors`, or the shards `model.safetensors.index.json` names.
fn load_weights(config: &ModelFile, device: &Device) -> Result<HashMap<String, CTensor>, BackendError> {
    let files = match optional(config, "model.safetensors")? {
        Some(f) => vec![f],
        None => {
            let index = required(config, "model.safetensors.index.json")?;
            let json = read_json(&index)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| invalid(&index, "no weight_map"))?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort_unstable();
            shards.dedup();
            shards
                .into_iter()
                .map(|s| required(config, s))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let mut tensors = HashMap::new();
    for f in files {
        let bytes = f.read(u64::MAX).map_err(|e| BackendError::Read(e.to_string()))?;
        let loaded = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| invalid(&f, e))?;
        tensors.extend(loaded);
    }
    Ok(tensors)
}

/// The pooling and normalisation `modules.json` and `1_Pooling/config.json` declare (mean pooling
/// without normalisation when the directory is a plain transformers one).
fn pooling_of(config: &ModelFile) -> Result<(Pooling, bool), BackendError> {
    let mut pooling_dir = "1_Pooling".to_string();
    let mut normalize = false;
    if let Some(modules) = optional(config, "modules.json")? {
        let json = read_json(&modules)?;
        for m in json.as_array().into_iter().flatten() {
            let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
            let path = m.get("path").and_then(|t| t.as_str()).unwrap_or("");
            if ty.ends_with(".Normalize") {
                normalize = true;
            } else if ty.ends_with(".Pooling") && !path.is_empty() {
                pooling_dir = path.to_string();
            }
        }
    }
    let pooling = match optional(config, &format!("{pooling_dir}/config.json"))? {
        None => Pooling::Mean,
        Some(f) => {
            let json = read_json(&f)?;
            let on = |key: &str| json.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
            if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_max_tokens") {
                Pooling::Max
            } else if on("pooling_mode_lasttoken") {
                Pooling::LastToken
            } else if on("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else {
                return Err(invalid(
                    &f,
                    "no pooling mode Accel supports (cls, mean, max, lasttoken)",
                ));
            }
        }
    };
    Ok((pooling, normalize))
}

/// The longest input, as sentence-transformers decides it: `max_seq_length` in
/// `sentence_bert_config.json`, else the tokenizer's truncation, else `max_position_embeddings`;
/// never more than the position table.
fn max_length(config: &ModelFile, tokenizer: &Tokenizer, bert: &BertConfig) -> Result<usize, BackendError> {
    let declared = match optional(config, "sentence_bert_config.json")? {
        Some(f) => read_json(&f)?
            .get("max_seq_length")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize),
        None => None,
    };
    let length = declared
        .or_else(|| tokenizer.get_truncation().map(|t| t.max_length))
        .unwrap_or(bert.max_position_embeddings);
    Ok(length.clamp(1, bert.max_position_embeddings.max(1)))
}

impl Backend for HfBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn load(&self, file: &ModelFile, limits: &LoadLimits) -> Result<Box<dyn LoadedModel>, BackendError> {
        let json = read_json(file)?;
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let architecture = json
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        let unsupported = || {
            BackendError::UnsupportedOperator(format!(
                "architecture '{}' (model_type '{model_type}'): the huggingface backend serves BERT, RoBERTa, XLM-RoBERTa and DistilBERT encoders (their *Model checkpoints) as embedding models",
                if architecture.is_empty() {
                    "unnamed"
                } else {
                    &architecture
                }
            ))
        };
        let classifier = architecture.ends_with("ForSequenceClassification");
        let head_free = architecture.is_empty()
            || architecture.ends_with("Model")
            || architecture.ends_with("ForMaskedLM")
            || architecture.ends_with("ForPreTraining");
        if !head_free && !classifier {
            return Err(unsupported());
        }
        let labels = labels_of(&json);
        let config = BertConfig::parse(&model_type, json)
            .ok_or_else(unsupported)?
            .map_err(|e| invalid(file, e))?;
        let tokenizer_file = required(file, "tokenizer.json")?;
        let tokenizer_bytes = tokenizer_file
            .read(MAX_TOKENIZER_BYTES)
            .map_err(|e| BackendError::Read(e.to_string()))?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| invalid(&tokenizer_file, e))?;
        drop(tokenizer_bytes);
        limits.check_deadline()?;
        // Before the weights are read: a bad pooling file fails the load cheaply.
        let pooling = if classifier { None } else { Some(pooling_of(file)?) };
        let max_len = max_length(file, &tokenizer, &config)?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| invalid(&tokenizer_file, e))?;
        let tensors = load_weights(file, &self.device)?;
        limits.check_deadline()?;
        let weight_bytes: u64 = tensors
            .values()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        // `*For...` checkpoints keep the encoder under its family's prefix.
        let prefix = ["bert.", "roberta.", "distilbert."]
            .into_iter()
            .find(|p| tensors.keys().any(|k| k.starts_with(p)))
            .unwrap_or("");
        let bert = Bert::load(
            &config,
            &Weights {
                tensors: &tensors,
                prefix,
            },
        )
        .map_err(|e| invalid(file, e))?;
        let weights = Weights {
            tensors: &tensors,
            prefix,
        };
        let head = match pooling {
            Some((pooling, normalize)) => Head::Embedding { pooling, normalize },
            None => classifier_head(&config, &weights, bert.hidden, labels).map_err(|e| invalid(file, e))?,
        };
        drop(tensors);
        let max_len = max_len.min(bert.max_positions);
        let io = |name: &str, datatype, dims: Vec<Option<usize>>| GraphIo {
            name: name.into(),
            datatype,
            dims: Some(dims),
        };
        let text = |name: &str| io(name, DataType::Bytes, vec![None, Some(1)]);
        let ids = |name: &str| io(name, DataType::I64, vec![None, None]);
        let mut inputs = vec![text(TEXT_INPUT)];
        let main = match &head {
            Head::Embedding { .. } => (EMBEDDING_OUTPUT, bert.hidden),
            Head::Classifier { labels, .. } => {
                inputs.push(text(TEXT_PAIR_INPUT));
                (LOGITS_OUTPUT, labels.len())
            }
        };
        inputs.extend([ids(IDS_INPUT), ids(MASK_INPUT), ids(TYPES_INPUT)]);
        let signature = Signature {
            inputs,
            outputs: vec![
                io(main.0, DataType::F32, vec![None, Some(main.1)]),
                io(TOKENS_OUTPUT, DataType::I64, vec![None, Some(1)]),
                io(STATES_OUTPUT, DataType::F32, vec![None, None, Some(bert.hidden)]),
            ],
        };
        Ok(Box::new(HfModel {
            inner: Arc::new(Encoder {
                bert,
                tokenizer,
                head,
                max_len,
                device: self.device.clone(),
                limits: self.limits,
            }),
            signature,
            weight_bytes,
        }))
    }
}

/// The least real / computed tokens a group of texts is padded at.
const GROUP_EFFICIENCY: f64 = 0.8;

/// `order` (text indices sorted by token count) cut into runs whose padding to their longest keeps
/// real / computed tokens at or above [`GROUP_EFFICIENCY`].
fn length_groups(order: &[usize], counts: &[i64]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0i64;
    for &i in order {
        let len = counts[i].max(1);
        let would = (real + len) as f64 / (len * (current.len() as i64 + 1)) as f64;
        if !current.is_empty() && would < GROUP_EFFICIENCY {
            groups.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(i);
        real += len;
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// What turns token states into the model's answer.
enum Head {
    /// Pooled (and maybe normalised) embeddings.
    Embedding { pooling: Pooling, normalize: bool },
    /// `*ForSequenceClassification`: the first token through a dense layer and its activation,
    /// then the classifier: logits, one per label.
    Classifier {
        pre: Linear,
        relu: bool,
        out: Linear,
        labels: Vec<String>,
    },
}

impl Head {
    /// The answer `[n, width]` and its width.
    fn apply(&self, states: &CTensor, mask: &CTensor) -> candle_core::Result<(CTensor, usize)> {
        match self {
            Head::Embedding { pooling, normalize } => {
                let mut pooled = bert::pool(states, mask, *pooling)?;
                if *normalize {
                    pooled = bert::normalize(&pooled)?;
                }
                let width = pooled.dim(1)?;
                Ok((pooled, width))
            }
            Head::Classifier { pre, relu, out, labels } => {
                let first = states.narrow(1, 0, 1)?.squeeze(1)?;
                let h = pre.forward(&first)?;
                let h = if *relu { h.relu()? } else { h.tanh()? };
                Ok((out.forward(&h)?, labels.len()))
            }
        }
    }
}

/// The labels `config.json` names (`id2label`, by index), or `LABEL_i` for `num_labels` of them.
fn labels_of(json: &serde_json::Value) -> Vec<String> {
    if let Some(map) = json.get("id2label").and_then(|m| m.as_object()) {
        let mut labels: Vec<(usize, String)> = map
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
            .filter(|(k, _)| *k < 1 << 16)
            .collect();
        labels.sort();
        let n = labels.last().map_or(0, |(k, _)| k + 1);
        let mut out: Vec<String> = (0..n).map(|i| format!("LABEL_{i}")).collect();
        for (k, l) in labels {
            out[k] = l;
        }
        return out;
    }
    let n = json
        .get("num_labels")
        .and_then(|v| v.as_u64())
        .unwrap_or(2)
        .min(1 << 16) as usize;
    (0..n).map(|i| format!("LABEL_{i}")).collect()
}

/// A `*ForSequenceClassification` head, under its family's names.
fn classifier_head(config: &BertConfig, w: &Weights<'_>, hidden: usize, labels: Vec<String>) -> Result<Head, String> {
    let n = labels.len();
    if n == 0 {
        return Err("the classifier has no labels (id2label or num_labels)".into());
    }
    let (pre, relu, out) = match config.family {
        Family::Bert => (
            w.linear("pooler.dense", hidden, hidden)?,
            false,
            w.linear("classifier", hidden, n)?,
        ),
        Family::Roberta => (
            w.linear("classifier.dense", hidden, hidden)?,
            false,
            w.linear("classifier.out_proj", hidden, n)?,
        ),
        Family::DistilBert => (
            w.linear("pre_classifier", hidden, hidden)?,
            true,
            w.linear("classifier", hidden, n)?,
        ),
    };
    Ok(Head::Classifier { pre, relu, out, labels })
}

/// A loaded sentence encoder, shared by its instances.
struct Encoder {
    bert: Bert,
    tokenizer: Tokenizer,
    head: Head,
    max_len: usize,
    device: Device,
    limits: ExecLimits,
}

struct HfModel {
    inner: Arc<Encoder>,
    signature: Signature,
    weight_bytes: u64,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel")
            .field("weight_bytes", &self.weight_bytes)
            .finish()
    }
}

impl LoadedModel for HfModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    fn output_labels(&self, name: &str) -> Option<Arc<[String]>> {
        match &self.inner.head {
            Head::Classifier { labels, .. } if name == LOGITS_OUTPUT => Some(labels.clone().into()),
            _ => None,
        }
    }

    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError> {
        for i in &spec.inputs {
            let ours = self.signature.inputs.iter().find(|g| g.name == i.name);
            if ours.is_none_or(|g| g.datatype != i.datatype) {
                return Err(BackendError::InvalidModel(format!(
                    "this huggingface model's inputs are {}; not '{}' ({})",
                    described(&self.signature.inputs),
                    i.name,
                    i.datatype
                )));
            }
        }
        let slot = |name: &str| {
            spec.inputs.iter().position(|i| i.name == name).ok_or_else(|| {
                BackendError::InvalidModel(format!(
                    "a config that lists this huggingface model's inputs must list '{name}' too (text is tokenized into it)"
                ))
            })
        };
        let slots = [slot(IDS_INPUT)?, slot(MASK_INPUT)?, slot(TYPES_INPUT)?];
        let main = self.signature.outputs[0].name.as_str();
        let outputs = spec
            .outputs
            .iter()
            .map(|o| match o.name.as_str() {
                TOKENS_OUTPUT => Ok(Output::Tokens),
                STATES_OUTPUT => Ok(Output::States),
                name if name == main => Ok(Output::Main),
                other => Err(BackendError::InvalidModel(format!(
                    "this huggingface model's outputs are {}, not '{other}'",
                    described(&self.signature.outputs)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(HfInstance {
            encoder: self.inner.clone(),
            slots,
            outputs,
        }))
    }

    fn optional_inputs(&self) -> &[&'static str] {
        &INPUTS
    }

    fn default_parameters(&self, _max_batch_size: usize) -> Vec<(String, String)> {
        use crate::core::model::{MAX_BATCH_TOKENS, PADDED_INPUTS, PADDED_OUTPUTS};
        vec![
            (
                PADDED_INPUTS.into(),
                format!("{IDS_INPUT}=0, {MASK_INPUT}=0, {TYPES_INPUT}=0"),
            ),
            (PADDED_OUTPUTS.into(), STATES_OUTPUT.into()),
            (
                MAX_BATCH_TOKENS.into(),
                DEFAULT_MAX_BATCH_TOKENS.max(self.inner.max_len).to_string(),
            ),
        ]
    }

    fn preparer(&self) -> Option<Arc<dyn Prepare>> {
        Some(Arc::new(Tokenize(self.inner.clone())))
    }
}

fn described(list: &[GraphIo]) -> String {
    list.iter()
        .map(|g| format!("'{}' ({})", g.name, g.datatype))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one of the instance's outputs is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// The embeddings or the logits.
    Main,
    Tokens,
    States,
}

/// The tokenizer step: a request's text becomes `input_ids`, `attention_mask` and
/// `token_type_ids` (INT64 `[n, len]`, right-padded to the request's longest); token ids a client
/// sent are checked instead.
struct Tokenize(Arc<Encoder>);

impl std::fmt::Debug for Tokenize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenize").field("max_len", &self.0.max_len).finish()
    }
}

fn refused(message: impl Into<String>) -> BackendError {
    BackendError::InvalidInput(message.into())
}

/// The UTF-8 strings of a BYTES tensor (validated: its prefixes tile it).
fn strings<'a>(tensor: &'a Tensor, name: &str) -> Result<Vec<&'a str>, BackendError> {
    crate::core::bytes_elements(&tensor.data)
        .enumerate()
        .map(|(k, element)| {
            std::str::from_utf8(element)
                .map_err(|e| refused(format!("input '{name}': element {k} is not UTF-8 text ({e})")))
        })
        .collect()
}

/// INT64 values of a tensor.
fn int64s(tensor: &Tensor) -> Vec<i64> {
    tensor
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn int64_tensor(name: &str, shape: [usize; 2], values: &[i64]) -> Tensor {
    Tensor {
        name: name.into(),
        datatype: DataType::I64,
        shape: shape.to_vec(),
        data: Bytes::from(bytemuck::cast_slice::<i64, u8>(values).to_vec()),
    }
}

impl Tokenize {
    /// Token ids, mask and types `[n, len]` of the request's texts.
    fn tokenize(&self, text: &Tensor, pair: Option<&Tensor>, truncate: bool) -> Result<[Tensor; 3], BackendError> {
        let e = &*self.0;
        let texts = strings(text, TEXT_INPUT)?;
        let pairs = pair.map(|p| strings(p, TEXT_PAIR_INPUT)).transpose()?;
        if let Some(pairs) = &pairs
            && pairs.len() != texts.len()
        {
            return Err(refused(format!(
                "{} texts but {} '{TEXT_PAIR_INPUT}' texts: a pair model takes one second text per text",
                texts.len(),
                pairs.len()
            )));
        }
        let mut encodings = Vec::with_capacity(texts.len());
        for (k, text) in texts.iter().enumerate() {
            let input: tokenizers::EncodeInput<'_> = match &pairs {
                Some(pairs) => tokenizers::EncodeInput::Dual((*text).into(), pairs[k].into()),
                None => (*text).into(),
            };
            let encoding = e
                .tokenizer
                .encode(input, true)
                .map_err(|err| refused(format!("input '{TEXT_INPUT}': element {k}: {err}")))?;
            if !truncate && !encoding.get_overflowing().is_empty() {
                return Err(refused(format!(
                    "input '{TEXT_INPUT}': element {k} is longer than the model's {} tokens, and parameter '{TRUNCATE_PARAMETER}' is false",
                    e.max_len
                )));
            }
            encodings.push(encoding);
        }
        let n = encodings.len();
        let len = encodings
            .iter()
            .map(|x| x.get_ids().len().min(e.max_len))
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; n * len];
        let mut mask = vec![0i64; n * len];
        let mut types = vec![0i64; n * len];
        for (row, enc) in encodings.iter().enumerate() {
            let take = enc.get_ids().len().min(len);
            let at = row * len;
            for (j, (&id, &ty)) in enc.get_ids()[..take].iter().zip(enc.get_type_ids()).enumerate() {
                ids[at + j] = i64::from(id);
                types[at + j] = i64::from(ty);
                mask[at + j] = 1;
            }
        }
        Ok([
            int64_tensor(IDS_INPUT, [n, len], &ids),
            int64_tensor(MASK_INPUT, [n, len], &mask),
            int64_tensor(TYPES_INPUT, [n, len], &types),
        ])
    }

    /// The client's token ids checked: within the vocabulary and the model's length, the mask ones
    /// then zeros (right padding) with at least one token per row; a missing mask is all ones, missing
    /// types are zeros.
    fn check_ids(&self, ids: Tensor, mask: Option<Tensor>, types: Option<Tensor>) -> Result<[Tensor; 3], BackendError> {
        let e = &*self.0;
        let (n, len) = match ids.shape[..] {
            [n, len] => (n, len),
            _ => return Err(refused(format!("input '{IDS_INPUT}' must be [rows, tokens]"))),
        };
        if len == 0 || len > e.max_len {
            return Err(refused(format!(
                "input '{IDS_INPUT}' has {len} tokens per row; this model takes 1 to {}",
                e.max_len
            )));
        }
        for other in [&mask, &types].into_iter().flatten() {
            if other.shape != ids.shape {
                return Err(refused(format!(
                    "input '{}' has shape {:?}, not that of '{IDS_INPUT}' {:?}",
                    other.name, other.shape, ids.shape
                )));
            }
        }
        let values = int64s(&ids);
        if let Some((k, v)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !(0..e.bert.vocab as i64).contains(*v))
        {
            return Err(refused(format!(
                "input '{IDS_INPUT}': element {k} is token id {v}, outside this model's vocabulary of {}",
                e.bert.vocab
            )));
        }
        let mask = match mask {
            Some(mask) => {
                let m = int64s(&mask);
                for (row, r) in m.chunks(len).enumerate() {
                    let ones = r.iter().take_while(|&&v| v == 1).count();
                    if ones == 0 || r[ones..].iter().any(|&v| v != 0) {
                        return Err(refused(format!(
                            "input '{MASK_INPUT}': row {row} must be ones then zeros (right padding), with at least one token"
                        )));
                    }
                }
                mask
            }
            None => int64_tensor(MASK_INPUT, [n, len], &vec![1; n * len]),
        };
        let types = match types {
            Some(t) if int64s(&t).iter().any(|&v| v < 0) => {
                return Err(refused(format!("input '{TYPES_INPUT}' has a negative segment id")));
            }
            Some(t) => t,
            None => int64_tensor(TYPES_INPUT, [n, len], &vec![0; n * len]),
        };
        Ok([ids, mask, types])
    }
}

impl Prepare for Tokenize {
    fn is_heavy(&self, request: &ValidatedRequest) -> bool {
        // Only text is tokenized; token ids are checked inline.
        request.inputs.iter().flatten().any(|t| t.datatype == DataType::Bytes)
    }

    fn prepare(
        &self,
        spec: &ModelSpec,
        mut request: ValidatedRequest,
        parameters: &Parameters,
    ) -> Result<ValidatedRequest, BackendError> {
        let truncate = match parameters.iter().find(|(k, _)| k == TRUNCATE_PARAMETER) {
            None => true,
            Some((_, ParamValue::Bool(b))) => *b,
            Some((_, other)) => {
                return Err(refused(format!(
                    "parameter '{TRUNCATE_PARAMETER}' must be a bool, got {other:?}"
                )));
            }
        };
        let slot = |name: &str| spec.inputs.iter().position(|i| i.name == name);
        let mut take = |name: &str| slot(name).and_then(|k| request.inputs[k].take());
        let (text, pair) = (take(TEXT_INPUT), take(TEXT_PAIR_INPUT));
        let (ids, mask, types) = (take(IDS_INPUT), take(MASK_INPUT), take(TYPES_INPUT));
        let tensors = match (text, ids) {
            (Some(text), None) => {
                if mask.is_some() || types.is_some() {
                    return Err(refused(format!(
                        "'{MASK_INPUT}' and '{TYPES_INPUT}' go with '{IDS_INPUT}', not with '{TEXT_INPUT}'"
                    )));
                }
                self.tokenize(&text, pair.as_ref(), truncate)?
            }
            (None, Some(_)) if pair.is_some() => {
                return Err(refused(format!(
                    "'{TEXT_PAIR_INPUT}' is the second text of a '{TEXT_INPUT}'; with '{IDS_INPUT}' the pair is in the ids"
                )));
            }
            (None, Some(ids)) => self.check_ids(ids, mask, types)?,
            (Some(_), Some(_)) => {
                return Err(refused(format!(
                    "give either '{TEXT_INPUT}' (BYTES) or '{IDS_INPUT}' (INT64), not both"
                )));
            }
            (None, _) => {
                return Err(refused(format!(
                    "the request has no '{TEXT_INPUT}' (BYTES text) and no '{IDS_INPUT}' (INT64 token ids){}",
                    if pair.is_some() {
                        format!("; '{TEXT_PAIR_INPUT}' is the second text of a '{TEXT_INPUT}'")
                    } else {
                        String::new()
                    }
                )));
            }
        };
        for tensor in tensors {
            let k = slot(&tensor.name)
                .ok_or_else(|| BackendError::InvalidModel(format!("the model has no input '{}'", tensor.name)))?;
            request.inputs[k] = Some(tensor);
        }
        request.lengths = crate::core::padded_lengths(spec, &request.inputs, request.batch_size)
            .map_err(|e| refused(e.to_string()))?;
        Ok(request)
    }
}

/// A tensor's values as FP32, flattened.
fn f32_values(t: &CTensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()
}

struct HfInstance {
    encoder: Arc<Encoder>,
    /// The batch's slots of `input_ids`, `attention_mask`, `token_type_ids`.
    slots: [usize; 3],
    /// What each spec output is.
    outputs: Vec<Output>,
}

impl HfInstance {
    /// A prepared INT64 `[n, len]` input of the batch.
    fn ids_input(&self, batch: &Batch, k: usize) -> Result<(Vec<i64>, usize, usize), BackendError> {
        let input = batch
            .inputs
            .get(self.slots[k])
            .and_then(Option::as_ref)
            .ok_or_else(|| BackendError::Execution(format!("input '{}' was not prepared", INPUTS[k + 2])))?;
        let (n, len) = match input.shape[..] {
            [n, len] => (n, len),
            _ => return Err(BackendError::Execution(format!("input '{}' is not 2-D", INPUTS[k + 2]))),
        };
        let data = input.contiguous();
        let values: Vec<i64> = data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        if values.len() != n * len {
            return Err(BackendError::Execution(format!(
                "input '{}' has the wrong size",
                INPUTS[k + 2]
            )));
        }
        Ok((values, n, len))
    }
}

impl ModelInstance for HfInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let e = &*self.encoder;
        let (ids, n, len) = self.ids_input(batch, 0)?;
        let (mask, ..) = self.ids_input(batch, 1)?;
        let (types, ..) = self.ids_input(batch, 2)?;
        if ids.iter().any(|&v| !(0..e.bert.vocab as i64).contains(&v)) {
            return Err(BackendError::Execution(
                "a token id outside the vocabulary reached the engine".into(),
            ));
        }
        let exec = |err: candle_core::Error| BackendError::Execution(err.to_string());
        // Right-padded rows: each row's tokens are its leading ones.
        let counts: Vec<i64> = mask
            .chunks(len.max(1))
            .map(|r| r.iter().take_while(|&&v| v != 0).count() as i64)
            .collect();
        let bytes = e.bert.pass_bytes(n, len);
        if bytes > e.limits.max_bytes {
            return Err(BackendError::ResourceExhausted(format!(
                "{n} texts of up to {len} tokens would hold about {bytes} bytes at once, more than one execution may (--max-execution-memory {})",
                e.limits.max_bytes
            )));
        }
        let want_states = batch
            .outputs
            .iter()
            .any(|&k| self.outputs.get(k) == Some(&Output::States));
        let hidden = e.bert.hidden;
        let mut states_out = if want_states {
            vec![0f32; n * len * hidden]
        } else {
            Vec::new()
        };
        let stop = || {
            batch
                .cancel
                .is_cancelled()
                .then(|| candle_core::Error::Msg("every client of the batch has gone".into()))
        };
        // The batch's rows in groups of similar length, each padded only to its own longest: on
        // a CPU every padded token costs as much as a real one.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| counts[i]);
        let mut width = 0;
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); n];
        for group in length_groups(&order, &counts) {
            let glen = group.iter().map(|&i| counts[i] as usize).max().unwrap_or(1).max(1);
            let g = group.len();
            let mut gids = vec![0u32; g * glen];
            let mut gtypes = vec![0u32; g * glen];
            let mut gmask = vec![0f32; g * glen];
            for (row, &i) in group.iter().enumerate() {
                let take = (counts[i] as usize).min(glen);
                for j in 0..take {
                    gids[row * glen + j] = ids[i * len + j] as u32;
                    gtypes[row * glen + j] = types[i * len + j].clamp(0, i64::from(u32::MAX)) as u32;
                    gmask[row * glen + j] = 1.0;
                }
            }
            let gids = CTensor::from_vec(gids, (g, glen), &e.device).map_err(exec)?;
            let gtypes = CTensor::from_vec(gtypes, (g, glen), &e.device).map_err(exec)?;
            let gmask = CTensor::from_vec(gmask, (g, glen), &e.device).map_err(exec)?;
            let states = e.bert.forward(&gids, &gmask, &gtypes, &stop).map_err(|err| {
                if batch.cancel.is_cancelled() {
                    BackendError::Cancelled(err.to_string())
                } else {
                    exec(err)
                }
            })?;
            let (out, w) = e.head.apply(&states, &gmask).map_err(exec)?;
            width = w;
            let values = f32_values(&out).map_err(exec)?;
            for (row, &i) in group.iter().enumerate() {
                rows[i] = values[row * w..(row + 1) * w].to_vec();
            }
            if want_states {
                let flat = f32_values(&states).map_err(exec)?;
                for (row, &i) in group.iter().enumerate() {
                    let real = counts[i] as usize * hidden;
                    let src = &flat[row * glen * hidden..][..real];
                    states_out[i * len * hidden..][..real].copy_from_slice(src);
                }
            }
        }
        let values: Vec<f32> = rows.concat();
        let main = if matches!(e.head, Head::Embedding { .. }) {
            EMBEDDING_OUTPUT
        } else {
            LOGITS_OUTPUT
        };
        let f32_tensor = |name: &str, shape: Vec<usize>, values: &[f32]| Tensor {
            name: name.into(),
            datatype: DataType::F32,
            shape,
            data: Bytes::from(bytemuck::cast_slice::<f32, u8>(values).to_vec()),
        };
        Ok(batch
            .outputs
            .iter()
            .map(|&k| match self.outputs.get(k).copied().unwrap_or(Output::Main) {
                Output::Tokens => int64_tensor(TOKENS_OUTPUT, [n, 1], &counts),
                Output::States => f32_tensor(STATES_OUTPUT, vec![n, len, hidden], &states_out),
                Output::Main => f32_tensor(main, vec![n, width], &values),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_groups_keep_padding_bounded_and_every_text_once() {
        let counts = [10i64, 100, 12, 90, 11, 95, 3];
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by_key(|&i| counts[i]);
        let groups = length_groups(&order, &counts);
        let mut seen: Vec<usize> = groups.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..counts.len()).collect::<Vec<_>>());
        for g in &groups {
            let max = g.iter().map(|&i| counts[i]).max().unwrap_or(1);
            let real: i64 = g.iter().map(|&i| counts[i]).sum();
            assert!(
                real as f64 >= GROUP_EFFICIENCY * (max * g.len() as i64) as f64 || g.len() == 1,
                "{g:?}"
            );
        }
        // The short ones together, the long ones together.
        assert!(
            groups
                .iter()
                .any(|g| g.len() == 3 && g.iter().all(|&i| counts[i] >= 90))
        );
    }
}
