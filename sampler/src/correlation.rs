//! Correlated retention, pure core: which held logs and metric points belong to a kept
//! trace. No I/O and no clock: every time is unix nanoseconds passed in, so the rules are
//! tested deterministically; the async shell that receives broadcasts, persists held items
//! and exports them lives elsewhere.
//!
//! - [`DecisionNotice`] is what a sampler broadcasts when it keeps a trace (wire form:
//!   `otel_tail.v1.DecisionNotice` in `proto/otel_tail/v1/correlation.proto`, batched in a
//!   `NoticeBatch`): trace id, the trace's resources, its time window, the deciding policy
//!   and whether that policy correlates by window.
//! - [`KeptIndex`] remembers kept traces for a bounded time and count and answers, for a
//!   log record or metric point, whether and why it is correlated: same trace id, an
//!   exemplar referencing a kept trace, or the same [`ResourceIdentity`] within
//!   `[start − before, end + after]` of a trace whose policy has `correlate: true`.
//! - [`HoldQueue`] holds items for `correlation.window` so the decisions can arrive, then
//!   settles each exactly once, raw ([`Fate::Raw`]) or summary ([`Fate::Summary`]).
//!
//! Kept raw items are marked with the attribute [`CORRELATED_ATTRIBUTE`] whose value is a
//! [`Reason`].

pub mod classify;
pub mod fanout;
mod hold;
mod kept;
mod notice;
pub mod store;

#[cfg(test)]
mod tests;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use otel_tail_shared::otlp;

pub use hold::{DEFAULT_WINDOW_MARGIN, Fate, HoldLimits, HoldQueue, Settled, default_window};
pub use kept::{KeptIndex, KeptIndexConfig};
pub use notice::{DecisionNotice, NoticeError, ResourceIdentity};

/// Attribute set on a log record or data point kept raw because it is correlated with a
/// kept trace, so users can find such items; its value is [`Reason::as_str`].
pub const CORRELATED_ATTRIBUTE: &str = "otel_tail.correlated";

/// Why an item is correlated with a kept trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A log record carries the trace id of a kept trace.
    TraceId,
    /// A metric data point has an exemplar referencing a kept trace.
    Exemplar,
    /// Same resource as a correlating kept trace, within its widened time window.
    Window,
}

impl Reason {
    /// Value of the [`CORRELATED_ATTRIBUTE`] attribute, also a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TraceId => "trace_id",
            Reason::Exemplar => "exemplar",
            Reason::Window => "window",
        }
    }

    /// The `otel_tail.correlated=<reason>` attribute to add to a kept raw item.
    pub fn attribute(self) -> KeyValue {
        otlp::kv_str(CORRELATED_ATTRIBUTE, self.as_str())
    }
}
