//! Fuzzing of every decoder that reads bytes from outside the process.
//!
//! Each [`Target`] feeds one input to one decoder exactly as the product calls it: OTLP
//! request bodies (protobuf, JSON, gzip) as the receivers decode them, the router's wire
//! splitter for all three signals, gossip datagrams through a whole gossip node (sealed and
//! plain), and the forward endpoint's own messages (handed-off decisions, decision notices,
//! the call credential). Inputs come from a seed corpus of valid messages the product
//! produces, mutated (bit flips, interesting bytes, inserted, deleted, duplicated and
//! spliced ranges, huge length varints, truncation), and from plain random bytes.
//!
//! A run passes when no input panics and no input makes a decoder allocate more than
//! [`MAX_CASE_ALLOCATION`] at once; [`PeakAlloc`] measures the peak per input when the
//! running binary installs it as its global allocator. Runs are deterministic for a seed,
//! so a failure reproduces with the seed and case number it reports (and the input is saved).
//! `otel-tail-fuzz --cases 100000` is the long run; `tests/fuzz.rs` is CI's short pass.

use std::io::Write as _;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otel_tail_proto::v1 as pb;
use otel_tail_sampler::correlation::fanout;
use otel_tail_sampler::engine::wire;
use otel_tail_shared::forward::auth::{ForwardAuth, ReplayGuard};
use otel_tail_shared::membership::DatagramProbe;
use otel_tail_shared::otlp::{self, Signal};
use otel_tail_shared::receiver::http::{DecodedBody, decode_body};
use otel_tail_shared::split::{self, RouteKey};
use prost::Message as _;

use crate::generate::{Generator, Rng, TraceShape};

/// Most bytes one input may have a decoder hold at once (the receivers' 4 MiB inflate
/// limit used here, plus decoded structures).
pub const MAX_CASE_ALLOCATION: usize = 64 << 20;
/// Longest generated input.
const MAX_INPUT: usize = 64 << 10;
/// Inflate limit the gzip target decodes with.
const INFLATE_LIMIT: usize = 4 << 20;
/// The cluster secret of the sealed targets.
const SECRET: &[u8] = b"fuzzing-secret-0123456789abcdef-0123456789";
/// Method path the credential target verifies for.
const DECISIONS_PATH: &str = "/otel_tail.v1.Handoff/Decisions";

/// The allocator that measures peak live bytes; the binary running the fuzz targets
/// installs it with `#[global_allocator]` so [`Report::max_case_allocation`] is measured.
pub use peak_alloc::PeakAlloc;

/// Whether the running binary measures allocations (installed [`PeakAlloc`]).
fn tracking() -> bool {
    PeakAlloc.current_usage() > 0
}

/// Runs `f`, returning the most bytes it held at once beyond what was live before.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = PeakAlloc.current_usage();
    PeakAlloc.reset_peak_usage();
    let out = f();
    (out, PeakAlloc.peak_usage().saturating_sub(base))
}

/// What one decoder made of one input.
type Outcome = Result<(), String>;
/// A decoder fed one input.
type Decoder = Box<dyn FnMut(&[u8]) -> Outcome>;

/// One decoder under test, with the state it needs between inputs.
pub struct Target {
    /// Stable name (`--target` selects by it).
    pub name: &'static str,
    seeds: Vec<Vec<u8>>,
    run: Decoder,
}

/// Totals of one target's run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Target name.
    pub name: &'static str,
    /// Inputs fed.
    pub cases: u64,
    /// Inputs the decoder accepted.
    pub accepted: u64,
    /// Inputs it refused with an error.
    pub refused: u64,
    /// Largest peak allocation of one input, bytes (0 without [`PeakAlloc`]).
    pub max_case_allocation: usize,
    /// Length of the input that allocated the most.
    pub max_case_input_len: usize,
}

/// A failing input: a panic or an allocation beyond the bound.
#[derive(Debug)]
pub struct Failure {
    /// Target name.
    pub target: &'static str,
    /// Run seed and case number that reproduce it.
    pub seed: u64,
    /// Case number within the run.
    pub case: u64,
    /// What went wrong.
    pub what: String,
    /// Where the input was saved.
    pub saved: PathBuf,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: case {} of seed {}: {} (input saved to {})",
            self.target,
            self.case,
            self.seed,
            self.what,
            self.saved.display()
        )
    }
}

