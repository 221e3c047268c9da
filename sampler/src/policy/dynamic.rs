//! Dynamic sampling: Refinery's `EMADynamicSampler`, `EMAThroughputSampler` and
//! `WindowedThroughputSampler` as the policy types `ema_dynamic`, `ema_throughput` and
//! `windowed_throughput`.
//!
//! A trace's **key** is built the way Refinery builds it: for each of the policy's
//! `key_fields`, the distinct values that field takes over the trace's spans (a `root.` prefix:
//! the root span only), as a set, in field order; optionally the span count. Values are
//! compared as text, so the integer `200` and the string `"200"` are the same value. The
//! values are collected as spans arrive ([`KeyValues`], part of the trace's policy state,
//! capped at [`MAX_KEY_VALUES`] like Refinery's key), so a decision still needs no read-back.
//!
//! Each policy counts spans per key and turns the counts into per-key **sample rates** (keep
//! 1 trace in N) at each interval; rarer keys get lower rates:
//! - `ema_dynamic` / `ema_throughput` ([`EmaRates`]): an exponential moving average of each
//!   key's count per interval; every key gets a budget proportional to `log10` of its average
//!   (so rare keys are kept whole and frequent keys share what is left); the total budget is
//!   `sum / goal_sample_rate` or `goal_throughput_per_sec × interval`. Keys are visited from
//!   rarest to most frequent, so budget a rare key does not need goes to those that do (the
//!   order is the one thing we choose differently: dynsampler-go visits keys alphabetically).
//! - `windowed_throughput` ([`WindowedRates`]): counts per `update_frequency` bucket, summed
//!   over `lookback_frequency`; the goal over that window is split equally between its keys.
//!
//! As in Refinery, a key never seen before is kept at rate 1, traffic-free intervals leave the
//! averages alone, and before the first adjustment the EMA samplers use `goal_sample_rate` /
//! `initial_sample_rate`. Unlike Refinery, keys beyond `max_keys` are not each kept at rate 1
//! (a flood of new keys would be kept whole): they are counted and sampled together under one
//! overflow key.
//!
//! The keep decision is a deterministic function of the trace id (FNV-1a of the policy name
//! and the id below `2^64 / rate`), so every node and every late span agrees with it, and two
//! dynamic policies with different names sample independently (an `and` of them multiplies
//! their probabilities, as the engine records). The rate goes on kept spans as `SampleRate`
//! and tracestate `ot=th:` (probability `1 / rate`).
//!
//! Throughput goals are cluster-wide: [`DynamicPolicy::set_share`] scales them to this node's
//! share of the ring (`1 / samplers`), which the engine is told on every ring change.
//!
//! Everything here is pure: time is passed in (`now_unix_nano`).

use std::collections::{HashMap, VecDeque};

use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use otel_tail_shared::config::PolicyConfig;
use otel_tail_shared::config::policy::PolicyType;
use otel_tail_shared::otlp::TraceId;

use super::{Facts, Node, Outcome, PolicyError, Verdict, fnv1a_64};

#[cfg(test)]
mod tests;

/// Most distinct field values a trace's key is built from (Refinery caps its keys at the same
/// number): past that many, a trace's key is unique anyway, and the state stays bounded.
pub const MAX_KEY_VALUES: usize = 100;

/// Most distinct key fields a policy set may use: a field's index takes 8 bits of a value.
pub const MAX_KEY_FIELDS: usize = 256;

/// Bits of a key value that hold the hash of its text (the rest hold the field index).
const VALUE_HASH_BITS: u32 = 56;

/// The key every trace beyond `max_keys` is counted under. Real keys never take this value.
const OVERFLOW_KEY: u64 = u64::MAX;

/// Prefix of key fields read from the root span only.
const ROOT_PREFIX: &str = "root.";

/// Key field that adds the span count (Refinery's `meta.span_count`), like `use_trace_length`.
const SPAN_COUNT_FIELD: &str = "meta.span_count";

/// Nanoseconds in a second.
const NANOS_PER_SEC: f64 = 1e9;

