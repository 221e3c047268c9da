//! Reading the sampler's `/metrics` (Prometheus text exposition format).

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, including any `_bucket`/`_sum`/`_count` suffix.
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The sample value.
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Every sample line.
    pub samples: Vec<Sample>,
    /// The raw text, for error messages.
    pub text: String,
}

impl MetricsSnapshot {
    /// Parses the text format; comment lines and lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// Whether any sample (or `# TYPE`/`# HELP` line) names the metric family `name`.
    pub fn has_family(&self, name: &str) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                || s.name
                    .strip_prefix(name)
                    .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count" | "_total"))
        }) || self.text.lines().any(|l| {
            (l.starts_with("# TYPE ") || l.starts_with("# HELP "))
                && l.split_whitespace().nth(2) == Some(name)
        })
    }

    /// Sum of the samples called exactly `name` whose labels include every pair in
    /// `labels` (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
            // An empty f64 sum is -0.0; adding 0.0 makes it print as 0.
            .sum::<f64>()
            + 0.0
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
        parse_labels(body)?
    } else {
        (Vec::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the pairs and the text after the `}`.
fn parse_labels(mut body: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        body = body.trim_start_matches([' ', ',']);
        if let Some(rest) = body.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = body.find('=')?;
        let key = body[..eq].trim().to_string();
        let mut chars = body[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    value.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        labels.push((key, value));
        body = &body[end?..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_values_and_families() {
        let text = "# HELP otel_tail_traces_active Active traces.\n\
                    # TYPE otel_tail_traces_active gauge\n\
                    otel_tail_traces_active 12\n\
                    otel_tail_traces_decided_total{decision=\"sampled\",policy=\"err\\\"s\"} 3\n\
                    otel_tail_traces_decided_total{decision=\"not_sampled\",policy=\"\"} 4 1700000000\n\
                    otel_tail_decision_latency_seconds_bucket{le=\"+Inf\"} 7\n\
                    otel_tail_decision_latency_seconds_count 7\n";
        let m = MetricsSnapshot::parse(text);
        assert_eq!(m.sum("otel_tail_traces_active", &[]), 12.0);
        assert_eq!(m.sum("otel_tail_traces_decided_total", &[]), 7.0);
        assert_eq!(
            m.sum(
                "otel_tail_traces_decided_total",
                &[("policy", "err\"s"), ("decision", "sampled")]
            ),
            3.0
        );
        assert!(m.has_family("otel_tail_decision_latency_seconds"));
        assert!(m.has_family("otel_tail_traces_active"));
        assert!(!m.has_family("otel_tail_storage_bytes"));
    }
}
