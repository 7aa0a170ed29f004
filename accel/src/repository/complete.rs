//! Completing a model config from the model file, as Triton's auto-complete does: a model with no
//! config.pbtxt, or one that lists no inputs and outputs, gets them from the graph; a config that does
//! list them is checked against the graph, so that a mismatch makes the model UNAVAILABLE with a
//! reason instead of failing requests later.

use accel_proto::inference::{
    ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelOutput, model_config::SchedulingChoice,
    model_instance_group::Kind as GroupKind,
};

use crate::core::{DataType, GraphIo, Signature};

/// Fills in what `config` leaves out and checks the rest against `signature`.
///
/// `name` is the model's directory name; `default_max_batch_size` applies when the config sets no
/// inputs, no outputs and no max_batch_size, and every tensor of the graph has a variable first
/// dimension.
pub fn complete_config(
    config: &mut ModelConfig,
    name: &str,
    signature: &Signature,
    default_max_batch_size: usize,
) -> Result<(), String> {
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
    complete_list(&mut config.input, &signature.inputs, batching, "input")?;
    complete_list(&mut config.output, &signature.outputs, batching, "output")?;
    if config.instance_group.is_empty() {
        config.instance_group.push(ModelInstanceGroup {
            name: config.name.clone(),
            count: 1,
            kind: GroupKind::Cpu as i32,
            ..Default::default()
        });
    }
    Ok(())
}

/// What completion needs of `ModelInput` and `ModelOutput` alike.
trait ConfigTensor {
    fn from_graph(io: &GraphIo, dims: Vec<i64>) -> Self;
    fn name(&self) -> &str;
    fn data_type(&self) -> i32;
    fn dims(&self) -> &[i64];
    fn reshape(&self) -> Option<&[i64]>;
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
        }
    };
}
config_tensor!(ModelInput);
config_tensor!(ModelOutput);

/// Fills an empty input or output list from the graph, or checks a given one against it (every
/// graph input must then be declared too).
fn complete_list<T: ConfigTensor>(
    list: &mut Vec<T>,
    graph: &[GraphIo],
    batching: bool,
    what: &str,
) -> Result<(), String> {
    if list.is_empty() {
        *list = graph
            .iter()
            .map(|io| T::from_graph(io, config_dims(io, batching)))
            .collect();
        return Ok(());
    }
    for t in list.iter() {
        let io = find(graph, t.name(), what)?;
        check(t.name(), t.data_type(), t.dims(), t.reshape(), io, batching)?;
    }
    if what == "input"
        && let Some(io) = graph.iter().find(|io| !list.iter().any(|t| t.name() == io.name))
    {
        return Err(format!(
            "the model file has input '{}', which {} does not declare",
            io.name,
            super::CONFIG_FILE
        ));
    }
    Ok(())
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

fn check(
    name: &str,
    data_type: i32,
    dims: &[i64],
    reshape: Option<&[i64]>,
    graph: &GraphIo,
    batching: bool,
) -> Result<(), String> {
    let declared = DataType::from_config_value(data_type);
    if declared != Some(graph.datatype) {
        return Err(format!(
            "'{name}' is {} in {}, but {} in the model file",
            declared.map_or("an invalid type".to_string(), |d| d.to_string()),
            super::CONFIG_FILE,
            graph.datatype
        ));
    }
    let Some(graph_dims) = &graph.dims else {
        return Ok(());
    };
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
    Ok(())
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
}