/// The distinct key-field values seen so far on a trace's spans (part of
/// [`super::PolicyState`]).
///
/// Each value is one `u64`: the field's index in the top 8 bits and a 56-bit hash of the
/// value's text below, kept sorted, so the values of one field are contiguous and the set
/// does not depend on the order spans arrived in. Empty (a null pointer) until a value is seen,
/// which is always the case when no dynamic policy is configured.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyValues(Option<Box<ValueSet>>);

/// The heap part of [`KeyValues`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ValueSet {
    /// Sorted, distinct, at most [`MAX_KEY_VALUES`].
    values: Vec<u64>,
}

impl KeyValues {
    /// Adds one value unless present or the set is full.
    fn insert(&mut self, value: u64) {
        let set = self.0.get_or_insert_with(Box::default);
        if let Err(at) = set.values.binary_search(&value)
            && set.values.len() < MAX_KEY_VALUES
        {
            set.values.insert(at, value);
        }
    }

    /// Adds every value of `other` (up to the cap).
    pub(super) fn merge(&mut self, other: &KeyValues) {
        if let Some(theirs) = &other.0 {
            for &value in &theirs.values {
                self.insert(value);
            }
        }
    }

    /// Number of distinct values held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |set| set.values.len())
    }

    /// The values of field `index`, in hash order.
    fn of_field(&self, index: u8) -> &[u64] {
        let Some(set) = &self.0 else { return &[] };
        let field = u64::from(index);
        let start = set
            .values
            .partition_point(|&v| v >> VALUE_HASH_BITS < field);
        let end = set
            .values
            .partition_point(|&v| v >> VALUE_HASH_BITS <= field);
        &set.values[start..end]
    }
}

/// What a key field reads from a span.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    /// `name`: the span name.
    Name,
    /// `span.kind`: `server`, `client`, ... (lower case, as Refinery records it).
    Kind,
    /// `status.code`: `UNSET`, `OK` or `ERROR`.
    StatusCode,
    /// `error`: `true` on spans with status ERROR, absent on others (Refinery's field).
    Error,
    /// Any other name: the span's attribute, else its resource's.
    Attribute(String),
}

impl Field {
    fn parse(name: &str) -> Field {
        match name {
            "name" => Field::Name,
            "span.kind" => Field::Kind,
            "status.code" => Field::StatusCode,
            "error" => Field::Error,
            other => Field::Attribute(other.to_owned()),
        }
    }

    /// FNV-1a of the field's text on this span, if the span has the field.
    fn hash_on(&self, resource: Option<&Resource>, span: &Span) -> Option<u64> {
        let text = |s: &str| Some(fnv1a_64(&[s.as_bytes()]));
        match self {
            Field::Name => text(&span.name),
            Field::Kind => {
                let kind = match span.kind {
                    0 => "unspecified",
                    1 => "internal",
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => return None,
                };
                text(kind)
            }
            Field::StatusCode => {
                let code = span.status.as_ref().map_or(0, |s| s.code);
                let name = match StatusCode::try_from(code).ok()? {
                    StatusCode::Unset => "UNSET",
                    StatusCode::Ok => "OK",
                    StatusCode::Error => "ERROR",
                };
                text(name)
            }
            Field::Error => {
                let code = span.status.as_ref().map_or(0, |s| s.code);
                (code == StatusCode::Error as i32).then(|| fnv1a_64(&[b"true"]))
            }
            Field::Attribute(key) => attribute(&span.attributes, key)
                .or_else(|| resource.and_then(|r| attribute(&r.attributes, key)))
                .and_then(value_hash),
        }
    }
}

/// The value of attribute `key`, if present and set.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// FNV-1a of a scalar attribute value's text (arrays, maps and dictionary
/// references are not key material).
fn value_hash(value: &any_value::Value) -> Option<u64> {
    use any_value::Value;
    let owned;
    let text: &[u8] = match value {
        Value::StringValue(s) => s.as_bytes(),
        Value::BoolValue(b) => {
            if *b {
                b"true"
            } else {
                b"false"
            }
        }
        Value::IntValue(i) => {
            owned = i.to_string();
            owned.as_bytes()
        }
        Value::DoubleValue(d) => {
            owned = d.to_string();
            owned.as_bytes()
        }
        Value::BytesValue(bytes) => bytes,
        Value::ArrayValue(_) | Value::KvlistValue(_) | Value::StringValueStrindex(_) => {
            return None;
        }
    };
    Some(fnv1a_64(&[text]))
}

