//! The reduction benchmark's workload and accounting: a realistic synthetic estate of many
//! services and pods ([`Workload`]), what was sent ([`InputLedger`]), what the sampler
//! exported ([`Output`]), and whether the two agree ([`check`]).
//!
//! The estate: services named after ten business domains in five roles (gateway, api,
//! worker, db-proxy, cache), several pods each, every pod a Kubernetes-style resource.
//! Each tick the gateways receive traces that fan out over the other services (HTTP server
//! and client spans, database calls); a share of them fail. Logs come from a catalogue of a
//! few hundred templates whose variable parts are numbers, ids, IPs, hex, UUIDs and user
//! ids: request logs carry their span's trace id, background logs carry none. Metrics are
//! what SDKs export every tick per pod: a delta counter with one point per request
//! (`user.id`, `request.id` attributes, value 1), a duration histogram with exemplars, a
//! database operation counter by user, page views by user on the gateways, and a memory
//! gauge. Deterministic for a seed; time is a parameter.
//!
//! Accounting identifies items without adding anything to them: a log record by its trace
//! id, span id, time and body; a data point by its metric, pod, time and attributes.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use otel_tail_sampler::rollup::metrics::Rule;
use otel_tail_shared::otlp;
use prost::Message;

use crate::export::{ExportedData, attribute_str, hex};
use crate::generate::{Rng, kv_int, kv_str};

/// The delta counter with one point of value 1 per request handled, carrying `user.id`
/// and `request.id`: its total is checked end to end.
pub const REQUESTS_METRIC: &str = "app.requests";
/// Request duration histogram; its points carry an exemplar of the latest request.
pub const DURATION_METRIC: &str = "http.server.request.duration";
/// Database operations by operation, collection and user.
pub const DB_METRIC: &str = "db.client.operations";
/// Page views by page and user on the gateways; no rule reduces it, so the rollup's
/// cardinality limit does.
pub const PAGE_VIEWS_METRIC: &str = "frontend.page_views";
/// Memory gauge per pod.
pub const MEMORY_METRIC: &str = "process.memory.usage";
/// The metric the log rollup emits next to its summaries.
pub const LOG_RECORDS_METRIC: &str = "log.records";
/// Attribute marking raw items kept by correlated retention (value: the reason).
pub const CORRELATED_ATTRIBUTE: &str = "otel_tail.correlated";
/// Attribute marking rolled-up output.
pub const ROLLUP_ATTRIBUTE: &str = "otel_tail.rollup";
/// Attribute of the metric series that takes points beyond the cardinality limit.
pub const OVERFLOW_ATTRIBUTE: &str = "otel.metric.overflow";
/// Attribute of a log summary: how many records it stands for.
pub const LOG_COUNT_ATTRIBUTE: &str = "log.count";
/// Attribute of a log summary: its template's id.
pub const TEMPLATE_ID_ATTRIBUTE: &str = "log.template.id";

/// The business domains: each names one service per role, and its noun fills that
/// service's templates and routes.
const DOMAINS: [&str; 10] = [
    "cart",
    "checkout",
    "payment",
    "catalog",
    "search",
    "account",
    "order",
    "shipping",
    "inventory",
    "notification",
];

/// What a service does; decides its routes, log templates and whether it calls a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Gateway,
    Api,
    Worker,
    DbProxy,
    Cache,
}

const ROLES: [Role; 5] = [
    Role::Gateway,
    Role::Api,
    Role::Worker,
    Role::DbProxy,
    Role::Cache,
];

impl Role {
    fn suffix(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Api => "api",
            Role::Worker => "worker",
            Role::DbProxy => "db-proxy",
            Role::Cache => "cache",
        }
    }

    fn language(self) -> &'static str {
        match self {
            Role::Gateway => "go",
            Role::Api => "java",
            Role::Worker => "python",
            Role::DbProxy => "rust",
            Role::Cache => "go",
        }
    }

    fn calls_database(self) -> bool {
        matches!(self, Role::Api | Role::Worker | Role::DbProxy)
    }

    /// Route patterns; `{n}` is the domain noun, `{id}` a path parameter.
    fn routes(self) -> [&'static str; 3] {
        match self {
            Role::Gateway => ["/{n}", "/{n}/{id}", "/{n}/search"],
            Role::Api => [
                "/api/v1/{n}s",
                "/api/v1/{n}s/{id}",
                "/api/v1/{n}s/{id}/items",
            ],
            Role::Worker => [
                "/internal/{n}/jobs",
                "/internal/{n}/jobs/{id}",
                "/internal/{n}/retry",
            ],
            Role::DbProxy => ["/db/{n}/query", "/db/{n}/tx/{id}", "/db/{n}/batch"],
            Role::Cache => [
                "/cache/{n}/{id}",
                "/cache/{n}/bulk",
                "/cache/{n}/invalidate",
            ],
        }
    }

    /// Template patterns of the role: request-scoped, background and error ones, with
    /// `{noun}` filled in per domain when the catalogue is built.
    fn templates(self) -> &'static [(&'static str, Sev, Kind)] {
        use Kind::{Background as B, Error as E, Request as R};
        use Sev::{Debug as D, Error as X, Info as I, Warn as W};
        match self {
            Role::Gateway => &[
                (
                    "Routing {method} {path} to {noun} upstream {ip}:{port}",
                    D,
                    R,
                ),
                ("Upstream {noun} responded {status} in {ms}ms", I, R),
                ("Applied rate limit policy {int} to client {ip}", D, R),
                (
                    "Circuit breaker for {noun} upstream half-open after {int} failures",
                    W,
                    R,
                ),
                (
                    "Reloaded {noun} route table: {int} routes, checksum {hex}",
                    I,
                    B,
                ),
                (
                    "TLS session cache for {noun}: {int} entries, hit ratio {pct}",
                    D,
                    B,
                ),
                (
                    "Upstream {noun} endpoint {ip}:{port} marked unhealthy",
                    W,
                    B,
                ),
                (
                    "Gateway timeout calling {noun} upstream {ip}:{port} after {ms}ms request={uuid}",
                    X,
                    E,
                ),
            ],
            Role::Api => &[
                (
                    "Fetched {int} {noun} records for user {user} in {ms}ms",
                    I,
                    R,
                ),
                ("Validated {noun} request {uuid} for tenant {int}", D, R),
                ("Lookup of {noun} by id {int} returned {int} rows", D, R),
                (
                    "Slow {noun} query detected: {ms}ms (threshold {int}ms) request={uuid}",
                    W,
                    R,
                ),
                ("Warmed {noun} cache with {int} entries in {ms}ms", I, B),
                (
                    "Scheduled {noun} reconciliation run {int} finished: {int} updated, {int} skipped",
                    I,
                    B,
                ),
                ("Rate limiter for {noun} clients at {int}% capacity", W, B),
                (
                    "Failed to update {noun} {uuid}: upstream {ip}:{port} returned status {status}",
                    X,
                    E,
                ),
            ],
            Role::Worker => &[
                ("Processing {noun} job {uuid} attempt {int}", I, R),
                ("Job {uuid} for {noun} completed in {ms}ms", I, R),
                ("Enqueued {int} {noun} follow-up tasks for {user}", D, R),
                ("Retrying {noun} job {uuid} after {ms}ms backoff", W, R),
                (
                    "Polled {noun} queue partition {int}: {int} messages, lag {int}",
                    D,
                    B,
                ),
                (
                    "Committed {noun} consumer offset {int} on partition {int}",
                    D,
                    B,
                ),
                (
                    "The {noun} dead-letter queue holds {int} messages, above threshold {int}",
                    W,
                    B,
                ),
                (
                    "Job {uuid} for {noun} failed permanently: IllegalStateException at line {int}",
                    X,
                    E,
                ),
            ],
            Role::DbProxy => &[
                ("Executed {noun} statement {hex} in {ms}ms rows={int}", D, R),
                (
                    "Acquired {noun} connection {int} from pool after {ms}ms",
                    D,
                    R,
                ),
                ("Prepared statement cache hit for {noun} query {hex}", D, R),
                ("Transaction {uuid} on {noun} held locks for {ms}ms", W, R),
                ("Replica lag for {noun} shard {int} is {ms}ms", I, B),
                (
                    "Vacuumed {noun} table partition {int}: {int} dead tuples removed",
                    I,
                    B,
                ),
                ("Connection pool for {noun} exhausted: {int} waiters", W, B),
                (
                    "Deadlock detected on {noun} shard {int}, transaction {uuid} rolled back",
                    X,
                    E,
                ),
            ],
            Role::Cache => &[
                (
                    "Cache miss for {noun} key {hex}, loading from backend",
                    D,
                    R,
                ),
                ("Cache hit for {noun} key {hex} ttl={int}s", D, R),
                (
                    "Stored {noun} entry {hex} ({bytes} bytes) with ttl {int}s",
                    D,
                    R,
                ),
                (
                    "Cache entry {hex} for {noun} exceeded size limit: {bytes} bytes",
                    W,
                    R,
                ),
                (
                    "Evicted {int} {noun} entries (LRU), memory {bytes} bytes",
                    I,
                    B,
                ),
                (
                    "Replication of {noun} cache to {ip}:{port} caught up at offset {int}",
                    I,
                    B,
                ),
                ("Hit ratio of the {noun} cache dropped to {pct}", W, B),
                (
                    "Backend {ip}:{port} of the {noun} cache unreachable: connection refused",
                    X,
                    E,
                ),
            ],
        }
    }
}

