//! Log rollup: log records that are not kept become counted summaries per interval.
//!
//! Bodies are mined into templates online ([`TemplateMiner`], one per resource so each
//! service learns its own templates), and [`LogRollup`] counts lines per (resource,
//! severity, template) until the caller drains the interval. Pure logic: timestamps are
//! passed in and the caller decides when an interval ends. Counts are exact: every line
//! added is counted in exactly one summary, including lines that overflow the template
//! bound.
//!
//! The data path feeds OTLP records with [`LogRollup::add_record`] and takes each interval
//! out as OTLP with [`LogRollup::flush`]: one summary log record per group and a
//! `log.records` count metric per group (see [`LogRollupOutput`]).
//!
//! Bounded: the first `max_resources` resources get a miner and state of their own, kept
//! across intervals so each keeps its templates; any further resource shares one miner and
//! its state lives only until the interval is drained, so resource churn (pods coming and
//! going) cannot grow memory without limit. Templates per miner are bounded by
//! [`MinerConfig::max_templates`], and so are the groups per resource and interval (times
//! the 25 OTLP severity numbers).

mod mask;
mod miner;
mod output;
#[cfg(test)]
mod output_tests;
mod record;
#[cfg(test)]
mod tests;

use super::hash::{FastMap, fast_map};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;

pub use mask::WILDCARD;
pub use miner::{
    MinerConfig, OVERFLOW_TEMPLATE, OVERFLOW_TEMPLATE_ID, TemplateId, TemplateInfo, TemplateMatch,
    TemplateMiner,
};
pub use output::{
    COUNT_ATTRIBUTE, FIRST_TIMESTAMP_ATTRIBUTE, LAST_TIMESTAMP_ATTRIBUTE, LOG_RECORDS_METRIC,
    LogRollupOutput, OVERFLOW_ATTRIBUTE, ROLLUP_SCOPE, SAMPLES_ATTRIBUTE, SEVERITY_ATTRIBUTE,
    TEMPLATE_ID_ATTRIBUTE, severity_name,
};
pub use record::RESOURCE_IDENTITY_ATTRIBUTES;

/// Settings of [`LogRollup`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogRollupOptions {
    /// Settings of every resource's miner.
    pub miner: MinerConfig,
    /// Example bodies kept per summary.
    pub samples_per_template: usize,
    /// Resources that get a miner of their own; further resources share one miner (their
    /// summaries stay separate), which bounds memory under resource churn.
    pub max_resources: usize,
}

impl Default for LogRollupOptions {
    fn default() -> Self {
        LogRollupOptions {
            miner: MinerConfig::default(),
            samples_per_template: 1,
            max_resources: 1000,
        }
    }
}

/// One (resource, severity, template) group of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// Identity key of the resource, as passed to [`LogRollup::add`] (or derived by
    /// [`LogRollup::add_record`]).
    pub resource_key: Vec<u8>,
    /// OTLP severity number.
    pub severity: i32,
    /// The first non-empty severity text of the group's lines; empty if none had one.
    pub severity_text: String,
    /// Stable template id.
    pub template_id: TemplateId,
    /// Template text at drain time (or when last seen, if it has been evicted since).
    pub template: String,
    /// Lines in the group.
    pub count: u64,
    /// Earliest timestamp seen, unix nanoseconds.
    pub first_time_unix_nano: u64,
    /// Latest timestamp seen, unix nanoseconds.
    pub last_time_unix_nano: u64,
    /// The first bodies of the group, at most `samples_per_template`.
    pub samples: Vec<String>,
    /// The group counts lines that overflowed the template bound.
    pub overflow: bool,
}

/// Counts of one group while the interval is open.
#[derive(Debug)]
struct Group {
    template: String,
    severity_text: String,
    count: u64,
    first: u64,
    last: u64,
    samples: Vec<String>,
}

/// Per-resource state: its miner (unless it shares one), its identity attributes for the
/// output resource, and its open groups.
#[derive(Debug, Default)]
struct ResourceState {
    miner: Option<TemplateMiner>,
    /// The present [`RESOURCE_IDENTITY_ATTRIBUTES`], in that order; empty for resources
    /// added by key alone.
    attributes: Vec<KeyValue>,
    groups: FastMap<(i32, TemplateId), Group>,
}

/// One resource's share of a drained interval.
#[derive(Debug)]
struct DrainedResource {
    attributes: Vec<KeyValue>,
    /// Sorted by severity and template id.
    summaries: Vec<LogSummary>,
}

/// Aggregates log lines into per-interval summaries; see the module docs.
#[derive(Debug)]
pub struct LogRollup {
    config: LogRollupOptions,
    resources: FastMap<Box<[u8]>, ResourceState>,
    /// Resources holding a miner of their own.
    mining_resources: usize,
    /// Miner of the resources beyond `max_resources`.
    shared: TemplateMiner,
    /// Reused resource key buffer of [`LogRollup::add_record`].
    key: Vec<u8>,
}

impl LogRollup {
    /// An empty rollup.
    pub fn new(config: LogRollupOptions) -> Self {
        LogRollup {
            shared: TemplateMiner::new(config.miner.clone()),
            config,
            resources: fast_map(),
            mining_resources: 0,
            key: Vec::new(),
        }
    }

