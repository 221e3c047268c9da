//! Exponential-histogram arithmetic: exact downscaling, merging and subtraction.
//!
//! At scale `s` bucket `i` covers `(base^i, base^(i+1)]` with `base = 2^(2^-s)`. Lowering the
//! scale by `d` merges each run of `2^d` adjacent buckets: index `i` becomes `i >> d`
//! (an arithmetic shift, so negative indices floor correctly). No count moves between
//! buckets other than that, so totals stay exact.

use opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;

/// Most buckets kept per side after a merge; wider ranges are downscaled until they fit
/// (the OpenTelemetry SDK default size).
pub const MAX_BUCKETS: usize = 160;

/// One side (positive or negative) of an exponential histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpBuckets {
    /// Index of the first bucket.
    pub offset: i32,
    /// Counts of consecutive buckets from `offset`.
    pub counts: Vec<u64>,
}

impl ExpBuckets {
    fn from_proto(b: Option<&Buckets>) -> ExpBuckets {
        let mut out = b.map_or_else(ExpBuckets::default, |b| ExpBuckets {
            offset: b.offset,
            counts: b.bucket_counts.clone(),
        });
        out.trim();
        out
    }

    fn to_proto(&self) -> Buckets {
        Buckets {
            offset: self.offset,
            bucket_counts: self.counts.clone(),
        }
    }

    /// Sum of all bucket counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Removes empty buckets at both ends (an empty side has offset 0).
    fn trim(&mut self) {
        let Some(first) = self.counts.iter().position(|&c| c != 0) else {
            *self = ExpBuckets::default();
            return;
        };
        let last = self.counts.iter().rposition(|&c| c != 0).unwrap_or(first);
        self.counts.truncate(last + 1);
        self.counts.drain(..first);
        self.offset += first as i32;
    }

    /// Lowers the resolution by `by` scale steps (each step merges bucket pairs).
    pub fn downscale(&mut self, by: u32) {
        if by == 0 || self.counts.is_empty() {
            return;
        }
        let by = by.min(31);
        let new_offset = self.offset >> by;
        let last = (self.offset as i64 + self.counts.len() as i64 - 1) as i32;
        let mut counts = vec![0u64; ((last >> by) - new_offset + 1) as usize];
        for (i, &c) in self.counts.iter().enumerate() {
            let index = self.offset + i as i32;
            counts[((index >> by) - new_offset) as usize] += c;
        }
        self.offset = new_offset;
        self.counts = counts;
    }

    /// Number of scale steps needed so that this side and `other` together span at most
    /// `max` buckets.
    fn steps_to_fit(&self, other: &ExpBuckets, max: usize) -> u32 {
        let (lo, hi) = match (self.counts.is_empty(), other.counts.is_empty()) {
            (true, true) => return 0,
            (false, true) => (self.offset, self.last()),
            (true, false) => (other.offset, other.last()),
            (false, false) => (self.offset.min(other.offset), self.last().max(other.last())),
        };
        let mut by = 0;
        while by < 31 && ((hi >> by) as i64 - (lo >> by) as i64 + 1) as usize > max {
            by += 1;
        }
        by
    }

    fn last(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Adds `other` (at the same scale) bucket by bucket.
    fn add(&mut self, other: &ExpBuckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let lo = self.offset.min(other.offset);
        let hi = self.last().max(other.last());
        let mut counts = vec![0u64; (hi - lo + 1) as usize];
        for side in [&*self, other] {
            for (i, &c) in side.counts.iter().enumerate() {
                counts[(side.offset - lo) as usize + i] += c;
            }
        }
        self.offset = lo;
        self.counts = counts;
    }

    /// `self - earlier` bucket by bucket (same scale), or `None` if any bucket decreased.
    fn checked_sub(&self, earlier: &ExpBuckets) -> Option<ExpBuckets> {
        let mut out = self.clone();
        for (i, &c) in earlier.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let index = earlier.offset as i64 + i as i64 - out.offset as i64;
            if index < 0 || index as usize >= out.counts.len() {
                return None;
            }
            let slot = &mut out.counts[index as usize];
            *slot = slot.checked_sub(c)?;
        }
        out.trim();
        Some(out)
    }
}