/// Templates every service logs (framework and runtime).
const COMMON_TEMPLATES: [(&str, Sev, Kind); 10] = [
    (
        "{method} {path} {status} {ms}ms bytes={bytes}",
        Sev::Info,
        Kind::Request,
    ),
    (
        "Authenticated user {user} with token {hex}",
        Sev::Debug,
        Kind::Request,
    ),
    (
        "Outgoing call to {ip}:{port} took {ms}ms attempt={int}",
        Sev::Debug,
        Kind::Request,
    ),
    (
        "Request {uuid} exceeded soft deadline by {ms}ms",
        Sev::Warn,
        Kind::Request,
    ),
    (
        "GC pause {ms}ms heap_used={bytes} heap_max={bytes}",
        Sev::Info,
        Kind::Background,
    ),
    (
        "Connection pool stats active={int} idle={int} waiting={int}",
        Sev::Debug,
        Kind::Background,
    ),
    ("Health check OK in {ms}ms", Sev::Debug, Kind::Background),
    (
        "Refreshed config version {int} from {ip}:{port}",
        Sev::Info,
        Kind::Background,
    ),
    (
        "Metrics flush: {int} series written in {ms}ms",
        Sev::Debug,
        Kind::Background,
    ),
    (
        "Unhandled exception in request {uuid}: SocketTimeoutException: read timed out after {ms}ms",
        Sev::Error,
        Kind::Error,
    ),
];

/// Severity of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sev {
    Debug,
    Info,
    Warn,
    Error,
}

impl Sev {
    fn number(self) -> SeverityNumber {
        match self {
            Sev::Debug => SeverityNumber::Debug,
            Sev::Info => SeverityNumber::Info,
            Sev::Warn => SeverityNumber::Warn,
            Sev::Error => SeverityNumber::Error,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Sev::Debug => "DEBUG",
            Sev::Info => "INFO",
            Sev::Warn => "WARN",
            Sev::Error => "ERROR",
        }
    }
}

/// When a template is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Inside a request, with its trace context.
    Request,
    /// Outside any request, without a trace id.
    Background,
    /// When the request fails, with its trace context.
    Error,
}

/// One log template of the catalogue.
#[derive(Debug, Clone)]
struct Template {
    text: String,
    severity: Sev,
}

/// A template list with Zipf weights (the k-th most frequent has weight 1/(k+1)).
#[derive(Debug, Clone, Default)]
struct Zipf {
    items: Vec<usize>,
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(items: Vec<usize>) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..items.len())
            .map(|k| {
                total += 1.0 / (k as f64 + 1.0);
                total
            })
            .collect();
        Zipf { items, cumulative }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.next_f64() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.items[i.min(self.items.len() - 1)]
    }
}

/// One service: its identity, routes and log templates.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    noun: &'static str,
    role: Role,
    routes: Vec<String>,
    request_templates: Zipf,
    background_templates: Zipf,
    error_template: usize,
    pods: Vec<usize>,
}

/// One pod: its resource and its running state.
#[derive(Debug, Clone)]
struct Pod {
    service: usize,
    agent: usize,
    resource: Resource,
    logger: String,
    memory: i64,
}

/// Shape of the generated estate and traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Services (at most 50: ten domains times five roles).
    pub services: usize,
    /// Pods per service.
    pub pods_per_service: usize,
    /// Collector agents (nodes); each sends one request per signal per tick for its pods.
    pub agents: usize,
    /// Traces started per second over the whole estate.
    pub traces_per_sec: f64,
    /// Share of traces (0..=1) with a failing span.
    pub error_share: f64,
    /// Background log lines (no trace id) per pod per second.
    pub background_logs_per_pod_per_sec: f64,
    /// Distinct user ids.
    pub users: usize,
    /// Share of `app.requests` points that carry an exemplar.
    pub counter_exemplar_share: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            seed: 42,
            services: 50,
            pods_per_service: 4,
            agents: 10,
            traces_per_sec: 200.0,
            error_share: 0.015,
            background_logs_per_pod_per_sec: 10.0,
            users: 100_000,
            counter_exemplar_share: 0.1,
        }
    }
}

/// What one tick produced: one request per agent per signal (agents without data send
/// nothing), and the count of traces started and failed.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    /// Trace export requests.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// Log export requests.
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Metric export requests.
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Traces started in the tick.
    pub trace_count: usize,
    /// Traces with a failing span.
    pub error_traces: usize,
}

/// A server span handled by a pod during the tick (feeds the request metrics).
#[derive(Debug, Clone)]
struct Hit {
    route: usize,
    method: &'static str,
    status: i64,
    seconds: f64,
    end: u64,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    user: String,
    request_id: String,
    root: bool,
}

/// A database call made by a pod during the tick.
#[derive(Debug, Clone)]
struct DbCall {
    operation: &'static str,
    collection: String,
    user: String,
}

/// What a pod accumulates during a tick.
#[derive(Debug, Clone, Default)]
struct PodTick {
    spans: Vec<Span>,
    logs: Vec<LogRecord>,
    hits: Vec<Hit>,
    db: Vec<DbCall>,
}

/// A span of a trace being built: its pod, its route if it is a server span, its
/// operation and collection if it is a database call.
#[derive(Debug, Clone)]
struct Call {
    pod: usize,
    server_route: Option<usize>,
    db: Option<(&'static str, String)>,
    span: Span,
}

/// Values a request-scoped log line takes from its request.
#[derive(Debug, Clone, Default)]
struct LineContext {
    method: &'static str,
    path: String,
    status: i64,
    millis: f64,
    user: String,
}

/// The generator of the estate's telemetry; see the module docs.
#[derive(Debug, Clone)]
pub struct Workload {
    config: WorkloadConfig,
    rng: Rng,
    templates: Vec<Template>,
    services: Vec<Service>,
    pods: Vec<Pod>,
    gateways: Vec<usize>,
    callees: Vec<usize>,
    /// Fractional traces and background lines carried to the next tick.
    carry_traces: f64,
    carry_logs: Vec<f64>,
}

impl Workload {
    /// Builds the estate: services, pods and the template catalogue.
    pub fn new(config: WorkloadConfig) -> Workload {
        let mut rng = Rng::new(Rng::new(config.seed).next_u64());
        let mut templates: Vec<Template> = COMMON_TEMPLATES
            .iter()
            .map(|(text, severity, _)| Template {
                text: (*text).to_owned(),
                severity: *severity,
            })
            .collect();
        let common_of = |kind: Kind| -> Vec<usize> {
            COMMON_TEMPLATES
                .iter()
                .enumerate()
                .filter(|(_, t)| t.2 == kind)
                .map(|(i, _)| i)
                .collect()
        };
        let common_request = common_of(Kind::Request);
        let common_background = common_of(Kind::Background);
        let common_error = common_of(Kind::Error)[0];
        // Every (role, domain) template family, so the catalogue holds all of them even
        // when fewer services are generated.
        let mut family: HashMap<(usize, usize), Vec<(usize, Kind)>> = HashMap::new();
        for (r, role) in ROLES.iter().enumerate() {
            for (d, noun) in DOMAINS.iter().enumerate() {
                for (text, severity, kind) in role.templates() {
                    family
                        .entry((r, d))
                        .or_default()
                        .push((templates.len(), *kind));
                    templates.push(Template {
                        text: text.replace("{noun}", noun),
                        severity: *severity,
                    });
                }
            }
        }
        let services_n = config.services.clamp(1, DOMAINS.len() * ROLES.len());
        let mut services = Vec::with_capacity(services_n);
        let mut pods = Vec::new();
        for s in 0..services_n {
            // Roles vary fastest so that any prefix of the services has gateways.
            let (r, d) = (s % ROLES.len(), s / ROLES.len());
            let role = ROLES[r];
            let noun = DOMAINS[d];
            let name = format!("{noun}-{}", role.suffix());
            let own = &family[&(r, d)];
            let own_of = |kind: Kind| -> Vec<usize> {
                own.iter()
                    .filter(|(_, k)| *k == kind)
                    .map(|(i, _)| *i)
                    .collect()
            };
            let (own_request, own_background) = (own_of(Kind::Request), own_of(Kind::Background));
            // Most frequent first: the access log, then own and common lines interleaved.
            let request = interleave(&common_request, &own_request);
            let background = interleave(&own_background, &common_background);
            let version = format!("1.{}.{}", rng.below(20), rng.below(10));
            let replica_set = format!("{:010x}", rng.next_u64() & 0xff_ffff_ffff);
            let mut service = Service {
                name: name.clone(),
                noun,
                role,
                routes: role
                    .routes()
                    .iter()
                    .map(|r| r.replace("{n}", noun))
                    .collect(),
                request_templates: Zipf::new(request),
                background_templates: Zipf::new(background),
                error_template: if rng.below(2) == 0 {
                    own_of(Kind::Error)[0]
                } else {
                    common_error
                },
                pods: Vec::new(),
            };
            for _ in 0..config.pods_per_service.max(1) {
                let index = pods.len();
                let instance_id = uuid(&mut rng);
                let pod_name = format!("{name}-{replica_set}-{}", alnum(&mut rng, 5));
                let node = format!("ip-10-0-{}-{}.ec2.internal", rng.below(8), rng.below(250));
                let resource = Resource {
                    attributes: vec![
                        kv_str("service.name", &name),
                        kv_str("service.namespace", "shop"),
                        kv_str("service.version", &version),
                        kv_str("service.instance.id", &instance_id),
                        kv_str("k8s.pod.name", &pod_name),
                        kv_str("k8s.namespace.name", &format!("shop-{noun}")),
                        kv_str("k8s.deployment.name", &name),
                        kv_str("k8s.node.name", &node),
                        kv_str("host.name", &pod_name),
                        kv_str("deployment.environment.name", "production"),
                        kv_str("cloud.region", "eu-west-1"),
                        kv_str("telemetry.sdk.name", "opentelemetry"),
                        kv_str("telemetry.sdk.language", role.language()),
                        kv_str("telemetry.sdk.version", "1.38.0"),
                    ],
                    ..Default::default()
                };
                pods.push(Pod {
                    service: s,
                    agent: index % config.agents.max(1),
                    resource,
                    logger: format!("com.shop.{noun}.{}", role.suffix().replace('-', "")),
                    memory: 200_000_000 + rng.below(300_000_000) as i64,
                });
                service.pods.push(index);
            }
            services.push(service);
        }
        let gateways = (0..services.len())
            .filter(|&s| services[s].role == Role::Gateway)
            .collect();
        let callees = (0..services.len())
            .filter(|&s| services[s].role != Role::Gateway)
            .collect();
        let carry_logs = vec![0.0; pods.len()];
        Workload {
            config,
            rng,
            templates,
            services,
            pods,
            gateways,
            callees,
            carry_traces: 0.0,
            carry_logs,
        }
    }

