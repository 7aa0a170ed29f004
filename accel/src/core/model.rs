//! What a model is, as the request path sees it: its inputs and outputs, how requests to it are
//! scheduled, and how many instances execute it. Built by `repository` from config.pbtxt (or from the
//! model file when there is no config) and read by validation, the batcher and the metadata RPCs.

use std::sync::Arc;
use std::time::Duration;

use super::DataType;

/// One input or output of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub datatype: DataType,
    /// Without the batch dimension when the model batches; -1 marks a variable dimension.
    pub dims: Vec<i64>,
    /// The shape (without batch dimension) the backend sees instead of `dims`, if the config reshapes.
    pub reshape: Option<Vec<i64>>,
    /// An optional input may be left out of a request.
    pub optional: bool,
    /// An output whose shape the config states against the model file's: what the engine produces
    /// is checked against `dims` at run time.
    pub verify_shape: bool,
    /// An input that may differ in shape between the requests of a batch (Triton's
    /// `allow_ragged_batch`): the engine gets the requests' elements concatenated as one 1-D tensor.
    pub ragged: bool,
    /// An output's labels (its config's `label_filename`, one per line), for classification results.
    pub labels: Option<Arc<[String]>>,
}

impl IoSpec {
    /// `dims` as the protocol reports them: with a leading -1 for the batch dimension when batching.
    pub fn reported_shape(&self, batching: bool) -> Vec<i64> {
        let mut shape = Vec::with_capacity(self.dims.len() + 1);
        if batching {
            shape.push(-1);
        }
        shape.extend_from_slice(&self.dims);
        shape
    }
}

/// Where instances run. Only the CPU exists until the GPU path lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    Cpu,
    Gpu,
}

/// What happens to a request whose queue timeout expires (Triton's `ModelQueuePolicy.TimeoutAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutAction {
    /// Answer at once with UNAVAILABLE.
    Reject,
    /// Keep it, behind every request of its level that has not timed out.
    Delay,
}

/// The queue policy of one priority level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePolicy {
    pub timeout_action: TimeoutAction,
    /// Queue timeout for requests that set none; `None` means no timeout.
    pub default_timeout: Option<Duration>,
    /// Whether a request's `timeout` parameter may replace the default (it may only shorten it when a
    /// default exists).
    pub allow_timeout_override: bool,
    /// Requests beyond this many at this level are rejected with UNAVAILABLE; `None` = no level bound
    /// (the server-wide bound still applies).
    pub max_queue_size: Option<usize>,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            timeout_action: TimeoutAction::Reject,
            default_timeout: None,
            allow_timeout_override: false,
            max_queue_size: None,
        }
    }
}

/// Dynamic batching, with Triton's semantics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchingPolicy {
    /// Batch sizes sent as soon as they can be formed, ascending; empty means only `max_batch_size`.
    pub preferred_batch_sizes: Vec<usize>,
    /// How long the oldest request may wait for a batch to fill.
    pub max_queue_delay: Duration,
    /// Number of priority levels (1 = highest); at least 1.
    pub priority_levels: usize,
    /// Level of requests that give no priority (1-based).
    pub default_priority_level: usize,
    /// One policy per level, index 0 = level 1.
    pub queue_policies: Vec<QueuePolicy>,
    /// SLO mode: batches sized and timed to meet a latency target instead of a fixed delay (the
    /// delay and the preferred sizes are then ignored).
    pub slo: Option<SloPolicy>,
}

/// The config's `parameters` of SLO mode.
pub const SLO_MS: &str = "accel.slo_ms";
pub const SLO_PERCENTILE: &str = "accel.slo_percentile";
pub const SLO_HEADROOM: &str = "accel.slo_headroom";
pub const SLO_ACTION: &str = "accel.slo_action";

/// What SLO mode does with a request that can no longer meet its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SloAction {
    /// Answer UNAVAILABLE at once, saying why.
    Shed,
    /// Run it anyway, in batches as large as the model takes, to catch up.
    BestEffort,
}

/// A latency target at the server (queue + execution) for one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SloPolicy {
    pub target: Duration,
    /// The tail the target protects, in hundredths of a percent (9900 = p99): executions are
    /// predicted at this quantile of their measured spread.
    pub percentile_bp: u32,
    /// The share of the target held back for what the prediction does not see (decoding, sending),
    /// in hundredths of a percent.
    pub headroom_bp: u32,
    pub action: SloAction,
}

impl SloPolicy {
    /// The target a request plans against: the model's, or the request's own when lower, less the
    /// headroom.
    pub fn planned(&self, requested: Option<Duration>) -> Duration {
        let target = requested.map_or(self.target, |r| r.min(self.target));
        target.mul_f64(1.0 - f64::from(self.headroom_bp) / 10_000.0)
    }

    /// The target a request is answered against (its own when lower than the model's).
    pub fn target_of(&self, requested: Option<Duration>) -> Duration {
        requested.map_or(self.target, |r| r.min(self.target))
    }
}

impl Default for BatchingPolicy {
    fn default() -> Self {
        BatchingPolicy {
            preferred_batch_sizes: Vec::new(),
            max_queue_delay: Duration::ZERO,
            priority_levels: 1,
            default_priority_level: 1,
            queue_policies: vec![QueuePolicy::default()],
            slo: None,
        }
    }
}

/// How requests to a model are scheduled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduling {
    /// Every request executes alone, in arrival order (Triton's default scheduler).
    Direct,
    /// Requests are concatenated along the batch dimension (Triton's dynamic batcher).
    Dynamic(BatchingPolicy),
}

