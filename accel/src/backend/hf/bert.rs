//! A BERT-family encoder over candle tensors — BERT (and the MiniLM, BGE, E5 and GTE checkpoints
//! that are BERTs), RoBERTa / XLM-RoBERTa (BERT with positions offset past the padding index) and
//! DistilBERT (BERT without token types, under other weight names) — with the weights as their
//! `*Model` safetensors name them, and sentence-transformers' pooling. Linear weights are transposed once at load so that every product is one GEMM over all
//! the batch's tokens; on the CPU, softmax and GELU run on accel-kernels' vectorised exponential.

use std::collections::HashMap;

use candle_core::{D, DType, Module, Tensor};

use crate::backend::candle::map_f32 as cpu_f32;
use crate::backend::candle::map_f32_rows;

/// What `config.json` says of the encoder (BERT's and RoBERTa's keys; DistilBERT's are read into
/// the same fields by [`BertConfig::parse`]).
#[derive(Clone, Debug, serde::Deserialize)]
pub(super) struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(skip)]
    pub family: Family,
}

/// The encoder families, by their `model_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Family {
    #[default]
    Bert,
    /// RoBERTa and XLM-RoBERTa: position ids start after the padding index.
    Roberta,
    DistilBert,
}

#[derive(serde::Deserialize)]
struct DistilBertConfig {
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    activation: String,
}

impl BertConfig {
    /// The config of a `model_type` this module runs, or `None` for another one.
    pub(super) fn parse(model_type: &str, json: serde_json::Value) -> Option<Result<BertConfig, String>> {
        let family = match model_type {
            "bert" => Family::Bert,
            "roberta" | "xlm-roberta" | "camembert" => Family::Roberta,
            "distilbert" => Family::DistilBert,
            _ => return None,
        };
        Some(if family == Family::DistilBert {
            serde_json::from_value::<DistilBertConfig>(json)
                .map(|d| BertConfig {
                    hidden_size: d.dim,
                    num_hidden_layers: d.n_layers,
                    num_attention_heads: d.n_heads,
                    intermediate_size: d.hidden_dim,
                    max_position_embeddings: d.max_position_embeddings,
                    layer_norm_eps: 1e-12,
                    hidden_act: d.activation,
                    type_vocab_size: 0,
                    pad_token_id: None,
                    family,
                })
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_value::<BertConfig>(json)
                .map(|c| BertConfig { family, ..c })
                .map_err(|e| e.to_string())
        })
    }

    /// The first position id of a sequence: RoBERTa's start after its padding index.
    pub(super) fn position_offset(&self) -> usize {
        match self.family {
            Family::Roberta => self.pad_token_id.unwrap_or(1) as usize + 1,
            _ => 0,
        }
    }
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

/// How token states become one embedding (sentence-transformers' `Pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pooling {
    Cls,
    Mean,
    Max,
    /// The last real token's state.
    LastToken,
}

pub(super) enum Linear {
    /// `[in, out]`, transposed from the checkpoint's `[out, in]` at load.
    Tensors { weight_t: Tensor, bias: Tensor },
    /// On the CPU, when candle's GEMMs run on one thread (`RAYON_NUM_THREADS`, which the server
    /// sets from `--intra-op-threads`): the weights and bias packed into panels instead.
    Packed(accel_kernels::packed::PackedB),
}

impl Linear {
    /// Whether weights like these are packed (FP32 on the CPU, one compute thread, vector units).
    fn packs(weight_t: &Tensor) -> bool {
        candle_core::utils::get_num_threads() == 1
            && accel_kernels::packed::PackedB::fast()
            && weight_t.device().is_cpu()
            && weight_t.dtype() == DType::F32
    }

    fn new(weight_t: Tensor, bias: Tensor) -> candle_core::Result<Linear> {
        if Linear::packs(&weight_t) {
            let (k, n) = weight_t.dims2()?;
            let w: Vec<f32> = weight_t.flatten_all()?.to_vec1()?;
            let b: Vec<f32> = bias.flatten_all()?.to_vec1()?;
            if let Some(packed) = accel_kernels::packed::PackedB::new(&w, k, n, Some(&b)) {
                return Ok(Linear::Packed(packed));
            }
        }
        Ok(Linear::Tensors { weight_t, bias })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let mut out = dims[..dims.len() - 1].to_vec();
        match self {
            Linear::Packed(packed) => {
                if packed.k() != inner {
                    candle_core::bail!("a product of width {inner} with weights of {} rows", packed.k());
                }
                out.push(packed.n());
                match map_f32_rows(x, rows * packed.n(), |a, o| packed.matmul(a, rows, o))? {
                    Some(y) => y.reshape(out),
                    None => candle_core::bail!("packed weights take FP32 CPU tensors, not {:?}", x.dtype()),
                }
            }
            Linear::Tensors { weight_t, bias } => {
                out.push(weight_t.dim(1)?);
                x.reshape((rows, inner))?
                    .matmul(weight_t)?
                    .broadcast_add(bias)?
                    .reshape(out)
            }
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps)
    }
}

