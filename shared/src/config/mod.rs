//! The configuration model shared by both binaries.
//!
//! One YAML file, every key defaulted, unknown keys rejected. Loading goes
//! text → `${env:NAME}` expansion → YAML → JSON value → typed structs through
//! `serde_path_to_error`, so an error names the full key path (`sampler.policies[2].latency`).
//! Checks across fields run in [`Config::validate`] after parsing.

pub mod policy;
pub mod rollup;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use policy::PolicyConfig;
pub use rollup::{CorrelationConfig, RollupConfig};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `${env:NAME}` named a variable that is not set.
    #[error("config references environment variable {0} which is not set")]
    MissingEnv(String),
    /// The text is not YAML.
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    /// A key is unknown or a value has the wrong type.
    #[error("invalid config at `{path}`: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// An error for the key at `path`.
    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where OTLP data is accepted.
    pub receiver: ReceiverConfig,
    /// Cluster membership and forwarding; no seeds means standalone.
    pub cluster: ClusterConfig,
    /// Buffering and tail-sampling decisions (sampler only).
    pub sampler: SamplerConfig,
    /// Holding logs and metric points until the traces they belong to are decided
    /// (sampler only).
    pub correlation: CorrelationConfig,
    /// Summaries of the logs and metric points that are not kept (sampler only).
    pub rollup: RollupConfig,
    /// Where kept and passed-through data goes (sampler only).
    pub exporter: ExporterConfig,
    /// Self-observability: admin endpoint and logs.
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// Loads and validates the file at `path`, expanding `${env:NAME}` from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates YAML text; `env` resolves `${env:NAME}` references so tests can
    /// pass a map instead of the process environment.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let expanded = expand_env(text, env)?;
        let value: serde_json::Value = if expanded.trim().is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            // YAML 1.2 booleans only, as the Collector's parser: a policy named `n` stays a string.
            let options = serde_saphyr::options! { strict_booleans: true };
            serde_saphyr::from_str_with_options(&expanded, options)
                .map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        let value = if value.is_null() {
            serde_json::Value::Object(Default::default())
        } else {
            value
        };
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Invalid {
                path,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks value ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.receiver.auth.bearer_tokens_file
            && let Err(reason) = crate::receiver::auth::BearerTokens::load(path)
        {
            return Err(ConfigError::invalid(
                "receiver.auth.bearer_tokens_file",
                reason,
            ));
        }
        if let Some(tls) = &self.receiver.tls {
            tls.validate("receiver.tls")?;
        }
        if self.receiver.read_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "receiver.read_timeout",
                "must be greater than 0",
            ));
        }
        if self.receiver.max_buffered_bytes < self.receiver.max_request_bytes {
            return Err(ConfigError::invalid(
                "receiver.max_buffered_bytes",
                "must be at least receiver.max_request_bytes, or no request of the largest size could be read",
            ));
        }
        if self.receiver.max_connection_bytes < self.receiver.max_request_bytes {
            return Err(ConfigError::invalid(
                "receiver.max_connection_bytes",
                "must be at least receiver.max_request_bytes, or no request of the largest size could be read",
            ));
        }
        if self.receiver.max_concurrent_requests == 0 {
            return Err(ConfigError::invalid(
                "receiver.max_concurrent_requests",
                "must be greater than 0",
            ));
        }
        if self.receiver.max_request_bytes == 0 {
            return Err(ConfigError::invalid(
                "receiver.max_request_bytes",
                "must be greater than 0",
            ));
        }
        if self.receiver.max_request_bytes > MAX_REQUEST_BYTES {
            return Err(ConfigError::invalid(
                "receiver.max_request_bytes",
                "must be at most 536870912 (512 MiB): a sampler buffers a request's items with 30-bit lengths",
            ));
        }
        self.cluster.validate()?;
        self.sampler.validate()?;
        self.correlation.validate()?;
        self.rollup.validate()?;
        self.exporter.validate()?;
        Ok(())
    }

    /// The effective configuration as YAML, for `--print-config`.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Replaces every `${env:NAME}` (and `${NAME}`) with the variable's value, like the