/// One key field of the policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldSlot {
    field: Field,
    /// Read from the root span (no parent) only.
    root_only: bool,
}

/// Every key field used by the policy set's dynamic policies, each read once per span into
/// the trace's [`KeyValues`].
#[derive(Debug, Default)]
pub(super) struct KeyFields {
    slots: Vec<FieldSlot>,
}

impl KeyFields {
    /// Whether no dynamic policy needs a field.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The index of field `name` (as written in `key_fields`), registering it if new.
    fn index_of(&mut self, name: &str) -> Result<u8, PolicyError> {
        let (field, root_only) = match name.strip_prefix(ROOT_PREFIX) {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let slot = FieldSlot {
            field: Field::parse(field),
            root_only,
        };
        let index = match self.slots.iter().position(|s| *s == slot) {
            Some(i) => i,
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        u8::try_from(index).map_err(|_| PolicyError::TooManyKeyFields {
            found: self.slots.len(),
        })
    }

    /// Folds the key-field values of one span (with its resource) into `values`.
    pub(super) fn observe(&self, values: &mut KeyValues, resource: Option<&Resource>, span: &Span) {
        let root = span.parent_span_id.is_empty();
        for (index, slot) in self.slots.iter().enumerate() {
            if slot.root_only && !root {
                continue;
            }
            if let Some(hash) = slot.field.hash_on(resource, span) {
                let low = hash & ((1u64 << VALUE_HASH_BITS) - 1);
                values.insert((index as u64) << VALUE_HASH_BITS | low);
            }
        }
    }
}

/// How one policy builds a trace's key.
#[derive(Debug)]
struct TraceKey {
    /// `key_fields` as written, resolved to indexes by [`register_fields`].
    names: Vec<String>,
    /// Indexes into [`KeyFields`], in `key_fields` order.
    fields: Vec<u8>,
    /// Append the span count.
    use_trace_length: bool,
}

impl TraceKey {
    fn new(key_fields: &[String], use_trace_length: bool) -> TraceKey {
        let names: Vec<String> = key_fields
            .iter()
            .filter(|f| f.as_str() != SPAN_COUNT_FIELD)
            .cloned()
            .collect();
        TraceKey {
            use_trace_length: use_trace_length || names.len() < key_fields.len(),
            names,
            fields: Vec::new(),
        }
    }

    /// A 64-bit fingerprint of the key: equal for traces whose fields took the same sets of
    /// values (and, with `use_trace_length`, that have as many spans).
    fn of(&self, values: &KeyValues, span_count: u32) -> u64 {
        let mut bytes = Vec::with_capacity(16 * self.fields.len() + 8);
        for &field in &self.fields {
            bytes.push(field);
            for value in values.of_field(field) {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
            // Separates fields, so values cannot slide from one field to the next.
            bytes.push(0xff);
        }
        if self.use_trace_length {
            bytes.extend_from_slice(&span_count.to_le_bytes());
        }
        fnv1a_64(&[&bytes]).min(OVERFLOW_KEY - 1)
    }
}

/// What an EMA sampler aims at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum EmaGoal {
    /// Average sample rate over all spans (`ema_dynamic`).
    SampleRate(f64),
    /// Kept spans per second for the whole cluster (`ema_throughput`).
    Throughput(f64),
}

/// Settings of [`EmaRates`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct EmaSettings {
    /// What the rates aim at.
    pub goal: EmaGoal,
    /// Length of an adjustment interval.
    pub interval_nanos: u64,
    /// Weight of the newest interval in the moving average.
    pub weight: f64,
    /// Averages below this are forgotten.
    pub age_out_value: f64,
    /// Early adjustment when an interval's count reaches this multiple of the averages' sum
    /// (0 or less: never).
    pub burst_multiple: f64,
    /// Intervals before burst detection starts.
    pub burst_detection_delay: u32,
    /// Most distinct keys counted per interval.
    pub max_keys: usize,
    /// Rate of every trace before the first adjustment.
    pub initial_rate: u32,
}

/// Per-key sample rates from exponential moving averages of per-interval span counts.
#[derive(Debug)]
pub(crate) struct EmaRates {
    settings: EmaSettings,
    /// This node's share of a throughput goal.
    share: f64,
    /// Start of the current interval; `None` before the first trace.
    interval_start: Option<u64>,
    /// Whole intervals passed since the first trace.
    intervals: u64,
    /// Spans per key in the current interval.
    counts: HashMap<u64, f64>,
    /// Spans in the current interval (all keys).
    burst_sum: f64,
    /// `burst_sum` at which the interval ends early; 0 until the first adjustment.
    burst_threshold: f64,
    /// Moving average of spans per interval, per key.
    averages: HashMap<u64, f64>,
    /// Rates from the last adjustment; `None` before the first.
    rates: Option<HashMap<u64, u32>>,
}

impl EmaRates {
    /// An EMA sampler with no history.
    pub(crate) fn new(settings: EmaSettings) -> Self {
        EmaRates {
            settings,
            share: 1.0,
            interval_start: None,
            intervals: 0,
            counts: HashMap::new(),
            burst_sum: 0.0,
            burst_threshold: 0.0,
            averages: HashMap::new(),
            rates: None,
        }
    }