/// A layer's query, key and value projections.
enum Qkv {
    /// Packed side by side (`[hidden, 3 * hidden]`): one product, and accel-kernels' attention
    /// reads its output as it is.
    Fused(Linear),
    Split {
        query: Linear,
        key: Linear,
        value: Linear,
    },
}

/// The score bias of padded keys, as each form of attention takes it.
enum KeyBias {
    /// `[n * len]`, for the fused kernel.
    Rows(Vec<f32>),
    /// `[n, 1, 1, len]`, broadcast over candle's `[n, heads, len, len]` scores.
    Tensor(Tensor),
}

struct Layer {
    qkv: Qkv,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The encoder, its weights on one device.
pub(super) struct Bert {
    word: candle_nn::Embedding,
    position: candle_nn::Embedding,
    token_type: Option<candle_nn::Embedding>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    pub hidden: usize,
    /// Rows of the word embeddings: token ids are below it.
    pub vocab: usize,
    pub max_positions: usize,
    position_offset: usize,
    intermediate: usize,
}

/// The tensors of a checkpoint, by name, with a prefix (`bert.` in `BertFor...` checkpoints).
pub(super) struct Weights<'a> {
    pub tensors: &'a HashMap<String, Tensor>,
    pub prefix: &'a str,
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Result<Tensor, String> {
        let full = format!("{}{name}", self.prefix);
        self.tensors
            .get(&full)
            .or_else(|| self.tensors.get(name))
            .cloned()
            .ok_or_else(|| format!("the checkpoint has no tensor '{full}'"))
    }

    fn f32(&self, name: &str) -> Result<Tensor, String> {
        self.get(name)?.to_dtype(DType::F32).map_err(|e| e.to_string())
    }

    pub(super) fn linear(&self, name: &str, d_in: usize, d_out: usize) -> Result<Linear, String> {
        let (weight_t, bias) = self.linear_tensors(name, d_in, d_out)?;
        Linear::new(weight_t, bias).map_err(|e| e.to_string())
    }

    /// A linear layer's weights transposed to `[in, out]`, and its bias.
    fn linear_tensors(&self, name: &str, d_in: usize, d_out: usize) -> Result<(Tensor, Tensor), String> {
        let w = self.f32(&format!("{name}.weight"))?;
        if w.dims() != [d_out, d_in] {
            return Err(format!(
                "'{name}.weight' has shape {:?}, not [{d_out}, {d_in}]",
                w.dims()
            ));
        }
        let bias = self.f32(&format!("{name}.bias"))?;
        let weight_t = w.t().and_then(|t| t.contiguous()).map_err(|e| e.to_string())?;
        Ok((weight_t, bias))
    }

    /// The query, key and value projections of one layer, fused where they are packed.
    fn qkv(&self, names: [&str; 3], h: usize) -> Result<Qkv, String> {
        let [q, k, v] = names.map(|n| self.linear_tensors(n, h, h));
        let ((qw, qb), (kw, kb), (vw, vb)) = (q?, k?, v?);
        let e = |e: candle_core::Error| e.to_string();
        if Linear::packs(&qw) {
            let weight_t = Tensor::cat(&[&qw, &kw, &vw], 1).map_err(e)?;
            let bias = Tensor::cat(&[&qb, &kb, &vb], 0).map_err(e)?;
            return Ok(Qkv::Fused(Linear::new(weight_t, bias).map_err(e)?));
        }
        Ok(Qkv::Split {
            query: Linear::new(qw, qb).map_err(e)?,
            key: Linear::new(kw, kb).map_err(e)?,
            value: Linear::new(vw, vb).map_err(e)?,
        })
    }

    fn norm(&self, name: &str, eps: f64) -> Result<LayerNorm, String> {
        Ok(LayerNorm {
            weight: self.f32(&format!("{name}.weight"))?,
            bias: self.f32(&format!("{name}.bias"))?,
            eps: eps as f32,
        })
    }