    /// Number of pods (resources) in the estate.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Number of services.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Number of log templates in the catalogue.
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// The telemetry of `[start, end]` (unix nanoseconds): traces started in it (ending
    /// before `end`), their logs, background logs, and every pod's metric export at `end`.
    pub fn tick(&mut self, start: u64, end: u64) -> Tick {
        let length = end.saturating_sub(start).max(1);
        let mut pods = vec![PodTick::default(); self.pods.len()];
        let wanted = self.config.traces_per_sec * length as f64 / 1e9 + self.carry_traces;
        let traces = wanted.floor() as usize;
        self.carry_traces = wanted - traces as f64;
        let mut tick = Tick {
            trace_count: traces,
            ..Tick::default()
        };
        if !self.gateways.is_empty() {
            for _ in 0..traces {
                if self.trace(&mut pods, start, length) {
                    tick.error_traces += 1;
                }
            }
        }
        for (p, pod_tick) in pods.iter_mut().enumerate() {
            let wanted = self.config.background_logs_per_pod_per_sec * length as f64 / 1e9
                + self.carry_logs[p];
            let lines = wanted.floor() as usize;
            self.carry_logs[p] = wanted - lines as f64;
            for _ in 0..lines {
                let time = start + self.rng.below(length as usize) as u64;
                let service = &self.services[self.pods[p].service];
                let template = service.background_templates.pick(&mut self.rng);
                let record = self.log_record(p, template, time, None, &LineContext::default());
                pod_tick.logs.push(record);
            }
        }
        let metrics: Vec<ResourceMetrics> = (0..self.pods.len())
            .map(|p| self.pod_metrics(p, &pods[p], start, end))
            .collect();
        let agents = self.config.agents.max(1);
        let mut spans_by_agent = vec![Vec::new(); agents];
        let mut logs_by_agent = vec![Vec::new(); agents];
        let mut metrics_by_agent = vec![Vec::new(); agents];
        for ((p, pod_tick), rm) in pods.into_iter().enumerate().zip(metrics) {
            let pod = &self.pods[p];
            let scope = scope_of(self.services[pod.service].role);
            if !pod_tick.spans.is_empty() {
                spans_by_agent[pod.agent].push(ResourceSpans {
                    resource: Some(pod.resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope.clone()),
                        spans: pod_tick.spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            if !pod_tick.logs.is_empty() {
                logs_by_agent[pod.agent].push(ResourceLogs {
                    resource: Some(pod.resource.clone()),
                    scope_logs: vec![ScopeLogs {
                        scope: Some(scope),
                        log_records: pod_tick.logs,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                });
            }
            metrics_by_agent[pod.agent].push(rm);
        }
        tick.traces = spans_by_agent
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|resource_spans| ExportTraceServiceRequest { resource_spans })
            .collect();
        tick.logs = logs_by_agent
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|resource_logs| ExportLogsServiceRequest { resource_logs })
            .collect();
        tick.metrics = metrics_by_agent
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|resource_metrics| ExportMetricsServiceRequest { resource_metrics })
            .collect();
        tick
    }

    /// One trace entering at a gateway; returns whether it failed.
    fn trace(&mut self, pods: &mut [PodTick], tick_start: u64, tick_length: u64) -> bool {
        let trace_id = self.rng.trace_id();
        let user = format!("user-{:07}", self.rng.below(self.config.users.max(1)));
        let failed = self.rng.next_f64() < self.config.error_share;
        let root_service = self.gateways[self.rng.below(self.gateways.len())];
        // Start in the first 70% of the tick; at most 300 ms long, so it ends in the tick.
        let start = tick_start + self.rng.below((tick_length as usize * 7 / 10).max(1)) as u64;
        let duration = 5_000_000 + self.rng.below(295) as u64 * 1_000_000;
        let mut calls = Vec::new();
        self.server(
            &mut calls,
            &trace_id,
            root_service,
            Vec::new(),
            start,
            duration,
            0,
        );
        let servers: Vec<usize> = (0..calls.len())
            .filter(|&i| calls[i].server_route.is_some())
            .collect();
        let failing = failed.then(|| servers[self.rng.below(servers.len())]);
        for (i, call) in calls.into_iter().enumerate() {
            let Call {
                pod,
                server_route,
                db,
                mut span,
            } = call;
            if let Some((operation, collection)) = db {
                pods[pod].db.push(DbCall {
                    operation,
                    collection,
                    user: user.clone(),
                });
            }
            let Some(route) = server_route else {
                pods[pod].spans.push(span);
                continue;
            };
            let service = &self.services[self.pods[pod].service];
            let method = if self.rng.below(5) == 0 {
                "POST"
            } else {
                "GET"
            };
            let error = failing == Some(i) || (failing.is_some() && i == 0);
            let status = if error {
                500
            } else if self.rng.below(20) == 0 {
                404
            } else if method == "POST" {
                201
            } else {
                200
            };
            let path = service.routes[route].replace("{id}", &self.rng.below(100_000).to_string());
            span.name = format!("{method} {}", service.routes[route]);
            span.attributes = vec![
                kv_str("http.request.method", method),
                kv_str("http.route", &service.routes[route]),
                kv_str("url.path", &path),
                kv_int("http.response.status_code", status),
                kv_str("enduser.id", &user),
                kv_str("network.peer.address", &ip(&mut self.rng)),
            ];
            if error {
                span.status = Some(Status {
                    message: "request failed".into(),
                    code: status::StatusCode::Error as i32,
                });
            }
            let millis = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
            let context = LineContext {
                method,
                path,
                status,
                millis,
                user: user.clone(),
            };
            // The access log, further request lines, and the failure.
            let access = service.request_templates.items[0];
            let mut lines = vec![access];
            for _ in 0..self.rng.below(3) {
                lines.push(service.request_templates.pick(&mut self.rng));
            }
            if failing == Some(i) {
                lines.push(service.error_template);
            }
            let request_templates_len = lines.len() as u64;
            for (n, template) in lines.into_iter().enumerate() {
                let time = span.start_time_unix_nano
                    + (span.end_time_unix_nano - span.start_time_unix_nano) * (n as u64 + 1)
                        / (request_templates_len + 1);
                let record = self.log_record(pod, template, time, Some(&span), &context);
                pods[pod].logs.push(record);
            }
            pods[pod].hits.push(Hit {
                route,
                method,
                status,
                seconds: millis / 1e3,
                end: span.end_time_unix_nano,
                trace_id: trace_id.clone(),
                span_id: span.span_id.clone(),
                user: user.clone(),
                request_id: uuid(&mut self.rng),
                root: i == 0,
            });
            pods[pod].spans.push(span);
        }
        failed
    }

    /// A server span of `service` and, below it, its database call and downstream calls.
    #[allow(clippy::too_many_arguments)]
    fn server(
        &mut self,
        calls: &mut Vec<Call>,
        trace_id: &[u8],
        service: usize,
        parent: Vec<u8>,
        start: u64,
        duration: u64,
        depth: usize,
    ) {
        let pods = &self.services[service].pods;
        let pod = pods[self.rng.below(pods.len())];
        let route = self.rng.below(3);
        let span_id = self.rng.span_id();
        calls.push(Call {
            pod,
            server_route: Some(route),
            db: None,
            span: Span {
                trace_id: trace_id.to_vec(),
                span_id: span_id.clone(),
                parent_span_id: parent,
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration,
                ..Default::default()
            },
        });
        let mut cursor = start + duration / 10;
        let role = self.services[service].role;
        if role.calls_database() && self.rng.next_f64() < 0.6 {
            let db_duration = (duration / 5).max(100_000);
            let operation = ["SELECT", "SELECT", "INSERT", "UPDATE"][self.rng.below(4)];
            let noun = self.services[service].noun;
            let collection = format!("{noun}s");
            calls.push(Call {
                pod,
                server_route: None,
                db: Some((operation, collection.clone())),
                span: Span {
                    trace_id: trace_id.to_vec(),
                    span_id: self.rng.span_id(),
                    parent_span_id: span_id.clone(),
                    name: format!("{operation} shop.{collection}"),
                    kind: span::SpanKind::Client as i32,
                    start_time_unix_nano: cursor,
                    end_time_unix_nano: cursor + db_duration,
                    attributes: vec![
                        kv_str("db.system.name", "postgresql"),
                        kv_str("db.namespace", "shop"),
                        kv_str("db.operation.name", operation),
                        kv_str("db.collection.name", &collection),
                        kv_str(
                            "db.query.text",
                            &format!("{operation} id, data FROM {collection} WHERE id = $1"),
                        ),
                        kv_str("server.address", &format!("{noun}-db.shop.svc")),
                    ],
                    ..Default::default()
                },
            });
            cursor += db_duration;
        }
        let downstream = match depth {
            0 => 1 + self.rng.below(2),
            1 | 2 => self.rng.below(2),
            _ => 0,
        };
        let end = start + duration;
        for _ in 0..downstream {
            let remaining = end.saturating_sub(cursor);
            let call_duration = remaining * 4 / 5 / downstream as u64;
            if call_duration < 2_000_000 || self.callees.is_empty() {
                break;
            }
            let callee = self.callees[self.rng.below(self.callees.len())];
            let client_id = self.rng.span_id();
            let callee_name = self.services[callee].name.clone();
            calls.push(Call {
                pod,
                server_route: None,
                db: None,
                span: Span {
                    trace_id: trace_id.to_vec(),
                    span_id: client_id.clone(),
                    parent_span_id: span_id.clone(),
                    name: format!("call {callee_name}"),
                    kind: span::SpanKind::Client as i32,
                    start_time_unix_nano: cursor,
                    end_time_unix_nano: cursor + call_duration,
                    attributes: vec![
                        kv_str("http.request.method", "GET"),
                        kv_str("server.address", &format!("{callee_name}.shop.svc")),
                        kv_int("server.port", 8080),
                    ],
                    ..Default::default()
                },
            });
            self.server(
                calls,
                trace_id,
                callee,
                client_id,
                cursor + 500_000,
                call_duration - 1_000_000,
                depth + 1,
            );
            cursor += call_duration;
        }
    }

    /// One log record of `pod` from `template` at `time`, inside `span` if given.
    fn log_record(
        &mut self,
        pod: usize,
        template: usize,
        time: u64,
        span: Option<&Span>,
        context: &LineContext,
    ) -> LogRecord {
        let Template { text, severity } = &self.templates[template];
        let severity = *severity;
        let body = render(&mut self.rng, text, context);
        let mut attributes = vec![
            kv_str("thread.name", &format!("worker-{}", self.rng.below(32))),
            kv_str("code.namespace", &self.pods[pod].logger),
        ];
        if span.is_some() && !context.user.is_empty() {
            attributes.push(kv_str("user.id", &context.user));
        }
        LogRecord {
            time_unix_nano: time,
            observed_time_unix_nano: time + 1_000_000 + self.rng.below(50) as u64 * 1_000_000,
            severity_number: severity.number() as i32,
            severity_text: severity.text().into(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(body)),
            }),
            attributes,
            trace_id: span.map(|s| s.trace_id.clone()).unwrap_or_default(),
            span_id: span.map(|s| s.span_id.clone()).unwrap_or_default(),
            flags: u32::from(span.is_some()),
            ..Default::default()
        }
    }