    /// Counts a trace of `spans` spans under `key` at `now_unix_nano` and returns its sample
    /// rate.
    pub(crate) fn observe(&mut self, key: u64, spans: u32, now_unix_nano: u64) -> u32 {
        self.advance(now_unix_nano);
        let counted =
            if self.counts.contains_key(&key) || self.counts.len() < self.settings.max_keys {
                key
            } else {
                OVERFLOW_KEY
            };
        let spans = f64::from(spans.max(1));
        *self.counts.entry(counted).or_default() += spans;
        self.burst_sum += spans;
        let rate = match &self.rates {
            None => self.settings.initial_rate,
            Some(rates) => lookup(rates, key, counted),
        };
        if self.settings.burst_multiple > 0.0
            && self.burst_threshold > 0.0
            && self.burst_sum >= self.burst_threshold
            && self.intervals >= u64::from(self.settings.burst_detection_delay)
        {
            self.adjust();
            self.interval_start = Some(now_unix_nano);
        }
        rate
    }

    /// Sets this node's share of a throughput goal and recomputes the rates with it.
    pub(crate) fn set_share(&mut self, share: f64) {
        self.share = share;
        if self.rates.is_some() {
            self.recompute();
        }
    }

    /// Ends the intervals that `now` is past; only the one that had traffic is folded in
    /// (intervals without traffic leave the averages alone, as in Refinery).
    fn advance(&mut self, now: u64) {
        let interval = self.settings.interval_nanos.max(1);
        let start = *self.interval_start.get_or_insert(now);
        if now >= start.saturating_add(interval) {
            let passed = (now - start) / interval;
            self.adjust();
            self.intervals += passed;
            self.interval_start = Some(start + passed * interval);
        }
    }

    /// Folds the current interval's counts into the averages and recomputes the rates.
    fn adjust(&mut self) {
        if self.counts.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut self.counts);
        self.burst_sum = 0.0;
        let weight = self.settings.weight;
        let age_out = self.settings.age_out_value;
        self.averages.retain(|key, average| {
            let count = counts.get(key).copied().unwrap_or(0.0);
            *average = weight * count + (1.0 - weight) * *average;
            *average >= age_out
        });
        for (key, count) in counts {
            if !self.averages.contains_key(&key) && weight * count >= age_out {
                self.averages.insert(key, weight * count);
            }
        }
        self.recompute();
    }

    /// Rates and burst threshold from the current averages.
    fn recompute(&mut self) {
        let total: f64 = self.averages.values().map(|a| a.max(1.0)).sum();
        self.burst_threshold = total * self.settings.burst_multiple;
        let interval_secs = self.settings.interval_nanos as f64 / NANOS_PER_SEC;
        let budget = match self.settings.goal {
            EmaGoal::SampleRate(rate) => total / rate,
            EmaGoal::Throughput(per_sec) => per_sec * self.share * interval_secs,
        };
        self.rates = Some(allocate(&self.averages, budget));
    }
}

