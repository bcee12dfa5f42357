//! Traces across processes (issue 11, item 4).
//!
//! A small OTLP receiver (the collector's gRPC `TraceService`) runs in the
//! test. The test process is the client: it exports its own spans there
//! with every trace sampled. The nodes export there too, with
//! `--otlp-sample-ratio 0`: they start no trace of their own and export
//! only what the client's `traceparent` says is sampled. They log JSON and
//! log every request as slow (`server.slow-log-threshold = "0s"`).
//!
//! PD exports there as well, also with ratio 0.
//!
//! One put must yield one trace: the client's `raw_put` span; PD's
//! `GetRegion` span (the fresh client looks the key up) and the node's
//! `raw_put` server span, both its children (W3C trace context in gRPC
//! metadata); and under the node's span the raft stages `raft_propose`,
//! `raft_commit` and `raft_apply`. PD and the nodes export nothing outside
//! the client's traces, and the leader's JSON log line for the request
//! carries the trace id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mnemo_chaos::cluster::{wait_for, Cluster, ClusterConfig};
use mnemo_client::{Config, RawClient};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

/// One span as received: the exporting service and the span's ids.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

/// The OTLP receiver: keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(span.trace_id),
                    span_id: hex::encode(span.span_id),
                    parent_span_id: hex::encode(span.parent_span_id),
                });
            }
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    /// Serves on a free loopback port; returns its URL.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("OTLP receiver");
        });
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_put_is_one_trace_through_client_node_and_raft() {
    let collector = Collector::default();
    let endpoint = collector.serve().await;
    let every = mnemo_telemetry::TraceConfig { otlp_endpoint: Some(endpoint.clone()), sample_ratio: 1.0 };
    let telemetry =
        mnemo_telemetry::init("mnemo-test-client", "warn", false, &every).expect("client telemetry");
    assert!(mnemo_telemetry::exporting(), "the test process must export its spans");

    let mut cfg = ClusterConfig { nodes: 3, ..Default::default() };
    cfg.pd_toml = format!("otlp-endpoint = \"{endpoint}\"\notlp-sample-ratio = 0.0\n");
    cfg.node_toml.push_str("[server]\nslow-log-threshold = \"0s\"\n");
    cfg.node_args.extend(
        ["--otlp-endpoint", &endpoint, "--otlp-sample-ratio", "0", "--log-format", "json"].map(String::from),
    );
    let cluster = Cluster::start(cfg);
    cluster.wait_replicated(3, Duration::from_secs(60));

    // Unary calls: a BatchCommands stream carries no per-request metadata.
    let config = Config { batch_commands: false, ..Config::default() };
    let client = RawClient::with_config(vec![cluster.pd_endpoint()], config).await.unwrap();
    client.put(b"traced".to_vec(), b"v".to_vec()).await.unwrap();

    // The client's own span of the put names the trace.
    let root = wait_for("the client's raw_put span", Duration::from_secs(30), || {
        collector.spans().into_iter().find(|s| s.service == "mnemo-test-client" && s.name == "raw_put")
    });
    assert!(root.parent_span_id.is_empty(), "the client's put starts its trace: {root:?}");

    // Every stage arrives: the node's server span, child of the client's;
    // the raft stages, children of a node span.
    let wanted = ["raft_propose", "raft_commit", "raft_apply"];
    let trace = wait_for("the node's spans of the put", Duration::from_secs(30), || {
        let spans: Vec<Received> =
            collector.spans().into_iter().filter(|s| s.trace_id == root.trace_id).collect();
        let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        wanted.iter().all(|w| names.contains(w)).then_some(spans)
    });
    let servers: Vec<&Received> =
        trace.iter().filter(|s| s.service == "mnemo-node" && s.name == "raw_put").collect();
    assert!(!servers.is_empty(), "no node span of the put: {trace:#?}");
    for s in &servers {
        assert_eq!(s.parent_span_id, root.span_id, "a node's raw_put span is the client's child: {trace:#?}");
    }
    let server_ids: BTreeSet<&str> = servers.iter().map(|s| s.span_id.as_str()).collect();
    for stage in trace.iter().filter(|s| wanted.contains(&s.name.as_str())) {
        assert_eq!(stage.service, "mnemo-node", "{stage:?}");
        assert!(
            server_ids.contains(stage.parent_span_id.as_str()),
            "{} is a child of the node's raw_put span: {trace:#?}",
            stage.name
        );
    }

    // The fresh client looked the key's region up in PD within the put.
    let lookup = wait_for("PD's GetRegion span in the put's trace", Duration::from_secs(30), || {
        collector.spans().into_iter().find(|s| s.trace_id == root.trace_id && s.service == "mnemo-pd")
    });
    assert_eq!(lookup.name, "GetRegion", "{lookup:?}");
    assert_eq!(lookup.parent_span_id, root.span_id, "PD's span is the client's child: {lookup:?}");

    // One put, one trace: the servers sample nothing themselves (ratio 0),
    // so every span they exported belongs to the client's trace.
    let others: Vec<Received> = collector
        .spans()
        .into_iter()
        .filter(|s| s.service != "mnemo-test-client" && s.trace_id != root.trace_id)
        .collect();
    assert!(others.is_empty(), "PD or the nodes exported spans of other traces: {others:#?}");

    // The node that served the put logged it (every request is slow here)
    // as a JSON line carrying the trace id.
    let logged = wait_for("a JSON log line with the put's trace id", Duration::from_secs(10), || {
        std::fs::read_dir(cluster.root())
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('n'))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
            .find(|l| l.contains(&root.trace_id) && l.contains("slow request"))
    });
    eprintln!("the node's log line:\n{logged}");
    let line: serde_json::Value = serde_json::from_str(&logged).expect("the log line is JSON");
    assert_eq!(line["span"]["trace_id"], root.trace_id.as_str(), "{line}");
    assert_eq!(line["fields"]["request"], "raw_put", "{line}");

    let names: BTreeSet<(String, String)> =
        trace.iter().map(|s| (s.service.clone(), s.name.clone())).collect();
    eprintln!("the put's trace {}: {names:?}", root.trace_id);
    drop(cluster);
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();
}