impl Target {
    /// Feeds `cases` inputs derived from `seed`; stops at the first failure.
    pub fn run(&mut self, cases: u64, seed: u64) -> Result<Report, Failure> {
        let mut rng = Rng::new(Rng::new(seed ^ name_hash(self.name)).next_u64());
        let mut report = Report {
            name: self.name,
            ..Report::default()
        };
        let tracking = tracking();
        for case in 0..cases {
            let input = self.input(&mut rng);
            let run = &mut self.run;
            let (outcome, peak) = measured(|| catch_unwind(AssertUnwindSafe(|| run(&input))));
            let what = match outcome {
                Err(panic) => Some(format!("panicked: {}", panic_message(&panic))),
                Ok(_) if tracking && peak > MAX_CASE_ALLOCATION => Some(format!(
                    "allocated {peak} bytes at once for a {}-byte input",
                    input.len()
                )),
                Ok(Ok(())) => {
                    report.accepted += 1;
                    None
                }
                Ok(Err(_)) => {
                    report.refused += 1;
                    None
                }
            };
            if let Some(what) = what {
                return Err(Failure {
                    target: self.name,
                    seed,
                    case,
                    what,
                    saved: save(self.name, seed, case, &input),
                });
            }
            report.cases += 1;
            if peak > report.max_case_allocation {
                report.max_case_allocation = peak;
                report.max_case_input_len = input.len();
            }
        }
        Ok(report)
    }

    /// One input: a seed as it is, a mutated seed, or random bytes.
    fn input(&self, rng: &mut Rng) -> Vec<u8> {
        let choice = rng.below(16);
        if choice == 0 || self.seeds.is_empty() {
            let len = rng.below(2048);
            return (0..len).map(|_| rng.next_u64() as u8).collect();
        }
        let mut input = self.seeds[rng.below(self.seeds.len())].clone();
        if choice == 1 {
            return input;
        }
        for _ in 0..1 + rng.below(8) {
            mutate(&mut input, &self.seeds, rng);
        }
        input.truncate(MAX_INPUT);
        input
    }
}

/// Applies one random mutation.
fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Rng) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x1a];
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(64)).min(len);
            input.drain(at..end);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(256)).min(len);
            let copy = input[at..end].to_vec();
            let to = rng.below(len + 1);
            input.splice(to..to, copy);
        }
        5 if len > 0 => input.truncate(rng.below(len)),
        6 if !seeds.is_empty() => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(512)).min(other.len());
                let at = rng.below(len + 1);
                input.splice(at..at, other[from..end].iter().copied());
            }
        }
        7 => {
            // A length or count varint claiming far more than follows.
            let at = rng.below(len + 1);
            input.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ if len > 1 => {
            // Repeat a field-sized chunk many times (many empty items).
            let at = rng.below(len);
            let end = (at + 2).min(len);
            let chunk = input[at..end].to_vec();
            let times = 1 + rng.below(512);
            let to = rng.below(len + 1);
            input.splice(
                to..to,
                chunk.iter().copied().cycle().take(chunk.len() * times),
            );
        }
        _ => input.push(rng.next_u64() as u8),
    }
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

fn save(name: &str, seed: u64, case: u64, input: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("otel-tail-fuzz-{name}-{seed}-{case}.bin"));
    if let Ok(mut file) = std::fs::File::create(&path) {
        let _ = file.write_all(input);
    }
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder
        .write_all(bytes)
        .expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// Valid requests of all three signals, in several sizes.
