//! Completing a model config from the model file, as Triton's auto-complete does: a model with no
//! config.pbtxt, or one that lists no inputs and outputs, gets them from the graph; a config that does
//! list them is checked against the graph, so that a mismatch makes the model UNAVAILABLE with a
//! reason instead of failing requests later. As in Triton, `dims: [1]` also stands for a rank-0
//! (scalar) tensor, and for a batching model's tensor that has only the batch dimension.
//!
//! Inputs are strict. Outputs are not: exporters often declare output shapes that are wrong (a
//! sequence model declaring `[1, seqlen]` and producing `[32, 1, 8210]`), so where the config and
//! the graph disagree on an output's shape the config is trusted, with a warning, and the output is
//! checked against it at run time.

use accel_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelOutput, ModelTensorReshape,
    model_config::SchedulingChoice, model_instance_group::Kind as GroupKind,
};

use crate::core::{DataType, GraphIo, Signature};

/// Fills in what `config` leaves out and checks the rest against `signature`. Returns the outputs
/// whose shape the config states against the graph's (to be checked at run time).
///
/// `name` is the model's directory name; `default_max_batch_size` applies when the config sets no
/// inputs, no outputs and no max_batch_size, and every tensor of the graph has a variable first
/// dimension.
pub fn complete_config(
    config: &mut ModelConfig,
    name: &str,
    signature: &Signature,
    default_max_batch_size: usize,
) -> Result<Vec<String>, String> {
    if config.name.is_empty() {
        config.name = name.to_string();
    }
    let unconfigured = config.input.is_empty() && config.output.is_empty() && config.max_batch_size == 0;
    if unconfigured && default_max_batch_size > 0 && can_batch(signature) {
        config.max_batch_size = i32::try_from(default_max_batch_size).unwrap_or(i32::MAX);
        if config.scheduling_choice.is_none() {
            config.scheduling_choice = Some(SchedulingChoice::DynamicBatching(ModelDynamicBatching::default()));
        }
    }
    let batching = config.max_batch_size > 0;
    // Batch inputs are model inputs the server generates, never declared as inputs.
    let generated: Vec<String> = config.batch_input.iter().flat_map(|b| b.target_name.clone()).collect();
    let ragged: Vec<String> = config
        .input
        .iter()
        .filter(|i| i.allow_ragged_batch)
        .map(|i| i.name.clone())
        .collect();
    complete_list(
        &mut config.input,
        &signature.inputs,
        batching,
        "input",
        &generated,
        &ragged,
    )?;
    for target in &generated {
        find(&signature.inputs, target, "batch input")?;
    }
    // Scattered batch outputs come out of the model concatenated, like ragged inputs go in.
    let scattered: Vec<String> = config.batch_output.iter().flat_map(|b| b.target_name.clone()).collect();
    let trusted = complete_list(
        &mut config.output,
        &signature.outputs,
        batching,
        "output",
        &[],
        &scattered,
    )?;
    for name in &trusted {
        tracing::warn!(model = %config.name, output = %name, "config.pbtxt and the model file disagree on the shape of this output: the config is trusted, and the output is checked against it at run time");
    }
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup {
            name: config.name.clone(),
            count: 1,
            kind: GroupKind::Cpu as i32,
            ..Default::default()
        });
    }
    Ok(trusted)
}

/// What completion needs of `ModelInput` and `ModelOutput` alike.
trait ConfigTensor {
    fn from_graph(io: &GraphIo, dims: Vec<i64>) -> Self;
    fn name(&self) -> &str;
    fn data_type(&self) -> i32;
    fn dims(&self) -> &[i64];
    fn reshape(&self) -> Option<&[i64]>;
    fn set_reshape(&mut self, shape: Vec<i64>);
}

macro_rules! config_tensor {
    ($t:ty) => {
        impl ConfigTensor for $t {
            fn from_graph(io: &GraphIo, dims: Vec<i64>) -> Self {
                Self {
                    name: io.name.clone(),
                    data_type: io.datatype.config_value(),
                    dims,
                    ..Default::default()
                }
            }
            fn name(&self) -> &str {
                &self.name
            }
            fn data_type(&self) -> i32 {
                self.data_type
            }
            fn dims(&self) -> &[i64] {
                &self.dims
            }
            fn reshape(&self) -> Option<&[i64]> {
                self.reshape.as_ref().map(|r| &r.shape[..])
            }
            fn set_reshape(&mut self, shape: Vec<i64>) {
                self.reshape = Some(ModelTensorReshape { shape });
            }
        }
    };
}
config_tensor!(ModelInput);
config_tensor!(ModelOutput);