    /// A pod's metric export at the end of the tick (delta temporality, as most
    /// backends prefer for high-cardinality data).
    fn pod_metrics(
        &mut self,
        p: usize,
        pod_tick: &PodTick,
        start: u64,
        end: u64,
    ) -> ResourceMetrics {
        let service = &self.services[self.pods[p].service];
        let routes = &service.routes;
        let mut metrics = Vec::new();
        // Duration histogram per (method, route, status) with the latest request as exemplar.
        let mut groups: BTreeMap<(&'static str, usize, i64), Vec<&Hit>> = BTreeMap::new();
        for hit in &pod_tick.hits {
            groups
                .entry((hit.method, hit.route, hit.status))
                .or_default()
                .push(hit);
        }
        if !groups.is_empty() {
            let data_points = groups
                .iter()
                .map(|((method, route, status), hits)| {
                    let mut buckets = vec![0u64; DURATION_BOUNDS.len() + 1];
                    for h in hits {
                        buckets[DURATION_BOUNDS.partition_point(|&b| b < h.seconds)] += 1;
                    }
                    let last = hits.last().expect("a group has a hit");
                    HistogramDataPoint {
                        attributes: vec![
                            kv_str("http.request.method", method),
                            kv_str("http.route", &routes[*route]),
                            kv_int("http.response.status_code", *status),
                        ],
                        start_time_unix_nano: start,
                        time_unix_nano: end,
                        count: hits.len() as u64,
                        sum: Some(hits.iter().map(|h| h.seconds).sum()),
                        bucket_counts: buckets,
                        explicit_bounds: DURATION_BOUNDS.to_vec(),
                        exemplars: vec![exemplar_of(last)],
                        min: hits.iter().map(|h| h.seconds).reduce(f64::min),
                        max: hits.iter().map(|h| h.seconds).reduce(f64::max),
                        ..Default::default()
                    }
                })
                .collect();
            metrics.push(Metric {
                name: DURATION_METRIC.into(),
                description: "Duration of HTTP server requests.".into(),
                unit: "s".into(),
                data: Some(metric::Data::Histogram(Histogram {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Delta as i32,
                })),
                ..Default::default()
            });
        }
        // One point of value 1 per request: user and request ids make every point unique.
        if !pod_tick.hits.is_empty() {
            let data_points = pod_tick
                .hits
                .iter()
                .map(|hit| {
                    let exemplars = if self.rng.next_f64() < self.config.counter_exemplar_share {
                        vec![exemplar_of(hit)]
                    } else {
                        Vec::new()
                    };
                    NumberDataPoint {
                        attributes: vec![
                            kv_str("http.route", &routes[hit.route]),
                            kv_int("http.response.status_code", hit.status),
                            kv_str("user.id", &hit.user),
                            kv_str("request.id", &hit.request_id),
                        ],
                        start_time_unix_nano: start,
                        time_unix_nano: end,
                        exemplars,
                        value: Some(number_data_point::Value::AsInt(1)),
                        ..Default::default()
                    }
                })
                .collect();
            metrics.push(delta_sum(REQUESTS_METRIC, "{request}", data_points));
        }
        // Database operations by user.
        let mut db: BTreeMap<(&'static str, &str, &str), i64> = BTreeMap::new();
        for call in &pod_tick.db {
            *db.entry((call.operation, &call.collection, &call.user))
                .or_default() += 1;
        }
        if !db.is_empty() {
            let data_points = db
                .into_iter()
                .map(|((operation, collection, user), n)| NumberDataPoint {
                    attributes: vec![
                        kv_str("db.operation.name", operation),
                        kv_str("db.collection.name", collection),
                        kv_str("user.id", user),
                    ],
                    start_time_unix_nano: start,
                    time_unix_nano: end,
                    value: Some(number_data_point::Value::AsInt(n)),
                    ..Default::default()
                })
                .collect();
            metrics.push(delta_sum(DB_METRIC, "{operation}", data_points));
        }
        // Page views by page and user on the gateways: one to three pages per request.
        if service.role == Role::Gateway {
            let mut views: BTreeMap<(String, String), i64> = BTreeMap::new();
            for hit in pod_tick.hits.iter().filter(|h| h.root) {
                for _ in 0..1 + self.rng.below(3) {
                    let page = format!("/{}/{}", service.noun, self.rng.below(5000));
                    *views.entry((page, hit.user.clone())).or_default() += 1;
                }
            }
            if !views.is_empty() {
                let data_points = views
                    .into_iter()
                    .map(|((page, user), n)| NumberDataPoint {
                        attributes: vec![kv_str("page", &page), kv_str("user.id", &user)],
                        start_time_unix_nano: start,
                        time_unix_nano: end,
                        value: Some(number_data_point::Value::AsInt(n)),
                        ..Default::default()
                    })
                    .collect();
                metrics.push(delta_sum(PAGE_VIEWS_METRIC, "{view}", data_points));
            }
        }
        // Memory, a random walk per pod.
        let pod = &mut self.pods[p];
        pod.memory = (pod.memory + self.rng.below(2_000_001) as i64 - 1_000_000).max(50_000_000);
        metrics.push(Metric {
            name: MEMORY_METRIC.into(),
            description: "Resident memory of the process.".into(),
            unit: "By".into(),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: end,
                    value: Some(number_data_point::Value::AsInt(pod.memory)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        });
        ResourceMetrics {
            resource: Some(pod.resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope_of(service.role)),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}

/// Explicit bucket bounds of the duration histogram (the OTel semantic-convention default).
const DURATION_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

fn exemplar_of(hit: &Hit) -> Exemplar {
    Exemplar {
        time_unix_nano: hit.end,
        trace_id: hit.trace_id.clone(),
        span_id: hit.span_id.clone(),
        value: Some(exemplar::Value::AsDouble(hit.seconds)),
        ..Default::default()
    }
}

fn delta_sum(name: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn scope_of(role: Role) -> InstrumentationScope {
    InstrumentationScope {
        name: format!("io.opentelemetry.{}", role.language()),
        version: "1.38.0".into(),
        ..Default::default()
    }
}

/// `a[0], b[0], a[1], b[1], …` then the rest of the longer list.
fn interleave(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    for i in 0..a.len().max(b.len()) {
        out.extend(a.get(i));
        out.extend(b.get(i));
    }
    out
}

/// Fills the `{…}` placeholders of a template text.
fn render(rng: &mut Rng, text: &str, context: &LineContext) -> String {
    let mut out = String::with_capacity(text.len() + 48);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let name = &rest[open + 1..open + close];
        match name {
            "int" => out.push_str(&rng.below(10_000).to_string()),
            "ms" if context.millis > 0.0 => out.push_str(&format!("{:.1}", context.millis)),
            "ms" => out.push_str(&format!("{:.1}", rng.below(20_000) as f64 / 10.0)),
            "uuid" => out.push_str(&uuid(rng)),
            "hex" => out.push_str(&format!("{:016x}", rng.next_u64())),
            "ip" => out.push_str(&ip(rng)),
            "port" => out.push_str(&(1024 + rng.below(60_000)).to_string()),
            "user" if !context.user.is_empty() => out.push_str(&context.user),
            "user" => out.push_str(&format!("user-{:07}", rng.below(100_000))),
            "status" if context.status != 0 => out.push_str(&context.status.to_string()),
            "status" => out.push_str(["200", "404", "500", "503"][rng.below(4)]),
            "bytes" => out.push_str(&rng.below(10_000_000).to_string()),
            "pct" => out.push_str(&format!("0.{:02}", rng.below(100))),
            "method" if !context.method.is_empty() => out.push_str(context.method),
            "method" => out.push_str("GET"),
            "path" if !context.path.is_empty() => out.push_str(&context.path),
            "path" => out.push_str(&format!("/api/v1/items/{}", rng.below(100_000))),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn uuid(rng: &mut Rng) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn ip(rng: &mut Rng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.below(4),
        rng.below(256),
        1 + rng.below(254)
    )
}

fn alnum(rng: &mut Rng, n: usize) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n)
        .map(|_| CHARS[rng.below(CHARS.len())] as char)
        .collect()
}

/// The attribute-reduction rules an operator would write for this estate: per-request and
/// per-user ids are what make the counters explode, so they go. `frontend.page_views` is
/// left without a rule on purpose; the cardinality limit bounds it.
pub fn metric_rules() -> Vec<Rule> {
    vec![
        Rule {
            metric: REQUESTS_METRIC.into(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".into(), "request.id".into()],
        },
        Rule {
            metric: "db.client.*".into(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".into()],
        },
    ]
}

/// Identity of a log record: trace id, span id, time and body.
pub fn log_key(record: &LogRecord) -> u64 {
    let mut h = DefaultHasher::new();
    record.trace_id.hash(&mut h);
    record.span_id.hash(&mut h);
    record.time_unix_nano.hash(&mut h);
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.hash(&mut h),
        other => format!("{other:?}").hash(&mut h),
    }
    h.finish()
}

/// Identity of a data point: metric name, the pod's `service.instance.id`, time and its
/// attributes other than the correlation mark.
pub fn point_key(
    metric: &str,
    resource: Option<&Resource>,
    time: u64,
    attributes: &[KeyValue],
) -> u64 {
    let mut h = DefaultHasher::new();
    metric.hash(&mut h);
    resource
        .and_then(|r| attribute_str(&r.attributes, "service.instance.id"))
        .hash(&mut h);
    time.hash(&mut h);
    let mut encoded: Vec<Vec<u8>> = attributes
        .iter()
        .filter(|kv| kv.key != CORRELATED_ATTRIBUTE)
        .map(Message::encode_to_vec)
        .collect();
    encoded.sort();
    encoded.hash(&mut h);
    h.finish()
}

/// One data point of any kind, as the accounting needs it.
struct PointView<'a> {
    attributes: &'a [KeyValue],
    time: u64,
    exemplar_traces: Vec<&'a [u8]>,
    /// The value of a number point, as a float (None for other kinds).
    number: Option<f64>,
    /// Encoded size of the point alone.
    bytes: usize,
}

fn points(metric: &Metric) -> Vec<PointView<'_>> {
    fn traces(exemplars: &[Exemplar]) -> Vec<&[u8]> {
        exemplars.iter().map(|e| e.trace_id.as_slice()).collect()
    }
    fn number(p: &NumberDataPoint) -> Option<f64> {
        match p.value? {
            number_data_point::Value::AsInt(i) => Some(i as f64),
            number_data_point::Value::AsDouble(d) => Some(d),
        }
    }
    match &metric.data {
        Some(metric::Data::Sum(Sum { data_points, .. }))
        | Some(metric::Data::Gauge(Gauge { data_points })) => data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: number(p),
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::Histogram(h)) => h
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: traces(&p.exemplars),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        Some(metric::Data::Summary(s)) => s
            .data_points
            .iter()
            .map(|p| PointView {
                attributes: &p.attributes,
                time: p.time_unix_nano,
                exemplar_traces: Vec::new(),
                number: None,
                bytes: p.encoded_len(),
            })
            .collect(),
        None => Vec::new(),
    }
}

/// Items and protobuf bytes of one signal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Volume {
    /// Spans, log records or data points.
    pub items: u64,
    /// Encoded size of the export requests.
    pub bytes: u64,
}

impl Volume {
    /// Adds another volume.
    pub fn add(&mut self, other: Volume) {
        self.items += other.items;
        self.bytes += other.bytes;
    }

    /// `1 - self/input` in percent of bytes (0 when the input is empty).
    pub fn reduction_of(&self, input: &Volume) -> f64 {
        if input.bytes == 0 {
            0.0
        } else {
            100.0 * (1.0 - self.bytes as f64 / input.bytes as f64)
        }
    }
}

/// What the sender had acknowledged, and what of it the checks need.
#[derive(Debug, Clone, Default)]
pub struct InputLedger {
    /// Spans sent.
    pub traces: Volume,
    /// Log records sent.
    pub logs: Volume,
    /// Data points sent.
    pub metrics: Volume,
    /// Traces sent.
    pub trace_count: u64,
    /// Traces with a failing span.
    pub error_traces: u64,
    /// Log records with a trace id, by hex trace id: their [`log_key`]s.
    pub trace_logs: HashMap<String, Vec<u64>>,
    /// Points with exemplars: their [`point_key`] and the hex trace ids of the exemplars.
    pub exemplar_points: Vec<(u64, Vec<String>)>,
    /// Sum of the values of [`REQUESTS_METRIC`] points.
    pub requests_sum: f64,
    /// Points sent per metric name.
    pub points_by_metric: BTreeMap<String, u64>,
}

impl InputLedger {
    /// Records an acknowledged trace request.
    pub fn traces_sent(&mut self, request: &ExportTraceServiceRequest) {
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.traces.add(Volume {
            items: spans as u64,
            bytes: request.encoded_len() as u64,
        });
    }

    /// Records an acknowledged log request.
    pub fn logs_sent(&mut self, request: &ExportLogsServiceRequest) {
        let mut items = 0;
        for record in request
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
        {
            items += 1;
            if !record.trace_id.is_empty() {
                self.trace_logs
                    .entry(hex(&record.trace_id))
                    .or_default()
                    .push(log_key(record));
            }
        }
        self.logs.add(Volume {
            items,
            bytes: request.encoded_len() as u64,
        });
    }

    /// Records an acknowledged metric request.
    pub fn metrics_sent(&mut self, request: &ExportMetricsServiceRequest) {
        let mut items = 0;
        for rm in &request.resource_metrics {
            for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                let points = points(metric);
                *self
                    .points_by_metric
                    .entry(metric.name.clone())
                    .or_default() += points.len() as u64;
                for p in points {
                    items += 1;
                    if metric.name == REQUESTS_METRIC {
                        self.requests_sum += p.number.unwrap_or(0.0);
                    }
                    if !p.exemplar_traces.is_empty() {
                        let key =
                            point_key(&metric.name, rm.resource.as_ref(), p.time, p.attributes);
                        let traces = p.exemplar_traces.iter().map(|t| hex(t)).collect();
                        self.exemplar_points.push((key, traces));
                    }
                }
            }
        }
        self.metrics.add(Volume {
            items,
            bytes: request.encoded_len() as u64,
        });
    }
}

/// Raw items by correlation reason (`trace_id`, `exemplar`, `window`).
pub type ByReason = BTreeMap<String, u64>;

/// What the sampler exported, classified.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exported spans.
    pub traces: Volume,
    /// Exported log records (raw and summaries).
    pub logs: Volume,
    /// The log rollup's `log.records` metric (exported as metrics, produced from logs).
    pub log_metrics: Volume,
    /// Bytes of traces, logs and metrics (with `log.records`) had each signal been exported
    /// as one request with its entries of equal resource and scope merged: the output
    /// without the resource and scope framing repeated across and within export requests.
    pub merged_bytes: [u64; 3],
    /// Exported data points other than `log.records` (raw and rolled up).
    pub metrics: Volume,
    /// What the log and metric output consists of, by kind of item: items and the
    /// encoded size of the items alone (without resource and scope framing).
    pub parts: BTreeMap<&'static str, Volume>,
    /// Hex ids of the exported (kept) traces.
    pub kept_traces: HashSet<String>,
    /// Kept traces by the `tailsampling.policy` of their spans.
    pub kept_by_policy: BTreeMap<String, u64>,
    /// Raw log records by reason.
    pub raw_logs: ByReason,
    /// [`log_key`]s of the raw log records.
    pub raw_log_keys: HashSet<u64>,
    /// Hex trace ids of raw log records marked `trace_id`.
    pub trace_id_marked: Vec<String>,
    /// Summary log records.
    pub summary_records: u64,
    /// Distinct `log.template.id`s of the summaries.
    pub template_ids: HashSet<String>,
    /// Sum of the summaries' `log.count`.
    pub summarized_lines: u64,
    /// Sum of the `log.records` metric's values.
    pub log_records_metric_sum: f64,
    /// Log records with neither mark (pass-through).
    pub unmarked_logs: u64,
    /// Raw data points by reason.
    pub raw_points: ByReason,
    /// [`point_key`]s of the raw data points.
    pub raw_point_keys: HashSet<u64>,
    /// Rolled-up data points (other than `log.records`).
    pub rollup_points: u64,
    /// Rolled-up points per metric name.
    pub rollup_points_by_metric: BTreeMap<String, u64>,
    /// Points of overflow series (cardinality limit reached), per metric name.
    pub overflow_points: BTreeMap<String, u64>,
    /// Data points with neither mark (pass-through).
    pub unmarked_points: u64,
    /// [`REQUESTS_METRIC`]: sum of raw values.
    pub requests_raw_sum: f64,
    /// [`REQUESTS_METRIC`]: sum of rolled-up values.
    pub requests_rollup_sum: f64,
    /// [`REQUESTS_METRIC`]: sum of unmarked values.
    pub requests_unmarked_sum: f64,
}

impl Output {
    /// Classifies everything in `data`.
    pub fn of(data: &ExportedData) -> Output {
        let mut out = Output::default();
        for request in &data.traces {
            let mut spans = 0;
            for rs in &request.resource_spans {
                for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    spans += 1;
                    let trace = hex(&span.trace_id);
                    if span.parent_span_id.is_empty() {
                        let policy =
                            attribute_str(&span.attributes, crate::export::POLICY_ATTRIBUTE)
                                .unwrap_or_else(|| "(none)".into());
                        *out.kept_by_policy.entry(policy).or_default() += 1;
                    }
                    out.kept_traces.insert(trace);
                }
            }
            out.traces.add(Volume {
                items: spans,
                bytes: request.encoded_len() as u64,
            });
        }
        for request in &data.logs {
            let mut items = 0;
            for record in request
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .flat_map(|sl| &sl.log_records)
            {
                items += 1;
                let part = if is_true(&record.attributes, ROLLUP_ATTRIBUTE) {
                    PART_SUMMARIES
                } else if record
                    .attributes
                    .iter()
                    .any(|kv| kv.key == CORRELATED_ATTRIBUTE)
                {
                    PART_RAW_LOGS
                } else {
                    PART_UNMARKED_LOGS
                };
                out.parts.entry(part).or_default().add(Volume {
                    items: 1,
                    bytes: record.encoded_len() as u64,
                });
                if is_true(&record.attributes, ROLLUP_ATTRIBUTE) {
                    out.summary_records += 1;
                    out.template_ids
                        .extend(attribute_str(&record.attributes, TEMPLATE_ID_ATTRIBUTE));
                    out.summarized_lines += int_attribute(&record.attributes, LOG_COUNT_ATTRIBUTE);
                } else if let Some(reason) = attribute_str(&record.attributes, CORRELATED_ATTRIBUTE)
                {
                    *out.raw_logs.entry(reason.clone()).or_default() += 1;
                    if reason == "trace_id" {
                        out.trace_id_marked.push(hex(&record.trace_id));
                    }
                    out.raw_log_keys.insert(log_key(record));
                } else {
                    out.unmarked_logs += 1;
                }
            }
            out.logs.add(Volume {
                items,
                bytes: request.encoded_len() as u64,
            });
        }
        for request in &data.metrics {
            let (from_logs, rest) = split_log_records(request);
            out.log_metrics.add(Volume {
                items: count_points(&from_logs),
                bytes: from_logs.encoded_len() as u64,
            });
            out.metrics.add(Volume {
                items: count_points(&rest),
                bytes: rest.encoded_len() as u64,
            });
            for rm in &request.resource_metrics {
                for metric in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
                    for p in points(metric) {
                        let rolled = is_true(p.attributes, ROLLUP_ATTRIBUTE);
                        let reason = attribute_str(p.attributes, CORRELATED_ATTRIBUTE);
                        let part = if metric.name == LOG_RECORDS_METRIC {
                            PART_LOG_RECORDS
                        } else if rolled {
                            PART_ROLLED_POINTS
                        } else if reason.is_some() {
                            PART_RAW_POINTS
                        } else {
                            PART_UNMARKED_POINTS
                        };
                        out.parts.entry(part).or_default().add(Volume {
                            items: 1,
                            bytes: p.bytes as u64,
                        });
                        if metric.name == LOG_RECORDS_METRIC {
                            out.log_records_metric_sum += p.number.unwrap_or(0.0);
                            continue;
                        }
                        let requests = metric.name == REQUESTS_METRIC;
                        let value = p.number.unwrap_or(0.0);
                        if rolled {
                            out.rollup_points += 1;
                            *out.rollup_points_by_metric
                                .entry(metric.name.clone())
                                .or_default() += 1;
                            if is_true(p.attributes, OVERFLOW_ATTRIBUTE) {
                                *out.overflow_points.entry(metric.name.clone()).or_default() += 1;
                            }
                            if requests {
                                out.requests_rollup_sum += value;
                            }
                        } else if let Some(reason) = reason {
                            *out.raw_points.entry(reason).or_default() += 1;
                            out.raw_point_keys.insert(point_key(
                                &metric.name,
                                rm.resource.as_ref(),
                                p.time,
                                p.attributes,
                            ));
                            if requests {
                                out.requests_raw_sum += value;
                            }
                        } else {
                            out.unmarked_points += 1;
                            if requests {
                                out.requests_unmarked_sum += value;
                            }
                        }
                    }
                }
            }
        }
        out.merged_bytes = merged_bytes(data);
        out
    }

    /// Log records kept raw.
    pub fn raw_log_count(&self) -> u64 {
        self.raw_logs.values().sum()
    }

    /// Data points kept raw.
    pub fn raw_point_count(&self) -> u64 {
        self.raw_points.values().sum()
    }
}

