//! Correlated retention measured end to end (see `docs/correlation-and-rollups.md`): a
//! workload of traces, logs and metric points whose correlation the sender can work out
//! itself, and the comparison of what the samplers exported — raw and marked, or rolled
//! up — with that ground truth.
//!
//! Every log record and data point the workload sends carries a unique
//! [`ITEM_ID_ATTRIBUTE`], so a raw export names the item it is. Given the traces that were
//! kept (read from the exported spans and their `tailsampling.policy`), the item's
//! expected fate follows from the documented rules, in this order:
//! - a log record whose trace id is a kept trace → raw, [`Reason::TraceId`];
//! - a data point with an exemplar of a kept trace → raw, [`Reason::Exemplar`];
//! - an item of one of the resources of a kept trace whose policy correlates by window,
//!   timed within `[first span start − before, last span end + after]` → raw,
//!   [`Reason::Window`];
//! - anything else → the summary path (a rolled-up log summary's `log.count`, or a
//!   rolled-up point's value).
//!
//! [`SignalCluster`] runs samplers and routers with the `correlation` and `rollup`
//! sections a test chooses, all exporting to one [`OtlpSink`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::cluster::{free_tcp_addrs, free_udp_addrs, sampler_members};
use crate::completeness::TraceKey;
use crate::export::{ExportedData, attribute_str};
use crate::generate::{Rng, kv_str};
use crate::load::connect;
use crate::sink::SOURCE_HEADER;
use crate::wait::poll_until;
use crate::{HarnessError, OtlpSink, RouterProcess, SamplerProcess, SinkMode};

/// Attribute carrying the unique id of every log record and data point sent.
pub const ITEM_ID_ATTRIBUTE: &str = "test.item_id";
/// Attribute the sampler puts on an item kept raw; its value is a [`Reason`].
pub const CORRELATED_ATTRIBUTE: &str = "otel_tail.correlated";
/// Attribute (`true`) on rolled-up log summaries and metric points.
pub const ROLLUP_ATTRIBUTE: &str = "otel_tail.rollup";
/// Attribute of a rolled-up log summary: how many records it stands for.
pub const LOG_COUNT_ATTRIBUTE: &str = "log.count";
/// The delta counter every workload data point belongs to (each point has value 1).
pub const TEST_METRIC: &str = "test.correlation.requests";
/// `service.namespace` of every workload resource.
pub const NAMESPACE: &str = "correlation-it";
/// Gauge of items held for correlation on one sampler.
pub const HELD_ITEMS: &str = "otel_tail_held_items";

/// Why an item is exported raw (the values of [`CORRELATED_ATTRIBUTE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A log record of a kept trace.
    TraceId,
    /// A data point with an exemplar of a kept trace.
    Exemplar,
    /// Same resource as a window-correlating kept trace, within its widened window.
    Window,
}

impl Reason {
    /// Every reason, in report order.
    pub const ALL: [Reason; 3] = [Reason::TraceId, Reason::Exemplar, Reason::Window];

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TraceId => "trace_id",
            Reason::Exemplar => "exemplar",
            Reason::Window => "window",
        }
    }

    /// Reads an attribute value.
    pub fn parse(value: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == value)
    }
}

/// How far window correlation widens a kept trace's span (`correlation.before` / `after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widening {
    /// Before the first span's start.
    pub before: Duration,
    /// After the last span's end.
    pub after: Duration,
}

/// A resource as window correlation identifies it: `service.name` plus the first present
/// of `service.instance.id`, `k8s.pod.name`, `host.name`. The workload sets
/// `service.instance.id`; a resource with none of the three (an SDK's default resource)
/// has an empty instance, and all such resources of a service are one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// `service.name`.
    pub service: String,
    /// The instance attribute's value; empty when the resource has none.
    pub instance: String,
}

impl Identity {
    /// Instance `instance` of service `service` (`svc-07`, `svc-07-2`).
    pub fn new(service: usize, instance: usize) -> Identity {
        Identity {
            service: format!("svc-{service:02}"),
            instance: format!("svc-{service:02}-{instance}"),
        }
    }

    /// A service whose resources carry no instance attribute.
    pub fn service_only(service: &str) -> Identity {
        Identity {
            service: service.into(),
            instance: String::new(),
        }
    }

    /// The OTLP resource: identity, namespace and an SDK attribute.
    pub fn resource(&self) -> Resource {
        let mut attributes = vec![kv_str("service.name", &self.service)];
        if !self.instance.is_empty() {
            attributes.push(kv_str("service.instance.id", &self.instance));
        }
        attributes.push(kv_str("service.namespace", NAMESPACE));
        attributes.push(kv_str("telemetry.sdk.language", "rust"));
        Resource {
            attributes,
            ..Default::default()
        }
    }
}

/// What the ground truth needs of a sent trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentTrace {
    /// Whether a span has status ERROR.
    pub error: bool,
    /// Earliest span start, unix nanoseconds.
    pub start: u64,
    /// Latest span end, unix nanoseconds.
    pub end: u64,
    /// Identities of its spans' resources.
    pub identities: BTreeSet<Identity>,
}

/// A log record or a data point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A log record.
    Log,
    /// A data point of [`TEST_METRIC`] with value 1.
    Point,
}

/// What the ground truth needs of a sent item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentItem {
    /// Log or point.
    pub kind: ItemKind,
    /// Its resource's identity; `None` when the resource has none of the identity
    /// attributes (it never window-matches).
    pub identity: Option<Identity>,
    /// Its time, unix nanoseconds (0: unknown, never window-matches).
    pub time: u64,
    /// A log record's trace id.
    pub trace_id: Option<TraceKey>,
    /// A data point's exemplar trace id.
    pub exemplar: Option<TraceKey>,
}