/// The rate of `key`, counted as `counted`: its own rate once it has one, else the overflow
/// key's if it was counted there, else 1 (a new key is kept whole).
fn lookup(rates: &HashMap<u64, u32>, key: u64, counted: u64) -> u32 {
    rates
        .get(&key)
        .or_else(|| rates.get(&counted))
        .copied()
        .unwrap_or(1)
}

/// Splits a budget of kept spans between keys by `log10` of their counts, visiting keys from
/// rarest to most frequent: a key whose count fits its share is kept whole (rate 1) and passes
/// what it does not use on to the remaining keys; a larger key gets the smallest rate that
/// brings it within its share.
fn allocate(counts: &HashMap<u64, f64>, budget: f64) -> HashMap<u64, u32> {
    let mut keys: Vec<(u64, f64)> = counts.iter().map(|(&k, &c)| (k, c.max(1.0))).collect();
    keys.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let log_sum: f64 = keys.iter().map(|(_, c)| c.log10()).sum();
    let mut rates = HashMap::with_capacity(keys.len());
    if log_sum <= 0.0 || !budget.is_finite() {
        // Every key was seen about once: nothing to thin out.
        rates.extend(keys.iter().map(|&(k, _)| (k, 1)));
        return rates;
    }
    let per_log = budget.max(0.0) / log_sum;
    let mut spare = 0.0;
    let mut remaining = keys.len() as f64;
    for (key, count) in keys {
        let from_spare = spare / remaining;
        spare -= from_spare;
        remaining -= 1.0;
        let share = (count.log10() * per_log).max(1.0) + from_spare;
        let rate = if count <= share {
            1
        } else {
            (count / share).ceil().min(f64::from(u32::MAX)) as u32
        };
        spare += share - count / f64::from(rate);
        rates.insert(key, rate);
    }
    rates
}

/// Settings of [`WindowedRates`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowedSettings {
    /// Kept spans per second for the whole cluster.
    pub goal_per_sec: f64,
    /// Length of a count bucket (how often rates are recomputed).
    pub update_nanos: u64,
    /// Buckets in the lookback window.
    pub buckets: usize,
    /// Most distinct keys counted over the window.
    pub max_keys: usize,
}

/// Per-key sample rates from span counts over a sliding window, the goal split equally
/// between the window's keys.
#[derive(Debug)]
pub(crate) struct WindowedRates {
    settings: WindowedSettings,
    /// This node's share of the goal.
    share: f64,
    /// Index (`now / update_nanos`) of the open bucket; `None` before the first trace.
    current_index: Option<u64>,
    /// Spans per key in the open bucket.
    current: HashMap<u64, f64>,
    /// Keys of `current` that `window` lacks.
    current_new: usize,
    /// Closed buckets of the window, newest last.
    closed: VecDeque<HashMap<u64, f64>>,
    /// Sum of `closed`.
    window: HashMap<u64, f64>,
    /// Rates from the last closed bucket.
    rates: HashMap<u64, u32>,
}

impl WindowedRates {
    /// A windowed sampler with no history.
    pub(crate) fn new(settings: WindowedSettings) -> Self {
        WindowedRates {
            settings,
            share: 1.0,
            current_index: None,
            current: HashMap::new(),
            current_new: 0,
            closed: VecDeque::new(),
            window: HashMap::new(),
            rates: HashMap::new(),
        }
    }

    /// Counts a trace of `spans` spans under `key` at `now_unix_nano` and returns its sample
    /// rate.
    pub(crate) fn observe(&mut self, key: u64, spans: u32, now_unix_nano: u64) -> u32 {
        self.advance(now_unix_nano);
        let known = self.current.contains_key(&key) || self.window.contains_key(&key);
        let counted = if known || self.window.len() + self.current_new < self.settings.max_keys {
            key
        } else {
            OVERFLOW_KEY
        };
        if !self.current.contains_key(&counted) && !self.window.contains_key(&counted) {
            self.current_new += 1;
        }
        *self.current.entry(counted).or_default() += f64::from(spans.max(1));
        lookup(&self.rates, key, counted)
    }