/// OpenTelemetry Collector's confmap. `$$` escapes a literal `$`.
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                out.push('$');
                rest = after;
                continue;
            };
            let reference = &body[..end];
            let name = reference.strip_prefix("env:").unwrap_or(reference);
            let (name, default) = match name.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (name, None),
            };
            let value = match (env(name), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => return Err(ConfigError::MissingEnv(name.to_owned())),
            };
            out.push_str(&value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// OTLP receivers (`receiver.*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address.
    pub grpc_endpoint: SocketAddr,
    /// OTLP/HTTP listen address.
    pub http_endpoint: SocketAddr,
    /// Largest accepted request after decompression, in bytes; checked while reading so an
    /// oversized or gzip-bomb body is refused before it is held in memory.
    pub max_request_bytes: usize,
    /// Requests handled at once across the gRPC and HTTP receivers; beyond it clients are
    /// throttled (gRPC `UNAVAILABLE` + `RetryInfo`, HTTP 503 + `Retry-After`). With
    /// `max_request_bytes` it bounds the memory held by requests in flight. A request takes
    /// its slot only once its body is read, so slow senders do not hold slots.
    pub max_concurrent_requests: usize,
    /// Bytes requests hold at once across both receivers (and, on a sampler in a cluster,
    /// its forward endpoint): bodies as they are read, gzip bodies inflated, and what
    /// decoding them will allocate (estimated from the bytes before decoding), until each
    /// request is answered. Beyond it clients are throttled like above; a request that
    /// alone needs more is refused as too large.
    pub max_buffered_bytes: usize,
    /// The same, for the requests of one connection (HTTP/2 carries many at once), so one
    /// client cannot take the whole `max_buffered_bytes`.
    pub max_connection_bytes: usize,
    /// Deadline for reading one request's body (and, for HTTP/1, its headers); a client
    /// slower than that is refused (HTTP 408, gRPC `DEADLINE_EXCEEDED`).
    #[serde(with = "humantime_serde")]
    pub read_timeout: std::time::Duration,
    /// Client authentication.
    pub auth: ReceiverAuthConfig,
    /// TLS on both receivers (OTLP/gRPC and OTLP/HTTP). Unset: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
}

/// `receiver.tls` and `cluster.tls`: a server's certificate, the Collector's keys. The
/// files are checked every 5 s and reloaded when they change (new connections get the new
/// certificate; open ones are not dropped).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate they signed
    /// (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// Oldest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
}

/// A TLS protocol version, as the Collector spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V1_3,
}

impl ServerTlsConfig {
    /// Checks that the certificate and key are set and that every file reads and parses,
    /// naming the key at fault.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        crate::tls::server::ServerTls::load(self, key, &[])
            .map(drop)
            .map_err(|e| ConfigError::invalid(e.key, e.reason))
    }
}

/// `receiver.auth`: who may send.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverAuthConfig {
    /// File of accepted bearer tokens, one per line (`#` comments and blank lines
    /// ignored), read again when it changes. Unset: no authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_tokens_file: Option<PathBuf>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            grpc_endpoint: ([0, 0, 0, 0], 4317).into(),
            http_endpoint: ([0, 0, 0, 0], 4318).into(),
            max_request_bytes: 64 * 1024 * 1024,
            max_concurrent_requests: 128,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_connection_bytes: 128 * 1024 * 1024,
            read_timeout: std::time::Duration::from_secs(30),
            auth: ReceiverAuthConfig::default(),
            tls: None,
        }
    }
}