/// Everything sent, by trace id and by item id.
#[derive(Debug, Clone, Default)]
pub struct SentSignals {
    traces: BTreeMap<TraceKey, SentTrace>,
    items: BTreeMap<String, SentItem>,
    next_item: u64,
}

impl SentSignals {
    /// Records a sent trace.
    pub fn add_trace(&mut self, id: TraceKey, trace: SentTrace) {
        self.traces.insert(id, trace);
    }

    /// Records a sent item and returns its new unique id (`L…` for logs, `P…` for points).
    pub fn add_item(&mut self, item: SentItem) -> String {
        self.next_item += 1;
        let prefix = match item.kind {
            ItemKind::Log => 'L',
            ItemKind::Point => 'P',
        };
        let id = format!("{prefix}{:06}", self.next_item);
        self.items.insert(id.clone(), item);
        id
    }

    /// Every sent trace.
    pub fn traces(&self) -> &BTreeMap<TraceKey, SentTrace> {
        &self.traces
    }

    /// Every sent item.
    pub fn items(&self) -> &BTreeMap<String, SentItem> {
        &self.items
    }

    /// Ids of the traces with an ERROR span.
    pub fn error_traces(&self) -> BTreeSet<TraceKey> {
        self.traces
            .iter()
            .filter(|(_, t)| t.error)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Items of `kind` sent.
    pub fn count(&self, kind: ItemKind) -> u64 {
        self.items.values().filter(|i| i.kind == kind).count() as u64
    }

    /// The expected fate of `item` (`None`: summary path) and the kept traces it
    /// correlates with, given the kept traces (trace id → whether its policy correlates
    /// by window).
    pub fn fate(
        &self,
        item: &SentItem,
        kept: &BTreeMap<TraceKey, bool>,
        widening: Widening,
    ) -> (Option<Reason>, Vec<TraceKey>) {
        let kept_one = |id: Option<TraceKey>| id.filter(|id| kept.contains_key(id));
        if let Some(trace) = kept_one(item.trace_id) {
            return (Some(Reason::TraceId), vec![trace]);
        }
        if let Some(trace) = kept_one(item.exemplar) {
            return (Some(Reason::Exemplar), vec![trace]);
        }
        let Some(identity) = item.identity.as_ref().filter(|_| item.time != 0) else {
            return (None, Vec::new());
        };
        let windows: Vec<TraceKey> = kept
            .iter()
            .filter(|(_, window)| **window)
            .filter(|(id, _)| {
                self.traces.get(*id).is_some_and(|t| {
                    t.identities.contains(identity)
                        && t.start.saturating_sub(nanos(widening.before)) <= item.time
                        && item.time <= t.end.saturating_add(nanos(widening.after))
                })
            })
            .map(|(id, _)| *id)
            .collect();
        let reason = (!windows.is_empty()).then_some(Reason::Window);
        (reason, windows)
    }

    /// The expected fate of every item by id; see [`SentSignals::fate`].
    pub fn expected(
        &self,
        kept: &BTreeMap<TraceKey, bool>,
        widening: Widening,
    ) -> BTreeMap<&str, Option<Reason>> {
        self.items
            .iter()
            .map(|(id, item)| (id.as_str(), self.fate(item, kept, widening).0))
            .collect()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Kept traces read from exported spans: trace id → the `tailsampling.policy` of its
/// spans (the first one seen).
pub fn kept_traces(data: &ExportedData) -> BTreeMap<TraceKey, String> {
    let mut kept = BTreeMap::new();
    for span in data.spans() {
        if let Ok(id) = TraceKey::try_from(span.span.trace_id.as_slice()) {
            kept.entry(id)
                .or_insert_with(|| span.policy().unwrap_or_default());
        }
    }
    kept
}

/// What came out: raw items by id, and the totals of the summary path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Raw item id → the reason of every raw copy (`None`: unmarked).
    pub raw: BTreeMap<String, Vec<Option<Reason>>>,
    /// Raw log records and points without an item id (not sent by the workload).
    pub raw_without_id: u64,
    /// Raw log records.
    pub raw_logs: u64,
    /// Sum of `log.count` over rolled-up summary records.
    pub summarised_logs: u64,
    /// Raw points of [`TEST_METRIC`].
    pub raw_points: u64,
    /// Sum of the values of raw points of [`TEST_METRIC`].
    pub raw_point_value: f64,
    /// Sum of the values of rolled-up points of [`TEST_METRIC`].
    pub summarised_point_value: f64,
}

fn is_rollup(attributes: &[KeyValue]) -> bool {
    attribute_str(attributes, ROLLUP_ATTRIBUTE).as_deref() == Some("true")
}

fn number(point: &NumberDataPoint) -> f64 {
    match point.value {
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        Some(number_data_point::Value::AsDouble(v)) => v,
        None => 0.0,
    }
}

impl Observed {
    /// Reads everything exported. Only [`TEST_METRIC`] counts among metrics (the log
    /// rollup's `log.records` counter is not a workload item).
    pub fn read(data: &ExportedData) -> Observed {
        let mut observed = Observed::default();
        for record in data.log_records() {
            if is_rollup(&record.attributes) {
                let count = attribute_str(&record.attributes, LOG_COUNT_ATTRIBUTE)
                    .and_then(|c| c.parse::<u64>().ok())
                    .unwrap_or(0);
                observed.summarised_logs += count;
            } else {
                observed.raw_logs += 1;
                observed.raw_item(&record.attributes);
            }
        }
        for metric in data.metrics_list() {
            if metric.name != TEST_METRIC {
                continue;
            }
            let Some(metric::Data::Sum(sum)) = &metric.data else {
                continue;
            };
            for point in &sum.data_points {
                if is_rollup(&point.attributes) {
                    observed.summarised_point_value += number(point);
                } else {
                    observed.raw_points += 1;
                    observed.raw_point_value += number(point);
                    observed.raw_item(&point.attributes);
                }
            }
        }
        observed
    }

    fn raw_item(&mut self, attributes: &[KeyValue]) {
        match attribute_str(attributes, ITEM_ID_ATTRIBUTE) {
            Some(id) => {
                let reason = attribute_str(attributes, CORRELATED_ATTRIBUTE)
                    .as_deref()
                    .and_then(Reason::parse);
                self.raw.entry(id).or_default().push(reason);
            }
            None => self.raw_without_id += 1,
        }
    }

    /// Log records accounted for: raw plus summarised.
    pub fn logs_out(&self) -> u64 {
        self.raw_logs + self.summarised_logs
    }

    /// Point values accounted for: raw plus summarised (each sent point has value 1).
    pub fn point_value_out(&self) -> f64 {
        self.raw_point_value + self.summarised_point_value
    }
}

/// Recall and precision of one reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Score {
    /// Items expected raw for this reason.
    pub expected: u64,
    /// Raw copies exported with this reason.
    pub exported: u64,
    /// Expected items exported raw with this reason.
    pub matched: u64,
}

impl Score {
    /// `matched / expected` (1 when nothing was expected).
    pub fn recall(&self) -> f64 {
        ratio(self.matched, self.expected)
    }

