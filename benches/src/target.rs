//! The server under test: gRPC channels (requests spread over several connections, as many clients
//! would), and the per-model request prepared once from ModelMetadata.

use std::sync::atomic::{AtomicUsize, Ordering};

use accel_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use accel_proto::inference::model_infer_request::InferInputTensor;
use accel_proto::inference::{ModelInferRequest, ModelMetadataRequest};
use tonic::transport::{Channel, Endpoint};

use crate::inputs;

/// Connections to one server: over TCP (`http://host:port`) or a Unix domain socket
/// (`unix:///path/to.sock`).
#[derive(Debug)]
pub struct Target {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    next: AtomicUsize,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `url` (e.g. `http://127.0.0.1:8001`).
    pub async fn connect(url: &str, connections: usize) -> Result<Target, String> {
        let mut clients = Vec::with_capacity(connections.max(1));
        // The same unix:PATH / unix:///PATH syntax the server's --grpc-address takes.
        let unix = match url.parse::<accel::config::ListenAddress>() {
            Ok(accel::config::ListenAddress::Unix(path)) => Some(path),
            _ => None,
        };
        for _ in 0..connections.max(1) {
            let base = if unix.is_some() { "http://localhost" } else { url };
            let endpoint = Endpoint::from_shared(base.to_string())
                .map_err(|e| format!("{url}: {e}"))?
                .tcp_nodelay(true)
                .initial_connection_window_size(16 * 1024 * 1024)
                .initial_stream_window_size(4 * 1024 * 1024);
            let connected = match &unix {
                Some(path) => {
                    let path = path.clone();
                    endpoint
                        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                            let path = path.clone();
                            async move {
                                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                    tokio::net::UnixStream::connect(path).await?,
                                ))
                            }
                        }))
                        .await
                }
                None => endpoint.connect().await,
            };
            let channel = connected.map_err(|e| format!("cannot connect to {url}: {e}"))?;
            clients.push(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        Ok(Target {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// A client, round-robin over the connections.
    pub fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        self.clients[k].clone()
    }
}

/// The requests sent to one model, prepared once: one, or a pool of requests of different lengths
/// sent in turn.
#[derive(Debug)]
pub struct ModelLoad {
    pub name: String,
    pub requests: Vec<ModelInferRequest>,
    /// Batch elements per request.
    pub rows: usize,
    next: AtomicUsize,
}

impl ModelLoad {
    /// The next request to send (round-robin over the pool).
    pub fn request(&self) -> ModelInferRequest {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.requests.len().max(1);
        self.requests[k].clone()
    }
}

/// Requests of varying lengths or sizes (`--lengths`, `--pad-to`, `--fill`, `--input-bytes`).
#[derive(Debug, Clone, Default)]
pub struct Lengths {
    /// Each request's variable non-batch dimensions take one length drawn uniformly from this range.
    pub range: Option<(usize, usize)>,
    /// The client pads every request to this length (pad elements zero), as a client would
    /// without server-side padding.
    pub pad_to: Option<usize>,
    /// Inputs whose real elements all take this value (an attention mask of ones).
    pub fill: Vec<(String, i64)>,
    /// When not empty, the only inputs sent.
    pub only: Vec<String>,
    /// Each input's first variable non-batch dimension sized so that the input holds about this many
    /// bytes (`--input-bytes`; further variable dimensions take 1).
    pub bytes: Option<usize>,
}

/// Words of the text a BYTES input is given with `--lengths` (each one token for BERT's
/// vocabulary).
const WORDS: &[&str] = &[
    "the",
    "model",
    "serves",
    "many",
    "embeddings",
    "of",
    "text",
    "for",
    "search",
    "and",
    "retrieval",
    "a",
    "query",
    "finds",
    "passages",
    "in",
    "corpus",
    "each",
    "request",
    "is",
    "batched",
    "with",
    "others",
    "on",
    "one",
    "device",
    "memory",
    "fast",
    "small",
    "large",
    "new",
    "old",
];

/// `rows` texts of `words` words each, as BYTES elements (4-byte little-endian length prefixes).
fn text_rows(rows: usize, words: usize, seed: u64) -> Vec<u8> {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..rows {
        let text: Vec<&str> = (0..words)
            .map(|_| WORDS[rand::Rng::random_range(&mut rng, 0..WORDS.len())])
            .collect();
        let text = text.join(" ");
        out.extend((text.len() as u32).to_le_bytes());
        out.extend(text.as_bytes());
    }
    out
}

/// Requests in a `--lengths` pool.
const POOL: usize = 512;

/// `data` (rows of `len` elements of `size` bytes) with each row padded with zeros to `to`.
fn pad_rows(data: &[u8], rows: usize, len: usize, to: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * to * size);
    for r in 0..rows {
        out.extend_from_slice(&data[r * len * size..(r + 1) * len * size]);
        out.resize(out.len() + (to - len) * size, 0);
    }
    out
}