/// Cluster membership and forwarding (`cluster.*`). With no `seeds` and no `dns_seed` a
/// node runs standalone and owns everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Stable, unique node name (the pod name). Empty: `$POD_NAME`, else `$HOSTNAME`, else
    /// the gossip address.
    pub node_id: String,
    /// UDP address SWIM gossip binds to.
    pub gossip_endpoint: SocketAddr,
    /// Address other nodes reach this one at: an IP (`${env:POD_IP}`) or `ip:port`. Empty:
    /// the gossip endpoint's address. Its port defaults to the gossip endpoint's.
    pub advertise_address: String,
    /// Internal OTLP/gRPC endpoint samplers accept forwarded data and handoffs on.
    pub forward_endpoint: SocketAddr,
    /// Static seeds, `host:port` of other nodes' gossip endpoints.
    pub seeds: Vec<String>,
    /// A DNS name (`name` or `name:port`) resolved periodically into seeds, e.g. the
    /// chart's headless Service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_seed: Option<String>,
    /// Shared secret sealing every gossip packet. Unset: packets are not authenticated
    /// (allowed for local use, logged as a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// File holding the secret (e.g. a mounted Kubernetes Secret); wins over `secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Virtual nodes per sampler on the consistent-hash ring.
    pub virtual_nodes: u32,
    /// Run a cluster without a secret: gossip, decision notices and forward calls are
    /// then not authenticated, and anyone who reaches the ports can join or send. Off: a
    /// node with seeds and no secret refuses to start.
    pub insecure: bool,
    /// TLS between nodes on the forward endpoint. Unset: forward calls travel in clear
    /// (still authenticated by the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClusterTlsConfig>,
}

/// `cluster.tls`: every node serves its forward endpoint with `cert_file` and calls other
/// nodes presenting the same certificate; both sides verify the other against `ca_file`
/// (mutual TLS). Nodes are dialled by IP, so the certificate is verified against
/// `server_name` when set (a name in the certificate shared by all nodes), else against
/// the IP. Files are re-read when they change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterTlsConfig {
    /// PEM certificate chain of this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that sign the nodes' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name to verify peers' certificates against instead of their IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Oldest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    pub min_version: TlsVersion,
}

impl ClusterTlsConfig {
    /// The forward endpoint's server side: this node's certificate, peers' certificates
    /// required and verified against `ca_file`.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.ca_file.clone(),
            min_version: self.min_version,
        }
    }

    /// The client side of calls to peers: trust `ca_file`, present this node's
    /// certificate, verify `server_name`.
    pub fn client(&self) -> TlsConfig {
        TlsConfig {
            insecure: false,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_name: self.server_name.clone(),
            insecure_skip_verify: false,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.ca_file.is_none() {
            return Err(ConfigError::invalid(
                "cluster.tls.ca_file",
                "is required: nodes verify each other against it",
            ));
        }
        self.server().validate("cluster.tls")?;
        crate::tls::client_config(&self.client(), "cluster.tls")
            .map_err(|e| ConfigError::invalid(e.key, e.reason))?;
        Ok(())
    }
}

/// Fewest bytes of a cluster secret: 256 bits, as generated by the chart.
pub const MIN_SECRET_BYTES: usize = 32;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: String::new(),
            gossip_endpoint: ([0, 0, 0, 0], 7946).into(),
            advertise_address: String::new(),
            forward_endpoint: ([0, 0, 0, 0], 4319).into(),
            seeds: Vec::new(),
            dns_seed: None,
            secret: None,
            secret_file: None,
            virtual_nodes: 512,
            insecure: false,
            tls: None,
        }
    }
}

impl ClusterConfig {
    /// Whether this node runs alone (no seeds of any kind).
    pub fn is_standalone(&self) -> bool {
        self.seeds.is_empty() && self.dns_seed.is_none()
    }

