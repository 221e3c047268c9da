//! The estate's vocabulary: business domains, service roles with their routes, and the log
//! template catalogue (per role and domain, plus the lines every service logs) with Zipf
//! frequencies.

use opentelemetry_proto::tonic::logs::v1::SeverityNumber;

use crate::generate::Rng;

/// The business domains: each names one service per role, and its noun fills that
/// service's templates and routes.
pub(super) const DOMAINS: [&str; 10] = [
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
pub(super) enum Role {
    Gateway,
    Api,
    Worker,
    DbProxy,
    Cache,
}

pub(super) const ROLES: [Role; 5] = [
    Role::Gateway,
    Role::Api,
    Role::Worker,
    Role::DbProxy,
    Role::Cache,
];

impl Role {
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Api => "api",
            Role::Worker => "worker",
            Role::DbProxy => "db-proxy",
            Role::Cache => "cache",
        }
    }

    pub(super) fn language(self) -> &'static str {
        match self {
            Role::Gateway => "go",
            Role::Api => "java",
            Role::Worker => "python",
            Role::DbProxy => "rust",
            Role::Cache => "go",
        }
    }

    pub(super) fn calls_database(self) -> bool {
        matches!(self, Role::Api | Role::Worker | Role::DbProxy)
    }

    /// Route patterns; `{n}` is the domain noun, `{id}` a path parameter.
    pub(super) fn routes(self) -> [&'static str; 3] {
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
    pub(super) fn templates(self) -> &'static [(&'static str, Sev, Kind)] {
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
pub(super) const COMMON_TEMPLATES: [(&str, Sev, Kind); 10] = [
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
pub(super) enum Sev {
    Debug,
    Info,
    Warn,
    Error,
}

impl Sev {
    pub(super) fn number(self) -> SeverityNumber {
        match self {
            Sev::Debug => SeverityNumber::Debug,
            Sev::Info => SeverityNumber::Info,
            Sev::Warn => SeverityNumber::Warn,
            Sev::Error => SeverityNumber::Error,
        }
    }

    pub(super) fn text(self) -> &'static str {
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
pub(super) enum Kind {
    /// Inside a request, with its trace context.
    Request,
    /// Outside any request, without a trace id.
    Background,
    /// When the request fails, with its trace context.
    Error,
}

/// One log template of the catalogue.
#[derive(Debug, Clone)]
pub(super) struct Template {
    pub(super) text: String,
    pub(super) severity: Sev,
}

/// A template list with Zipf weights (the k-th most frequent has weight 1/(k+1)).
#[derive(Debug, Clone, Default)]
pub(super) struct Zipf {
    items: Vec<usize>,
    cumulative: Vec<f64>,
}

impl Zipf {
    pub(super) fn new(items: Vec<usize>) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..items.len())
            .map(|k| {
                total += 1.0 / (k as f64 + 1.0);
                total
            })
            .collect();
        Zipf { items, cumulative }
    }

    /// The most frequent item.
    pub(super) fn most_frequent(&self) -> usize {
        self.items[0]
    }

    pub(super) fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.next_f64() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.items[i.min(self.items.len() - 1)]
    }
}