pub fn filled(datatype: &str, count: usize, value: i64) -> Result<Vec<u8>, String> {
    Ok(match datatype {
        "INT64" => (0..count).flat_map(|_| value.to_le_bytes()).collect(),
        "INT32" => (0..count).flat_map(|_| (value as i32).to_le_bytes()).collect(),
        "FP32" => (0..count).flat_map(|_| (value as f32).to_le_bytes()).collect(),
        other => return Err(format!("--fill does not support {other}")),
    })
}

/// `dims` with the batch dimension set to `batch` and the first other variable dimension sized so
/// that the tensor holds about `bytes` bytes (others 1); `None` without a variable dimension.
fn sized_shape(dims: &[i64], datatype: &str, batch: usize, bytes: usize) -> Option<Vec<i64>> {
    let elem = crate::inputs::element_size(datatype)?;
    let mut shape: Vec<i64> = dims.to_vec();
    let mut fixed = elem;
    let mut variable = None;
    for (i, d) in shape.iter_mut().enumerate() {
        match (i, *d) {
            (0, -1) => {
                *d = batch as i64;
                fixed *= batch;
            }
            (_, -1) if variable.is_none() => variable = Some(i),
            (_, -1) => *d = 1,
            (_, d) => fixed *= d as usize,
        }
    }
    let v = variable?;
    shape[v] = (bytes / fixed.max(1)).max(1) as i64;
    Some(shape)
}

/// Asks the server for the model's inputs and builds a request of `batch` rows with random data.
/// Variable dimensions other than the first (the batch) take `shapes[name]` or fail.
pub async fn prepare(
    target: &Target,
    model: &str,
    batch: usize,
    shapes: &[(String, Vec<i64>)],
    seed: u64,
    lengths: &Lengths,
) -> Result<ModelLoad, String> {
    let meta = target
        .client()
        .model_metadata(ModelMetadataRequest {
            name: model.to_string(),
            version: String::new(),
        })
        .await
        .map_err(|s| format!("ModelMetadata({model}): {}", s.message()))?
        .into_inner();
    let count = if lengths.range.is_some() { POOL } else { 1 };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut requests = Vec::with_capacity(count);
    for r in 0..count {
        let len = lengths
            .range
            .map(|(lo, hi)| rand::Rng::random_range(&mut rng, lo..=hi.max(lo)));
        requests.push(one_request(
            &meta,
            model,
            batch,
            shapes,
            seed.wrapping_add(r as u64 * 1000),
            len,
            lengths,
        )?);
    }
    Ok(ModelLoad {
        name: model.to_string(),
        requests,
        rows: batch,
        next: AtomicUsize::new(0),
    })
}

fn one_request(
    meta: &accel_proto::inference::ModelMetadataResponse,
    model: &str,
    batch: usize,
    shapes: &[(String, Vec<i64>)],
    seed: u64,
    len: Option<usize>,
    lengths: &Lengths,
) -> Result<ModelInferRequest, String> {
    let mut request = ModelInferRequest {
        model_name: model.to_string(),
        ..Default::default()
    };
    for (k, input) in meta.inputs.iter().enumerate() {
        if !lengths.only.is_empty() && !lengths.only.contains(&input.name) {
            continue;
        }
        let sized = lengths
            .bytes
            .and_then(|b| sized_shape(&input.shape, &input.datatype, batch, b));
        let shape: Vec<i64> = match shapes.iter().find(|(n, _)| *n == input.name) {
            Some((_, s)) => s.clone(),
            None if sized.is_some() => sized.unwrap_or_default(),
            None => input
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, d) {
                    (0, -1) => Ok(batch as i64),
                    (_, -1) if len.is_some() => Ok(len.unwrap_or(1) as i64),
                    (_, -1) => Err(format!(
                        "input '{}' has variable dimension {i}: give it with --shape {}:{}",
                        input.name,
                        input.name,
                        input.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
                    )),
                    (_, d) => Ok(d),
                })
                .collect::<Result<_, _>>()?,
        };
        let count: usize = shape.iter().map(|&d| d.max(0) as usize).product();
        let mut data = match (lengths.fill.iter().find(|(n, _)| *n == input.name), len) {
            (Some((_, v)), _) => bytes::Bytes::from(filled(&input.datatype, count, *v)?),
            (None, Some(words)) if input.datatype == "BYTES" => {
                bytes::Bytes::from(text_rows(count, words, seed.wrapping_add(k as u64)))
            }
            (None, _) => inputs::random(&input.datatype, &shape, seed.wrapping_add(k as u64))?,
        };
        let mut shape = shape;
        if let (Some(len), Some(to)) = (len, lengths.pad_to)
            && shape.len() == 2
            && shape[1] == len as i64
            && to > len
        {
            let size = data.len() / count.max(1);
            data = pad_rows(&data, shape[0] as usize, len, to, size).into();
            shape[1] = to as i64;
        }
        request.inputs.push(InferInputTensor {
            name: input.name.clone(),
            datatype: input.datatype.clone(),
            shape,
            ..Default::default()
        });
        request.raw_input_contents.push(data);
    }
    Ok(request)
}