/// Fills an empty input or output list from the graph, or checks a given one against it (every
/// graph input must then be declared too). Returns the outputs whose config shape is trusted over
/// the graph's.
fn complete_list<T: ConfigTensor>(
    list: &mut Vec<T>,
    graph: &[GraphIo],
    batching: bool,
    what: &str,
    generated: &[String],
    one_d: &[String],
) -> Result<Vec<String>, String> {
    if list.is_empty() {
        *list = graph
            .iter()
            .filter(|io| !generated.contains(&io.name))
            .map(|io| T::from_graph(io, config_dims(io, batching)))
            .collect();
        return Ok(Vec::new());
    }
    let mut trusted = Vec::new();
    for t in list.iter_mut() {
        let io = find(graph, t.name(), what)?;
        check_type(t.name(), t.data_type(), io)?;
        if one_d.iter().any(|n| n == t.name()) {
            // Triton's rule: the engine sees a ragged input (and makes a scattered output) as one
            // 1-D tensor of every request's elements.
            if io.dims.as_ref().is_some_and(|d| d.len() != 1) {
                return Err(format!(
                    "ragged {what} '{}' must be 1-D in the model file (the batch's elements concatenated)",
                    t.name()
                ));
            }
            continue;
        }
        match check_shape(t.name(), t.dims(), t.reshape(), io, batching) {
            Ok(Shape::Same) => {}
            // `dims: [1]` for a rank-0 tensor: the engine sees the scalar, the client `[1]` (what
            // Triton's `reshape: { shape: [] }` says, written for the user).
            Ok(Shape::Scalar) => t.set_reshape(Vec::new()),
            Err(e) if what == "output" => {
                tracing::debug!(output = %t.name(), reason = %e, "output shape taken from the config");
                trusted.push(t.name().to_string());
            }
            Err(e) => return Err(e),
        }
    }
    if what == "input"
        && let Some(io) = graph
            .iter()
            .find(|io| !generated.contains(&io.name) && !list.iter().any(|t| t.name() == io.name))
    {
        return Err(format!(
            "the model file has input '{}', which {} does not declare",
            io.name,
            super::CONFIG_FILE
        ));
    }
    Ok(trusted)
}

/// Every tensor has a known rank of at least one and a variable first dimension.
fn can_batch(signature: &Signature) -> bool {
    let batchable = |io: &GraphIo| matches!(&io.dims, Some(d) if !d.is_empty() && d[0].is_none());
    !signature.inputs.is_empty() && signature.inputs.iter().all(batchable) && signature.outputs.iter().all(batchable)
}

fn config_dims(io: &GraphIo, batching: bool) -> Vec<i64> {
    // Unknown rank: one variable dimension is the most a config can say.
    let Some(dims) = io.dims.as_deref() else {
        return vec![-1];
    };
    let dims = if batching { dims.get(1..).unwrap_or(&[]) } else { dims };
    dims.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
}

fn find<'a>(list: &'a [GraphIo], name: &str, what: &str) -> Result<&'a GraphIo, String> {
    list.iter().find(|io| io.name == name).ok_or_else(|| {
        let names: Vec<_> = list.iter().map(|io| io.name.as_str()).collect();
        format!(
            "{} declares {what} '{name}', which the model file does not have (it has {names:?})",
            super::CONFIG_FILE
        )
    })
}

fn check_type(name: &str, data_type: i32, graph: &GraphIo) -> Result<(), String> {
    let declared = DataType::from_config_value(data_type);
    if declared != Some(graph.datatype) {
        return Err(format!(
            "'{name}' is {} in {}, but {} in the model file",
            declared.map_or("an invalid type".to_string(), |d| d.to_string()),
            super::CONFIG_FILE,
            graph.datatype
        ));
    }
    Ok(())
}

/// How a config's shape matches the graph's.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Same,
    /// `dims: [1]` (no reshape) for a rank-0 tensor of a model that does not batch.
    Scalar,
}