    /// Sets this node's share of the goal and recomputes the rates with it.
    pub(crate) fn set_share(&mut self, share: f64) {
        self.share = share;
        self.recompute();
    }

    /// Closes the open bucket (and any empty ones after it) when `now` is past it.
    fn advance(&mut self, now: u64) {
        let index = now / self.settings.update_nanos.max(1);
        let current = *self.current_index.get_or_insert(index);
        if index <= current {
            return;
        }
        let buckets = self.settings.buckets.max(1);
        self.closed.push_back(std::mem::take(&mut self.current));
        let empty = usize::try_from(index - current - 1).unwrap_or(usize::MAX);
        for _ in 0..empty.min(buckets) {
            self.closed.push_back(HashMap::new());
        }
        while self.closed.len() > buckets {
            self.closed.pop_front();
        }
        self.current_index = Some(index);
        self.current_new = 0;
        self.window.clear();
        for bucket in &self.closed {
            for (&key, &count) in bucket {
                *self.window.entry(key).or_default() += count;
            }
        }
        self.recompute();
    }

    /// Rates from the window's counts.
    fn recompute(&mut self) {
        self.rates.clear();
        if self.window.is_empty() {
            return;
        }
        let window_secs =
            self.settings.update_nanos as f64 * self.settings.buckets.max(1) as f64 / NANOS_PER_SEC;
        let per_key =
            self.settings.goal_per_sec * self.share * window_secs / self.window.len() as f64;
        for (&key, &count) in &self.window {
            let rate = (count / per_key).round().clamp(1.0, f64::from(u32::MAX)) as u32;
            self.rates.insert(key, rate);
        }
    }
}

/// The rate tables of one dynamic policy.
#[derive(Debug)]
enum Rates {
    Ema(EmaRates),
    Windowed(WindowedRates),
}

/// A compiled dynamic policy (`Node::Dynamic`).
#[derive(Debug)]
pub(super) struct DynamicPolicy {
    key: TraceKey,
    /// Hashed with the trace id: the policy's name, so policies sample independently.
    salt: Vec<u8>,
    rates: Rates,
    /// Throughput goal divided among the ring's samplers (`use_cluster_size`).
    follows_ring: bool,
}

impl DynamicPolicy {
    /// Compiles a dynamic policy; [`register_fields`] then resolves its key fields.
    pub(super) fn compile(cfg: &PolicyConfig) -> Result<DynamicPolicy, PolicyError> {
        let missing = || PolicyError::MissingBlock {
            policy: cfg.name.clone(),
            policy_type: cfg.policy_type.as_str(),
        };
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let rate = |r: i64| u32::try_from(r.max(1)).unwrap_or(u32::MAX);
        let (key, rates, follows_ring) = match cfg.policy_type {
            PolicyType::EmaDynamic => {
                let c = cfg.ema_dynamic.as_ref().ok_or_else(missing)?;
                let settings = EmaSettings {
                    goal: EmaGoal::SampleRate(rate(c.goal_sample_rate) as f64),
                    interval_nanos: nanos(c.adjustment_interval),
                    weight: c.weight,
                    age_out_value: c.age_out_value,
                    burst_multiple: c.burst_multiple,
                    burst_detection_delay: c.burst_detection_delay,
                    max_keys: c.max_keys,
                    initial_rate: rate(c.goal_sample_rate),
                };
                let key = TraceKey::new(&c.key_fields, c.use_trace_length);
                (key, Rates::Ema(EmaRates::new(settings)), false)
            }
            PolicyType::EmaThroughput => {
                let c = cfg.ema_throughput.as_ref().ok_or_else(missing)?;
                let settings = EmaSettings {
                    goal: EmaGoal::Throughput(c.goal_throughput_per_sec),
                    interval_nanos: nanos(c.adjustment_interval),
                    weight: c.weight,
                    age_out_value: c.age_out_value,
                    burst_multiple: c.burst_multiple,
                    burst_detection_delay: c.burst_detection_delay,
                    max_keys: c.max_keys,
                    initial_rate: rate(c.initial_sample_rate),
                };
                let key = TraceKey::new(&c.key_fields, c.use_trace_length);
                let rates = Rates::Ema(EmaRates::new(settings));
                (key, rates, c.use_cluster_size)
            }
            PolicyType::WindowedThroughput => {
                let c = cfg.windowed_throughput.as_ref().ok_or_else(missing)?;
                let update = nanos(c.update_frequency).max(1);
                let buckets = (nanos(c.lookback_frequency) / update).max(1);
                let settings = WindowedSettings {
                    goal_per_sec: c.goal_throughput_per_sec,
                    update_nanos: update,
                    buckets: usize::try_from(buckets).unwrap_or(usize::MAX),
                    max_keys: c.max_keys,
                };
                let key = TraceKey::new(&c.key_fields, c.use_trace_length);
                let rates = Rates::Windowed(WindowedRates::new(settings));
                (key, rates, c.use_cluster_size)
            }
            // Only called for the three types above (see `compile` in mod.rs).
            _ => return Err(missing()),
        };
        Ok(DynamicPolicy {
            key,
            salt: cfg.name.as_bytes().to_vec(),
            rates,
            follows_ring,
        })
    }

