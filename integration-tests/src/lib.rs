//! Harness for driving the real `otel-tail-sampler` and `otel-tail-router` binaries
//! from tests, the load generator and the benchmarks.
//!
//! Everything here talks to the sampler as a black box, the way an operator's
//! pipeline would: it writes a config file, starts the process, reads the start-up
//! banner for the ports it bound, sends OTLP with real clients and reads what came
//! out (the file exporter's OTLP JSON lines, or a real OTLP/gRPC [`sink::OtlpSink`]).
//! Every wait has a deadline and every process is killed when its handle drops, so
//! a failing test never hangs or leaks a sampler. [`cluster::Cluster`] starts
//! several samplers and routers gossiping on 127.0.0.1 and exporting to one shared
//! sink that records which sampler exported what.

pub mod binary;
pub mod cluster;
pub mod completeness;
pub mod correlate;
pub mod error;
pub mod export;
pub mod fuzz;
pub mod generate;
pub mod helm;
pub mod http_client;
pub mod load;
pub mod metrics_text;
pub mod pki;
pub mod prerequisites;
pub mod process;
pub mod procfs;
pub mod python;
pub mod raw_grpc;
pub mod reduction;
pub mod router;
pub mod sampler;
pub mod sdk;
pub mod sink;
pub mod traffic;
pub mod wait;

pub use error::HarnessError;
pub use export::ExportedData;
pub use router::RouterProcess;
pub use sampler::SamplerProcess;
pub use sink::{OtlpSink, SinkMode};
