//! Shared harness for the Rust integration tests: ONNX models written with candle-onnx's protobuf
//! types, a model repository in a temporary directory, and the server started in-process on
//! 127.0.0.1:0 with an explicit shutdown.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::Path;

use accel::config::Cli;
use accel_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use candle_onnx::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension::Value as Dim},
    type_proto::{Tensor as TensorType, Value as TypeValue},
};
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const FLOAT: i32 = 1;
pub const INT32: i32 = 6;

/// A value description; `None` dims are symbolic.
pub fn value(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Dim::DimValue(*v),
                None => Dim::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(TensorType {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn float_initializer(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializer: Vec<TensorProto>,
) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Writes `<repo>/<name>/1/model.onnx` and, if given, `<repo>/<name>/config.pbtxt`.
pub fn add_model(repo: &Path, name: &str, model: &ModelProto, config: Option<&str>) {
    let dir = repo.join(name);
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("1").join("model.onnx"), model.encode_to_vec()).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("config.pbtxt"), c).unwrap();
    }
}

/// A server running in this process.
pub struct TestServer {
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Starts `accel serve` on the repository, on a free loopback port, and waits until it is ready.
    pub async fn start(repo: &Path, extra: &[&str]) -> TestServer {
        let mut args = vec![
            "accel",
            "serve",
            "--model-repository",
            repo.to_str().unwrap(),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--metrics-port",
            "0",
            "--metrics-address",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        let config = <Cli as clap::Parser>::try_parse_from(args)
            .unwrap()
            .command
            .serve()
            .unwrap();
        config.validate().unwrap();
        let registry = accel::server::registry(&config).unwrap();
        let listeners = accel::server::Listeners::bind(&config).await.unwrap();
        let url = format!("http://{}", listeners.grpc_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let exit = accel::server::run(&config, registry, listeners, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
            assert_eq!(exit, accel::server::Exit::Drained);
        });
        let server = TestServer {
            url,
            shutdown: Some(tx),
            task,
        };
        let mut client = server.client().await;
        for _ in 0..500 {
            let ready = client
                .server_ready(accel_proto::inference::ServerReadyRequest {})
                .await
                .unwrap()
                .into_inner()
                .ready;
            if ready {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("server not ready");
    }

    pub async fn client(&self) -> GrpcInferenceServiceClient<Channel> {
        for _ in 0..100 {
            if let Ok(c) = GrpcInferenceServiceClient::connect(self.url.clone()).await {
                return c;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("cannot connect to {}", self.url);
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}
