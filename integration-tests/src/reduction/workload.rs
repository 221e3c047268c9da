//! The synthetic estate and its traffic: [`Workload`] builds services and pods from the
//! [catalogue](super::catalogue) and produces, per tick, the traces, logs and metrics their
//! collector agents would export. Deterministic for a seed; time is a parameter.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, exemplar, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use otel_tail_sampler::rollup::metrics::MetricRuleConfig;

use super::catalogue::{COMMON_TEMPLATES, DOMAINS, Kind, ROLES, Role, Template, Zipf};
use super::{DB_METRIC, DURATION_METRIC, MEMORY_METRIC, PAGE_VIEWS_METRIC, REQUESTS_METRIC};
use crate::generate::{Rng, kv_int, kv_str};

/// One service: its identity, routes and log templates.
#[derive(Debug, Clone)]
pub(super) struct Service {
    pub(super) name: String,
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
    pub(super) services: Vec<Service>,
    pods: Vec<Pod>,
    pub(super) gateways: Vec<usize>,
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
                        kv_str("k8s.namespace.name", format!("shop-{noun}")),
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
                kv_str("network.peer.address", ip(&mut self.rng)),
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
            let access = service.request_templates.most_frequent();
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
                            format!("{operation} id, data FROM {collection} WHERE id = $1"),
                        ),
                        kv_str("server.address", format!("{noun}-db.shop.svc")),
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
                        kv_str("server.address", format!("{callee_name}.shop.svc")),
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
            kv_str("thread.name", format!("worker-{}", self.rng.below(32))),
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
        let hits = &pod_tick.hits;
        let share = self.config.counter_exemplar_share;
        let mut metrics: Vec<Metric> = [
            duration_histogram(&service.routes, hits, start, end),
            request_counter(&mut self.rng, share, &service.routes, hits, start, end),
            db_operations(&pod_tick.db, start, end),
        ]
        .into_iter()
        .flatten()
        .collect();
        if service.role == Role::Gateway {
            metrics.extend(page_views(&mut self.rng, service.noun, hits, start, end));
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

/// The duration histogram of a pod's requests: a point per (method, route, status) with
/// the latest request as exemplar; `None` without requests.
fn duration_histogram(routes: &[String], hits: &[Hit], start: u64, end: u64) -> Option<Metric> {
    let mut groups: BTreeMap<(&'static str, usize, i64), Vec<&Hit>> = BTreeMap::new();
    for hit in hits {
        groups
            .entry((hit.method, hit.route, hit.status))
            .or_default()
            .push(hit);
    }
    if groups.is_empty() {
        return None;
    }
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
                    kv_str("http.request.method", *method),
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
    Some(Metric {
        name: DURATION_METRIC.into(),
        description: "Duration of HTTP server requests.".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points,
            aggregation_temporality: AggregationTemporality::Delta as i32,
        })),
        ..Default::default()
    })
}

/// The request counter: one point of value 1 per request, whose user and request ids make
/// every point unique; a share `exemplar_share` of them with an exemplar. `None` without
/// requests.
fn request_counter(
    rng: &mut Rng,
    exemplar_share: f64,
    routes: &[String],
    hits: &[Hit],
    start: u64,
    end: u64,
) -> Option<Metric> {
    if hits.is_empty() {
        return None;
    }
    let data_points = hits
        .iter()
        .map(|hit| {
            let exemplars = if rng.next_f64() < exemplar_share {
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
    Some(delta_sum(REQUESTS_METRIC, "{request}", data_points))
}

/// Database operations by operation, collection and user; `None` without calls.
fn db_operations(calls: &[DbCall], start: u64, end: u64) -> Option<Metric> {
    let mut db: BTreeMap<(&'static str, &str, &str), i64> = BTreeMap::new();
    for call in calls {
        *db.entry((call.operation, &call.collection, &call.user))
            .or_default() += 1;
    }
    if db.is_empty() {
        return None;
    }
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
    Some(delta_sum(DB_METRIC, "{operation}", data_points))
}

/// Page views by page and user on a gateway: one to three pages per request it received
/// first; `None` without such requests.
fn page_views(rng: &mut Rng, noun: &str, hits: &[Hit], start: u64, end: u64) -> Option<Metric> {
    let mut views: BTreeMap<(String, String), i64> = BTreeMap::new();
    for hit in hits.iter().filter(|h| h.root) {
        for _ in 0..1 + rng.below(3) {
            let page = format!("/{noun}/{}", rng.below(5000));
            *views.entry((page, hit.user.clone())).or_default() += 1;
        }
    }
    if views.is_empty() {
        return None;
    }
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
    Some(delta_sum(PAGE_VIEWS_METRIC, "{view}", data_points))
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
pub fn metric_rules() -> Vec<MetricRuleConfig> {
    vec![
        MetricRuleConfig {
            metric: REQUESTS_METRIC.into(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".into(), "request.id".into()],
        },
        MetricRuleConfig {
            metric: "db.client.*".into(),
            keep_attributes: None,
            drop_attributes: vec!["user.id".into()],
        },
    ]
}