    /// `matched / exported` (1 when nothing was exported).
    pub fn precision(&self) -> f64 {
        ratio(self.matched, self.exported)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

/// The comparison of what was exported with what was expected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assessment {
    /// Per reason.
    pub scores: BTreeMap<Reason, Score>,
    /// Items expected on the summary path.
    pub expected_summary: u64,
    /// Item ids exported raw more than once.
    pub duplicated: Vec<String>,
    /// Item ids exported raw although expected on the summary path.
    pub unexpected: Vec<String>,
    /// Item ids exported raw with another reason than expected, or unmarked.
    pub mislabelled: Vec<String>,
    /// Item ids expected raw but not exported raw, with the reason expected.
    pub missed: Vec<(String, Reason)>,
    /// Raw items whose id was never sent (or that have none).
    pub unknown: u64,
    /// Log records sent.
    pub logs_sent: u64,
    /// Log records accounted for (raw + summarised).
    pub logs_out: u64,
    /// Points sent.
    pub points_sent: u64,
    /// Point values accounted for (raw + summarised).
    pub points_out: f64,
    /// Raw log records, raw points.
    pub raw: (u64, u64),
}

impl Assessment {
    /// Compares `observed` with the fate `sent` items should have had, given the kept
    /// traces (trace id → whether it correlates by window).
    pub fn new(
        sent: &SentSignals,
        observed: &Observed,
        kept: &BTreeMap<TraceKey, bool>,
        widening: Widening,
    ) -> Assessment {
        let expected = sent.expected(kept, widening);
        let mut a = Assessment {
            scores: Reason::ALL
                .into_iter()
                .map(|r| (r, Score::default()))
                .collect(),
            logs_sent: sent.count(ItemKind::Log),
            logs_out: observed.logs_out(),
            points_sent: sent.count(ItemKind::Point),
            points_out: observed.point_value_out(),
            raw: (observed.raw_logs, observed.raw_points),
            unknown: observed.raw_without_id,
            ..Assessment::default()
        };
        for (id, reason) in &expected {
            let copies = observed.raw.get(*id).map(Vec::as_slice).unwrap_or_default();
            match reason {
                Some(r) => {
                    let score = a.scores.entry(*r).or_default();
                    score.expected += 1;
                    if copies.contains(&Some(*r)) {
                        score.matched += 1;
                    } else {
                        a.missed.push((id.to_string(), *r));
                    }
                }
                None => {
                    a.expected_summary += 1;
                    if !copies.is_empty() {
                        a.unexpected.push(id.to_string());
                    }
                }
            }
            if reason.is_some() && copies.iter().any(|c| c != reason) {
                a.mislabelled.push(id.to_string());
            }
        }
        for (id, copies) in &observed.raw {
            if copies.len() > 1 {
                a.duplicated.push(id.clone());
            }
            if !expected.contains_key(id.as_str()) {
                a.unknown += copies.len() as u64;
            }
            for reason in copies.iter().flatten() {
                a.scores.entry(*reason).or_default().exported += 1;
            }
        }
        a
    }

    /// The score of `reason`.
    pub fn score(&self, reason: Reason) -> Score {
        self.scores.get(&reason).copied().unwrap_or_default()
    }
}

impl fmt::Display for Assessment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (reason, s) in &self.scores {
            writeln!(
                f,
                "  {:<9} expected {:>4}  exported {:>4}  matched {:>4}  recall {:>7.3}%  precision {:>7.3}%",
                reason.as_str(),
                s.expected,
                s.exported,
                s.matched,
                100.0 * s.recall(),
                100.0 * s.precision()
            )?;
        }
        writeln!(
            f,
            "  summary   expected {:>4}  unexpected raw {}  mislabelled {}  duplicated {}  unknown raw {}",
            self.expected_summary,
            self.unexpected.len(),
            self.mislabelled.len(),
            self.duplicated.len(),
            self.unknown
        )?;
        write!(
            f,
            "  totals    logs sent {} out {} (raw {}); points sent {} out {} (raw {})",
            self.logs_sent,
            self.logs_out,
            self.raw.0,
            self.points_sent,
            self.points_out,
            self.raw.1
        )?;
        if !self.missed.is_empty() {
            let shown: Vec<String> = self
                .missed
                .iter()
                .take(10)
                .map(|(id, r)| format!("{id}:{}", r.as_str()))
                .collect();
            write!(f, "\n  missed    {}", shown.join(" "))?;
        }
        Ok(())
    }
}

/// One span of a built trace: its resource and the span.
pub type PlacedSpan = (Identity, Span);

