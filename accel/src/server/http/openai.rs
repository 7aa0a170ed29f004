//! OpenAI's `POST /v1/embeddings` for embedding models (the API LangChain, LlamaIndex and the
//! `openai` SDK call; TEI and vLLM serve it), mapped onto the same inference path as v2 requests:
//! `input` (a string or a list of strings) becomes the model's BYTES `text` input, the `embedding`
//! output comes back as floats or base64 (little-endian FP32, what the SDK decodes), `usage` counts
//! the tokens the model read. Errors are OpenAI-shaped: `{"error": {"message", "type", "param",
//! "code"}}`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Rest, read_body};
use crate::backend::hf::{EMBEDDING_OUTPUT, TEXT_INPUT, TOKENS_OUTPUT};
use crate::core::{Code, DataType, Error, InferRequest, RequestedOutput, Tensor};

/// The most strings one request may carry (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

fn openai_error(status: StatusCode, kind: &str, message: impl Into<String>, param: Option<&str>) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => json!("model_not_found"),
        _ => Value::Null,
    };
    (
        status,
        Json(json!({ "error": { "message": message.into(), "type": kind, "param": param, "code": code } })),
    )
        .into_response()
}

fn invalid(message: impl Into<String>, param: &str) -> Response {
    openai_error(StatusCode::BAD_REQUEST, "invalid_request_error", message, Some(param))
}

fn from_error(e: Error) -> Response {
    let status = crate::server::status::http_status(e.code());
    let kind = match e.code() {
        Code::InvalidArgument | Code::NotFound => "invalid_request_error",
        Code::ResourceExhausted | Code::Unavailable => "server_error",
        _ => "api_error",
    };
    openai_error(status, kind, e.to_string(), None)
}

/// `input` as strings: a string, or a list of strings (token arrays are refused).
fn texts(input: &Value) -> Result<Vec<&str>, String> {
    let list: Vec<&Value> = match input {
        Value::String(_) => vec![input],
        Value::Array(items) => items.iter().collect(),
        _ => return Err("'input' must be a string or an array of strings".into()),
    };
    if list.is_empty() {
        return Err("'input' must not be empty".into());
    }
    if list.len() > MAX_INPUTS {
        return Err(format!("'input' has {} items; at most {MAX_INPUTS}", list.len()));
    }
    list.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| "'input' must be strings (token arrays are not supported)".to_string())
        })
        .collect()
}

pub(super) async fn embeddings(State(s): State<Rest>, headers: HeaderMap, body: Body) -> Result<Response, Response> {
    let key = super::routing_header(&headers).map_err(from_error)?;
    let body = read_body(body, s.body).await?;
    let request: EmbeddingsRequest = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not an embeddings request: {e}"), "body"))?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(
                format!("encoding_format '{other}' is not supported (float, base64)"),
                "encoding_format",
            ));
        }
    };
    let strings = texts(&request.input).map_err(|m| invalid(m, "input"))?;
    let ticket = s
        .inference
        .begin(&request.model, "", key.as_deref())
        .await
        .map_err(from_error)?;
    let spec = ticket.spec().clone();
    let embedding_model = spec.input(TEXT_INPUT).is_some_and(|i| i.datatype == DataType::Bytes)
        && spec.inputs.iter().all(|i| i.name == TEXT_INPUT || i.optional)
        && spec.output(EMBEDDING_OUTPUT).is_some();
    if !embedding_model {
        let message = format!(
            "model '{}' is not an embedding model (a BYTES input '{TEXT_INPUT}', an output '{EMBEDDING_OUTPUT}')",
            request.model
        );
        return Err(from_error(ticket.failed(Error::invalid_argument(message))));
    }
    let dim = spec
        .output(EMBEDDING_OUTPUT)
        .and_then(|o| o.dims.last().copied())
        .unwrap_or(-1);
    if let Some(d) = request.dimensions
        && d as i64 != dim
    {
        return Err(invalid(
            format!(
                "model '{}' makes {dim}-dimensional embeddings; 'dimensions' {d} is not supported",
                request.model
            ),
            "dimensions",
        ));
    }
    let mut outputs = vec![RequestedOutput {
        name: EMBEDDING_OUTPUT.into(),
        parameters: Vec::new(),
    }];
    if spec.output(TOKENS_OUTPUT).is_some() {
        outputs.push(RequestedOutput {
            name: TOKENS_OUTPUT.into(),
            parameters: Vec::new(),
        });
    }
    // Each text is a request of its own, as TEI sends them: the batcher then groups texts of
    // similar lengths across every caller, and a list longer than max_batch_size is served.
    let one = |text: &str| {
        let mut data = BytesMut::with_capacity(4 + text.len());
        data.put_u32_le(text.len() as u32);
        data.put_slice(text.as_bytes());
        InferRequest {
            model_name: request.model.clone(),
            inputs: vec![Tensor {
                name: TEXT_INPUT.into(),
                datatype: DataType::Bytes,
                shape: vec![1, 1],
                data: data.freeze(),
            }],
            outputs: outputs.clone(),
            ..Default::default()
        }
    };
    let answers = futures_util::future::join_all(strings.iter().map(|t| ticket.run(one(t)))).await;
    let mut rows: Vec<Bytes> = Vec::with_capacity(strings.len());
    let mut tokens = 0i64;
    for answer in answers {
        let response = answer.map_err(from_error)?;
        let find = |name: &str| response.outputs.iter().find(|t| t.name == name);
        let embedding =
            find(EMBEDDING_OUTPUT).ok_or_else(|| from_error(Error::new(Code::Internal, "no embeddings")))?;
        rows.push(embedding.data.clone());
        tokens += find(TOKENS_OUTPUT)
            .and_then(|t| t.data.get(..8))
            .map_or(0, |c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
    }
    let items: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let embedding = if base64 {
                json!(base64::engine::general_purpose::STANDARD.encode(row))
            } else {
                json!(
                    row.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<f32>>()
                )
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": items,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}
