//! REST v2 (axum) over the same core calls as gRPC: health, metadata, config, statistics, repository
//! index, logging, and inference with JSON or binary tensors. Non-inference answers are the gRPC
//! messages in their JSON form (`answers`), so both protocols say the same thing. Errors are Triton's
//! `{"error": "..."}` with the status code of the error's kind.

mod codec;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::answers::{self, LoadParameter, LogValue, not_yet};
use super::infer::Inference;
use crate::core::{Code, Error};

/// The REST router.
pub(super) fn router(inference: Inference, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata_v))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/versions/{version}/ready", get(model_ready_v))
        .route("/v2/models/{model}/config", get(model_config))
        .route("/v2/models/{model}/versions/{version}/config", get(model_config_v))
        .route("/v2/models/{model}/stats", get(model_stats))
        .route("/v2/models/{model}/versions/{version}/stats", get(model_stats_v))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route("/v2/logging", get(get_logging).post(post_logging))
        .route("/v2/trace/setting", get(trace).post(trace))
        .route("/v2/models/{model}/trace/setting", get(trace).post(trace))
        .route("/v2/systemsharedmemory/{*rest}", get(shm).post(shm))
        .route("/v2/cudasharedmemory/{*rest}", get(cuda_shm).post(cuda_shm))
        .fallback(|| async { Error::new(Code::NotFound, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(inference)
}

async fn trace() -> Error {
    not_yet("trace settings", "request tracing (not scheduled yet)")
}

async fn shm() -> Error {
    not_yet("system shared memory", "the shared-memory work")
}

async fn cuda_shm() -> Error {
    not_yet("CUDA shared memory", "the GPU path (issue 5)")
}

/// A protocol message as Triton's HTTP JSON: field names as in the .proto, 64-bit integers as numbers,
/// enums by name, default values included.
fn proto_json<M: prost::Message>(message: &M, full_name: &str) -> Result<Value, Error> {
    let internal = |e: String| Error::new(Code::Internal, e);
    let pool = accel_proto::descriptor_pool().map_err(|e| internal(e.to_string()))?;
    let desc = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| internal(format!("no descriptor for {full_name}")))?;
    let dynamic =
        DynamicMessage::decode(desc, message.encode_to_vec().as_slice()).map_err(|e| internal(e.to_string()))?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| internal(e.to_string()))
}

fn ready_status(ready: bool) -> StatusCode {
    // The protocol: 200 means true, a 4xx means false (Triton answers 400).
    if ready { StatusCode::OK } else { StatusCode::BAD_REQUEST }
}

async fn server_ready(State(s): State<Inference>) -> StatusCode {
    ready_status(s.ready())
}

async fn server_metadata() -> Result<Json<Value>, Error> {
    Ok(Json(proto_json(
        &answers::server_metadata(),
        "inference.ServerMetadataResponse",
    )?))
}

async fn metadata(s: &Inference, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let m = answers::model_metadata(&s.registry, model, version).await?;
    Ok(Json(proto_json(&m, "inference.ModelMetadataResponse")?))
}

async fn model_metadata(State(s): State<Inference>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    metadata(&s, &model, "").await
}

async fn model_metadata_v(
    State(s): State<Inference>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    metadata(&s, &model, &version).await
}

fn ready(s: &Inference, model: &str, version: &str) -> StatusCode {
    ready_status(!s.lifecycle.draining() && s.registry.model_ready(model, version))
}

async fn model_ready(State(s): State<Inference>, Path(model): Path<String>) -> StatusCode {
    ready(&s, &model, "")
}

async fn model_ready_v(State(s): State<Inference>, Path((model, version)): Path<(String, String)>) -> StatusCode {
    ready(&s, &model, &version)
}

async fn config(s: &Inference, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let c = answers::model_config(&s.registry, model, version).await?;
    let json = proto_json(&c.config.unwrap_or_default(), accel_proto::MODEL_CONFIG_MESSAGE)?;
    Ok(Json(json))
}

async fn model_config(State(s): State<Inference>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    config(&s, &model, "").await
}

async fn model_config_v(
    State(s): State<Inference>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    config(&s, &model, &version).await
}

fn stats(s: &Inference, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let st = answers::model_statistics(&s.registry, model, version)?;
    Ok(Json(proto_json(&st, "inference.ModelStatisticsResponse")?))
}

async fn all_stats(State(s): State<Inference>) -> Result<Json<Value>, Error> {
    stats(&s, "", "")
}

