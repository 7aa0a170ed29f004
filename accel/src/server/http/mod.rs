//! REST v2 (axum) over the same core calls as gRPC: health, metadata, config, statistics, repository
//! index, logging, and inference with JSON or binary tensors. Non-inference answers are the gRPC
//! messages in their JSON form (`answers`), so both protocols say the same thing. Errors are Triton's
//! `{"error": "..."}` with the status code of the error's kind.

mod codec;
mod openai;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::Value;

use super::answers::{self, LoadParameter, LogValue, not_yet};
use super::infer::Inference;
use crate::core::{Code, Error};

/// Bodies above this size are decoded (and answers above it encoded) on blocking threads, not on
/// the async runtime's: a large JSON body takes long enough to stall other connections.
const INLINE_BYTES: usize = 64 << 10;

/// Large decodes and encodes running at once (each on a blocking thread).
const BLOCKING_CODECS: usize = 4;

/// How request bodies are read.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyLimits {
    /// Largest body accepted (413 beyond).
    pub max_bytes: usize,
    /// Time a client has to send the whole body once its headers are in (408 beyond).
    pub timeout: Duration,
}

/// What the REST handlers share.
#[derive(Clone, Debug)]
struct Rest {
    inference: Inference,
    body: BodyLimits,
    codecs: Arc<tokio::sync::Semaphore>,
}

/// The REST router.
pub(super) fn router(inference: Inference, body: BodyLimits) -> Router {
    let state = Rest {
        inference,
        body,
        codecs: Arc::new(tokio::sync::Semaphore::new(BLOCKING_CODECS)),
    };
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
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
        .route("/v2/models/{model}/slo", get(model_slo))
        .route("/v2/models/{model}/versions/{version}/slo", get(model_slo_v))
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(load_model))
        .route("/v2/repository/models/{model}/unload", post(unload_model))
        .route("/v2/logging", get(get_logging).post(post_logging))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v2/trace/setting", get(trace).post(trace))
        .route("/v2/models/{model}/trace/setting", get(trace).post(trace))
        .route("/v2/systemsharedmemory/status", get(shm_status_all))
        .route("/v2/systemsharedmemory/region/{name}/status", get(shm_status))
        .route("/v2/systemsharedmemory/region/{name}/register", post(shm_register))
        .route("/v2/systemsharedmemory/unregister", post(shm_unregister_all))
        .route("/v2/systemsharedmemory/region/{name}/unregister", post(shm_unregister))
        .route("/v2/cudasharedmemory/status", get(cuda_status_all))
        .route("/v2/cudasharedmemory/region/{name}/status", get(cuda_status))
        .route("/v2/cudasharedmemory/region/{name}/register", post(cuda_register))
        .route("/v2/cudasharedmemory/unregister", post(cuda_unregister_all))
        .route("/v2/cudasharedmemory/region/{name}/unregister", post(cuda_unregister))
        .fallback(|| async { Error::new(Code::NotFound, "no such endpoint") })
        .with_state(state)
}

/// Decodes `body` for `spec`, validates it, and encodes an answer made of its inputs (fuzzing).
pub(super) fn fuzz_body(header_length: Option<&str>, body: Bytes, spec: &crate::core::ModelSpec) {
    let _ = codec::routing_key(header_length, &body);
    let Ok((decoded, form)) = codec::decode(header_length, body, spec) else {
        return;
    };
    let request = decoded.request;
    let outputs = request.inputs.clone();
    let _ = crate::core::validate(spec, request);
    let response = crate::core::InferResponse {
        model_name: spec.name.clone(),
        model_version: "1".into(),
        id: String::new(),
        outputs,
    };
    let _ = codec::encode(response, &form);
}

/// Reads a request body whole: at most `max_bytes` (413 beyond), within the body timeout (408).
async fn read_body(body: Body, limits: BodyLimits) -> Result<Bytes, Response> {
    let error =
        |status: StatusCode, message: String| (status, Json(serde_json::json!({ "error": message }))).into_response();
    match tokio::time::timeout(limits.timeout, axum::body::to_bytes(body, limits.max_bytes)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than {} bytes (--http-max-body-bytes)",
                        limits.max_bytes
                    ),
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {e}"),
                )
            })
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (--http-body-timeout-secs)",
                limits.timeout.as_secs()
            ),
        )),
    }
}