struct Corpus {
    traces: Vec<ExportTraceServiceRequest>,
    logs: Vec<ExportLogsServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

fn corpus() -> Corpus {
    let now = 1_767_225_600_000_000_000;
    let mut corpus = Corpus {
        traces: Vec::new(),
        logs: Vec::new(),
        metrics: Vec::new(),
    };
    for (seed, spans) in [(1, 1), (2, 5), (3, 40)] {
        let mut generator = Generator::new(
            seed,
            TraceShape {
                spans_per_trace: 3,
                error_share: 0.3,
                logs_per_trace: 1,
            },
        );
        let batch = generator.trace_batch(spans, now);
        corpus.traces.push(batch.traces);
        corpus.logs.push(batch.logs);
        corpus.logs.push(generator.traceless_logs(3, now));
        corpus.metrics.push(generator.metrics(spans, now));
    }
    corpus
}

fn encoded<M: prost::Message>(messages: &[M]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.encode_to_vec()).collect()
}

fn json<M: serde::Serialize>(messages: &[M]) -> Vec<Vec<u8>> {
    messages
        .iter()
        .map(|m| serde_json::to_vec(m).expect("OTLP requests serialize"))
        .collect()
}

/// A receiver body decoder: `json` or protobuf, optionally gzip.
fn body_target(
    name: &'static str,
    signal: Signal,
    json: bool,
    gzip: bool,
    seeds: Vec<Vec<u8>>,
) -> Target {
    Target {
        name,
        seeds,
        run: Box::new(move |input| {
            match decode_body(signal, input, json, gzip, INFLATE_LIMIT)? {
                DecodedBody::Traces(mut request) => {
                    otlp::sanitize_traces(&mut request);
                    otlp::span_count(&request);
                }
                DecodedBody::Logs(mut request) => {
                    otlp::sanitize_logs(&mut request);
                    otlp::log_count(&request);
                }
                DecodedBody::Metrics(request) => {
                    otlp::data_point_count(&request);
                }
            }
            Ok(())
        }),
    }
}

/// The receivers' budget estimate of a body's decoded size ([`split::decoded_footprint`],
/// [`split::json_decoded_footprint`]) against what decoding it really allocates: an
/// input that decodes having allocated more than its footprint (measured where
/// [`PeakAlloc`] is installed), or that decodes although the walk refused it, fails the run.
fn footprint_target(name: &'static str, signal: Signal, json: bool, seeds: Vec<Vec<u8>>) -> Target {
    Target {
        name,
        seeds,
        run: Box::new(move |input| {
            let footprint = if json {
                split::json_decoded_footprint(input)
            } else {
                match split::decoded_footprint(signal, input, split::Spans::Whole) {
                    Ok(footprint) => footprint,
                    Err(error) => {
                        // What the walk refuses, decoding must refuse too: the receivers
                        // walk first and would otherwise turn good requests away.
                        let decoded = decode_body(signal, input, false, false, INFLATE_LIMIT);
                        assert!(
                            decoded.is_err(),
                            "the walk refused a decodable body: {error}"
                        );
                        return Err(error.to_string());
                    }
                }
            };
            let (decoded, allocated) =
                measured(|| decode_body(signal, input, json, false, INFLATE_LIMIT));
            decoded?;
            assert!(
                !tracking() || allocated <= footprint,
                "decoding allocated {allocated} bytes, its footprint is {footprint}"
            );
            Ok(())
        }),
    }
}

/// The decoded-size estimate of a sampler's slim read of spans ([`split::Spans::Slim`])
/// against what that read ([`wire::parse`]) really allocates; as [`footprint_target`].
fn slim_footprint_target(seeds: Vec<Vec<u8>>) -> Target {
    Target {
        name: "footprint-slim-traces",
        seeds,
        run: Box::new(move |input| {
            let body = bytes::Bytes::copy_from_slice(input);
            let footprint =
                match split::decoded_footprint(Signal::Traces, input, split::Spans::Slim) {
                    Ok(footprint) => footprint,
                    Err(error) => {
                        let parsed = wire::parse(body, wire::SpanNeeds::Fixed);
                        assert!(parsed.is_err(), "the walk refused a readable body: {error}");
                        return Err(error.to_string());
                    }
                };
            let (parsed, allocated) = measured(|| wire::parse(body, wire::SpanNeeds::Fixed));
            parsed?;
            assert!(
                !tracking() || allocated <= footprint,
                "reading spans allocated {allocated} bytes, their footprint is {footprint}"
            );
            Ok(())
        }),
    }
}

