//! Recording the effective sampling probability on kept spans, two ways:
//! - in the W3C tracestate, per the OpenTelemetry specification "TraceState: Probability
//!   Sampling": the `ot` entry's `th` sub-key holds the rejection threshold `(1 - p) * 2^56` as
//!   up to 14 hex digits, trailing zeros removed;
//! - as the integer span attribute `SampleRate` (`1 / p`, rounded), the convention of Refinery
//!   and Honeycomb, which re-weight counts by it.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

/// The span attribute holding the sample rate (keep 1 in N), Refinery's name for it.
pub const SAMPLE_RATE_ATTRIBUTE: &str = "SampleRate";

/// 2^56: thresholds and randomness values are 56-bit.
const MAX_ADJUSTED: u64 = 1 << 56;

/// Rewrites a W3C tracestate so its `ot` entry carries `th:<hex>` for `probability`, combining
/// with an incoming threshold (effective probability = incoming * ours), keeping other keys and
/// other `ot` sub-keys. The rewritten `ot` entry moves to the front, as W3C asks of a modified
/// list-member. An unparseable incoming `th` is replaced as if absent.
pub fn apply_sampling_probability(tracestate: &str, probability: f64) -> String {
    let ours = if probability.is_nan() {
        1.0
    } else {
        probability.clamp(0.0, 1.0)
    };
    let mut ot_value: Option<&str> = None;
    let mut others = Vec::new();
    for member in tracestate
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        match member.strip_prefix("ot=") {
            Some(value) if ot_value.is_none() => ot_value = Some(value),
            Some(_) => {}
            None => others.push(member),
        }
    }

    let mut subkeys: Vec<&str> = ot_value
        .map(|v| v.split(';').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let th_pos = subkeys.iter().position(|s| s.starts_with("th:"));
    let incoming = th_pos
        .and_then(|pos| parse_threshold(&subkeys[pos]["th:".len()..]))
        .map_or(1.0, |threshold| {
            1.0 - threshold as f64 / MAX_ADJUSTED as f64
        });
    subkeys.retain(|s| !s.starts_with("th:"));
    let th = format!("th:{}", encode_threshold(incoming * ours));
    let mut ot: Vec<&str> = subkeys;
    ot.insert(th_pos.unwrap_or(0).min(ot.len()), &th);

    let mut out = format!("ot={}", ot.join(";"));
    for member in others {
        out.push(',');
        out.push_str(member);
    }
    out
}

/// Sets the `SampleRate` attribute for `probability`, multiplied by a rate the span already
/// carried (sampled upstream: the span stands for that many times more), like the threshold
/// above. Nothing is written for a probability of 0 or not a number.
pub fn apply_sample_rate(attributes: &mut Vec<KeyValue>, probability: f64) {
    if probability.is_nan() || probability <= 0.0 {
        return;
    }
    let ours = 1.0 / probability.min(1.0);
    let existing = attributes
        .iter()
        .position(|kv| kv.key == SAMPLE_RATE_ATTRIBUTE);
    let upstream = existing
        .and_then(|i| attributes[i].value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::IntValue(n) if *n >= 1 => Some(*n as f64),
            any_value::Value::DoubleValue(d) if *d >= 1.0 => Some(*d),
            _ => None,
        })
        .unwrap_or(1.0);
    let rate = (upstream * ours).round().clamp(1.0, i64::MAX as f64) as i64;
    let value = Some(AnyValue {
        value: Some(any_value::Value::IntValue(rate)),
    });
    match existing {
        Some(i) => attributes[i].value = value,
        None => attributes.push(KeyValue {
            key: SAMPLE_RATE_ATTRIBUTE.to_owned(),
            value,
            ..Default::default()
        }),
    }
}

/// Parses a `th` value: 1 to 14 hex digits, right-padded with zeros to 56 bits.
fn parse_threshold(hex: &str) -> Option<u64> {
    if hex.is_empty() || hex.len() > 14 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let value = u64::from_str_radix(hex, 16).ok()?;
    Some(value << (4 * (14 - hex.len())))
}

/// Encodes the rejection threshold of probability `p` (clamped to the smallest non-zero
/// probability the 56-bit encoding can express).
fn encode_threshold(p: f64) -> String {
    if p >= 1.0 {
        return "0".to_owned();
    }
    // p · 2^56 is exact in f64 (a power-of-two scaling), so subtract in integers.
    let accepted = (p.max(0.0) * MAX_ADJUSTED as f64).round() as u64;
    let threshold = MAX_ADJUSTED.saturating_sub(accepted).min(MAX_ADJUSTED - 1);
    let hex = format!("{threshold:014x}");
    let trimmed = hex.trim_end_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}
