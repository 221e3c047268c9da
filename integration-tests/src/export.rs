//! What the sampler exported, decoded into opentelemetry-proto requests — read from
//! the file exporter's OTLP JSON lines or recorded by the [`crate::sink::OtlpSink`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::HarnessError;

/// The attribute the sampler puts on every kept span.
pub const POLICY_ATTRIBUTE: &str = "tailsampling.policy";

/// Every export request seen, per signal, in arrival order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportedData {
    /// Trace export requests.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Log export requests.
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Metric export requests.
    pub metrics: Vec<ExportMetricsServiceRequest>,
}

/// A span with the resource it was exported under.
#[derive(Debug, Clone, Copy)]
pub struct ExportedSpan<'a> {
    /// The span's resource.
    pub resource: Option<&'a Resource>,
    /// The span.
    pub span: &'a Span,
}

impl ExportedSpan<'_> {
    /// Lower-case hex trace id.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The `tailsampling.policy` attribute, if set.
    pub fn policy(&self) -> Option<String> {
        attribute_str(&self.span.attributes, POLICY_ATTRIBUTE)
    }

    /// The `service.name` resource attribute, if set.
    pub fn service_name(&self) -> Option<String> {
        self.resource
            .and_then(|r| attribute_str(&r.attributes, "service.name"))
    }
}

impl ExportedData {
    /// Reads an OTLP JSON lines file (one export request per line). A missing file
    /// reads as nothing exported; an unterminated last line (a write in progress)
    /// is ignored.
    pub fn read_jsonl(path: &Path) -> Result<Self, HarnessError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(HarnessError::io(format!("reading {}", path.display()), e)),
        };
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        let mut data = Self::default();
        for (index, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            data.push_json_line(line)
                .map_err(|message| HarnessError::ExportLine {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message,
                })?;
        }
        Ok(data)
    }

    fn push_json_line(&mut self, line: &str) -> Result<(), String> {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        let object = value.as_object().ok_or("not a JSON object")?;
        if object.contains_key("resourceSpans") {
            self.traces
                .push(serde_json::from_value(value).map_err(|e| e.to_string())?);
        } else if object.contains_key("resourceLogs") {
            self.logs
                .push(serde_json::from_value(value).map_err(|e| e.to_string())?);
        } else if object.contains_key("resourceMetrics") {
            self.metrics
                .push(serde_json::from_value(value).map_err(|e| e.to_string())?);
        } else {
            return Err(format!(
                "no resourceSpans/resourceLogs/resourceMetrics key (keys: {:?})",
                object.keys().collect::<Vec<_>>()
            ));
        }
        Ok(())
    }

    /// Every exported span with its resource.
    pub fn spans(&self) -> Vec<ExportedSpan<'_>> {
        self.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| {
                rs.scope_spans.iter().flat_map(move |ss| {
                    ss.spans.iter().map(move |span| ExportedSpan {
                        resource: rs.resource.as_ref(),
                        span,
                    })
                })
            })
            .collect()
    }

    /// Exported spans grouped by hex trace id.
    pub fn spans_by_trace(&self) -> BTreeMap<String, Vec<ExportedSpan<'_>>> {
        let mut map: BTreeMap<String, Vec<ExportedSpan<'_>>> = BTreeMap::new();
        for span in self.spans() {
            map.entry(span.trace_id()).or_default().push(span);
        }
        map
    }

    /// Hex trace ids of every exported span.
    pub fn trace_ids(&self) -> BTreeSet<String> {
        self.spans().iter().map(ExportedSpan::trace_id).collect()
    }

    /// Number of exported spans.
    pub fn span_count(&self) -> usize {
        self.traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum()
    }

    /// Every exported log record.
    pub fn log_records(&self) -> Vec<&LogRecord> {
        self.logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
            .collect()
    }

    /// Every exported metric (one entry per metric per request).
    pub fn metrics_list(&self) -> Vec<&Metric> {
        self.metrics
            .iter()
            .flat_map(|r| &r.resource_metrics)
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .collect()
    }

    /// Number of exported metric data points, over every metric type.
    pub fn data_point_count(&self) -> usize {
        self.metrics_list().into_iter().map(data_points).sum()
    }

    /// Appends everything in `other`.
    pub fn extend(&mut self, other: ExportedData) {
        self.traces.extend(other.traces);
        self.logs.extend(other.logs);
        self.metrics.extend(other.metrics);
    }
}

/// Number of data points a metric carries.
pub fn data_points(metric: &Metric) -> usize {
    match &metric.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// The string value of attribute `key`, if present (non-string values are rendered).
pub fn attribute_str(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

/// Lower-case hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_collector_style_json_lines_and_skips_partial_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        let spans = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"GET","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000100000000","attributes":[{"key":"tailsampling.policy","value":{"stringValue":"errors"}}],"status":{"code":2}}]}]}]}"#;
        let logs = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"1","body":{"stringValue":"hi"}},{"body":{"stringValue":"again"}}]}]}]}"#;
        let metrics = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"m","gauge":{"dataPoints":[{"asInt":"3"},{"asDouble":1.5}]}}]}]}]}"#;
        std::fs::write(&path, format!("{spans}\n{logs}\n{metrics}\n{{\"resourceSp")).unwrap();
        let data = ExportedData::read_jsonl(&path).expect("decodes");
        assert_eq!(data.span_count(), 1);
        let span = data.spans()[0];
        assert_eq!(span.trace_id(), "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(span.policy().as_deref(), Some("errors"));
        assert_eq!(span.service_name().as_deref(), Some("cart"));
        assert_eq!(span.span.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(data.log_records().len(), 2);
        assert_eq!(data.data_point_count(), 2);
    }

    #[test]
    fn missing_file_is_empty_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = ExportedData::read_jsonl(&dir.path().join("none.jsonl")).unwrap();
        assert_eq!(missing, ExportedData::default());
        let path = dir.path().join("bad.jsonl");
        std::fs::write(&path, "{\"other\":1}\n").unwrap();
        let err = ExportedData::read_jsonl(&path).unwrap_err().to_string();
        assert!(err.contains("bad.jsonl:1"), "{err}");
    }
}