    /// The secret, read from `secret_file` when set (trailing newline trimmed).
    pub fn load_secret(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        if let Some(path) = &self.secret_file {
            let text = std::fs::read(path).map_err(|e| {
                ConfigError::invalid(
                    "cluster.secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let trimmed = text.strip_suffix(b"\n").unwrap_or(&text).to_vec();
            if trimmed.is_empty() {
                return Err(ConfigError::invalid("cluster.secret_file", "file is empty"));
            }
            if trimmed.len() < MIN_SECRET_BYTES {
                return Err(ConfigError::invalid(
                    "cluster.secret_file",
                    format!(
                        "the secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                        trimmed.len()
                    ),
                ));
            }
            return Ok(Some(trimmed));
        }
        Ok(self.secret.as_ref().map(|s| s.as_bytes().to_vec()))
    }

    /// The advertised gossip address: `advertise_address` (IP or `ip:port`) or the gossip
    /// endpoint itself.
    pub fn advertise(&self) -> Result<SocketAddr, ConfigError> {
        let text = self.advertise_address.trim();
        if text.is_empty() {
            return Ok(self.gossip_endpoint);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        text.parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, self.gossip_endpoint.port()))
            .map_err(|_| {
                ConfigError::invalid(
                    "cluster.advertise_address",
                    format!("`{text}` is not an IP address or ip:port"),
                )
            })
    }

    /// The node id: `node_id`, else `$POD_NAME`, else `$HOSTNAME`, else the advertised address.
    pub fn resolved_node_id(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        if !self.node_id.is_empty() {
            return Ok(self.node_id.clone());
        }
        for var in ["POD_NAME", "HOSTNAME"] {
            if let Some(v) = env(var).filter(|v| !v.is_empty()) {
                return Ok(v);
            }
        }
        Ok(self.advertise()?.to_string())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.advertise()?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        if self.virtual_nodes == 0 {
            return Err(ConfigError::invalid(
                "cluster.virtual_nodes",
                "must be greater than 0",
            ));
        }
        if let Some(secret) = &self.secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(ConfigError::invalid(
                "cluster.secret",
                format!(
                    "is {} bytes; at least {MIN_SECRET_BYTES} are needed (e.g. `openssl rand -hex 32`)",
                    secret.len()
                ),
            ));
        }
        for (i, seed) in self.seeds.iter().enumerate() {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ConfigError::invalid(
                    format!("cluster.seeds[{i}]"),
                    format!("`{seed}` is not host:port"),
                ));
            }
        }
        if !self.is_standalone()
            && self.secret.is_none()
            && self.secret_file.is_none()
            && !self.insecure
        {
            return Err(ConfigError::invalid(
                "cluster.secret",
                "a cluster needs a shared secret (cluster.secret or cluster.secret_file, at least 32 bytes) to authenticate gossip and forward calls; set cluster.insecure: true to run without",
            ));
        }
        Ok(())
    }
}

/// Tail-sampling settings (`sampler.*`). The keys that the OpenTelemetry Collector's
/// `tail_sampling` processor uses keep its names and meaning, so its block can be pasted here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Directory of the RocksDB buffer and export queue.
    pub storage_dir: PathBuf,
    /// Buffered bytes on disk above which receivers throttle clients (retryable errors).
    pub max_storage_bytes: u64,
    /// Free bytes to leave on the filesystem of `storage_dir`: below it new data is
    /// throttled (retryable) until space returns, so RocksDB never meets a full disk.
    /// 0: no reserve.
    pub min_free_disk_bytes: u64,
    /// Memory for the buffer's RocksDB memtables. Recent requests stay in memory up to
    /// about three eighths of this before they are flushed; a trace decided (and forgotten)
    /// within that window is never written to a file. Requests flushed before their traces
    /// are decided go to blob files, which compaction does not rewrite, so a smaller value
    /// costs one sequential disk write of what outlived it, not repeated compaction.
    pub buffer_memory_bytes: u64,
    /// fsync the WAL on every write. Off: acknowledged data survives a process crash
    /// (`kill -9`) but not a power loss.
    pub sync_writes: bool,
    /// Quiet time after a trace's last span before it is decided.
    #[serde(with = "humantime_serde")]
    pub decision_wait: Duration,
    /// Once the root span is seen, decide after this long instead (if shorter).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub decision_wait_after_root_received: Option<Duration>,
    /// Bound on traces held at once; when full the trace nearest its deadline is decided early.
    pub num_traces: usize,
    /// Accepted for Collector compatibility; a sizing hint this implementation does not need.
    pub expected_new_traces_per_sec: u64,
    /// Sizes of the caches that let late spans follow an earlier decision.
    pub decision_cache: DecisionCacheConfig,
    /// Stop evaluating at the first policy that samples.
    pub sample_on_first_match: bool,
    /// A trace whose buffered spans exceed this many bytes is dropped at once, without waiting
    /// for a decision, and later spans of it follow that decision (the Collector's meaning).
    /// 0: no limit.
    pub maximum_trace_size_bytes: u64,
    /// A trace is decided once it has this many spans, with what it has; later spans
    /// follow the decision. 0: no limit.
    pub max_spans_per_trace: u32,
    /// A trace is decided this long after its first span at the latest, even while spans
    /// keep arriving; later spans follow the decision. Absent: 5 × `decision_wait`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_trace_age: Option<Duration>,
    /// When `num_traces` traces are buffered, throttle clients (retryable errors) instead of
    /// deciding the trace nearest its deadline early.
    pub block_on_overflow: bool,
    /// On shutdown, forget traces still waiting for a decision instead of keeping them on disk
    /// for the next start.
    pub drop_pending_traces_on_shutdown: bool,
    /// The Collector's `sampling_strategy`; see [`SamplingStrategy`].
    pub sampling_strategy: SamplingStrategy,
    /// Accepted for Collector compatibility (1 to 256): the Collector splits its limits across
    /// this many event loops so their totals stay those configured; this sampler applies the
    /// same totals without shards.
    pub num_shards: u32,
    /// Accepted for Collector compatibility: the Collector's storage extension for pending
    /// spans. This sampler always buffers pending spans on disk (`storage_dir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tail_storage: Option<String>,
    /// Policies in the Collector `tail_sampling` syntax. Absent: keep traces with an error
    /// span plus a 10% probabilistic baseline, so a bare sampler does something useful.
    pub policies: Vec<PolicyConfig>,
    /// How often the config file is checked for changes to reload (`0s`: only on SIGHUP).
    /// A reload applies a changed policy set to traces decided from then on; other keys
    /// need a restart. For Kubernetes, where a ConfigMap update reaches the pod as a file
    /// change and nobody sends SIGHUP.
    #[serde(with = "humantime_serde")]
    pub config_watch_interval: Duration,
}

