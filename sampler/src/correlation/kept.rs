//! [`KeptIndex`]: the bounded, time-expiring memory of kept traces that held logs and
//! metric points are matched against.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::Exemplar;
use otel_tail_shared::otlp::{self, TraceId};

use super::Reason;
use super::notice::{DecisionNotice, ResourceIdentity};

/// How long kept traces are remembered and how wide their windows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptIndexConfig {
    /// Window correlation starts this long before the trace's first span
    /// (`correlation.before`).
    pub before: Duration,
    /// Window correlation ends this long after the trace's last span (`correlation.after`).
    pub after: Duration,
    /// How long a trace stays matchable after its widened window has closed and after its
    /// notice arrived, whichever is later: at least the hold window, so items that arrived
    /// before the notice are still matched when their hold ends.
    pub hold: Duration,
    /// Most traces remembered; past it the one closest to expiry is forgotten first.
    pub max_traces: NonZeroUsize,
}

/// One remembered trace.
#[derive(Debug, Clone)]
struct Kept {
    /// Matching keys of its resources, deduplicated; indexed in `by_resource` only when
    /// it correlates, but remembered anyway so a later correlating notice for the same
    /// trace covers them.
    resource_keys: Vec<String>,
    /// Widened window start, `start - before`.
    from: u64,
    /// Widened window end, `end + after`.
    to: u64,
    /// Whether it correlates by window.
    correlate: bool,
    /// When [`KeptIndex::expire`] forgets it, unix nanoseconds.
    expires_at: u64,
}

/// The windows of the correlating traces of one resource.
#[derive(Debug, Default)]
struct ResourceWindows {
    /// `(widened start, trace id)` → widened end.
    by_start: BTreeMap<(u64, TraceId), u64>,
    /// Longest widened window ever indexed here: a window containing `t` starts no
    /// earlier than `t - longest`, which bounds the scan of a lookup.
    longest: u64,
}

/// Kept traces, matchable by trace id (every kept trace) and by resource and widened time
/// window (traces whose deciding policy correlates).
///
/// Bounded by count ([`KeptIndexConfig::max_traces`]; the trace closest to expiry goes
/// first) and by time ([`KeptIndex::expire`]). All times are unix nanoseconds passed in
/// by the caller; arithmetic saturates, so windows near 0 or `u64::MAX` clamp.
#[derive(Debug)]
pub struct KeptIndex {
    config: KeptIndexConfig,
    traces: HashMap<TraceId, Kept>,
    by_expiry: BTreeSet<(u64, TraceId)>,
    by_resource: HashMap<String, ResourceWindows>,
    evicted: u64,
}

