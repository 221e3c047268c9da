//! The footprint's walk: what it counts, and that it refuses what prost refuses.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Metric, ResourceMetrics, ScopeMetrics,
    metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use prost::Message;

use super::{Spans, decoded_footprint};
use crate::otlp::{Signal, kv_str};
use crate::split::tests::{logs_request, metrics_request, trace_request};

/// Decodes `bytes` as `R` (it must decode) and returns the footprint. Whether it bounds
/// what decoding allocates is checked against the allocator by the fuzz binary
/// (`integration-tests`, targets `footprint-*`), which measures allocations.
fn checked<R: Message + Default>(signal: Signal, bytes: &[u8]) -> usize {
    R::decode(bytes).expect("decodes");
    decoded_footprint(signal, bytes, Spans::Whole).expect("well-formed")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_footprint_counts_every_span(request in trace_request()) {
        let bytes = request.encode_to_vec();
        let spans: usize = request.resource_spans.iter()
            .flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        let footprint = checked::<ExportTraceServiceRequest>(Signal::Traces, &bytes);
        prop_assert!(footprint >= spans * 2 * size_of::<Span>());
    }

    #[test]
    fn the_footprint_counts_every_log_record(request in logs_request()) {
        let bytes = request.encode_to_vec();
        let records: usize = request.resource_logs.iter()
            .flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
        let footprint = checked::<ExportLogsServiceRequest>(Signal::Logs, &bytes);
        prop_assert!(footprint >= records * 2 * size_of::<LogRecord>());
    }

    #[test]
    fn the_footprint_counts_every_metric(request in metrics_request()) {
        let bytes = request.encode_to_vec();
        let metrics: usize = request.resource_metrics.iter()
            .flat_map(|r| &r.scope_metrics).map(|s| s.metrics.len()).sum();
        let footprint = checked::<ExportMetricsServiceRequest>(Signal::Metrics, &bytes);
        prop_assert!(footprint >= metrics * 2 * size_of::<Metric>());
    }
}

/// 100,000 empty log records: about 200 KB on the wire, tens of MB decoded. The footprint
/// must see the amplification (that is its point), not just bound it.
#[test]
fn empty_log_records_count_at_their_decoded_size() {
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default(); 100_000],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let bytes = request.encode_to_vec();
    let footprint = checked::<ExportLogsServiceRequest>(Signal::Logs, &bytes);
    assert!(bytes.len() < 300_000, "{}", bytes.len());
    assert!(footprint >= 100_000 * size_of::<LogRecord>(), "{footprint}");
    assert!(footprint > 50 * bytes.len(), "{footprint}");
}

/// Empty attributes in a resource, nested arrays, and a packed run of one-byte bucket
/// counts (eight bytes each once decoded).
#[test]
fn attributes_nesting_and_packed_counts_are_bounded() {
    let mut nested = AnyValue::default();
    for _ in 0..45 {
        nested = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![nested, AnyValue::default()],
            })),
        };
    }
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue::default(); 50_000],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(nested),
                    attributes: vec![kv_str("k", "v"); 1_000],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let footprint = checked::<ExportLogsServiceRequest>(Signal::Logs, &logs.encode_to_vec());
    assert!(footprint >= 50_000 * size_of::<KeyValue>() + 90 * size_of::<AnyValue>());
    let point = ExponentialHistogramDataPoint {
        positive: Some(Buckets {
            offset: 0,
            bucket_counts: vec![1; 200_000],
        }),
        ..Default::default()
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "m".into(),
                    data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                        data_points: vec![point; 3],
                        aggregation_temporality: 1,
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let footprint =
        checked::<ExportMetricsServiceRequest>(Signal::Metrics, &metrics.encode_to_vec());
    assert!(footprint >= 3 * 200_000 * 8, "{footprint}");
}

/// A log body of `levels` arrays, each holding the next.
fn nested_logs(levels: usize) -> Vec<u8> {
    let mut nested = AnyValue::default();
    for _ in 0..levels {
        nested = AnyValue {
            value: Some(Value::ArrayValue(ArrayValue {
                values: vec![nested],
            })),
        };
    }
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    body: Some(nested),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn nesting_is_refused_where_prost_refuses_it() {
    for levels in 40..60 {
        let bytes = nested_logs(levels);
        let prost = ExportLogsServiceRequest::decode(bytes.as_slice());
        let walk = decoded_footprint(Signal::Logs, &bytes, Spans::Whole);
        assert_eq!(prost.is_ok(), walk.is_ok(), "{levels} levels: {walk:?}");
        if let Err(error) = walk {
            assert!(error.to_string().contains("nested"), "{error}");
        }
    }
    let bytes = nested_logs(10);
    let truncated = &bytes[..bytes.len() - 1];
    assert!(decoded_footprint(Signal::Logs, truncated, Spans::Whole).is_err());
}

/// Slim spans leave attributes, events and links undecoded; the whole decode pays for them.
#[test]
fn slim_spans_cost_less_than_whole_ones() {
    let span = Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET /".into(),
        attributes: vec![kv_str("http.route", "/"); 20],
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![span; 100],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let bytes = request.encode_to_vec();
    let whole = checked::<ExportTraceServiceRequest>(Signal::Traces, &bytes);
    let slim = decoded_footprint(Signal::Traces, &bytes, Spans::Slim).unwrap();
    assert!(slim >= 100 * size_of::<Span>(), "{slim}");
    assert!(slim * 2 < whole, "slim {slim}, whole {whole}");
}