/// Runs `f` on a blocking thread when `size` is large (at most [`BLOCKING_CODECS`] at once), else
/// here.
async fn off_runtime<T: Send + 'static>(
    codecs: &tokio::sync::Semaphore,
    size: usize,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    if size <= INLINE_BYTES {
        return f();
    }
    let _permit = codecs
        .acquire()
        .await
        .map_err(|_| Error::new(Code::Unavailable, "the server is shutting down"))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(Code::Internal, format!("a decoding thread failed: {e}")))?
}

async fn trace() -> Error {
    not_yet("trace settings", "request tracing (not scheduled yet)")
}

/// A shared-memory status answer in Triton's REST form: the gRPC message's regions as a list,
/// by name.
fn regions_json(answer: Value) -> Json<Value> {
    let mut regions: Vec<Value> = match answer.get("regions") {
        Some(Value::Object(map)) => map.values().cloned().collect(),
        _ => Vec::new(),
    };
    regions.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(Value::Array(regions))
}

/// `[{name, key, offset, byte_size}]`.
fn shm_status_json(s: &Rest, name: &str) -> Result<Json<Value>, Error> {
    let answer = answers::system_shm_status(&s.inference.shm, name)?;
    Ok(regions_json(proto_json(
        &answer,
        "inference.SystemSharedMemoryStatusResponse",
    )?))
}

async fn shm_status_all(State(s): State<Rest>) -> Result<Json<Value>, Error> {
    shm_status_json(&s, "")
}

async fn shm_status(State(s): State<Rest>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    shm_status_json(&s, &name)
}

/// `{"key": ..., "offset": ..., "byte_size": ...}`.
async fn shm_register(State(s): State<Rest>, Path(name): Path<String>, body: Body) -> Result<StatusCode, Response> {
    let body = read_body(body, s.body).await?;
    let register = || -> Result<StatusCode, Error> {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_argument(format!("shared memory register body: {e}")))?;
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_argument("shared memory register body needs a string 'key'"))?;
        let count = |field: &str, default: Option<u64>| {
            match v.get(field) {
                None => default,
                Some(n) => n.as_u64(),
            }
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "shared memory register body needs '{field}' as a non-negative integer"
                ))
            })
        };
        s.inference
            .shm
            .register(&name, key, count("offset", Some(0))?, count("byte_size", None)?)?;
        Ok(StatusCode::OK)
    };
    register().map_err(IntoResponse::into_response)
}

async fn shm_unregister_all(State(s): State<Rest>) -> Result<StatusCode, Error> {
    s.inference.shm.unregister("").await?;
    Ok(StatusCode::OK)
}

async fn shm_unregister(State(s): State<Rest>, Path(name): Path<String>) -> Result<StatusCode, Error> {
    s.inference.shm.unregister(&name).await?;
    Ok(StatusCode::OK)
}

/// `[{name, device_id, byte_size}]`.
fn cuda_status_json(s: &Rest, name: &str) -> Result<Json<Value>, Error> {
    let answer = answers::cuda_shm_status(&s.inference.shm, name)?;
    Ok(regions_json(proto_json(
        &answer,
        "inference.CudaSharedMemoryStatusResponse",
    )?))
}

async fn cuda_status_all(State(s): State<Rest>) -> Result<Json<Value>, Error> {
    cuda_status_json(&s, "")
}

async fn cuda_status(State(s): State<Rest>, Path(name): Path<String>) -> Result<Json<Value>, Error> {
    cuda_status_json(&s, &name)
}

/// `{"raw_handle": {"b64": ...}, "device_id": ..., "byte_size": ...}`.
async fn cuda_register(State(s): State<Rest>, Path(name): Path<String>, body: Body) -> Result<StatusCode, Response> {
    use base64::Engine as _;
    let body = read_body(body, s.body).await?;
    let parse = || -> Result<(Vec<u8>, i64, u64), Error> {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_argument(format!("CUDA shared memory register body: {e}")))?;
        let handle = v
            .get("raw_handle")
            .and_then(|h| h.get("b64"))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid_argument("CUDA shared memory register body needs raw_handle.b64"))?;
        let handle = base64::engine::general_purpose::STANDARD
            .decode(handle)
            .map_err(|e| Error::invalid_argument(format!("raw_handle.b64: {e}")))?;
        let device_id = v
            .get("device_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::invalid_argument("CUDA shared memory register body needs an integer device_id"))?;
        let byte_size = v.get("byte_size").and_then(Value::as_u64).ok_or_else(|| {
            Error::invalid_argument("CUDA shared memory register body needs a non-negative byte_size")
        })?;
        Ok((handle, device_id, byte_size))
    };
    let (handle, device_id, byte_size) = parse().map_err(IntoResponse::into_response)?;
    let shm = s.inference.shm.clone();
    shm.register_cuda(name, handle, device_id, byte_size)
        .await
        .map_err(|e| Error::from(e).into_response())?;
    Ok(StatusCode::OK)
}