fn check_shape(
    name: &str,
    dims: &[i64],
    reshape: Option<&[i64]>,
    graph: &GraphIo,
    batching: bool,
) -> Result<Shape, String> {
    let Some(graph_dims) = &graph.dims else {
        return Ok(Shape::Same);
    };
    if !batching && reshape.is_none() && dims == [1] && graph_dims.is_empty() {
        return Ok(Shape::Scalar);
    }
    let graph_dims: &[Option<usize>] = if batching {
        match graph_dims.split_first() {
            Some((first, rest)) => {
                if first.is_some_and(|d| d != 1) || first.is_none() {
                    rest
                } else {
                    // A fixed first dimension of 1 cannot take batches larger than 1.
                    return Err(format!(
                        "'{name}' has a fixed first dimension of 1 in the model file, so max_batch_size must be 0"
                    ));
                }
            }
            None => {
                return Err(format!(
                    "'{name}' is a scalar in the model file, so max_batch_size must be 0"
                ));
            }
        }
    } else {
        graph_dims
    };
    let expected = reshape.unwrap_or(dims);
    // A batching model's tensor with nothing but the batch dimension is `dims: [1]` (Triton's rule).
    if batching && graph_dims.is_empty() && expected == [1] {
        return Ok(Shape::Same);
    }
    let compatible = expected.len() == graph_dims.len()
        && expected
            .iter()
            .zip(graph_dims)
            .all(|(&c, g)| c < 0 || g.is_none_or(|g| g as i64 == c));
    if !compatible {
        let shown: Vec<i64> = graph_dims.iter().map(|d| d.map_or(-1, |d| d as i64)).collect();
        return Err(format!(
            "'{name}' has dims {expected:?} in {}{}, but {shown:?} in the model file",
            super::CONFIG_FILE,
            if batching { " (without the batch dimension)" } else { "" }
        ));
    }
    Ok(Shape::Same)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(name: &str, dims: &[Option<usize>]) -> GraphIo {
        GraphIo {
            name: name.into(),
            datatype: DataType::F32,
            dims: Some(dims.to_vec()),
        }
    }

    #[test]
    fn completes_a_batchable_model_with_no_config() {
        let sig = Signature {
            inputs: vec![io("x", &[None, Some(4)])],
            outputs: vec![io("y", &[None, Some(2)])],
        };
        let mut config = ModelConfig::default();
        complete_config(&mut config, "m", &sig, 32).unwrap();
        assert_eq!(config.name, "m");
        assert_eq!(config.max_batch_size, 32);
        assert_eq!(config.input[0].dims, vec![4]);
        assert_eq!(config.output[0].dims, vec![2]);
        assert!(matches!(
            config.scheduling_choice,
            Some(SchedulingChoice::DynamicBatching(_))
        ));
    }

    #[test]
    fn fixed_first_dimension_means_no_batching() {
        let sig = Signature {
            inputs: vec![io("x", &[Some(1), Some(4)])],
            outputs: vec![io("y", &[None])],
        };
        let mut config = ModelConfig::default();
        complete_config(&mut config, "m", &sig, 32).unwrap();
        assert_eq!(config.max_batch_size, 0);
        assert_eq!(config.input[0].dims, vec![1, 4]);
        assert!(config.scheduling_choice.is_none());
    }

    #[test]
    fn config_is_checked_against_the_graph() {
        let sig = Signature {
            inputs: vec![io("x", &[None, Some(4)])],
            outputs: vec![io("y", &[None, Some(2)])],
        };
        let mut config = ModelConfig {
            max_batch_size: 8,
            input: vec![ModelInput {
                name: "x".into(),
                data_type: DataType::F32.config_value(),
                dims: vec![5],
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = complete_config(&mut config, "m", &sig, 32).unwrap_err();
        assert!(err.contains("[5]"), "{err}");
        config.input[0].dims = vec![4];
        config.input[0].data_type = DataType::I64.config_value();
        assert!(
            complete_config(&mut config, "m", &sig, 32)
                .unwrap_err()
                .contains("INT64")
        );
        config.input[0].data_type = DataType::F32.config_value();
        config.input[0].name = "z".into();
        assert!(complete_config(&mut config, "m", &sig, 32).unwrap_err().contains("'z'"));
    }

    #[test]
    fn outputs_trust_the_config_and_scalars_are_dims_one() {
        let sig = Signature {
            inputs: vec![io("x", &[])],
            outputs: vec![io("y", &[Some(1), Some(4)])],
        };
        let tensor = |name: &str, dims: Vec<i64>| ModelInput {
            name: name.into(),
            data_type: DataType::F32.config_value(),
            dims,
            ..Default::default()
        };
        let out = |dims: Vec<i64>| ModelOutput {
            name: "y".into(),
            data_type: DataType::F32.config_value(),
            dims,
            ..Default::default()
        };
        let mut config = ModelConfig {
            input: vec![tensor("x", vec![1])],
            output: vec![out(vec![3, 1, 5])],
            ..Default::default()
        };
        let trusted = complete_config(&mut config, "m", &sig, 32).unwrap();
        assert_eq!(trusted, vec!["y".to_string()]);
        // The scalar input is given to the engine as rank 0.
        assert_eq!(config.input[0].reshape.as_ref().map(|r| r.shape.clone()), Some(vec![]));
        // Inputs stay strict.
        config.input[0].reshape = None;
        config.input[0].dims = vec![2];
        assert!(complete_config(&mut config, "m", &sig, 32).is_err());
    }
}