async fn model_stats(State(s): State<Inference>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    stats(&s, &model, "")
}

async fn model_stats_v(
    State(s): State<Inference>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    stats(&s, &model, &version)
}

async fn repository_index(State(s): State<Inference>, body: Bytes) -> Result<Json<Value>, Error> {
    let ready = if body.is_empty() {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_argument(format!("repository index body: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    let index = proto_json(
        &answers::repository_index(&s.registry, ready),
        "inference.RepositoryIndexResponse",
    )?;
    // REST answers the list itself, not the gRPC message around it.
    Ok(Json(index.get("models").cloned().unwrap_or(Value::Array(Vec::new()))))
}

/// The `parameters` object of a repository request body (which may be empty).
fn repository_parameters(body: &Bytes) -> Result<Vec<(String, LoadParameter)>, Error> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| Error::invalid_argument(format!("request body: {e}")))?;
    let Some(params) = v.get("parameters") else {
        return Ok(Vec::new());
    };
    let Value::Object(map) = params else {
        return Err(Error::invalid_argument("'parameters' must be a JSON object"));
    };
    Ok(map
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => LoadParameter::String(s.clone()),
                _ => LoadParameter::Other,
            };
            (k.clone(), value)
        })
        .collect())
}

async fn load_model(State(s): State<Inference>, Path(model): Path<String>, body: Bytes) -> Result<StatusCode, Error> {
    answers::load_model(&s.registry, &model, repository_parameters(&body)?).await?;
    Ok(StatusCode::OK)
}

async fn unload_model(State(s): State<Inference>, Path(model): Path<String>, body: Bytes) -> Result<StatusCode, Error> {
    // `unload_dependents` (ensembles) has nothing to act on here.
    repository_parameters(&body)?;
    answers::unload_model(&s.registry, &model).await?;
    Ok(StatusCode::OK)
}

fn log_json(r: accel_proto::inference::LogSettingsResponse) -> Value {
    use accel_proto::inference::log_settings_response::setting_value::ParameterChoice;
    let mut map = serde_json::Map::new();
    for (k, v) in r.settings {
        let value = match v.parameter_choice {
            Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
            Some(ParameterChoice::Uint32Param(u)) => Value::from(u),
            Some(ParameterChoice::StringParam(s)) => Value::String(s),
            None => Value::Null,
        };
        map.insert(k, value);
    }
    Value::Object(map)
}

async fn get_logging() -> Result<Json<Value>, Error> {
    Ok(Json(log_json(answers::log_settings(Vec::new())?)))
}

async fn post_logging(body: Bytes) -> Result<Json<Value>, Error> {
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| Error::invalid_argument(format!("log settings body: {e}")))?;
    let Value::Object(map) = v else {
        return Err(Error::invalid_argument("log settings must be a JSON object"));
    };
    let mut updates = Vec::new();
    for (k, v) in map {
        let value = match v {
            Value::Bool(b) => LogValue::Bool(b),
            Value::Number(n) => LogValue::Uint(
                n.as_u64()
                    .and_then(|u| u32::try_from(u).ok())
                    .ok_or_else(|| Error::invalid_argument(format!("log setting '{k}': {n} is not a uint32")))?,
            ),
            Value::String(s) => LogValue::String(s),
            other => {
                return Err(Error::invalid_argument(format!(
                    "log setting '{k}': {other} is not a bool, number or string"
                )));
            }
        };
        updates.push((k, value));
    }
    Ok(Json(log_json(answers::log_settings(updates)?)))
}

async fn infer(
    State(s): State<Inference>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    run_infer(&s, &model, "", &headers, body).await
}

async fn infer_v(
    State(s): State<Inference>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    run_infer(&s, &model, &version, &headers, body).await
}

async fn run_infer(
    s: &Inference,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| *e != "identity")
    {
        return Err(Error::unimplemented(format!(
            "Content-Encoding '{encoding}' is not supported; send the body uncompressed"
        )));
    }
    let header_length = match headers.get(codec::HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid_argument(format!("{} is not text", codec::HEADER_LENGTH)))?,
        ),
        None => None,
    };
    let (decoded, form) = codec::decode(header_length, body)?;
    let response = s.infer(model, version, move |spec| decoded.into_request(spec)).await?;
    let encoded = codec::encode(response, &form)?;
    let mut r = encoded.body.into_response();
    let h = r.headers_mut();
    match encoded.header_length {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(codec::HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(r)
}