async fn cuda_unregister_all(State(s): State<Rest>) -> Result<StatusCode, Error> {
    s.inference.shm.unregister_cuda("").await?;
    Ok(StatusCode::OK)
}

async fn cuda_unregister(State(s): State<Rest>, Path(name): Path<String>) -> Result<StatusCode, Error> {
    s.inference.shm.unregister_cuda(&name).await?;
    Ok(StatusCode::OK)
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

async fn server_ready(State(s): State<Rest>) -> (StatusCode, Json<Value>) {
    let ready = s.inference.ready();
    (ready_status(ready), Json(serde_json::json!({ "ready": ready })))
}

async fn server_metadata() -> Result<Json<Value>, Error> {
    Ok(Json(proto_json(
        &answers::server_metadata(),
        "inference.ServerMetadataResponse",
    )?))
}

async fn metadata(s: &Rest, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let m = answers::model_metadata(&s.inference.registry, model, version).await?;
    Ok(Json(proto_json(&m, "inference.ModelMetadataResponse")?))
}

async fn model_metadata(State(s): State<Rest>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    metadata(&s, &model, "").await
}

async fn model_metadata_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    metadata(&s, &model, &version).await
}

/// The protocol's answer: 200 or 400, and `{"name": ..., "ready": ...}` (KServe's clients read the
/// body; Triton's ignore it).
async fn ready(s: &Rest, model: &str, version: &str) -> (StatusCode, Json<Value>) {
    let ready = !s.inference.lifecycle.draining() && s.inference.registry.model_ready(model, version).await;
    (
        ready_status(ready),
        Json(serde_json::json!({ "name": model, "ready": ready })),
    )
}

async fn model_ready(State(s): State<Rest>, Path(model): Path<String>) -> (StatusCode, Json<Value>) {
    ready(&s, &model, "").await
}

async fn model_ready_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> (StatusCode, Json<Value>) {
    ready(&s, &model, &version).await
}

async fn config(s: &Rest, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let c = answers::model_config(&s.inference.registry, model, version).await?;
    let json = proto_json(&c.config.unwrap_or_default(), accel_proto::MODEL_CONFIG_MESSAGE)?;
    Ok(Json(json))
}

async fn model_config(State(s): State<Rest>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    config(&s, &model, "").await
}

async fn model_config_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    config(&s, &model, &version).await
}

fn stats(s: &Rest, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let st = answers::model_statistics(&s.inference.registry, model, version)?;
    Ok(Json(proto_json(&st, "inference.ModelStatisticsResponse")?))
}

/// SLO mode's state of each READY version (or of one): Accel's own endpoint.
fn slo(s: &Rest, model: &str, version: &str) -> Result<Json<Value>, Error> {
    let registry = &s.inference.registry;
    let versions = if version.is_empty() {
        registry.versions(model)
    } else {
        vec![version.to_string()]
    };
    let mut out = Vec::new();
    for v in versions {
        match registry.acquire_now(model, &v) {
            Ok(lease) => out.push(serde_json::json!({
                "version": v,
                "slo": lease.scheduler.slo_state(),
            })),
            Err(e) if !version.is_empty() => return Err(e.into()),
            Err(_) => {}
        }
    }
    if out.is_empty() {
        // Report why, as inference would.
        registry.acquire_now(model, version)?;
    }
    Ok(Json(serde_json::json!({ "name": model, "versions": out })))
}

async fn model_slo(State(s): State<Rest>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    slo(&s, &model, "")
}

async fn model_slo_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    slo(&s, &model, &version)
}

async fn all_stats(State(s): State<Rest>) -> Result<Json<Value>, Error> {
    stats(&s, "", "")
}

async fn model_stats(State(s): State<Rest>, Path(model): Path<String>) -> Result<Json<Value>, Error> {
    stats(&s, &model, "")
}

async fn model_stats_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    stats(&s, &model, &version)
}