    /// Counts one log line of `resource_key` (the resource identity bytes) at
    /// `time_unix_nano`; returns the id of the template it was counted under.
    pub fn add(
        &mut self,
        resource_key: &[u8],
        severity: i32,
        body: &str,
        time_unix_nano: u64,
    ) -> TemplateId {
        self.count_line(resource_key, Vec::new, severity, "", body, time_unix_nano)
    }

    /// Counts one OTLP log record of `resource`; returns the id of the template it was
    /// counted under. The record is grouped under its resource's
    /// [`RESOURCE_IDENTITY_ATTRIBUTES`] (string values; a missing, empty or non-string one
    /// counts as absent), its severity number and the template of its body (rendered as
    /// text if it is not a string), at its time — or its observed time when the time is
    /// unset. The group keeps the first non-empty severity text it sees. A severity number
    /// outside the OTLP range 0–24 counts as 0 (unspecified), which bounds the groups per
    /// template.
    pub fn add_record(&mut self, resource: Option<&Resource>, record: &LogRecord) -> TemplateId {
        let identity = record::identity_values(resource);
        let mut key = std::mem::take(&mut self.key);
        record::resource_key(&identity, &mut key);
        let time = match record.time_unix_nano {
            0 => record.observed_time_unix_nano,
            t => t,
        };
        let id = self.count_line(
            &key,
            || record::resource_attributes(&identity),
            match record.severity_number {
                n @ 0..=24 => n,
                _ => 0,
            },
            &record.severity_text,
            &record::body_text(record.body.as_ref()),
            time,
        );
        self.key = key;
        id
    }

    /// Counts one line; `attributes` gives the resource's output attributes if it is new.
    fn count_line(
        &mut self,
        resource_key: &[u8],
        attributes: impl FnOnce() -> Vec<KeyValue>,
        severity: i32,
        severity_text: &str,
        body: &str,
        time_unix_nano: u64,
    ) -> TemplateId {
        if !self.resources.contains_key(resource_key) {
            let miner = (self.mining_resources < self.config.max_resources).then(|| {
                self.mining_resources += 1;
                TemplateMiner::new(self.config.miner.clone())
            });
            self.resources.insert(
                resource_key.into(),
                ResourceState {
                    miner,
                    attributes: attributes(),
                    groups: fast_map(),
                },
            );
        }
        let state = self
            .resources
            .get_mut(resource_key)
            .expect("resource state inserted above");
        let matched = match state.miner.as_mut() {
            Some(miner) => miner.add(body),
            None => self.shared.add(body),
        };
        let group = state
            .groups
            .entry((severity, matched.id))
            .or_insert_with(|| Group {
                template: matched.template.to_owned(),
                severity_text: String::new(),
                count: 0,
                first: time_unix_nano,
                last: time_unix_nano,
                samples: Vec::new(),
            });
        group.count += 1;
        if group.severity_text.is_empty() && !severity_text.is_empty() {
            group.severity_text = severity_text.to_owned();
        }
        group.first = group.first.min(time_unix_nano);
        group.last = group.last.max(time_unix_nano);
        if group.samples.len() < self.config.samples_per_template {
            group.samples.push(body.to_owned());
        }
        matched.id
    }

    /// Closes the interval: returns its summaries, sorted by resource key, severity and
    /// template id, and starts a new one. Templates are kept across intervals.
    pub fn drain(&mut self) -> Vec<LogSummary> {
        self.drain_resources()
            .into_iter()
            .flat_map(|r| r.summaries)
            .collect()
    }

    /// Closes the interval: its summaries per resource with a group, sorted by resource key.
    fn drain_resources(&mut self) -> Vec<DrainedResource> {
        let mut out: Vec<(&[u8], DrainedResource)> = Vec::new();
        for (key, state) in &mut self.resources {
            if state.groups.is_empty() {
                continue;
            }
            let miner = state.miner.as_ref().unwrap_or(&self.shared);
            let mut summaries: Vec<LogSummary> = state
                .groups
                .drain()
                .map(|((severity, template_id), group)| LogSummary {
                    resource_key: key.to_vec(),
                    severity,
                    severity_text: group.severity_text,
                    template_id,
                    template: miner
                        .template(template_id)
                        .map_or(group.template, str::to_owned),
                    count: group.count,
                    first_time_unix_nano: group.first,
                    last_time_unix_nano: group.last,
                    samples: group.samples,
                    overflow: template_id == OVERFLOW_TEMPLATE_ID,
                })
                .collect();
            summaries.sort_by_key(|s| (s.severity, s.template_id));
            // The state of a resource without a miner of its own goes away below.
            let attributes = if state.miner.is_some() {
                state.attributes.clone()
            } else {
                std::mem::take(&mut state.attributes)
            };
            out.push((
                key,
                DrainedResource {
                    attributes,
                    summaries,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(b.0));
        let out = out.into_iter().map(|(_, r)| r).collect();
        // Resources without a miner of their own carry nothing across intervals.
        self.resources.retain(|_, state| state.miner.is_some());
        out
    }
}

impl Default for LogRollup {
    fn default() -> Self {
        LogRollup::new(LogRollupOptions::default())
    }
}