/// The router's wire splitter for one signal, among three owners.
fn split_target(name: &'static str, signal: Signal, seeds: Vec<Vec<u8>>) -> Target {
    fn owner(key: RouteKey<'_>) -> usize {
        match key {
            RouteKey::Trace(id) => usize::from(id[0]) % 3,
            RouteKey::Key(key) => key.len() % 3,
        }
    }
    let mut splitter = split::Splitter::new();
    Target {
        name,
        seeds,
        run: Box::new(move |input| {
            let split = match signal {
                Signal::Traces => splitter.wire_traces_by_owner(input, 3, owner),
                Signal::Logs => splitter.wire_logs_by_owner(input, 3, owner),
                Signal::Metrics => splitter.wire_metrics_by_owner(input, 3, owner),
            }
            .map_err(|e| e.to_string())?;
            // What the router forwards must be no larger than what it was given, plus
            // the container headers it rewrites.
            let out: usize = split.parts.iter().map(|p| p.len()).sum();
            assert!(
                out <= input.len() * 2 + 64,
                "split {} bytes into {out}",
                input.len()
            );
            Ok(())
        }),
    }
}

/// Datagrams two gossip nodes exchange while one joins the other.
fn gossip_seeds(secret: Option<&[u8]>) -> Vec<Vec<u8>> {
    let a: SocketAddr = "127.0.0.1:17946".parse().expect("literal address");
    let b: SocketAddr = "127.0.0.1:17947".parse().expect("literal address");
    let mut nodes = [
        DatagramProbe::new("seed-a", a, secret),
        DatagramProbe::new("seed-b", b, secret),
    ];
    let mut seeds = Vec::new();
    let mut in_flight = nodes[1].announce(a);
    for _ in 0..8 {
        let mut next = Vec::new();
        for (to, datagram) in in_flight {
            seeds.push(datagram.clone());
            let node = if to == a { 0 } else { 1 };
            next.extend(nodes[node].receive(&datagram).1);
        }
        in_flight = next;
    }
    seeds
}

/// A gossip node receiving every input as a datagram.
fn gossip_target(name: &'static str, secret: Option<&'static [u8]>) -> Target {
    let seeds = gossip_seeds(secret);
    let address: SocketAddr = "127.0.0.1:17946".parse().expect("literal address");
    let mut probe = DatagramProbe::new("fuzzed", address, secret);
    Target {
        name,
        seeds,
        run: Box::new(move |input| probe.receive(input).0),
    }
}

fn notice_batches() -> Vec<pb::NoticeBatch> {
    let mut rng = Rng::new(7);
    (0..3)
        .map(|n| pb::NoticeBatch {
            origin: format!("sampler-{n}"),
            sent_at_unix_nano: 1_767_225_600_000_000_000,
            notices: (0..n * 3 + 1)
                .map(|i| pb::DecisionNotice {
                    trace_id: rng.trace_id(),
                    resources: vec![pb::ResourceIdentity {
                        service_name: format!("svc-{i}"),
                        service_instance_id: format!("pod-{i}"),
                        ..Default::default()
                    }],
                    start_time_unix_nano: 1_767_225_600_000_000_000,
                    end_time_unix_nano: 1_767_225_601_000_000_000,
                    policy: "errors".into(),
                    correlate: i % 2 == 0,
                })
                .collect(),
            sealed: None,
        })
        .collect()
}

