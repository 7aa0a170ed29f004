//! An inference request and response in protocol-neutral form.

use std::time::Duration;

use super::Tensor;

/// A request or tensor parameter value (the protocol's `InferParameter`).
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    String(String),
    Double(f64),
    Uint(u64),
}

impl ParamValue {
    /// The value as an integer, when it is one and fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            ParamValue::Int(v) => Some(*v),
            ParamValue::Uint(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ParamValue::Bool(v) => Some(*v),
            _ => None,
        }
    }
}

/// Parameters in the order the client sent them.
pub type Parameters = Vec<(String, ParamValue)>;

/// An output the client asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    pub parameters: Parameters,
}

/// One inference request, decoded but not yet validated against its model.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    pub model_name: String,
    /// Empty: the newest ready version.
    pub model_version: String,
    /// Echoed in the response.
    pub id: String,
    pub parameters: Parameters,
    pub inputs: Vec<Tensor>,
    /// Empty: every output.
    pub outputs: Vec<RequestedOutput>,
}

impl InferRequest {
    pub fn parameter(&self, name: &str) -> Option<&ParamValue> {
        self.parameters.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// One inference response.
#[derive(Clone, Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: String,
    pub outputs: Vec<Tensor>,
}

/// Scheduling options a request carries in its parameters (Triton's schedule-policy extension).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleOptions {
    /// 1 is the highest level; 0 or absent means the model's default level.
    pub priority: u64,
    /// Queue timeout requested by the client.
    pub timeout: Option<Duration>,
    /// The request's own latency target (`accel.slo_ms`): it may lower an SLO-mode model's target,
    /// never raise it; ignored by models without SLO mode.
    pub slo: Option<Duration>,
}

/// The request parameter that lowers an SLO-mode model's latency target, in milliseconds.
pub const SLO_MS_PARAMETER: &str = "accel.slo_ms";

/// The request parameter that pins a request to one version of a split (one user, one version).
pub const ROUTING_KEY_PARAMETER: &str = "accel.routing_key";