/// When decisions are made (`sampler.sampling_strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SamplingStrategy {
    /// Decide `decision_wait` after the trace's last span, with the whole trace seen.
    #[default]
    #[serde(rename = "trace-complete")]
    TraceComplete,
    /// The Collector decides as spans arrive. This sampler already evaluates policies as
    /// spans arrive and decides on the same schedule as `trace-complete`; the value is
    /// accepted so a Collector block loads, and, as in the Collector, refuses the policies
    /// whose outcome depends on when the decision is made (`rate_limiting`, `bytes_limiting`,
    /// `composite`).
    #[serde(rename = "span-ingest")]
    SpanIngest,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            storage_dir: PathBuf::from("otel-tail-data"),
            max_storage_bytes: 4 * 1024 * 1024 * 1024,
            min_free_disk_bytes: 256 * 1024 * 1024,
            buffer_memory_bytes: 64 * 1024 * 1024,
            sync_writes: false,
            decision_wait: Duration::from_secs(30),
            decision_wait_after_root_received: None,
            num_traces: 50_000,
            expected_new_traces_per_sec: 0,
            decision_cache: DecisionCacheConfig::default(),
            sample_on_first_match: false,
            maximum_trace_size_bytes: 0,
            max_spans_per_trace: 100_000,
            max_trace_age: None,
            block_on_overflow: false,
            drop_pending_traces_on_shutdown: false,
            sampling_strategy: SamplingStrategy::TraceComplete,
            num_shards: 1,
            tail_storage: None,
            policies: default_policies(),
            config_watch_interval: Duration::ZERO,
        }
    }
}

/// The policies used when `sampler.policies` is absent.
fn default_policies() -> Vec<PolicyConfig> {
    serde_json::from_value(serde_json::json!([
        {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
        {"name": "baseline", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}},
    ]))
    .expect("default policies are valid")
}

/// Largest `receiver.max_request_bytes` accepted: a buffered item's length must fit the
/// 30 bits the sampler's index gives it, with room to spare.
pub const MAX_REQUEST_BYTES: usize = 512 * 1024 * 1024;

/// Smallest `sampler.buffer_memory_bytes` accepted.
pub const MIN_BUFFER_MEMORY_BYTES: u64 = 16 * 1024 * 1024;

