//! Hugging Face / sentence-transformers directories (`backend: "huggingface"`): a version directory
//! with `config.json`, `model.safetensors` (or a sharded `model.safetensors.index.json`) and
//! `tokenizer.json`, plus the sentence-transformers files when present (`modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`), exactly as `SentenceTransformer.save()`
//! and the Hub write them. Text comes in as BYTES (one string per row), is tokenized here with the
//! `tokenizers` crate, padded to the batch's longest, encoded, pooled and (when the directory says
//! so) normalised: embeddings come out as FP32 `[n, dim]`.
//!
//! Every file is read through the model's `ModelFile` (confined to its directory, bounded in size).

mod bert;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use candle_core::{Device, Tensor as CTensor};
use tokenizers::Tokenizer;

use self::bert::{Bert, BertConfig, Family, Linear, Pooling, Weights};
use super::{Backend, BackendError, Batch, ExecLimits, LoadLimits, LoadedModel, ModelInstance};
use crate::core::{DataType, GraphIo, ModelFile, ModelSpec, Signature, Tensor};

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
        let text = |name: &str| GraphIo {
            name: name.into(),
            datatype: DataType::Bytes,
            dims: Some(vec![None, Some(1)]),
        };
        let (inputs, main) = match &head {
            Head::Embedding { .. } => (vec![text(TEXT_INPUT)], (EMBEDDING_OUTPUT, bert.hidden)),
            Head::Classifier { labels, .. } => (
                vec![text(TEXT_INPUT), text(TEXT_PAIR_INPUT)],
                (LOGITS_OUTPUT, labels.len()),
            ),
        };
        let signature = Signature {
            inputs,
            outputs: vec![
                GraphIo {
                    name: main.0.into(),
                    datatype: DataType::F32,
                    dims: Some(vec![None, Some(main.1)]),
                },
                GraphIo {
                    name: TOKENS_OUTPUT.into(),
                    datatype: DataType::I64,
                    dims: Some(vec![None, Some(1)]),
                },
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
        for (k, i) in spec.inputs.iter().enumerate() {
            let expected = self.signature.inputs.get(k).map(|g| g.name.as_str());
            if expected != Some(i.name.as_str()) || i.datatype != DataType::Bytes {
                return Err(BackendError::InvalidModel(format!(
                    "this huggingface model's inputs are BYTES {:?}, in that order; not '{}'",
                    self.signature.inputs.iter().map(|g| &g.name).collect::<Vec<_>>(),
                    i.name
                )));
            }
        }
        let main = self.signature.outputs[0].name.as_str();
        let outputs = spec
            .outputs
            .iter()
            .map(|o| match o.name.as_str() {
                TOKENS_OUTPUT => Ok(true),
                name if name == main => Ok(false),
                other => Err(BackendError::InvalidModel(format!(
                    "this huggingface model's outputs are '{main}' and '{TOKENS_OUTPUT}', not '{other}'"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(HfInstance {
            encoder: self.inner.clone(),
            outputs,
        }))
    }
}

struct HfInstance {
    encoder: Arc<Encoder>,
    /// Per spec output: whether it is the token counts (else the embeddings or logits).
    outputs: Vec<bool>,
}

/// The UTF-8 strings of a batch's BYTES input `index` (validated: the prefixes tile each part), or
/// `None` when an optional input is left out.
fn strings<'a>(batch: &'a Batch, index: usize, name: &str) -> Result<Option<Vec<&'a str>>, BackendError> {
    let Some(input) = batch.inputs.get(index).and_then(Option::as_ref) else {
        return Ok(None);
    };
    input
        .parts
        .iter()
        .flat_map(|p| crate::core::bytes_elements(p))
        .enumerate()
        .map(|(k, element)| {
            std::str::from_utf8(element)
                .map_err(|e| BackendError::InvalidInput(format!("input '{name}': element {k} is not UTF-8 text ({e})")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

impl ModelInstance for HfInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let e = &*self.encoder;
        let texts = strings(batch, 0, TEXT_INPUT)?
            .ok_or_else(|| BackendError::InvalidInput(format!("input '{TEXT_INPUT}' is missing")))?;
        let pairs = strings(batch, 1, TEXT_PAIR_INPUT)?;
        let n = texts.len();
        let exec = |err: candle_core::Error| BackendError::Execution(err.to_string());
        let encodings = e
            .tokenizer
            .encode_batch(
                match pairs {
                    Some(pairs) if pairs.len() == n => texts
                        .into_iter()
                        .zip(pairs)
                        .map(|(a, b)| tokenizers::EncodeInput::Dual(a.into(), b.into()))
                        .collect(),
                    Some(pairs) => {
                        return Err(BackendError::InvalidInput(format!(
                            "{} texts but {} '{TEXT_PAIR_INPUT}' texts",
                            n,
                            pairs.len()
                        )));
                    }
                    None => texts.into_iter().map(tokenizers::EncodeInput::from).collect(),
                },
                true,
            )
            .map_err(|err| BackendError::InvalidInput(format!("input '{TEXT_INPUT}': {err}")))?;
        let counts: Vec<i64> = encodings
            .iter()
            .map(|x| x.get_ids().len().min(e.max_len) as i64)
            .collect();
        let len = counts.iter().copied().max().unwrap_or(0).max(1) as usize;
        let bytes = e.bert.pass_bytes(n, len);
        if bytes > e.limits.max_bytes {
            return Err(BackendError::ResourceExhausted(format!(
                "{n} texts of up to {len} tokens would hold about {bytes} bytes at once, more than one execution may (--max-execution-memory {})",
                e.limits.max_bytes
            )));
        }
        let stop = || {
            batch
                .cancel
                .is_cancelled()
                .then(|| candle_core::Error::Msg("every client of the batch has gone".into()))
        };
        // The batch's texts in groups of similar length, each padded only to its own longest: on
        // a CPU every padded token costs as much as a real one.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| counts[i]);
        let mut width = 0;
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); n];
        for group in length_groups(&order, &counts) {
            let glen = group.iter().map(|&i| counts[i] as usize).max().unwrap_or(1).max(1);
            let g = group.len();
            let mut ids = vec![0u32; g * glen];
            let mut types = vec![0u32; g * glen];
            let mut mask = vec![0f32; g * glen];
            for (row, &i) in group.iter().enumerate() {
                let enc = &encodings[i];
                let take = enc.get_ids().len().min(glen);
                ids[row * glen..row * glen + take].copy_from_slice(&enc.get_ids()[..take]);
                types[row * glen..row * glen + take].copy_from_slice(&enc.get_type_ids()[..take]);
                mask[row * glen..row * glen + take].fill(1.0);
            }
            let ids = CTensor::from_vec(ids, (g, glen), &e.device).map_err(exec)?;
            let types = CTensor::from_vec(types, (g, glen), &e.device).map_err(exec)?;
            let mask = CTensor::from_vec(mask, (g, glen), &e.device).map_err(exec)?;
            let states = e.bert.forward(&ids, &mask, &types, &stop).map_err(|err| {
                if batch.cancel.is_cancelled() {
                    BackendError::Cancelled(err.to_string())
                } else {
                    exec(err)
                }
            })?;
            let (out, w) = e.head.apply(&states, &mask).map_err(exec)?;
            width = w;
            let values: Vec<f32> = out
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(exec)?;
            for (row, &i) in group.iter().enumerate() {
                rows[i] = values[row * w..(row + 1) * w].to_vec();
            }
        }
        let values: Vec<f32> = rows.concat();
        let main = if matches!(e.head, Head::Embedding { .. }) {
            EMBEDDING_OUTPUT
        } else {
            LOGITS_OUTPUT
        };
        Ok(batch
            .outputs
            .iter()
            .map(|&k| {
                if self.outputs.get(k).copied().unwrap_or(false) {
                    Tensor {
                        name: TOKENS_OUTPUT.into(),
                        datatype: DataType::I64,
                        shape: vec![n, 1],
                        data: Bytes::from(bytemuck::cast_slice::<i64, u8>(&counts).to_vec()),
                    }
                } else {
                    Tensor {
                        name: main.into(),
                        datatype: DataType::F32,
                        shape: vec![n, width],
                        data: Bytes::from(bytemuck::cast_slice::<f32, u8>(&values).to_vec()),
                    }
                }
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