    /// Counts the trace under its key and keeps it with probability `1 / rate`.
    pub(super) fn evaluate(&mut self, facts: &Facts<'_>) -> Outcome {
        let spans = facts.stats.span_count;
        let key = self.key.of(&facts.state.key_values, spans);
        let rate = match &mut self.rates {
            Rates::Ema(ema) => ema.observe(key, spans, facts.now_unix_nano),
            Rates::Windowed(windowed) => windowed.observe(key, spans, facts.now_unix_nano),
        }
        .max(1);
        Outcome {
            verdict: if keeps(&self.salt, facts.trace_id, rate) {
                Verdict::Sampled
            } else {
                Verdict::NotSampled
            },
            probability: Some(1.0 / f64::from(rate)),
        }
    }

    /// Applies this node's share of the ring to a throughput goal (no effect on
    /// `ema_dynamic`, whose goal is a rate, or with `use_cluster_size: false`).
    pub(super) fn set_share(&mut self, share: f64) {
        if !self.follows_ring {
            return;
        }
        match &mut self.rates {
            Rates::Ema(ema) => ema.set_share(share),
            Rates::Windowed(windowed) => windowed.set_share(share),
        }
    }
}

/// Whether a trace is among the 1 in `rate` kept: a hash of salt and trace id below
/// `2^64 / rate`.
fn keeps(salt: &[u8], trace_id: &TraceId, rate: u32) -> bool {
    if rate <= 1 {
        return true;
    }
    let hash = fnv1a_64(&[b"dynamic\0", salt, b"\0", trace_id.as_slice()]);
    u128::from(hash) * u128::from(rate) < 1u128 << 64
}

/// Calls `f` on every dynamic policy in `node`, nested ones included.
pub(super) fn for_each_dynamic(node: &mut Node, f: &mut dyn FnMut(&mut DynamicPolicy)) {
    match node {
        Node::Dynamic(policy) => f(policy),
        Node::And(subs) | Node::Drop(subs) => {
            subs.iter_mut().for_each(|sub| for_each_dynamic(sub, f));
        }
        Node::Not(sub) => for_each_dynamic(sub, f),
        Node::Composite(composite) => composite
            .subs
            .iter_mut()
            .for_each(|sub| for_each_dynamic(&mut sub.node, f)),
        _ => {}
    }
}

/// Resolves the key fields of every dynamic policy in `nodes` to indexes of one shared
/// [`KeyFields`], so a field used by several policies is read once per span.
pub(super) fn register_fields<'a>(
    nodes: impl Iterator<Item = &'a mut Node>,
) -> Result<KeyFields, PolicyError> {
    let mut fields = KeyFields::default();
    let mut failure = None;
    for node in nodes {
        for_each_dynamic(node, &mut |policy| {
            for name in &policy.key.names {
                match fields.index_of(name) {
                    Ok(index) => policy.key.fields.push(index),
                    Err(e) => failure = Some(e),
                }
            }
        });
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(fields),
    }
}