/// A model version as the request path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: u64,
    /// The platform string reported in metadata (e.g. `onnxruntime_onnx`).
    pub platform: String,
    /// Which backend executes it (e.g. `candle`).
    pub backend: String,
    /// 0: no batch dimension; otherwise the largest batch one execution takes.
    pub max_batch_size: usize,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    pub scheduling: Scheduling,
    pub instance_count: usize,
    pub instance_kind: InstanceKind,
    /// Batching across shapes: generated batch inputs, scattered batch outputs, padding.
    pub variable: VariableBatching,
}

impl ModelSpec {
    /// A spec that executes a model file directly, outside any server (benchmarks, the GPU check):
    /// every input and output the graph declares, any batch size, one instance.
    pub fn direct(signature: &Signature, backend: &str) -> ModelSpec {
        let io = |g: &GraphIo| IoSpec {
            name: g.name.clone(),
            datatype: g.datatype,
            dims: g
                .dims
                .clone()
                .unwrap_or_default()
                .iter()
                .skip(1)
                .map(|d| d.map_or(-1, |d| d as i64))
                .collect(),
            reshape: None,
            optional: false,
            verify_shape: false,
            ragged: false,
            labels: None,
        };
        ModelSpec {
            name: "direct".into(),
            version: 1,
            platform: String::new(),
            backend: backend.to_string(),
            max_batch_size: usize::MAX,
            inputs: signature.inputs.iter().map(io).collect(),
            outputs: signature.outputs.iter().map(io).collect(),
            scheduling: Scheduling::Direct,
            instance_count: 1,
            instance_kind: InstanceKind::Cpu,
            variable: VariableBatching::default(),
        }
    }

    /// Whether tensors of this model carry a leading batch dimension.
    pub fn batches(&self) -> bool {
        self.max_batch_size > 0
    }

    pub fn input(&self, name: &str) -> Option<&IoSpec> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&IoSpec> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// The inputs an engine is given, in [`crate::backend::Batch`] order: the model's inputs, then
    /// the generated batch inputs.
    pub fn engine_inputs(&self) -> impl Iterator<Item = (&str, DataType)> {
        self.inputs.iter().map(|i| (i.name.as_str(), i.datatype)).chain(
            self.variable
                .batch_inputs
                .iter()
                .map(|b| (b.target.as_str(), b.datatype)),
        )
    }
}

/// How one generated batch input describes the batch (Triton's `BatchInput.Kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchInputKind {
    /// Each request's element count of the source input: shape `[requests]`.
    ElementCount,
    /// The running total of those counts: shape `[requests]`.
    AccumulatedElementCount,
    /// The running total with a leading zero: shape `[requests + 1]`.
    AccumulatedElementCountWithZero,
    /// A tensor whose shape is `[largest element count]` (its data is zeros).
    MaxElementCountAsShape,
    /// Each batch item's shape of the source input (without the batch dimension): `[rows, rank]`.
    ItemShape,
    /// The same, flattened: `[rows * rank]`.
    ItemShapeFlatten,
}

/// A model input the server generates for each batch (Triton's `batch_input`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchInputSpec {
    pub kind: BatchInputKind,
    /// The model input it becomes.
    pub target: String,
    /// INT32, INT64 or FP32.
    pub datatype: DataType,
    /// Index of the model input it describes.
    pub source: usize,
}

/// Outputs that come back concatenated like a ragged input and are scattered back to the requests
/// by that input's shapes (Triton's `BATCH_SCATTER_WITH_INPUT_SHAPE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchOutputSpec {
    /// Indices of the outputs.
    pub targets: Vec<usize>,
    /// Index of the input whose per-request shape each request's output takes.
    pub source: usize,
}

/// The config's `parameters` that turn on padded batching.
pub const PADDED_INPUTS: &str = "accel.padded_inputs";
pub const PADDED_OUTPUTS: &str = "accel.padded_outputs";
pub const MAX_BATCH_TOKENS: &str = "accel.max_batch_tokens";
pub const MIN_PADDING_EFFICIENCY: &str = "accel.min_padding_efficiency";

/// The default of `accel.min_padding_efficiency`, in percent.
pub const DEFAULT_MIN_PADDING_EFFICIENCY: u32 = 80;

/// Requests of different lengths in one batch, padded to the batch's longest (config `parameters`
/// `accel.padded_inputs`, `accel.padded_outputs`, `accel.max_batch_tokens`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Padding {
    /// The padded inputs (indices) and the little-endian bytes of one pad element of each. The
    /// first one's variable dimensions are the request's tokens.
    pub inputs: Vec<(usize, Vec<u8>)>,
    /// Outputs whose variable dimensions follow the first padded input's: each request gets them
    /// cut back to its own sizes.
    pub outputs: Vec<usize>,
    /// The most padded tokens (rows × the longest) one batch may compute.
    pub max_batch_tokens: Option<usize>,
    /// Requests join a batch only while real tokens / computed tokens stays at least this many
    /// percent (`accel.min_padding_efficiency`; the oldest request is always sent).
    pub min_efficiency_percent: u32,
}

/// Batching across shapes, when the config asks for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VariableBatching {
    pub batch_inputs: Vec<BatchInputSpec>,
    pub batch_outputs: Vec<BatchOutputSpec>,
    pub padding: Option<Padding>,
}

impl VariableBatching {
    /// Whether the input at `index` may differ between the requests of a batch in its variable
    /// dimensions.
    pub fn is_padded(&self, index: usize) -> bool {
        self.padding
            .as_ref()
            .is_some_and(|p| p.inputs.iter().any(|(i, _)| *i == index))
    }
}

/// One input or output as the model file declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphIo {
    pub name: String,
    pub datatype: DataType,
    /// `None` for a symbolic or unknown dimension; `dims` is `None` when the rank is unknown.
    pub dims: Option<Vec<Option<usize>>>,
}

/// A model file's inputs and outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<GraphIo>,
    pub outputs: Vec<GraphIo>,
}