/// [`Output::parts`]: raw log records.
pub const PART_RAW_LOGS: &str = "raw log records";
/// [`Output::parts`]: log summaries.
pub const PART_SUMMARIES: &str = "log summaries";
/// [`Output::parts`]: log records with neither mark.
pub const PART_UNMARKED_LOGS: &str = "unmarked log records";
/// [`Output::parts`]: points of the log rollup's `log.records` metric.
pub const PART_LOG_RECORDS: &str = "log.records points";
/// [`Output::parts`]: raw data points.
pub const PART_RAW_POINTS: &str = "raw data points";
/// [`Output::parts`]: rolled-up data points.
pub const PART_ROLLED_POINTS: &str = "rolled-up data points";
/// [`Output::parts`]: data points with neither mark.
pub const PART_UNMARKED_POINTS: &str = "unmarked data points";

/// Splits a metric export request into its `log.records` metrics and the rest, each with
/// the resources and scopes it needs, so each part's bytes can be told apart.
fn split_log_records(
    request: &ExportMetricsServiceRequest,
) -> (ExportMetricsServiceRequest, ExportMetricsServiceRequest) {
    let part = |from_logs: bool| ExportMetricsServiceRequest {
        resource_metrics: request
            .resource_metrics
            .iter()
            .filter_map(|rm| {
                let scope_metrics: Vec<ScopeMetrics> = rm
                    .scope_metrics
                    .iter()
                    .filter_map(|sm| {
                        let metrics: Vec<Metric> = sm
                            .metrics
                            .iter()
                            .filter(|m| (m.name == LOG_RECORDS_METRIC) == from_logs)
                            .cloned()
                            .collect();
                        (!metrics.is_empty()).then(|| ScopeMetrics {
                            scope: sm.scope.clone(),
                            metrics,
                            schema_url: sm.schema_url.clone(),
                        })
                    })
                    .collect();
                (!scope_metrics.is_empty()).then(|| ResourceMetrics {
                    resource: rm.resource.clone(),
                    scope_metrics,
                    schema_url: rm.schema_url.clone(),
                })
            })
            .collect(),
    };
    (part(true), part(false))
}

