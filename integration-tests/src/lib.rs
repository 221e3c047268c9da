//! Harness for driving the real `otel-tail-sampler` binary from tests, the load
//! generator and the benchmark.
//!
//! Everything here talks to the sampler as a black box, the way an operator's
//! pipeline would: it writes a config file, starts the process, reads the start-up
//! banner for the ports it bound, sends OTLP with real clients and reads what came
//! out (the file exporter's OTLP JSON lines, or a real OTLP/gRPC [`sink::OtlpSink`]).
//! Every wait has a deadline and every process is killed when its handle drops, so
//! a failing test never hangs or leaks a sampler.

pub mod binary;
pub mod error;
pub mod export;
pub mod generate;
pub mod http_client;
pub mod load;
pub mod metrics_text;
pub mod procfs;
pub mod raw_grpc;
pub mod sampler;
pub mod sdk;
pub mod sink;
pub mod wait;

pub use error::HarnessError;
pub use export::ExportedData;
pub use sampler::SamplerProcess;
pub use sink::{OtlpSink, SinkMode};