/// Whole nanoseconds of `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl KeptIndex {
    /// An empty index.
    pub fn new(config: KeptIndexConfig) -> KeptIndex {
        KeptIndex {
            config,
            traces: HashMap::new(),
            by_expiry: BTreeSet::new(),
            by_resource: HashMap::new(),
            evicted: 0,
        }
    }

    /// Remembers a kept trace, received at `now`. A notice for a trace already known
    /// merges into it (union of resources, union of windows, correlating if either does),
    /// so repeated or partial notices are harmless. May forget the trace closest to expiry
    /// to stay within [`KeptIndexConfig::max_traces`].
    pub fn insert(&mut self, notice: &DecisionNotice, now: u64) {
        let mut from = notice
            .start_unix_nano
            .saturating_sub(nanos(self.config.before));
        let mut to = notice
            .end_unix_nano
            .saturating_add(nanos(self.config.after));
        let mut correlate = notice.correlate;
        let mut resource_keys: Vec<String> = Vec::new();
        let mut expires_at = to.max(now).saturating_add(nanos(self.config.hold));
        if let Some(old) = self.remove(&notice.trace_id) {
            from = from.min(old.from);
            to = to.max(old.to);
            correlate |= old.correlate;
            expires_at = expires_at.max(old.expires_at);
            resource_keys = old.resource_keys;
        }
        for key in notice.resources.iter().filter_map(ResourceIdentity::key) {
            if !resource_keys.iter().any(|k| k == key) {
                resource_keys.push(key.to_owned());
            }
        }
        if correlate {
            for key in &resource_keys {
                let windows = self.by_resource.entry(key.clone()).or_default();
                windows.by_start.insert((from, notice.trace_id), to);
                windows.longest = windows.longest.max(to.saturating_sub(from));
            }
        }
        self.by_expiry.insert((expires_at, notice.trace_id));
        self.traces.insert(
            notice.trace_id,
            Kept {
                resource_keys,
                from,
                to,
                correlate,
                expires_at,
            },
        );
        while self.traces.len() > self.config.max_traces.get() {
            let Some(&(_, oldest)) = self.by_expiry.first() else {
                break;
            };
            self.remove(&oldest);
            self.evicted += 1;
        }
    }

    /// Forgets every trace whose expiry time is before `now`; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let mut expired = 0;
        while let Some(&(expires_at, trace_id)) = self.by_expiry.first() {
            if expires_at >= now {
                break;
            }
            self.remove(&trace_id);
            expired += 1;
        }
        expired
    }

    /// Whether `trace_id` is a remembered kept trace.
    pub fn contains(&self, trace_id: &TraceId) -> bool {
        self.traces.contains_key(trace_id)
    }

    /// Why a log record is correlated, if it is: its trace id is kept
    /// ([`Reason::TraceId`]), else its resource and time fall in a correlating trace's
    /// window ([`Reason::Window`]). `time_unix_nano` is the record's time (its observed
    /// time when unset); 0 means unknown and never window-matches.
    pub fn match_log(
        &self,
        trace_id: Option<TraceId>,
        resource: &ResourceIdentity,
        time_unix_nano: u64,
    ) -> Option<Reason> {
        if trace_id.is_some_and(|id| self.contains(&id)) {
            return Some(Reason::TraceId);
        }
        self.window_match(resource, time_unix_nano)
            .then_some(Reason::Window)
    }

    /// Why a metric data point is correlated, if it is: one of its exemplars' trace ids
    /// is kept ([`Reason::Exemplar`]), else its resource and time fall in a correlating
    /// trace's window ([`Reason::Window`]).
    pub fn match_point(
        &self,
        exemplar_trace_ids: &[TraceId],
        resource: &ResourceIdentity,
        time_unix_nano: u64,
    ) -> Option<Reason> {
        if exemplar_trace_ids.iter().any(|id| self.contains(id)) {
            return Some(Reason::Exemplar);
        }
        self.window_match(resource, time_unix_nano)
            .then_some(Reason::Window)
    }

    /// [`KeptIndex::match_point`] over a data point's OTLP exemplars; exemplars without a
    /// valid trace id are ignored.
    pub fn match_exemplars(
        &self,
        exemplars: &[Exemplar],
        resource: &ResourceIdentity,
        time_unix_nano: u64,
    ) -> Option<Reason> {
        if exemplars.iter().any(|e| self.exemplar_is_kept(e)) {
            return Some(Reason::Exemplar);
        }
        self.window_match(resource, time_unix_nano)
            .then_some(Reason::Window)
    }

    /// Drops the exemplars of a data point that do not reference a kept trace (a point
    /// kept for its exemplars keeps only those); returns how many were dropped.
    pub fn retain_kept_exemplars(&self, exemplars: &mut Vec<Exemplar>) -> usize {
        let before = exemplars.len();
        exemplars.retain(|e| self.exemplar_is_kept(e));
        before - exemplars.len()
    }

    /// Traces remembered.
    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// Whether no trace is remembered.
    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Traces forgotten early because of [`KeptIndexConfig::max_traces`], since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn exemplar_is_kept(&self, exemplar: &Exemplar) -> bool {
        otlp::trace_id(&exemplar.trace_id).is_some_and(|id| self.contains(&id))
    }

    /// Whether `time` lies in the widened window (bounds inclusive) of a correlating trace
    /// that has `resource` among its resources.
    fn window_match(&self, resource: &ResourceIdentity, time: u64) -> bool {
        if time == 0 {
            return false;
        }
        let Some(windows) = resource.key().and_then(|k| self.by_resource.get(k)) else {
            return false;
        };
        let lowest_start = time.saturating_sub(windows.longest);
        windows
            .by_start
            .range((lowest_start, [0; 16])..=(time, [u8::MAX; 16]))
            .any(|(_, &to)| to >= time)
    }

    /// Removes a trace from every structure; returns what was remembered of it.
    fn remove(&mut self, trace_id: &TraceId) -> Option<Kept> {
        let kept = self.traces.remove(trace_id)?;
        self.by_expiry.remove(&(kept.expires_at, *trace_id));
        for key in kept.resource_keys.iter().filter(|_| kept.correlate) {
            if let Some(windows) = self.by_resource.get_mut(key) {
                windows.by_start.remove(&(kept.from, *trace_id));
                if windows.by_start.is_empty() {
                    self.by_resource.remove(key);
                }
            }
        }
        Some(kept)
    }
}