/// Every decoder of untrusted input, each seeded with valid messages.
pub fn targets() -> Vec<Target> {
    let corpus = corpus();
    let traces = encoded(&corpus.traces);
    let logs = encoded(&corpus.logs);
    let metrics = encoded(&corpus.metrics);
    let notice_key = fanout::notice_key(SECRET);
    let notice_seeds: Vec<Vec<u8>> = notice_batches()
        .into_iter()
        .flat_map(|batch| {
            [
                fanout::seal(batch.clone(), Some(&notice_key)).encode_to_vec(),
                batch.encode_to_vec(),
            ]
        })
        .collect();
    let mut rng = Rng::new(11);
    let decision_seeds: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            pb::DecisionBatch {
                origin: format!("sampler-{n}"),
                decisions: (0..n * 4 + 1)
                    .map(|i| pb::TraceDecision {
                        trace_id: rng.trace_id(),
                        sampled: i % 2 == 0,
                        policy: "latency".into(),
                        probability: (i % 3 == 0).then_some(0.25),
                        correlate: i % 4 == 0,
                    })
                    .collect(),
            }
            .encode_to_vec()
        })
        .collect();
    let auth = ForwardAuth::new(SECRET);
    let now_ms = 1_767_225_600_000;
    let credential_seeds: Vec<Vec<u8>> = (0..4)
        .map(|i| auth.credential(DECISIONS_PATH, now_ms + i).into_bytes())
        .collect();
    let guard = ReplayGuard::default();
    let now_ns: u64 = 1_767_225_600_000_000_000;
    let notice_guard = ReplayGuard::default();

    vec![
        body_target(
            "otlp-protobuf-traces",
            Signal::Traces,
            false,
            false,
            traces.clone(),
        ),
        body_target(
            "otlp-protobuf-logs",
            Signal::Logs,
            false,
            false,
            logs.clone(),
        ),
        body_target(
            "otlp-protobuf-metrics",
            Signal::Metrics,
            false,
            false,
            metrics.clone(),
        ),
        body_target(
            "otlp-json-traces",
            Signal::Traces,
            true,
            false,
            json(&corpus.traces),
        ),
        body_target(
            "otlp-json-logs",
            Signal::Logs,
            true,
            false,
            json(&corpus.logs),
        ),
        body_target(
            "otlp-json-metrics",
            Signal::Metrics,
            true,
            false,
            json(&corpus.metrics),
        ),
        body_target(
            "otlp-gzip-traces",
            Signal::Traces,
            false,
            true,
            traces.iter().map(|t| gzip(t)).collect(),
        ),
        footprint_target("footprint-traces", Signal::Traces, false, traces.clone()),
        footprint_target("footprint-logs", Signal::Logs, false, logs.clone()),
        footprint_target("footprint-metrics", Signal::Metrics, false, metrics.clone()),
        slim_footprint_target(traces.clone()),
        footprint_target(
            "footprint-json-traces",
            Signal::Traces,
            true,
            json(&corpus.traces),
        ),
        footprint_target(
            "footprint-json-logs",
            Signal::Logs,
            true,
            json(&corpus.logs),
        ),
        footprint_target(
            "footprint-json-metrics",
            Signal::Metrics,
            true,
            json(&corpus.metrics),
        ),
        split_target("split-traces", Signal::Traces, traces),
        split_target("split-logs", Signal::Logs, logs),
        split_target("split-metrics", Signal::Metrics, metrics),
        gossip_target("gossip-sealed", Some(SECRET)),
        gossip_target("gossip-plain", None),
        Target {
            name: "forward-decisions",
            seeds: decision_seeds,
            run: Box::new(|input| {
                let batch = pb::DecisionBatch::decode(input).map_err(|e| e.to_string())?;
                let valid = batch
                    .decisions
                    .iter()
                    .filter(|d| otlp::trace_id(&d.trace_id).is_some())
                    .count();
                (valid == batch.decisions.len())
                    .then_some(())
                    .ok_or_else(|| "invalid trace ids".to_owned())
            }),
        },
        Target {
            name: "forward-notices",
            seeds: notice_seeds,
            run: Box::new(move |input| {
                let batch = pb::NoticeBatch::decode(input).map_err(|e| e.to_string())?;
                let batch = fanout::open(batch, Some(&notice_key), now_ns, &notice_guard)
                    .map_err(|e| e.to_string())?;
                let received = fanout::receive(batch, now_ns);
                (received.rejected == 0)
                    .then_some(())
                    .ok_or_else(|| format!("{} notices rejected", received.rejected))
            }),
        },
        Target {
            name: "forward-credential",
            seeds: credential_seeds,
            run: Box::new(move |input| {
                auth.verify(DECISIONS_PATH, Some(input), now_ms, &guard)
                    .map_err(|e| e.to_string())
            }),
        },
    ]
}