/// A span with the given ids and times, status ERROR when `error`.
pub fn span(
    trace_id: TraceKey,
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &str,
    (start, end): (u64, u64),
    error: bool,
) -> Span {
    Span {
        trace_id: trace_id.to_vec(),
        span_id: span_id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: name.into(),
        kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        status: error.then(|| Status {
            message: "upstream failed".into(),
            code: status::StatusCode::Error as i32,
        }),
        ..Default::default()
    }
}

/// The requests of one send: spans, logs and points grouped by resource.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    /// Spans.
    pub traces: ExportTraceServiceRequest,
    /// Log records.
    pub logs: ExportLogsServiceRequest,
    /// Data points of [`TEST_METRIC`].
    pub metrics: ExportMetricsServiceRequest,
}

/// Builds one send's requests and records everything in a [`SentSignals`].
pub struct Batch<'a> {
    sent: &'a mut SentSignals,
    spans: BTreeMap<Identity, Vec<Span>>,
    logs: BTreeMap<Identity, Vec<LogRecord>>,
    points: BTreeMap<Identity, Vec<NumberDataPoint>>,
}

impl<'a> Batch<'a> {
    /// An empty batch recording into `sent`.
    pub fn new(sent: &'a mut SentSignals) -> Batch<'a> {
        Batch {
            sent,
            spans: BTreeMap::new(),
            logs: BTreeMap::new(),
            points: BTreeMap::new(),
        }
    }

    /// Adds a whole trace (every span has the same trace id).
    pub fn trace(&mut self, id: TraceKey, spans: Vec<PlacedSpan>) {
        let trace = SentTrace {
            error: spans.iter().any(|(_, s)| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == status::StatusCode::Error as i32)
            }),
            start: spans
                .iter()
                .map(|(_, s)| s.start_time_unix_nano)
                .min()
                .unwrap_or(0),
            end: spans
                .iter()
                .map(|(_, s)| s.end_time_unix_nano.max(s.start_time_unix_nano))
                .max()
                .unwrap_or(0),
            identities: spans.iter().map(|(i, _)| i.clone()).collect(),
        };
        self.sent.add_trace(id, trace);
        for (identity, span) in spans {
            self.spans.entry(identity).or_default().push(span);
        }
    }

    /// Adds a log record of `identity` at `time` with `body`, of span `context` when
    /// given; returns its item id.
    pub fn log(
        &mut self,
        identity: &Identity,
        time: u64,
        body: String,
        context: Option<(TraceKey, [u8; 8])>,
    ) -> String {
        let id = self.sent.add_item(SentItem {
            kind: ItemKind::Log,
            identity: Some(identity.clone()),
            time,
            trace_id: context.map(|(t, _)| t),
            exemplar: None,
        });
        let severity = if body.contains("failed") {
            SeverityNumber::Error
        } else {
            SeverityNumber::Info
        };
        self.logs
            .entry(identity.clone())
            .or_default()
            .push(LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time,
                severity_number: severity as i32,
                severity_text: severity
                    .as_str_name()
                    .trim_start_matches("SEVERITY_NUMBER_")
                    .into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(body)),
                }),
                attributes: vec![kv_str(ITEM_ID_ATTRIBUTE, &id)],
                trace_id: context.map(|(t, _)| t.to_vec()).unwrap_or_default(),
                span_id: context.map(|(_, s)| s.to_vec()).unwrap_or_default(),
                ..Default::default()
            });
        id
    }

    /// Adds a delta point of [`TEST_METRIC`] with value 1 of `identity` at `time`, with
    /// an exemplar of span `exemplar` when given; returns its item id.
    pub fn point(
        &mut self,
        identity: &Identity,
        time: u64,
        exemplar: Option<(TraceKey, [u8; 8])>,
    ) -> String {
        let id = self.sent.add_item(SentItem {
            kind: ItemKind::Point,
            identity: Some(identity.clone()),
            time,
            trace_id: None,
            exemplar: exemplar.map(|(t, _)| t),
        });
        self.points
            .entry(identity.clone())
            .or_default()
            .push(NumberDataPoint {
                attributes: vec![kv_str(ITEM_ID_ATTRIBUTE, &id)],
                start_time_unix_nano: time.saturating_sub(1_000_000_000),
                time_unix_nano: time,
                value: Some(number_data_point::Value::AsInt(1)),
                exemplars: exemplar
                    .map(|(trace, span)| Exemplar {
                        time_unix_nano: time,
                        span_id: span.to_vec(),
                        trace_id: trace.to_vec(),
                        value: Some(exemplar::Value::AsInt(1)),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            });
        id
    }

    /// The requests, one resource entry per identity.
    pub fn finish(self) -> Requests {
        let scope = Some(InstrumentationScope {
            name: "correlation-it".into(),
            ..Default::default()
        });
        Requests {
            traces: ExportTraceServiceRequest {
                resource_spans: self
                    .spans
                    .into_iter()
                    .map(|(identity, spans)| ResourceSpans {
                        resource: Some(identity.resource()),
                        scope_spans: vec![ScopeSpans {
                            scope: scope.clone(),
                            spans,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    })
                    .collect(),
            },
            logs: ExportLogsServiceRequest {
                resource_logs: self
                    .logs
                    .into_iter()
                    .map(|(identity, log_records)| ResourceLogs {
                        resource: Some(identity.resource()),
                        scope_logs: vec![ScopeLogs {
                            scope: scope.clone(),
                            log_records,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    })
                    .collect(),
            },
            metrics: ExportMetricsServiceRequest {
                resource_metrics: self
                    .points
                    .into_iter()
                    .map(|(identity, data_points)| ResourceMetrics {
                        resource: Some(identity.resource()),
                        scope_metrics: vec![ScopeMetrics {
                            scope: scope.clone(),
                            metrics: vec![Metric {
                                name: TEST_METRIC.into(),
                                unit: "{request}".into(),
                                data: Some(metric::Data::Sum(Sum {
                                    data_points,
                                    aggregation_temporality: AggregationTemporality::Delta as i32,
                                    is_monotonic: true,
                                })),
                                ..Default::default()
                            }],
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    })
                    .collect(),
            },
        }
    }
}

/// Shape of a [`Workload`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkloadShape {
    /// Services (`svc-00`…).
    pub services: usize,
    /// Instances per service.
    pub instances: usize,
    /// Traces per round.
    pub traces_per_round: usize,
    /// Share of traces with an ERROR span.
    pub error_share: f64,
    /// Trace-less log records per round at random resources and times.
    pub background_logs_per_round: usize,
    /// Data points per round at random resources and times.
    pub points_per_round: usize,
    /// Share of those points with an exemplar of a trace of the round.
    pub exemplar_share: f64,
    /// How far back background items' times reach.
    pub lookback: Duration,
    /// The samplers' window widening; an error trace's in-window items fall inside it.
    pub widening: Widening,
}

/// Rounds of traffic over many resources: traces (some with an ERROR span) with logs
/// carrying their trace ids; for each error trace, trace-less logs and points of its
/// resources inside its widened window; background trace-less logs and points at random
/// resources and recent times (mostly outside every window), some points with an exemplar
/// of a trace of the round.
pub struct Workload {
    rng: Rng,
    shape: WorkloadShape,
    sent: SentSignals,
}

const BODIES: [&str; 4] = [
    "GET /api/items/{} returned 200",
    "cache miss for key user:{}",
    "request failed: upstream reset after {} bytes",
    "queue depth {} above threshold",
];

impl Workload {
    /// A workload for `seed`.
    pub fn new(seed: u64, shape: WorkloadShape) -> Workload {
        Workload {
            rng: Rng::new(Rng::new(seed).next_u64()),
            shape,
            sent: SentSignals::default(),
        }
    }

    /// What was sent so far; SDK traffic sent alongside is recorded here too.
    pub fn sent_mut(&mut self) -> &mut SentSignals {
        &mut self.sent
    }

    /// What was sent.
    pub fn sent(&self) -> &SentSignals {
        &self.sent
    }

    fn identity(&mut self) -> Identity {
        Identity::new(
            self.rng.below(self.shape.services),
            self.rng.below(self.shape.instances),
        )
    }

    fn between(&mut self, from: u64, to: u64) -> u64 {
        from + self.rng.next_u64() % (to.saturating_sub(from) + 1)
    }

    fn body(&mut self) -> String {
        let template = BODIES[self.rng.below(BODIES.len())];
        template.replace("{}", &self.rng.below(100_000).to_string())
    }

    fn id8(&mut self) -> [u8; 8] {
        (self.rng.next_u64() | 1).to_be_bytes()
    }

    /// One round's requests, every trace ending just before `now` (unix nanoseconds).
    pub fn round(&mut self, now: u64) -> Requests {
        let shape = self.shape;
        let ms = 1_000_000u64;
        let mut traces: Vec<(TraceKey, Vec<PlacedSpan>)> = Vec::new();
        for _ in 0..shape.traces_per_round {
            let id: TraceKey = self.rng.trace_id().try_into().expect("16-byte trace ids");
            let error = self.rng.next_f64() < shape.error_share;
            let count = 2 + self.rng.below(3);
            let error_at = self.rng.below(count);
            let end = now - self.between(ms, 20 * ms);
            let start = end - self.between(20 * ms, 300 * ms);
            let mut spans: Vec<PlacedSpan> = Vec::with_capacity(count);
            let root = self.id8();
            for i in 0..count {
                let identity = self.identity();
                let (span_id, parent, times) = if i == 0 {
                    (root, None, (start, end))
                } else {
                    let s = self.between(start, end);
                    (self.id8(), Some(root), (s, self.between(s, end)))
                };
                let name = format!("{}/handle", identity.service);
                let failed = error && i == error_at;
                spans.push((identity, span(id, span_id, parent, &name, times, failed)));
            }
            traces.push((id, spans));
        }
        let mut sent = std::mem::take(&mut self.sent);
        let mut batch = Batch::new(&mut sent);
        let mut referenced: Vec<(TraceKey, [u8; 8], bool)> = Vec::new();
        for (id, spans) in traces {
            let error = spans.iter().any(|(_, s)| s.status.is_some());
            let start = spans.iter().map(|(_, s)| s.start_time_unix_nano).min();
            let end = spans.iter().map(|(_, s)| s.end_time_unix_nano).max();
            for _ in 0..1 + self.rng.below(2) {
                let (identity, s) = &spans[self.rng.below(spans.len())];
                let time = self.between(s.start_time_unix_nano, s.end_time_unix_nano);
                let span_id = s.span_id.clone().try_into().expect("8-byte span ids");
                let body = self.body();
                batch.log(identity, time, body, Some((id, span_id)));
            }
            if let (true, Some(start), Some(end)) = (error, start, end) {
                let from = start.saturating_sub(nanos(shape.widening.before));
                let to = end.saturating_add(nanos(shape.widening.after));
                let identities: BTreeSet<Identity> = spans.iter().map(|(i, _)| i.clone()).collect();
                for identity in identities.iter().take(2) {
                    for _ in 0..2 {
                        let (time, body) = (self.between(from, to), self.body());
                        batch.log(identity, time, body, None);
                    }
                    let time = self.between(from, to);
                    batch.point(identity, time, None);
                }
            }
            let root = spans[0]
                .1
                .span_id
                .clone()
                .try_into()
                .expect("8-byte span ids");
            referenced.push((id, root, error));
            batch.trace(id, spans);
        }
        let lookback = nanos(shape.lookback);
        for _ in 0..shape.background_logs_per_round {
            let identity = self.identity();
            let time = self.between(now - lookback, now);
            let body = self.body();
            batch.log(&identity, time, body, None);
        }
        let errors: Vec<_> = referenced.iter().filter(|r| r.2).cloned().collect();
        for _ in 0..shape.points_per_round {
            let identity = self.identity();
            let time = self.between(now - lookback, now);
            let exemplar = (self.rng.next_f64() < shape.exemplar_share && !referenced.is_empty())
                .then(|| {
                    let pool = if !errors.is_empty() && self.rng.below(2) == 0 {
                        &errors
                    } else {
                        &referenced
                    };
                    let (trace, span, _) = pool[self.rng.below(pool.len())];
                    (trace, span)
                });
            batch.point(&identity, time, exemplar);
        }
        let requests = batch.finish();
        self.sent = sent;
        requests
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request failed.
    #[error("{signal} export failed: {status}")]
    Status {
        /// Which signal.
        signal: &'static str,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The request was acknowledged with items rejected.
    #[error("{signal} export rejected {rejected} item(s): {message}")]
    Rejected {
        /// Which signal.
        signal: &'static str,
        /// Items rejected.
        rejected: i64,
        /// The partial-success message.
        message: String,
    },
}

/// OTLP/gRPC clients of one endpoint for the three signals.
pub struct Sender {
    traces: TraceServiceClient<Channel>,
    logs: LogsServiceClient<Channel>,
    metrics: MetricsServiceClient<Channel>,
}

impl Sender {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<Sender, HarnessError> {
        let channel = connect(endpoint).await?;
        Ok(Sender {
            traces: TraceServiceClient::new(channel.clone()),
            logs: LogsServiceClient::new(channel.clone()),
            metrics: MetricsServiceClient::new(channel),
        })
    }

    /// Sends spans, then logs, then metrics (empty requests are skipped); each must be
    /// acknowledged in full.
    pub async fn send(&mut self, requests: Requests) -> Result<(), SendError> {
        let status = |signal| move |status| SendError::Status { signal, status };
        if !requests.traces.resource_spans.is_empty() {
            let response = self
                .traces
                .export(requests.traces)
                .await
                .map_err(status("trace"))?
                .into_inner();
            if let Some(p) = response.partial_success.filter(|p| p.rejected_spans > 0) {
                return Err(SendError::Rejected {
                    signal: "trace",
                    rejected: p.rejected_spans,
                    message: p.error_message,
                });
            }
        }
        if !requests.logs.resource_logs.is_empty() {
            let response = self
                .logs
                .export(requests.logs)
                .await
                .map_err(status("log"))?
                .into_inner();
            if let Some(p) = response
                .partial_success
                .filter(|p| p.rejected_log_records > 0)
            {
                return Err(SendError::Rejected {
                    signal: "log",
                    rejected: p.rejected_log_records,
                    message: p.error_message,
                });
            }
        }
        if !requests.metrics.resource_metrics.is_empty() {
            let response = self
                .metrics
                .export(requests.metrics)
                .await
                .map_err(status("metric"))?
                .into_inner();
            if let Some(p) = response
                .partial_success
                .filter(|p| p.rejected_data_points > 0)
            {
                return Err(SendError::Rejected {
                    signal: "metric",
                    rejected: p.rejected_data_points,
                    message: p.error_message,
                });
            }
        }
        Ok(())
    }
}

/// Sum of [`HELD_ITEMS`] over `samplers` that are running.
pub async fn held_items(samplers: &[SamplerProcess]) -> Result<f64, HarnessError> {
    let mut held = 0.0;
    for sampler in samplers.iter().filter(|s| s.pid().is_some()) {
        held += sampler.metrics().await?.sum(HELD_ITEMS, &[]);
    }
    Ok(held)
}

/// Samplers and routers gossiping on 127.0.0.1 like [`crate::cluster::Cluster`], with
/// any further top-level config sections (`sampler`, `correlation`, `rollup`) on every
/// sampler, all exporting over OTLP/gRPC to one recording [`OtlpSink`]. Every process is
/// killed when it drops.
pub struct SignalCluster {
    sink: OtlpSink,
    samplers: Vec<SamplerProcess>,
    routers: Vec<RouterProcess>,
}

/// Shared gossip secret of a [`SignalCluster`].
const SECRET: &str = "correlation-test-cluster-secret-of-48-bytes-abc";
/// Virtual nodes per sampler on the ring of a [`SignalCluster`].
pub const VIRTUAL_NODES: u32 = 64;

impl SignalCluster {
    /// Starts the sink, `samplers` samplers (each seeded with the others) with `sections`
    /// merged into their config, waits until they see each other, then starts `routers`
    /// routers and waits until every node counts every sampler.
    pub async fn start(
        samplers: usize,
        routers: usize,
        sections: Value,
        timeout: Duration,
    ) -> Result<SignalCluster, HarnessError> {
        let sink = OtlpSink::start(SinkMode::Record).await?;
        let gossips = free_udp_addrs(samplers)?;
        let forwards = free_tcp_addrs(samplers)?;
        let configs: Vec<Value> = gossips
            .iter()
            .zip(&forwards)
            .enumerate()
            .map(|(i, (g, f))| {
                let seeds: Vec<String> = gossips
                    .iter()
                    .filter(|s| *s != g)
                    .map(ToString::to_string)
                    .collect();
                sampler_config(i, *g, *f, &seeds, &sink, &sections)
            })
            .collect();
        let starts = configs.into_iter().map(SamplerProcess::start);
        let mut cluster = SignalCluster {
            sink,
            samplers: Vec::new(),
            routers: Vec::new(),
        };
        for sampler in futures_util::future::join_all(starts).await {
            cluster.samplers.push(sampler?);
        }
        cluster.wait_ring(timeout).await?;
        let seeds: Vec<String> = gossips.iter().map(ToString::to_string).collect();
        for i in 0..routers {
            let gossip = free_udp_addrs(1)?[0];
            cluster.routers.push(
                RouterProcess::start(json!({
                    "cluster": {
                        "node_id": format!("r-{i}"),
                        "gossip_endpoint": gossip.to_string(),
                        "seeds": seeds,
                        "secret": SECRET,
                        "virtual_nodes": VIRTUAL_NODES,
                    },
                }))
                .await?,
            );
        }
        cluster.wait_ring(timeout).await?;
        Ok(cluster)
    }

    async fn wait_ring(&self, timeout: Duration) -> Result<(), HarnessError> {
        let expected = self.samplers.len() as f64;
        poll_until("every node to count every sampler", timeout, || async {
            for sampler in &self.samplers {
                if sampler_members(&sampler.metrics().await?) != expected {
                    return Ok(None);
                }
            }
            for router in &self.routers {
                if sampler_members(&router.metrics().await?) != expected {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })
        .await
    }

    /// The shared sink.
    pub fn sink(&self) -> &OtlpSink {
        &self.sink
    }

    /// The samplers, in start order (node ids `s-0`, `s-1`, …).
    pub fn samplers(&self) -> &[SamplerProcess] {
        &self.samplers
    }

    /// The routers, in start order.
    pub fn routers(&self) -> &[RouterProcess] {
        &self.routers
    }

    /// OTLP/gRPC endpoints of the routers.
    pub fn router_endpoints(&self) -> Vec<String> {
        self.routers
            .iter()
            .map(RouterProcess::grpc_endpoint)
            .collect()
    }
}

fn sampler_config(
    index: usize,
    gossip: SocketAddr,
    forward: SocketAddr,
    seeds: &[String],
    sink: &OtlpSink,
    sections: &Value,
) -> Value {
    let node_id = format!("s-{index}");
    let mut config = json!({
        "cluster": {
            "node_id": node_id,
            "gossip_endpoint": gossip.to_string(),
            "forward_endpoint": forward.to_string(),
            "seeds": seeds,
            "secret": SECRET,
            "virtual_nodes": VIRTUAL_NODES,
        },
        "exporter": {
            "otlp": {"endpoint": sink.endpoint(), "headers": {SOURCE_HEADER: node_id}},
            "retry": {"initial_interval": "50ms", "max_interval": "500ms"},
        },
    });
    if let (Some(root), Some(extra)) = (config.as_object_mut(), sections.as_object()) {
        root.extend(extra.clone());
    }
    config
}

/// Rolled-up metric series (reduced resource, metric, point attributes, interval) that
/// appear more than once in `data`, and how many distinct rolled-up series were seen.
/// Each output series must be written by exactly one sampler per interval: a series
/// written by two would appear twice for the same interval.
pub fn repeated_rollup_series(data: &ExportedData) -> (Vec<String>, usize) {
    fn canonical(attributes: &[KeyValue]) -> String {
        let mut pairs: Vec<String> = attributes
            .iter()
            .map(|kv| format!("{}={:?}", kv.key, kv.value))
            .collect();
        pairs.sort();
        pairs.join(",")
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for rm in data.metrics.iter().flat_map(|r| &r.resource_metrics) {
        let resource = canonical(rm.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let points: Vec<(&[KeyValue], u64, u64)> = match &metric.data {
                Some(metric::Data::Sum(s)) => s
                    .data_points
                    .iter()
                    .map(|p| (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano))
                    .collect(),
                Some(metric::Data::Gauge(g)) => g
                    .data_points
                    .iter()
                    .map(|p| (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano))
                    .collect(),
                Some(metric::Data::Histogram(h)) => h
                    .data_points
                    .iter()
                    .map(|p| (&p.attributes[..], p.start_time_unix_nano, p.time_unix_nano))
                    .collect(),
                _ => Vec::new(),
            };
            for (attributes, start, time) in points.into_iter().filter(|p| is_rollup(p.0)) {
                let key = format!(
                    "{resource} | {} | {} | {start}..{time}",
                    metric.name,
                    canonical(attributes)
                );
                *seen.entry(key).or_default() += 1;
            }
        }
    }
    let distinct = seen.len();
    let repeated = seen
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect();
    (repeated, distinct)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const WIDENING: Widening = Widening {
        before: Duration::from_millis(200),
        after: Duration::from_millis(200),
    };

    fn trace(error: bool, start: u64, end: u64, identities: &[&Identity]) -> SentTrace {
        SentTrace {
            error,
            start,
            end,
            identities: identities.iter().map(|i| (*i).clone()).collect(),
        }
    }

    fn item(kind: ItemKind, identity: &Identity, time: u64) -> SentItem {
        SentItem {
            kind,
            identity: Some(identity.clone()),
            time,
            trace_id: None,
            exemplar: None,
        }
    }

    #[test]
    fn expected_fate_follows_trace_id_then_exemplar_then_window() {
        let (a, b) = (Identity::new(1, 0), Identity::new(1, 1));
        let mut sent = SentSignals::default();
        sent.add_trace([1; 16], trace(true, 1000 * MS, 1100 * MS, &[&a]));
        sent.add_trace([2; 16], trace(false, 1000 * MS, 1100 * MS, &[&b]));
        sent.add_trace([3; 16], trace(false, 1000 * MS, 1100 * MS, &[&b]));
        let log_kept = sent.add_item(SentItem {
            trace_id: Some([2; 16]),
            ..item(ItemKind::Log, &b, 5000 * MS)
        });
        let log_dropped_in_window = sent.add_item(SentItem {
            trace_id: Some([3; 16]),
            ..item(ItemKind::Log, &a, 1250 * MS)
        });
        let exemplar = sent.add_item(SentItem {
            exemplar: Some([2; 16]),
            ..item(ItemKind::Point, &a, 1000 * MS)
        });
        let edge = sent.add_item(item(ItemKind::Point, &a, 800 * MS));
        let past_edge = sent.add_item(item(ItemKind::Point, &a, 1301 * MS));
        let other_instance = sent.add_item(item(ItemKind::Log, &b, 1050 * MS));
        let no_identity = sent.add_item(SentItem {
            identity: None,
            ..item(ItemKind::Log, &a, 1050 * MS)
        });
        // Trace 2 kept by a policy that does not correlate by window.
        let kept = BTreeMap::from([([1; 16], true), ([2; 16], false)]);
        let expected = sent.expected(&kept, WIDENING);
        assert_eq!(expected[log_kept.as_str()], Some(Reason::TraceId));
        assert_eq!(
            expected[log_dropped_in_window.as_str()],
            Some(Reason::Window)
        );
        assert_eq!(expected[exemplar.as_str()], Some(Reason::Exemplar));
        assert_eq!(expected[edge.as_str()], Some(Reason::Window));
        assert_eq!(expected[past_edge.as_str()], None);
        assert_eq!(expected[other_instance.as_str()], None);
        assert_eq!(expected[no_identity.as_str()], None);
        assert_eq!(sent.count(ItemKind::Log), 4);
        assert_eq!(sent.error_traces(), BTreeSet::from([[1; 16]]));
    }

    #[test]
    fn assessment_scores_duplicates_and_mislabels() {
        let a = Identity::new(0, 0);
        let mut sent = SentSignals::default();
        sent.add_trace([1; 16], trace(true, 1000 * MS, 1100 * MS, &[&a]));
        let w1 = sent.add_item(item(ItemKind::Log, &a, 1000 * MS));
        let w2 = sent.add_item(item(ItemKind::Log, &a, 1010 * MS));
        let s = sent.add_item(item(ItemKind::Point, &a, 9000 * MS));
        let kept = BTreeMap::from([([1; 16], true)]);
        let observed = Observed {
            raw: BTreeMap::from([
                (w1.clone(), vec![Some(Reason::Window), Some(Reason::Window)]),
                (w2.clone(), vec![Some(Reason::TraceId)]),
                (s.clone(), vec![Some(Reason::Window)]),
            ]),
            raw_logs: 3,
            raw_points: 1,
            raw_point_value: 1.0,
            ..Observed::default()
        };
        let a = Assessment::new(&sent, &observed, &kept, WIDENING);
        let window = a.score(Reason::Window);
        assert_eq!(
            (window.expected, window.exported, window.matched),
            (2, 3, 1)
        );
        assert_eq!(a.score(Reason::TraceId).exported, 1);
        assert_eq!(a.duplicated, vec![w1]);
        assert_eq!(a.mislabelled, vec![w2.clone()]);
        assert_eq!(a.unexpected, vec![s]);
        assert_eq!(a.missed, vec![(w2, Reason::Window)]);
        assert_eq!((a.logs_sent, a.logs_out, a.points_sent), (2, 3, 1));
    }

    #[test]
    fn observed_reads_raw_items_and_rollup_totals() {
        let a = Identity::new(0, 0);
        let mut sent = SentSignals::default();
        let mut batch = Batch::new(&mut sent);
        let raw_log = batch.log(&a, 5, "x".into(), None);
        batch.point(&a, 5, Some(([1; 16], [2; 8])));
        let mut requests = batch.finish();
        let record = &mut requests.logs.resource_logs[0].scope_logs[0].log_records[0];
        record
            .attributes
            .push(kv_str(CORRELATED_ATTRIBUTE, "window"));
        let mut summary = record.clone();
        summary.attributes = vec![
            otel_tail_shared::otlp::kv_int(LOG_COUNT_ATTRIBUTE, 7),
            otel_tail_shared::otlp::kv_bool(ROLLUP_ATTRIBUTE, true),
        ];
        requests.logs.resource_logs[0].scope_logs[0]
            .log_records
            .push(summary);
        let data = ExportedData {
            logs: vec![requests.logs],
            metrics: vec![requests.metrics],
            ..ExportedData::default()
        };
        let observed = Observed::read(&data);
        assert_eq!(observed.raw[&raw_log], vec![Some(Reason::Window)]);
        assert_eq!((observed.raw_logs, observed.summarised_logs), (1, 7));
        assert_eq!(observed.logs_out(), 8);
        assert_eq!(observed.raw_points, 1);
        assert_eq!(observed.point_value_out(), 1.0);
        assert_eq!(sent.items()["P000002"].exemplar, Some([1; 16]));
    }

    #[test]
    fn workload_rounds_record_what_they_send() {
        let shape = WorkloadShape {
            services: 4,
            instances: 2,
            traces_per_round: 50,
            error_share: 0.2,
            background_logs_per_round: 10,
            points_per_round: 20,
            exemplar_share: 0.5,
            lookback: Duration::from_secs(2),
            widening: WIDENING,
        };
        let mut workload = Workload::new(5, shape);
        let requests = workload.round(10_000 * MS);
        let sent = workload.sent();
        let spans: usize = requests
            .traces
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        assert_eq!(sent.traces().len(), 50);
        assert!((100..=200).contains(&spans), "{spans}");
        let records: usize = requests
            .logs
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .map(|sl| sl.log_records.len())
            .sum();
        assert_eq!(records as u64, sent.count(ItemKind::Log));
        let points: usize = requests
            .metrics
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(crate::export::data_points)
            .sum();
        assert_eq!(points as u64, sent.count(ItemKind::Point));
        let errors = sent.error_traces();
        assert!(!errors.is_empty());
        // Every error trace's in-window items match it when it is kept.
        let kept: BTreeMap<TraceKey, bool> = errors.iter().map(|t| (*t, true)).collect();
        let expected = sent.expected(&kept, WIDENING);
        let windowed = expected
            .values()
            .filter(|r| **r == Some(Reason::Window))
            .count();
        assert!(windowed >= errors.len() * 3, "{windowed}");
        assert!(sent.items().values().any(|i| i.exemplar.is_some()));
    }
}