impl SamplerConfig {
    /// The effective maximum trace age: `max_trace_age`, else 5 × `decision_wait`.
    pub fn effective_max_trace_age(&self) -> Duration {
        self.max_trace_age
            .unwrap_or_else(|| self.decision_wait.saturating_mul(5))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.buffer_memory_bytes < MIN_BUFFER_MEMORY_BYTES {
            return Err(ConfigError::invalid(
                "sampler.buffer_memory_bytes",
                format!("must be at least {MIN_BUFFER_MEMORY_BYTES} (16 MiB)"),
            ));
        }
        if let Some(age) = self.max_trace_age
            && age < self.decision_wait
        {
            return Err(ConfigError::invalid(
                "sampler.max_trace_age",
                "must be at least sampler.decision_wait",
            ));
        }
        if self.policies.is_empty() {
            return Err(ConfigError::invalid(
                "sampler.policies",
                "at least one policy is required (with none, every trace would be dropped)",
            ));
        }
        if self.decision_wait.is_zero() {
            return Err(ConfigError::invalid(
                "sampler.decision_wait",
                "must be greater than 0",
            ));
        }
        if self.num_traces == 0 {
            return Err(ConfigError::invalid(
                "sampler.num_traces",
                "must be greater than 0",
            ));
        }
        if !(1..=256).contains(&self.num_shards) {
            return Err(ConfigError::invalid(
                "sampler.num_shards",
                format!("must be from 1 to 256, got {}", self.num_shards),
            ));
        }
        if self.tail_storage.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "sampler.tail_storage",
                "must name a storage extension, or be omitted",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.policies.iter().enumerate() {
            p.validate(&format!("sampler.policies[{i}]"))?;
            if self.sampling_strategy == SamplingStrategy::SpanIngest
                && let Some(stateful) = p.stateful_type()
            {
                return Err(ConfigError::invalid(
                    format!("sampler.policies[{i}]"),
                    format!(
                        "`{}` policies keep state across decisions and are not supported with \
                         sampling_strategy: span-ingest",
                        stateful.as_str()
                    ),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("sampler.policies[{i}].name"),
                    format!("duplicate policy name `{}`", p.name),
                ));
            }
        }
        Ok(())
    }
}

/// `sampler.decision_cache.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCacheConfig {
    /// Trace ids remembered as kept.
    pub sampled_cache_size: usize,
    /// Trace ids remembered as dropped.
    pub non_sampled_cache_size: usize,
}

impl Default for DecisionCacheConfig {
    fn default() -> Self {
        DecisionCacheConfig {
            sampled_cache_size: 100_000,
            non_sampled_cache_size: 100_000,
        }
    }
}

/// Downstream exporters (`exporter.*`). Any combination may be set; with none the sampler
/// writes to a file under its storage directory.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExporterConfig {
    /// OTLP/gRPC exporter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpGrpcExporterConfig>,
    /// OTLP/HTTP exporter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlphttp: Option<OtlpHttpExporterConfig>,
    /// OTLP JSON lines file exporter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileExporterConfig>,
    /// Disk-backed queue in front of every exporter.
    pub queue: QueueConfig,
    /// Retry and backoff of failed exports.
    pub retry: RetryConfig,
}

impl ExporterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self
            .otlp
            .as_ref()
            .is_some_and(|otlp| otlp.endpoint.is_empty())
        {
            return Err(ConfigError::invalid(
                "exporter.otlp.endpoint",
                "must not be empty",
            ));
        }
        if let Some(otlp) = &self.otlp {
            otlp.tls.validate("exporter.otlp.tls")?;
            resolve_headers(
                &otlp.headers,
                &otlp.headers_from_files,
                "exporter.otlp.headers_from_files",
            )?;
        }
        if let Some(http) = &self.otlphttp {
            if !(http.endpoint.starts_with("http://") || http.endpoint.starts_with("https://")) {
                return Err(ConfigError::invalid(
                    "exporter.otlphttp.endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
            http.tls.validate("exporter.otlphttp.tls")?;
            resolve_headers(
                &http.headers,
                &http.headers_from_files,
                "exporter.otlphttp.headers_from_files",
            )?;
        }
        if self.queue.max_bytes == 0 {
            return Err(ConfigError::invalid(
                "exporter.queue.max_bytes",
                "must be greater than 0",
            ));
        }
        if self.retry.initial_interval.is_zero()
            || self.retry.max_interval < self.retry.initial_interval
        {
            return Err(ConfigError::invalid(
                "exporter.retry",
                "initial_interval must be > 0 and max_interval >= initial_interval",
            ));
        }
        Ok(())
    }
}

/// Payload compression on the wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, the OTLP default.
    #[default]
    Gzip,
    /// No compression.
    None,
}

