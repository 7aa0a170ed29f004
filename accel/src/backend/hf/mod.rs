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

use self::bert::{Bert, BertConfig, Pooling, Weights};
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
        let head_free = architecture.is_empty()
            || architecture.ends_with("Model")
            || architecture.ends_with("ForMaskedLM")
            || architecture.ends_with("ForPreTraining");
        if !head_free {
            return Err(unsupported());
        }
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
        let (pooling, normalize) = pooling_of(file)?;
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
        drop(tensors);
        let max_len = max_len.min(bert.max_positions);
        let signature = Signature {
            inputs: vec![GraphIo {
                name: TEXT_INPUT.into(),
                datatype: DataType::Bytes,
                dims: Some(vec![None, Some(1)]),
            }],
            outputs: vec![
                GraphIo {
                    name: EMBEDDING_OUTPUT.into(),
                    datatype: DataType::F32,
                    dims: Some(vec![None, Some(bert.hidden)]),
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
                pooling,
                normalize,
                max_len,
                device: self.device.clone(),
                limits: self.limits,
            }),
            signature,
            weight_bytes,
        }))
    }
}

/// A loaded sentence encoder, shared by its instances.
struct Encoder {
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
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

    fn instance(&self, spec: &ModelSpec) -> Result<Box<dyn ModelInstance>, BackendError> {
        if spec.inputs.len() != 1 || spec.inputs[0].name != TEXT_INPUT || spec.inputs[0].datatype != DataType::Bytes {
            return Err(BackendError::InvalidModel(format!(
                "a huggingface model has one input, BYTES '{TEXT_INPUT}'"
            )));
        }
        let outputs = spec
            .outputs
            .iter()
            .map(|o| match o.name.as_str() {
                EMBEDDING_OUTPUT => Ok(false),
                TOKENS_OUTPUT => Ok(true),
                other => Err(BackendError::InvalidModel(format!(
                    "a huggingface embedding model has outputs '{EMBEDDING_OUTPUT}' and '{TOKENS_OUTPUT}', not '{other}'"
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
    /// Per spec output: whether it is the token counts (else the embeddings).
    outputs: Vec<bool>,
}

/// The UTF-8 strings of a batch's BYTES input (validated: the prefixes tile each part).
fn strings(batch: &Batch) -> Result<Vec<&str>, BackendError> {
    let input = batch
        .inputs
        .first()
        .and_then(Option::as_ref)
        .ok_or_else(|| BackendError::InvalidInput(format!("input '{TEXT_INPUT}' is missing")))?;
    let mut out = Vec::new();
    for part in &input.parts {
        let mut rest = &part[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
            let text = std::str::from_utf8(&tail[..n]).map_err(|e| {
                BackendError::InvalidInput(format!(
                    "input '{TEXT_INPUT}': element {} is not UTF-8 text ({e})",
                    out.len()
                ))
            })?;
            out.push(text);
            rest = &tail[n..];
        }
    }
    Ok(out)
}

impl ModelInstance for HfInstance {
    fn execute(&mut self, batch: &Batch) -> Result<Vec<Tensor>, BackendError> {
        let e = &*self.encoder;
        let texts = strings(batch)?;
        let n = texts.len();
        let exec = |err: candle_core::Error| BackendError::Execution(err.to_string());
        let encodings = e
            .tokenizer
            .encode_batch(texts, true)
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
        let mut ids = vec![0u32; n * len];
        let mut types = vec![0u32; n * len];
        let mut mask = vec![0f32; n * len];
        for (row, enc) in encodings.iter().enumerate() {
            let take = enc.get_ids().len().min(len);
            ids[row * len..row * len + take].copy_from_slice(&enc.get_ids()[..take]);
            types[row * len..row * len + take].copy_from_slice(&enc.get_type_ids()[..take]);
            mask[row * len..row * len + take].fill(1.0);
        }
        let ids = CTensor::from_vec(ids, (n, len), &e.device).map_err(exec)?;
        let types = CTensor::from_vec(types, (n, len), &e.device).map_err(exec)?;
        let mask = CTensor::from_vec(mask, (n, len), &e.device).map_err(exec)?;
        let stop = || {
            batch
                .cancel
                .is_cancelled()
                .then(|| candle_core::Error::Msg("every client of the batch has gone".into()))
        };
        let states = e.bert.forward(&ids, &mask, &types, &stop).map_err(|err| {
            if batch.cancel.is_cancelled() {
                BackendError::Cancelled(err.to_string())
            } else {
                exec(err)
            }
        })?;
        let mut pooled = bert::pool(&states, &mask, e.pooling).map_err(exec)?;
        if e.normalize {
            pooled = bert::normalize(&pooled).map_err(exec)?;
        }
        let values: Vec<f32> = pooled
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .map_err(exec)?;
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
                        name: EMBEDDING_OUTPUT.into(),
                        datatype: DataType::F32,
                        shape: vec![n, e.bert.hidden],
                        data: Bytes::from(bytemuck::cast_slice::<f32, u8>(&values).to_vec()),
                    }
                }
            })
            .collect())
    }
}