async fn repository_index(State(s): State<Rest>, body: Body) -> Result<Response, Response> {
    let body = read_body(body, s.body).await?;
    index(&s, &body)
        .map(IntoResponse::into_response)
        .map_err(IntoResponse::into_response)
}

fn index(s: &Rest, body: &Bytes) -> Result<Json<Value>, Error> {
    let ready = if body.is_empty() {
        false
    } else {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| Error::invalid_argument(format!("repository index body: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    let index = proto_json(
        &answers::repository_index(&s.inference.registry, ready),
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

async fn load_model(State(s): State<Rest>, Path(model): Path<String>, body: Body) -> Result<StatusCode, Response> {
    let body = read_body(body, s.body).await?;
    let load = async {
        answers::load_model(&s.inference.registry, &model, repository_parameters(&body)?).await?;
        Ok::<_, Error>(StatusCode::OK)
    };
    load.await.map_err(IntoResponse::into_response)
}

async fn unload_model(State(s): State<Rest>, Path(model): Path<String>, body: Body) -> Result<StatusCode, Response> {
    let body = read_body(body, s.body).await?;
    let unload = async {
        // `unload_dependents` (ensembles) has nothing to act on here.
        repository_parameters(&body)?;
        answers::unload_model(&s.inference.registry, &model).await?;
        Ok::<_, Error>(StatusCode::OK)
    };
    unload.await.map_err(IntoResponse::into_response)
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

async fn post_logging(State(s): State<Rest>, body: Body) -> Result<Json<Value>, Response> {
    let body = read_body(body, s.body).await?;
    logging_update(&body).map_err(IntoResponse::into_response)
}

fn logging_update(body: &Bytes) -> Result<Json<Value>, Error> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| Error::invalid_argument(format!("log settings body: {e}")))?;
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
    State(s): State<Rest>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    run_infer(&s, &model, "", &headers, body).await
}

async fn infer_v(
    State(s): State<Rest>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    run_infer(&s, &model, &version, &headers, body).await
}

/// The `accel-routing-key` header, if any.
pub(super) fn routing_header(headers: &HeaderMap) -> Result<Option<String>, Error> {
    match headers.get(crate::residency::split::ROUTING_KEY_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
            Error::invalid_argument(format!(
                "header {} must be text",
                crate::residency::split::ROUTING_KEY_HEADER
            ))
        }),
    }
}

/// One REST inference: the model is found (and loaded) before the body is read, the body is read
/// within its limits, decoded against the model (on a blocking thread when large), run, and the
/// answer encoded the same way.
async fn run_infer(
    s: &Rest,
    model: &str,
    version: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .filter(|e| *e != "identity")
    {
        return Err(Error::unimplemented(format!(
            "Content-Encoding '{encoding}' is not supported; send the body uncompressed"
        ))
        .into_response());
    }
    let header_length = match headers.get(codec::HEADER_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid_argument(format!("{} is not text", codec::HEADER_LENGTH)).into_response())?
                .to_string(),
        ),
        None => None,
    };
    let header_key = routing_header(headers).map_err(IntoResponse::into_response)?;
    // A model split between versions: the body's routing key (which wins over the header) must
    // be known before the version, and so the spec to decode against, is chosen.
    let (key, body) = if version.is_empty() && s.inference.registry.has_split(model) {
        let body = read_body(body, s.body).await?;
        let key = codec::routing_key(header_length.as_deref(), &body).map_err(IntoResponse::into_response)?;
        (key.or(header_key), Ok(body))
    } else {
        (header_key, Err(body))
    };
    let ticket = s
        .inference
        .begin(model, version, key.as_deref())
        .await
        .map_err(IntoResponse::into_response)?;
    let body = match body {
        Ok(read) => read,
        Err(body) => read_body(body, s.body).await?,
    };
    let spec = ticket.spec().clone();
    let size = body.len();
    let decoded = off_runtime(&s.codecs, size, move || {
        codec::decode(header_length.as_deref(), body, &spec)
    })
    .await;
    let (request, form) = decoded.map_err(|e| ticket.failed(e).into_response())?;
    let response = ticket.run(request).await.map_err(IntoResponse::into_response)?;
    let out_size: usize = response.outputs.iter().map(|t| t.data.len()).sum();
    let encoded = off_runtime(&s.codecs, out_size, move || codec::encode(response, &form))
        .await
        .map_err(IntoResponse::into_response)?;
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