/// An exponential histogram being aggregated.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpHist {
    /// Current scale (only ever lowered by merges).
    pub scale: i32,
    /// Total count of observations.
    pub count: u64,
    /// Sum of observations; `None` once any contribution lacked it.
    pub sum: Option<f64>,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// Width of the zero bucket (the widest seen).
    pub zero_threshold: f64,
    /// Positive buckets.
    pub positive: ExpBuckets,
    /// Negative buckets (by magnitude).
    pub negative: ExpBuckets,
    /// Minimum and maximum; `None` once any contribution lacked them.
    pub min_max: Option<(f64, f64)>,
}

impl ExpHist {
    /// The aggregate of a single data point.
    pub fn from_point(p: &ExponentialHistogramDataPoint) -> ExpHist {
        ExpHist {
            scale: p.scale,
            count: p.count,
            sum: p.sum,
            zero_count: p.zero_count,
            zero_threshold: p.zero_threshold,
            positive: ExpBuckets::from_proto(p.positive.as_ref()),
            negative: ExpBuckets::from_proto(p.negative.as_ref()),
            min_max: p.min.zip(p.max),
        }
    }

    /// Writes the aggregate into a data point's histogram fields.
    pub fn fill_point(&self, p: &mut ExponentialHistogramDataPoint) {
        p.scale = self.scale;
        p.count = self.count;
        p.sum = self.sum;
        p.zero_count = self.zero_count;
        p.zero_threshold = self.zero_threshold;
        p.positive = Some(self.positive.to_proto());
        p.negative = Some(self.negative.to_proto());
        p.min = self.min_max.map(|m| m.0);
        p.max = self.min_max.map(|m| m.1);
    }

    /// Lowers the scale to `scale` (no-op if already at or below it).
    pub fn downscale_to(&mut self, scale: i32) {
        if scale < self.scale {
            let by = (self.scale - scale) as u32;
            self.positive.downscale(by);
            self.negative.downscale(by);
            self.scale = scale;
        }
    }

    /// Merges `other` in: both go to the coarser scale (and coarser still if the union of
    /// buckets would exceed [`MAX_BUCKETS`] on a side); counts, sums and zero counts add.
    pub fn merge(&mut self, other: &ExpHist) {
        let mut other = other.clone();
        let scale = self.scale.min(other.scale);
        self.downscale_to(scale);
        other.downscale_to(scale);
        let fit = self
            .positive
            .steps_to_fit(&other.positive, MAX_BUCKETS)
            .max(self.negative.steps_to_fit(&other.negative, MAX_BUCKETS));
        let scale = scale - fit as i32;
        self.downscale_to(scale);
        other.downscale_to(scale);
        self.positive.add(&other.positive);
        self.negative.add(&other.negative);
        let (empty, other_empty) = (self.count == 0, other.count == 0);
        self.sum = merge_optional(self.sum, empty, other.sum, other_empty, |a, b| a + b);
        self.min_max = merge_optional(self.min_max, empty, other.min_max, other_empty, |a, b| {
            (a.0.min(b.0), a.1.max(b.1))
        });
        self.count += other.count;
        self.zero_count += other.zero_count;
        self.zero_threshold = self.zero_threshold.max(other.zero_threshold);
    }

    /// The increase from `earlier` to `self` (two cumulative points of one stream), or `None`
    /// when it is not an increase (a reset). Min/max of a difference are unknown.
    pub fn checked_sub(&self, earlier: &ExpHist) -> Option<ExpHist> {
        if self.zero_threshold != earlier.zero_threshold {
            return None;
        }
        let scale = self.scale.min(earlier.scale);
        let mut now = self.clone();
        let mut before = earlier.clone();
        now.downscale_to(scale);
        before.downscale_to(scale);
        Some(ExpHist {
            scale,
            count: now.count.checked_sub(before.count)?,
            sum: now.sum.zip(before.sum).map(|(a, b)| a - b),
            zero_count: now.zero_count.checked_sub(before.zero_count)?,
            zero_threshold: now.zero_threshold,
            positive: now.positive.checked_sub(&before.positive)?,
            negative: now.negative.checked_sub(&before.negative)?,
            min_max: None,
        })
    }
}

/// Combines an optional statistic (sum, min/max) of two aggregates: an empty aggregate
/// (no observations) contributes nothing; a non-empty one without the statistic makes the
/// result unknown.
pub(crate) fn merge_optional<T>(
    a: Option<T>,
    a_empty: bool,
    b: Option<T>,
    b_empty: bool,
    f: impl FnOnce(T, T) -> T,
) -> Option<T> {
    match (a_empty, b_empty) {
        (_, true) => a,
        (true, false) => b,
        (false, false) => a.zip(b).map(|(a, b)| f(a, b)),
    }
}