/// The headers of an exporter: `headers`, then `headers_from_files` read now (key path
/// `key` names the map in errors).
pub fn resolve_headers(
    headers: &BTreeMap<String, String>,
    from_files: &BTreeMap<String, PathBuf>,
    key: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut all = headers.clone();
    for (name, path) in from_files {
        let value = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(
                format!("{key}.{name}"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        all.insert(name.clone(), value.trim_end().to_owned());
    }
    Ok(all)
}

/// `exporter.otlp.tls` / `exporter.otlphttp.tls`, the Collector's keys. An `https://`
/// endpoint (or, for gRPC, a bare `host:port` without `insecure`) is reached over TLS,
/// verified against the system's root certificates unless `ca_file` names others.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Plaintext gRPC (no TLS) for a bare `host:port` endpoint.
    pub insecure: bool,
    /// PEM file of the CA certificates to trust instead of the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against (and send as SNI) instead of the
    /// endpoint's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any server certificate. Only for tests: the connection is encrypted but
    /// anyone can impersonate the server.
    pub insecure_skip_verify: bool,
}

impl TlsConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::invalid(
                format!("{key}.cert_file"),
                "cert_file and key_file go together (mutual TLS)",
            ));
        }
        for (name, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err(ConfigError::invalid(
                    format!("{key}.{name}"),
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(())
    }
}

/// `exporter.otlp`: OTLP/gRPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpGrpcExporterConfig {
    /// `host:port` or URL of the downstream OTLP/gRPC receiver.
    pub endpoint: String,
    /// Extra request metadata, e.g. an API key.
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files (e.g. a mounted Kubernetes Secret), so
    /// credentials stay out of the config; trailing whitespace is trimmed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from_files: BTreeMap<String, PathBuf>,
    /// Transport security.
    pub tls: TlsConfig,
    /// Request compression.
    pub compression: Compression,
    /// Per-request deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// `exporter.otlphttp`: OTLP/HTTP protobuf.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpHttpExporterConfig {
    /// Base URL; `/v1/traces`, `/v1/logs` and `/v1/metrics` are appended.
    pub endpoint: String,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files (e.g. a mounted Kubernetes Secret), so
    /// credentials stay out of the config; trailing whitespace is trimmed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from_files: BTreeMap<String, PathBuf>,
    /// Request compression.
    pub compression: Compression,
    /// Per-request deadline.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// TLS for `https://` endpoints.
    pub tls: TlsConfig,
}

impl Default for OtlpGrpcExporterConfig {
    fn default() -> Self {
        OtlpGrpcExporterConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            headers_from_files: BTreeMap::new(),
            tls: TlsConfig::default(),
            compression: Compression::Gzip,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Default for OtlpHttpExporterConfig {
    fn default() -> Self {
        OtlpHttpExporterConfig {
            endpoint: String::new(),
            headers: BTreeMap::new(),
            headers_from_files: BTreeMap::new(),
            compression: Compression::Gzip,
            timeout: Duration::from_secs(10),
            tls: TlsConfig::default(),
        }
    }
}

/// `exporter.file`: one OTLP JSON export request per line, like the Collector's file exporter.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileExporterConfig {
    /// File to append to.
    pub path: PathBuf,
}

/// `exporter.queue`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Bytes queued on disk per exporter above which receivers throttle clients.
    pub max_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// `exporter.retry`: exponential backoff between attempts; a server's RetryInfo or
/// `Retry-After` overrides the computed delay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First delay after a failure.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
        }
    }
}

/// `telemetry.*`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Admin HTTP address: `/metrics`, `/healthz`, `/readyz`.
    pub admin_endpoint: SocketAddr,
    /// Log filter (`info`, `debug`, or a `tracing` directive); `RUST_LOG` wins when set.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            admin_endpoint: ([0, 0, 0, 0], 8888).into(),
            log_level: "info".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