/// See [`Output::merged_bytes`]: each signal as one request, equal resources and scopes
/// merged with the sampler's own [`otlp::merge_spans`] and friends.
fn merged_bytes(data: &ExportedData) -> [u64; 3] {
    let traces = ExportTraceServiceRequest {
        resource_spans: otlp::merge_spans(
            data.traces
                .iter()
                .flat_map(|r| r.resource_spans.clone())
                .collect(),
        ),
    };
    let logs = ExportLogsServiceRequest {
        resource_logs: otlp::merge_logs(
            data.logs
                .iter()
                .flat_map(|r| r.resource_logs.clone())
                .collect(),
        ),
    };
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: otlp::merge_metrics(
            data.metrics
                .iter()
                .flat_map(|r| r.resource_metrics.clone())
                .collect(),
        ),
    };
    [
        traces.encoded_len() as u64,
        logs.encoded_len() as u64,
        metrics.encoded_len() as u64,
    ]
}

fn count_points(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(|m| crate::export::data_points(m) as u64)
        .sum()
}

fn is_true(attributes: &[KeyValue], key: &str) -> bool {
    attributes.iter().any(|kv| {
        kv.key == key
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::BoolValue(true))
            )
    })
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> u64 {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(i) => u64::try_from(*i).ok(),
            _ => None,
        })
        .unwrap_or(0)
}