    fn embedding(&self, name: &str, hidden: usize) -> Result<candle_nn::Embedding, String> {
        let w = self.f32(&format!("{name}.weight"))?;
        if w.rank() != 2 || w.dim(1).ok() != Some(hidden) {
            return Err(format!("'{name}.weight' has shape {:?}, not [_, {hidden}]", w.dims()));
        }
        Ok(candle_nn::Embedding::new(w, hidden))
    }
}

impl Bert {
    pub(super) fn load(config: &BertConfig, w: &Weights<'_>) -> Result<Bert, String> {
        let h = config.hidden_size;
        if config.num_attention_heads == 0 || !h.is_multiple_of(config.num_attention_heads) {
            return Err(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            ));
        }
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(format!("hidden_act '{}' is not supported (gelu is)", config.hidden_act));
        }
        if config.num_hidden_layers > 256 || h > 1 << 16 || config.intermediate_size > 1 << 18 {
            return Err("the encoder's sizes are beyond what Accel serves".into());
        }
        let eps = config.layer_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        // Each layer's weights: (layer prefix, query, key, value, attention output, its norm,
        // intermediate, output, its norm), under the family's names.
        let names: [&str; 9] = if config.family == Family::DistilBert {
            [
                "transformer.layer",
                "attention.q_lin",
                "attention.k_lin",
                "attention.v_lin",
                "attention.out_lin",
                "sa_layer_norm",
                "ffn.lin1",
                "ffn.lin2",
                "output_layer_norm",
            ]
        } else {
            [
                "encoder.layer",
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
                "attention.output.LayerNorm",
                "intermediate.dense",
                "output.dense",
                "output.LayerNorm",
            ]
        };
        let i = config.intermediate_size;
        for l in 0..config.num_hidden_layers {
            let at = |k: usize| format!("{}.{l}.{}", names[0], names[k]);
            layers.push(Layer {
                qkv: w.qkv([&at(1), &at(2), &at(3)], h)?,
                attention_out: w.linear(&at(4), h, h)?,
                attention_norm: w.norm(&at(5), eps)?,
                intermediate: w.linear(&at(6), h, i)?,
                output: w.linear(&at(7), i, h)?,
                output_norm: w.norm(&at(8), eps)?,
            });
        }
        let position = w.embedding("embeddings.position_embeddings", h)?;
        let offset = config.position_offset();
        let max_positions = position
            .embeddings()
            .dim(0)
            .map_err(|e| e.to_string())?
            .saturating_sub(offset);
        let word = w.embedding("embeddings.word_embeddings", h)?;
        let vocab = word.embeddings().dim(0).map_err(|e| e.to_string())?;
        Ok(Bert {
            word,
            vocab,
            position,
            token_type: if config.type_vocab_size > 0 && config.family != Family::DistilBert {
                Some(w.embedding("embeddings.token_type_embeddings", h)?)
            } else {
                None
            },
            embeddings_norm: w.norm("embeddings.LayerNorm", eps)?,
            layers,
            heads: config.num_attention_heads,
            hidden: h,
            max_positions,
            position_offset: offset,
            intermediate: config.intermediate_size,
        })
    }

    /// An upper bound of the bytes one pass over `n` rows of `len` tokens holds at once: the
    /// attention scores and probabilities, and a few activations of the widest layer.
    pub(super) fn pass_bytes(&self, n: usize, len: usize) -> u64 {
        let scores = (n * self.heads) as u64 * (len * len) as u64 * 4 * 3;
        let activations = (n * len) as u64 * self.hidden.max(self.intermediate) as u64 * 4 * 6;
        scores.saturating_add(activations)
    }

    /// Token states `[n, len, hidden]` of `ids` `[n, len]` (u32), with `mask` `[n, len]` (f32, 1 for
    /// real tokens) and `types` `[n, len]` (u32).
    /// `stop` is asked before each layer; `Some(reason)` ends the pass with that error.
    pub(super) fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        types: &Tensor,
        stop: &dyn Fn() -> Option<candle_core::Error>,
    ) -> candle_core::Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let start = self.position_offset as u32;
        let positions = Tensor::arange(start, start + len as u32, ids.device())?;
        let mut x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        if let Some(t) = &self.token_type {
            // A tokenizer may number segments past the model's table (a pair template on a
            // RoBERTa, whose table has one row): those read the last row rather than fail.
            let rows = t.embeddings().dim(0)?.max(1) as u32;
            let types = types.clamp(0u32, rows - 1)?;
            x = x.add(&t.forward(&types)?)?;
        }
        let mut x = self.embeddings_norm.forward(&x)?;
        let dh = self.hidden / self.heads;
        let scale = 1.0 / (dh as f64).sqrt();
        // Padded keys get no weight: (1 - mask) * -10000 added to their scores, in the form the
        // layers' attention takes (every layer is fused or none is: packing is decided per process).
        let key_bias = match self.layers.first().map(|l| &l.qkv) {
            Some(Qkv::Fused(_)) => KeyBias::Rows(
                mask.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|m| (1.0 - m) * -10000.0)
                    .collect(),
            ),
            _ => KeyBias::Tensor(((mask.ones_like()? - mask)? * -10000.0)?.reshape((n, 1, 1, len))?),
        };
        for layer in &self.layers {
            if let Some(e) = stop() {
                return Err(e);
            }
            let context = match (&layer.qkv, &key_bias) {
                (Qkv::Fused(projection), KeyBias::Rows(key_bias)) => {
                    let qkv = projection.forward(&x)?;
                    let (heads, hidden) = (self.heads, self.hidden);
                    match map_f32_rows(&qkv, n * len * hidden, |a, o| {
                        let shape = accel_kernels::attention::Heads {
                            n,
                            len,
                            heads,
                            dh,
                            scale: scale as f32,
                        };
                        accel_kernels::attention::attention(a, key_bias, o, shape)
                    })? {
                        Some(c) => c.reshape((n, len, hidden))?,
                        None => candle_core::bail!("the fused attention takes FP32 CPU tensors"),
                    }
                }
                (Qkv::Split { query, key, value }, KeyBias::Tensor(bias)) => {
                    let split = |t: Tensor| t.reshape((n, len, self.heads, dh))?.transpose(1, 2)?.contiguous();
                    let q = split(query.forward(&x)?)?;
                    let k = split(key.forward(&x)?)?;
                    let v = split(value.forward(&x)?)?;
                    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(bias)?;
                    let probs = softmax(&scores)?;
                    probs
                        .matmul(&v)?
                        .transpose(1, 2)?
                        .contiguous()?
                        .reshape((n, len, self.hidden))?
                }
                _ => candle_core::bail!("the layers disagree on fused attention"),
            };
            let attended = layer.attention_out.forward(&context)?;
            x = layer.attention_norm.forward(&attended.add(&x)?)?;
            let inner = gelu(&layer.intermediate.forward(&x)?)?;
            let out = layer.output.forward(&inner)?;
            x = layer.output_norm.forward(&out.add(&x)?)?;
        }
        Ok(x)
    }
}

