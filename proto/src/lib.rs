//! Protobuf messages that OTEL Tail Sampler nodes exchange (gossip, decisions, handoff),
//! compiled from `proto/otel_tail/v1/*.proto` by `build.rs` with a vendored `protoc`.
//! The standalone sampler does not use them yet; the cluster work does.