/// Byte reduction of logs and metrics together (the log rollup's `log.records` metric
/// counts as output), in percent.
pub fn logs_and_metrics_reduction(input: &InputLedger, output: &Output) -> f64 {
    let mut sent = input.logs;
    sent.add(input.metrics);
    let mut exported = output.logs;
    exported.add(output.log_metrics);
    exported.add(output.metrics);
    exported.reduction_of(&sent)
}

/// Every way the output disagrees with the input or falls short of the target: totals
/// that do not add up, correlated items missing from the raw output, a byte reduction of
/// logs and metrics below `min_reduction_percent`. Empty when all is well.
pub fn check(input: &InputLedger, output: &Output, min_reduction_percent: f64) -> Vec<String> {
    let mut failures = Vec::new();
    let reduction = logs_and_metrics_reduction(input, output);
    if reduction < min_reduction_percent {
        failures.push(format!(
            "logs+metrics byte reduction {reduction:.1}% is below {min_reduction_percent}%"
        ));
    }
    let lines_out = output.raw_log_count() + output.summarized_lines + output.unmarked_logs;
    if lines_out != input.logs.items {
        failures.push(format!(
            "log lines: {} sent, but raw {} + summarized {} + unmarked {} = {lines_out}",
            input.logs.items,
            output.raw_log_count(),
            output.summarized_lines,
            output.unmarked_logs
        ));
    }
    if output.unmarked_logs > 0 {
        failures.push(format!(
            "{} log records left with neither {CORRELATED_ATTRIBUTE} nor {ROLLUP_ATTRIBUTE} (log rollup is on)",
            output.unmarked_logs
        ));
    }
    if output.unmarked_points > 0 {
        failures.push(format!(
            "{} data points left with neither {CORRELATED_ATTRIBUTE} nor {ROLLUP_ATTRIBUTE} (metric rollup is on)",
            output.unmarked_points
        ));
    }
    if output.log_records_metric_sum != output.summarized_lines as f64 {
        failures.push(format!(
            "{LOG_RECORDS_METRIC} adds up to {} but the summaries count {} lines",
            output.log_records_metric_sum, output.summarized_lines
        ));
    }
    let requests_out =
        output.requests_raw_sum + output.requests_rollup_sum + output.requests_unmarked_sum;
    if requests_out != input.requests_sum {
        failures.push(format!(
            "{REQUESTS_METRIC}: {} sent, but raw {} + rolled up {} + unmarked {} = {requests_out}",
            input.requests_sum,
            output.requests_raw_sum,
            output.requests_rollup_sum,
            output.requests_unmarked_sum
        ));
    }
    let mut expected_logs = 0u64;
    let mut missing_logs = Vec::new();
    for (trace, keys) in &input.trace_logs {
        if !output.kept_traces.contains(trace) {
            continue;
        }
        for key in keys {
            expected_logs += 1;
            if !output.raw_log_keys.contains(key) {
                missing_logs.push(trace.clone());
            }
        }
    }
    if !missing_logs.is_empty() {
        failures.push(format!(
            "{} of {expected_logs} log records of kept traces are not in the raw output (e.g. trace {})",
            missing_logs.len(),
            missing_logs[0]
        ));
    }
    let stray: Vec<&String> = output
        .trace_id_marked
        .iter()
        .filter(|t| !output.kept_traces.contains(*t))
        .collect();
    if !stray.is_empty() {
        failures.push(format!(
            "{} raw log records are marked trace_id but their trace was not exported (e.g. {})",
            stray.len(),
            stray[0]
        ));
    }
    let mut expected_points = 0u64;
    let mut missing_points = 0u64;
    let mut example = None;
    for (key, traces) in &input.exemplar_points {
        if let Some(kept) = traces.iter().find(|t| output.kept_traces.contains(*t)) {
            expected_points += 1;
            if !output.raw_point_keys.contains(key) {
                missing_points += 1;
                example.get_or_insert_with(|| kept.clone());
            }
        }
    }
    if missing_points > 0 {
        failures.push(format!(
            "{missing_points} of {expected_points} data points with an exemplar of a kept trace are not in the raw output (e.g. exemplar trace {})",
            example.unwrap_or_default()
        ));
    }
    failures
}