/// Pools token states `[n, len, hidden]` with `mask` `[n, len]` (f32) into `[n, hidden]`.
pub(super) fn pool(states: &Tensor, mask: &Tensor, pooling: Pooling) -> candle_core::Result<Tensor> {
    let m = mask.unsqueeze(2)?;
    match pooling {
        Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean => {
            let summed = states.broadcast_mul(&m)?.sum(1)?;
            let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
            summed.broadcast_div(&count)
        }
        Pooling::Max => {
            // Padded positions can never be the maximum.
            let floor = ((m.ones_like()? - &m)? * -1e9)?;
            states.broadcast_add(&floor)?.max(1)
        }
        Pooling::LastToken => {
            let (n, _, hidden) = states.dims3()?;
            let last = (mask.sum(1)? - 1.0)?.clamp(0.0, f64::MAX)?.to_dtype(DType::U32)?;
            let index = last.reshape((n, 1, 1))?.broadcast_as((n, 1, hidden))?.contiguous()?;
            states.gather(&index, 1)?.squeeze(1)
        }
    }
}

/// Rows scaled to unit L2 norm (sentence-transformers' `Normalize`).
pub(super) fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}

fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let width = x.dim(D::Minus1)?;
    match cpu_f32(x, |a, o| accel_kernels::activation::softmax_rows(a, o, width))? {
        Some(y) => Ok(y),
        None => candle_nn::ops::softmax_last_dim(&x.contiguous()?),
    }
}

/// GELU with the exact error function (BERT's `gelu`), in one pass on the CPU.
fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    use accel_kernels::elementwise::{Op, Operand};
    let ops = [
        Op::Div(Operand::Root, Operand::Scalar(std::f32::consts::SQRT_2)),
        Op::Erf,
        Op::Add(Operand::Current, Operand::Scalar(1.0)),
        Op::Mul(Operand::Root, Operand::Current),
        Op::Mul(Operand::Current, Operand::Scalar(0.5)),
    ];
    match cpu_f32(x, |a, o| o.copy_from_slice(&accel_kernels::elementwise::chain(&ops, a)))? {
        Some(y) => Ok(y),
        None => x.gelu_erf(),
    }
}
