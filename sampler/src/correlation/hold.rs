//! [`HoldQueue`]: the pure part of "hold, then choose". Logs without a trace id and metric
//! points wait long enough for the decisions about their traces to be made and broadcast,
//! then each is settled exactly once: kept raw for a [`Reason`], or sent down the summary
//! path.

use std::collections::VecDeque;
use std::time::Duration;

use super::Reason;

/// Extra hold beyond `decision_wait` in the default window: time for a decision to be
/// made after the trace goes quiet and to reach every sampler.
pub const DEFAULT_WINDOW_MARGIN: Duration = Duration::from_secs(5);

/// The default `correlation.window` for a given `sampler.decision_wait`.
pub fn default_window(decision_wait: Duration) -> Duration {
    decision_wait.saturating_add(DEFAULT_WINDOW_MARGIN)
}

/// How long items are held and how much may be held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// How long an item waits after its arrival before it is settled.
    pub window: Duration,
    /// Most items held; past it the oldest are settled early.
    pub max_items: usize,
    /// Most bytes held (as the caller measures items); past it the oldest are settled
    /// early.
    pub max_bytes: usize,
}

/// What became of a settled item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Kept raw, marked with the reason.
    Raw(Reason),
    /// Goes down the summary path.
    Summary,
}

/// An item leaving the queue, with its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled<T> {
    /// The item, as the classifier left it (it may have trimmed it, e.g. exemplars).
    pub item: T,
    /// Raw or summary.
    pub fate: Fate,
    /// Settled before its window ended: the queue was over a bound, or it was drained.
    pub early: bool,
}

/// An item waiting.
#[derive(Debug)]
struct Held<T> {
    item: T,
    bytes: usize,
    due: u64,
}

/// Items in arrival order, each settled once: when its window has passed
/// ([`HoldQueue::release_due`]), when the queue is over a bound (oldest first, on
/// [`HoldQueue::insert`]), or on [`HoldQueue::drain`]. Settling asks the caller's
/// classifier, which may edit the item (trim exemplars, add the `otel_tail.correlated`
/// attribute) and answers `Some(reason)` for raw or `None` for summary.
///
/// Times are unix nanoseconds passed in. If the clock steps back, a new item's arrival is
/// taken as the latest arrival seen so far, which keeps the queue ordered and only ever
/// holds an item longer, never shorter.
#[derive(Debug)]
pub struct HoldQueue<T> {
    limits: HoldLimits,
    window: u64,
    items: VecDeque<Held<T>>,
    bytes: usize,
    latest_arrival: u64,
    settled_early: u64,
}

impl<T> HoldQueue<T> {
    /// An empty queue.
    pub fn new(limits: HoldLimits) -> HoldQueue<T> {
        HoldQueue {
            limits,
            window: u64::try_from(limits.window.as_nanos()).unwrap_or(u64::MAX),
            items: VecDeque::new(),
            bytes: 0,
            latest_arrival: 0,
            settled_early: 0,
        }
    }

    /// Holds `item` (measured as `bytes`) arriving at `now`. Returns the oldest items,
    /// this one included if need be, settled early to bring the queue back within its
    /// bounds.
    pub fn insert(
        &mut self,
        item: T,
        bytes: usize,
        now: u64,
        mut classify: impl FnMut(&mut T) -> Option<Reason>,
    ) -> Vec<Settled<T>> {
        self.latest_arrival = self.latest_arrival.max(now);
        self.items.push_back(Held {
            item,
            bytes,
            due: self.latest_arrival.saturating_add(self.window),
        });
        self.bytes += bytes;
        let mut settled = Vec::new();
        while self.items.len() > self.limits.max_items || self.bytes > self.limits.max_bytes {
            let Some(held) = self.pop() else { break };
            self.settled_early += 1;
            settled.push(settle(held.item, true, &mut classify));
        }
        settled
    }

    /// Settles every item whose window has passed by `now`, oldest first.
    pub fn release_due(
        &mut self,
        now: u64,
        mut classify: impl FnMut(&mut T) -> Option<Reason>,
    ) -> Vec<Settled<T>> {
        let mut settled = Vec::new();
        while self.items.front().is_some_and(|h| h.due <= now) {
            let Some(held) = self.pop() else { break };
            settled.push(settle(held.item, false, &mut classify));
        }
        settled
    }

    /// Settles everything still held, oldest first (shutdown). Not counted in
    /// [`HoldQueue::settled_early`], which tracks pressure on the bounds.
    pub fn drain(&mut self, mut classify: impl FnMut(&mut T) -> Option<Reason>) -> Vec<Settled<T>> {
        let mut settled = Vec::with_capacity(self.items.len());
        while let Some(held) = self.pop() {
            settled.push(settle(held.item, true, &mut classify));
        }
        settled
    }

    /// When the oldest item falls due, unix nanoseconds; `None` when empty. For the
    /// caller's timer.
    pub fn next_due(&self) -> Option<u64> {
        self.items.front().map(|h| h.due)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Items settled before their window ended because the queue was over a bound, since
    /// creation.
    pub fn settled_early(&self) -> u64 {
        self.settled_early
    }

    fn pop(&mut self) -> Option<Held<T>> {
        let held = self.items.pop_front()?;
        self.bytes -= held.bytes;
        Some(held)
    }
}

fn settle<T>(
    mut item: T,
    early: bool,
    classify: &mut impl FnMut(&mut T) -> Option<Reason>,
) -> Settled<T> {
    let fate = classify(&mut item).map_or(Fate::Summary, Fate::Raw);
    Settled { item, fate, early }
}
