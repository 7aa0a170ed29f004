//! The server in-process, driven by the generated gRPC client: inference results, status codes,
//! batching under concurrency, and a clean shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use accel_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelMetadataRequest, ModelStatisticsRequest,
    model_infer_request::InferInputTensor,
};
use bytes::Bytes;
use common::{FLOAT, INT32, TestServer, add_model, float_initializer, model, node, value};
use tonic::Code;

fn repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // INT32 add/sub with a batch dimension, no config: completed from the graph.
    let add_sub = model(
        vec![node("Add", &["a", "b"], &["sum"]), node("Sub", &["a", "b"], &["diff"])],
        vec![value("a", INT32, &[None, Some(4)]), value("b", INT32, &[None, Some(4)])],
        vec![
            value("sum", INT32, &[None, Some(4)]),
            value("diff", INT32, &[None, Some(4)]),
        ],
        vec![],
    );
    add_model(dir.path(), "add_sub", &add_sub, None);
    // y = x * w + 1 with a weight initializer, batched dynamically.
    let scale = model(
        vec![node("Mul", &["x", "w"], &["m"]), node("Add", &["m", "one"], &["y"])],
        vec![value("x", FLOAT, &[None, Some(3)])],
        vec![value("y", FLOAT, &[None, Some(3)])],
        vec![
            float_initializer("w", &[3], &[1.0, -2.0, 0.5]),
            float_initializer("one", &[], &[1.0]),
        ],
    );
    add_model(
        dir.path(),
        "scale",
        &scale,
        Some(
            r#"max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { max_queue_delay_microseconds: 2000 }
"#,
        ),
    );
    dir
}

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn i32_bytes(v: &[i32]) -> Bytes {
    Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_infer_metadata_errors_and_shutdown() {
    let repo = repository();
    let server = TestServer::start(repo.path(), &[]).await;
    let mut client = server.client().await;

    let meta = client
        .model_metadata(ModelMetadataRequest {
            name: "add_sub".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.inputs[0].shape, vec![-1, 4]);
    assert_eq!(meta.inputs[0].datatype, "INT32");

    // Raw contents.
    let req = ModelInferRequest {
        model_name: "add_sub".into(),
        id: "r1".into(),
        inputs: vec![input("a", "INT32", &[2, 4]), input("b", "INT32", &[2, 4])],
        raw_input_contents: vec![
            i32_bytes(&[1, 2, 3, 4, 5, 6, 7, i32::MAX]),
            i32_bytes(&[1, 1, 1, 1, 2, 2, 2, 1]),
        ],
        ..Default::default()
    };
    let resp = client.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.id, "r1");
    assert_eq!(resp.outputs[0].name, "sum");
    assert_eq!(resp.outputs[0].shape, vec![2, 4]);
    assert_eq!(resp.raw_output_contents[0], i32_bytes(&[2, 3, 4, 5, 7, 8, 9, i32::MIN]));
    assert_eq!(
        resp.raw_output_contents[1],
        i32_bytes(&[0, 1, 2, 3, 3, 4, 5, i32::MAX - 1])
    );

    // Typed contents.
    let mut x = input("x", "FP32", &[1, 3]);
    x.contents = Some(InferTensorContents {
        fp32_contents: vec![2.0, 2.0, 2.0],
        ..Default::default()
    });
    let req = ModelInferRequest {
        model_name: "scale".into(),
        inputs: vec![x],
        ..Default::default()
    };
    let resp = client.model_infer(req).await.unwrap().into_inner();
    assert_eq!(f32_values(&resp.raw_output_contents[0]), vec![3.0, -3.0, 2.0]);

    // Status codes.
    let unknown = ModelInferRequest {
        model_name: "nope".into(),
        ..Default::default()
    };
    assert_eq!(client.model_infer(unknown).await.unwrap_err().code(), Code::NotFound);
    let wrong = ModelInferRequest {
        model_name: "scale".into(),
        inputs: vec![input("x", "FP32", &[1, 4])],
        raw_input_contents: vec![Bytes::from(vec![0u8; 16])],
        ..Default::default()
    };
    let status = client.model_infer(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("'x'"), "{}", status.message());

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_concurrent_requests_share_executions() {
    let repo = repository();
    let server = TestServer::start(repo.path(), &[]).await;
    let client = server.client().await;
    let mut tasks = Vec::new();
    for k in 0..64 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let v = k as f32;
            let req = ModelInferRequest {
                model_name: "scale".into(),
                inputs: vec![input("x", "FP32", &[1, 3])],
                raw_input_contents: vec![Bytes::from(
                    [v, v, v].iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>(),
                )],
                ..Default::default()
            };
            let resp = client.model_infer(req).await.unwrap().into_inner();
            (k, f32_values(&resp.raw_output_contents[0]))
        }));
    }
    for t in tasks {
        let (k, y) = t.await.unwrap();
        let v = k as f32;
        assert_eq!(
            y,
            vec![v + 1.0, -2.0 * v + 1.0, 0.5 * v + 1.0],
            "request {k} got another request's rows"
        );
    }
    let mut client = client;
    let stats = client
        .model_statistics(ModelStatisticsRequest {
            name: "scale".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = &stats.model_stats[0];
    assert_eq!(s.inference_count, 64);
    assert!(
        s.execution_count < 64,
        "{} executions for 64 requests",
        s.execution_count
    );
    assert!(s.batch_stats.iter().all(|b| b.batch_size <= 8));
    server.stop().await;
}