/// How many of the input's items correlated retention had to keep raw by trace id and
/// by exemplar: (log records of kept traces, points with an exemplar of a kept trace).
pub fn expected_raw(input: &InputLedger, output: &Output) -> (u64, u64) {
    let logs = input
        .trace_logs
        .iter()
        .filter(|(t, _)| output.kept_traces.contains(*t))
        .map(|(_, keys)| keys.len() as u64)
        .sum();
    let points = input
        .exemplar_points
        .iter()
        .filter(|(_, traces)| traces.iter().any(|t| output.kept_traces.contains(t)))
        .count() as u64;
    (logs, points)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;
    const NOW: u64 = 1_700_000_000 * SECOND;

    fn small() -> WorkloadConfig {
        WorkloadConfig {
            services: 10,
            pods_per_service: 2,
            agents: 3,
            traces_per_sec: 100.0,
            error_share: 0.1,
            background_logs_per_pod_per_sec: 5.0,
            ..WorkloadConfig::default()
        }
    }

    fn body(record: &LogRecord) -> String {
        match record.body.as_ref().and_then(|b| b.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => String::new(),
        }
    }

    #[test]
    fn the_estate_has_the_configured_shape_and_a_few_hundred_templates() {
        let w = Workload::new(WorkloadConfig::default());
        assert_eq!(w.service_count(), 50);
        assert_eq!(w.pod_count(), 200);
        assert_eq!(w.template_count(), 410);
        let names: HashSet<&str> = w.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names.len(), 50);
        assert_eq!(w.gateways.len(), 10);
    }

    #[test]
    fn same_seed_same_data_and_every_placeholder_is_filled() {
        let a = Workload::new(small()).tick(NOW, NOW + SECOND);
        let b = Workload::new(small()).tick(NOW, NOW + SECOND);
        assert_eq!(a.traces, b.traces);
        assert_eq!(a.logs, b.logs);
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(a.trace_count, 100);
        let records: Vec<&LogRecord> = a
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
            .collect();
        assert!(records.iter().all(|r| !body(r).contains('{')));
        let with_trace = records.iter().filter(|r| !r.trace_id.is_empty()).count();
        assert!(with_trace > 0 && with_trace < records.len());
        assert!(a.traces.len() <= 3 && a.logs.len() <= 3 && a.metrics.len() == 3);
    }

    #[test]
    fn spans_lie_in_the_tick_and_failing_traces_have_an_error_span_and_log() {
        let mut w = Workload::new(small());
        let tick = w.tick(NOW, NOW + SECOND);
        let spans: Vec<&Span> = tick
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        assert!(spans.iter().all(|s| s.start_time_unix_nano >= NOW
            && s.end_time_unix_nano <= NOW + SECOND
            && s.start_time_unix_nano < s.end_time_unix_nano));
        let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
        assert_eq!(roots, tick.trace_count);
        let error_traces: HashSet<&[u8]> = spans
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.code == status::StatusCode::Error as i32)
            })
            .map(|s| s.trace_id.as_slice())
            .collect();
        assert_eq!(error_traces.len(), tick.error_traces);
        assert!(tick.error_traces > 0);
        let error_logs = tick
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
            .filter(|r| r.severity_number == SeverityNumber::Error as i32)
            .count();
        assert_eq!(error_logs, tick.error_traces);
    }

    #[test]
    fn request_counter_has_one_unit_point_per_server_span() {
        let mut w = Workload::new(small());
        let tick = w.tick(NOW, NOW + SECOND);
        let mut ledger = InputLedger::default();
        for r in &tick.metrics {
            ledger.metrics_sent(r);
        }
        for r in &tick.traces {
            ledger.traces_sent(r);
        }
        let servers = tick
            .traces
            .iter()
            .flat_map(|r| &r.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .filter(|s| s.kind == span::SpanKind::Server as i32)
            .count();
        assert_eq!(ledger.requests_sum, servers as f64);
        assert_eq!(ledger.points_by_metric[REQUESTS_METRIC], servers as u64);
        assert_eq!(ledger.points_by_metric[MEMORY_METRIC], 20);
        assert!(ledger.points_by_metric.contains_key(PAGE_VIEWS_METRIC));
        assert!(ledger.points_by_metric.contains_key(DB_METRIC));
        // Every duration point has an exemplar; some counter points do.
        assert!(ledger.exemplar_points.len() as u64 > ledger.points_by_metric[DURATION_METRIC]);
    }

    /// Marks every item of a request raw (or, with `rollup`, as a summary) the way the
    /// sampler does, so the accounting can be checked without a sampler.
    fn as_raw_logs(mut request: ExportLogsServiceRequest) -> ExportLogsServiceRequest {
        for record in request
            .resource_logs
            .iter_mut()
            .flat_map(|rl| &mut rl.scope_logs)
            .flat_map(|sl| &mut sl.log_records)
        {
            record
                .attributes
                .push(kv_str(CORRELATED_ATTRIBUTE, "window"));
        }
        request
    }

    fn as_raw_metrics(mut request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
        for metric in request
            .resource_metrics
            .iter_mut()
            .flat_map(|rm| &mut rm.scope_metrics)
            .flat_map(|sm| &mut sm.metrics)
        {
            let mark = || kv_str(CORRELATED_ATTRIBUTE, "exemplar");
            match &mut metric.data {
                Some(metric::Data::Sum(s)) => s
                    .data_points
                    .iter_mut()
                    .for_each(|p| p.attributes.push(mark())),
                Some(metric::Data::Gauge(g)) => g
                    .data_points
                    .iter_mut()
                    .for_each(|p| p.attributes.push(mark())),
                Some(metric::Data::Histogram(h)) => h
                    .data_points
                    .iter_mut()
                    .for_each(|p| p.attributes.push(mark())),
                _ => {}
            }
        }
        request
    }

    #[test]
    fn everything_raw_adds_up_and_finds_every_correlated_item_but_misses_the_target() {
        let mut w = Workload::new(small());
        let tick = w.tick(NOW, NOW + SECOND);
        let mut ledger = InputLedger::default();
        tick.traces.iter().for_each(|r| ledger.traces_sent(r));
        tick.logs.iter().for_each(|r| ledger.logs_sent(r));
        tick.metrics.iter().for_each(|r| ledger.metrics_sent(r));
        let exported = ExportedData {
            traces: tick.traces.clone(),
            logs: tick.logs.iter().cloned().map(as_raw_logs).collect(),
            metrics: tick.metrics.iter().cloned().map(as_raw_metrics).collect(),
        };
        let output = Output::of(&exported);
        assert_eq!(output.raw_log_count(), ledger.logs.items);
        assert_eq!(output.raw_point_count(), ledger.metrics.items);
        let (logs, points) = expected_raw(&ledger, &output);
        assert_eq!(
            logs as usize,
            ledger.trace_logs.values().map(Vec::len).sum::<usize>()
        );
        assert_eq!(points as usize, ledger.exemplar_points.len());
        let failures = check(&ledger, &output, 90.0);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("below 90%"), "{failures:?}");
        assert!(logs_and_metrics_reduction(&ledger, &output) < 0.0);
    }

    #[test]
    fn a_missing_correlated_log_and_a_short_total_are_reported() {
        let mut w = Workload::new(small());
        let tick = w.tick(NOW, NOW + SECOND);
        let mut ledger = InputLedger::default();
        tick.logs.iter().for_each(|r| ledger.logs_sent(r));
        let mut logs: Vec<ExportLogsServiceRequest> =
            tick.logs.iter().cloned().map(as_raw_logs).collect();
        // Drop one record of a trace that was exported.
        let (trace, record) = logs
            .iter_mut()
            .flat_map(|r| &mut r.resource_logs)
            .flat_map(|rl| &mut rl.scope_logs)
            .find_map(|sl| {
                let i = sl.log_records.iter().position(|r| !r.trace_id.is_empty())?;
                Some(sl.log_records.remove(i)).map(|r| (r.trace_id.clone(), r))
            })
            .expect("a record with a trace id");
        let exported = ExportedData {
            traces: tick.traces.clone(),
            logs,
            metrics: Vec::new(),
        };
        let output = Output::of(&exported);
        assert!(output.kept_traces.contains(&hex(&trace)));
        let failures = check(&ledger, &output, 0.0);
        assert!(
            failures.iter().any(|f| f.starts_with("log lines:")),
            "{failures:?}"
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("not in the raw output") && f.contains(&hex(&trace))),
            "{failures:?} (dropped {:?})",
            body(&record)
        );
    }

    #[test]
    fn summaries_count_their_lines() {
        let summary = LogRecord {
            attributes: vec![
                KeyValue {
                    key: ROLLUP_ATTRIBUTE.into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::BoolValue(true)),
                    }),
                    ..Default::default()
                },
                kv_int(LOG_COUNT_ATTRIBUTE, 41),
            ],
            ..Default::default()
        };
        let exported = ExportedData {
            logs: vec![ExportLogsServiceRequest {
                resource_logs: vec![ResourceLogs {
                    scope_logs: vec![ScopeLogs {
                        log_records: vec![summary],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }],
            ..ExportedData::default()
        };
        let output = Output::of(&exported);
        assert_eq!(output.summary_records, 1);
        assert_eq!(output.summarized_lines, 41);
        assert_eq!(output.raw_log_count(), 0);
    }

    #[test]
    fn merging_equal_resources_removes_repeated_framing_only() {
        let mut w = Workload::new(small());
        let tick = w.tick(NOW, NOW + SECOND);
        // The same logs exported once per resource entry, twice over.
        let split: Vec<ExportLogsServiceRequest> = tick
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|rl| {
                let half = rl.scope_logs[0].log_records.len() / 2;
                let (a, b) = rl.scope_logs[0].log_records.split_at(half);
                [a.to_vec(), b.to_vec()].map(|log_records| ExportLogsServiceRequest {
                    resource_logs: vec![ResourceLogs {
                        resource: rl.resource.clone(),
                        scope_logs: vec![ScopeLogs {
                            scope: rl.scope_logs[0].scope.clone(),
                            log_records,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    }],
                })
            })
            .collect();
        let as_sent = Output::of(&ExportedData {
            logs: tick.logs.clone(),
            ..ExportedData::default()
        });
        let split = Output::of(&ExportedData {
            logs: split,
            ..ExportedData::default()
        });
        assert_eq!(split.logs.items, as_sent.logs.items);
        assert!(split.logs.bytes > as_sent.logs.bytes);
        assert_eq!(split.merged_bytes[1], as_sent.merged_bytes[1]);
        assert!(as_sent.merged_bytes[1] <= as_sent.logs.bytes);
    }
}
