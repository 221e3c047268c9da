//! Per-series aggregates and how contributions merge into them.

use opentelemetry_proto::tonic::metrics::v1::number_data_point;

use super::exponential::{ExpHist, merge_optional};

/// A number as OTLP carries it: integers stay integers while they fit, so integer totals
/// stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NumberValue {
    /// `as_int`.
    Int(i64),
    /// `as_double`.
    Double(f64),
}

impl NumberValue {
    /// Zero of the same kind.
    pub fn zero_like(self) -> NumberValue {
        match self {
            NumberValue::Int(_) => NumberValue::Int(0),
            NumberValue::Double(_) => NumberValue::Double(0.0),
        }
    }

    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            NumberValue::Int(i) => i as f64,
            NumberValue::Double(d) => d,
        }
    }

    /// Reads a data point's value.
    pub fn from_proto(v: &number_data_point::Value) -> NumberValue {
        match *v {
            number_data_point::Value::AsInt(i) => NumberValue::Int(i),
            number_data_point::Value::AsDouble(d) => NumberValue::Double(d),
        }
    }

    /// The data point value.
    pub fn to_proto(self) -> number_data_point::Value {
        match self {
            NumberValue::Int(i) => number_data_point::Value::AsInt(i),
            NumberValue::Double(d) => number_data_point::Value::AsDouble(d),
        }
    }
}

impl std::ops::Add for NumberValue {
    type Output = NumberValue;

    /// Integers that would overflow become doubles.
    fn add(self, other: NumberValue) -> NumberValue {
        match (self, other) {
            (NumberValue::Int(a), NumberValue::Int(b)) => a
                .checked_add(b)
                .map_or(NumberValue::Double(a as f64 + b as f64), NumberValue::Int),
            (a, b) => NumberValue::Double(a.as_f64() + b.as_f64()),
        }
    }
}

impl std::ops::Sub for NumberValue {
    type Output = NumberValue;

    /// Integers that would overflow become doubles.
    fn sub(self, other: NumberValue) -> NumberValue {
        match (self, other) {
            (NumberValue::Int(a), NumberValue::Int(b)) => a
                .checked_sub(b)
                .map_or(NumberValue::Double(a as f64 - b as f64), NumberValue::Int),
            (a, b) => NumberValue::Double(a.as_f64() - b.as_f64()),
        }
    }
}

/// The last value of a gauge series, with the statistics `gauge_stats` reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaugeAgg {
    /// Time of the latest point.
    pub time: u64,
    /// Value of the latest point (ties on time: the one merged last).
    pub last: NumberValue,
    /// Smallest value seen.
    pub min: NumberValue,
    /// Largest value seen.
    pub max: NumberValue,
    /// Number of points seen.
    pub count: u64,
}

impl GaugeAgg {
    /// The aggregate of one point.
    pub fn new(time: u64, value: NumberValue) -> GaugeAgg {
        GaugeAgg {
            time,
            last: value,
            min: value,
            max: value,
            count: 1,
        }
    }

    fn merge(&mut self, other: &GaugeAgg) {
        if other.time >= self.time {
            self.time = other.time;
            self.last = other.last;
        }
        if other.min.as_f64() < self.min.as_f64() {
            self.min = other.min;
        }
        if other.max.as_f64() > self.max.as_f64() {
            self.max = other.max;
        }
        self.count += other.count;
    }
}

/// An explicit-bucket histogram (one bound set).
#[derive(Debug, Clone, PartialEq)]
pub struct HistAgg {
    /// Upper bounds of all buckets but the last.
    pub bounds: Vec<f64>,
    /// `bounds.len() + 1` counts.
    pub counts: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations; `None` once a non-empty contribution lacked it.
    pub sum: Option<f64>,
    /// Minimum and maximum; `None` once a non-empty contribution lacked them.
    pub min_max: Option<(f64, f64)>,
}

impl HistAgg {
    /// Re-buckets onto `coarse` bounds when that is exact (every coarse bound is one of ours,
    /// so each of our buckets lies inside one coarse bucket); `None` otherwise.
    pub fn rebucket(&self, coarse: &[f64]) -> Option<HistAgg> {
        if self.bounds == coarse {
            return Some(self.clone());
        }
        if !coarse.iter().all(|b| self.bounds.contains(b)) {
            return None;
        }
        let mut counts = vec![0u64; coarse.len() + 1];
        for (i, &c) in self.counts.iter().enumerate() {
            // Bucket i is (bounds[i-1], bounds[i]]: it lies in the first coarse bucket whose
            // upper bound is >= bounds[i]; the last bucket is unbounded.
            let target = self.bounds.get(i).map_or(coarse.len(), |&upper| {
                coarse.partition_point(|&b| b < upper)
            });
            counts[target] += c;
        }
        Some(HistAgg {
            bounds: coarse.to_vec(),
            counts,
            ..self.clone()
        })
    }

    fn merge(&mut self, other: &HistAgg) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        let (empty, other_empty) = (self.count == 0, other.count == 0);
        self.sum = merge_optional(self.sum, empty, other.sum, other_empty, |a, b| a + b);
        self.min_max = merge_optional(self.min_max, empty, other.min_max, other_empty, |a, b| {
            (a.0.min(b.0), a.1.max(b.1))
        });
        self.count += other.count;
    }

    /// `self - earlier` for two cumulative points of one stream, or `None` on a reset
    /// (bounds changed or anything decreased).
    pub fn checked_sub(&self, earlier: &HistAgg) -> Option<HistAgg> {
        if self.bounds != earlier.bounds || self.counts.len() != earlier.counts.len() {
            return None;
        }
        let counts = self
            .counts
            .iter()
            .zip(&earlier.counts)
            .map(|(a, b)| a.checked_sub(*b))
            .collect::<Option<Vec<u64>>>()?;
        Some(HistAgg {
            bounds: self.bounds.clone(),
            counts,
            count: self.count.checked_sub(earlier.count)?,
            sum: self.sum.zip(earlier.sum).map(|(a, b)| a - b),
            min_max: None,
        })
    }
}

/// What one output series accumulates during an interval (and, for cumulative output,
/// across intervals).
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    /// A sum (delta increments added).
    Sum(NumberValue),
    /// A gauge.
    Gauge(GaugeAgg),
    /// An explicit-bucket histogram.
    Histogram(HistAgg),
    /// An exponential histogram.
    Exponential(ExpHist),
    /// A summary reduced to count and sum.
    Summary {
        /// Number of observations.
        count: u64,
        /// Sum of observations.
        sum: f64,
    },
}

impl Agg {
    /// Folds `other` (the same kind; histograms with the same bounds) into `self`.
    pub fn merge(&mut self, other: &Agg) {
        match (self, other) {
            (Agg::Sum(a), Agg::Sum(b)) => *a = *a + *b,
            (Agg::Gauge(a), Agg::Gauge(b)) => a.merge(b),
            (Agg::Histogram(a), Agg::Histogram(b)) => a.merge(b),
            (Agg::Exponential(a), Agg::Exponential(b)) => a.merge(b),
            (Agg::Summary { count, sum }, Agg::Summary { count: c, sum: s }) => {
                *count += c;
                *sum += s;
            }
            (a, b) => debug_assert!(false, "merging {b:?} into a different kind {a:?}"),
        }
    }
}
