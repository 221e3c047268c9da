//! Log rollup: log records that are not kept become counted summaries per interval.
//!
//! Bodies are mined into templates online ([`TemplateMiner`], one per resource so each
//! service learns its own templates), and [`LogRollup`] counts lines per (resource,
//! severity, template) until the caller drains the interval. Pure logic: timestamps are
//! passed in and the caller decides when an interval ends. Counts are exact: every line
//! added is counted in exactly one summary, including lines that overflow the template
//! bound.

mod mask;
mod miner;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use mask::WILDCARD;
pub use miner::{
    MinerConfig, OVERFLOW_TEMPLATE, OVERFLOW_TEMPLATE_ID, TemplateId, TemplateInfo, TemplateMatch,
    TemplateMiner,
};

/// Settings of [`LogRollup`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogRollupConfig {
    /// Settings of every resource's miner.
    pub miner: MinerConfig,
    /// Example bodies kept per summary.
    pub samples_per_template: usize,
    /// Resources that get a miner of their own; further resources share one miner (their
    /// summaries stay separate), which bounds memory under resource churn.
    pub max_resources: usize,
}

impl Default for LogRollupConfig {
    fn default() -> Self {
        LogRollupConfig {
            miner: MinerConfig::default(),
            samples_per_template: 1,
            max_resources: 1000,
        }
    }
}

/// One (resource, severity, template) group of an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// Identity key of the resource, as passed to [`LogRollup::add`].
    pub resource_key: Vec<u8>,
    /// OTLP severity number.
    pub severity: i32,
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
    count: u64,
    first: u64,
    last: u64,
    samples: Vec<String>,
}

/// Per-resource state: its miner (unless it shares one) and its open groups.
#[derive(Debug, Default)]
struct ResourceState {
    miner: Option<TemplateMiner>,
    groups: HashMap<(i32, TemplateId), Group>,
}

/// Aggregates log lines into per-interval summaries; see the module docs.
#[derive(Debug)]
pub struct LogRollup {
    config: LogRollupConfig,
    resources: HashMap<Box<[u8]>, ResourceState>,
    /// Resources holding a miner of their own.
    mining_resources: usize,
    /// Miner of the resources beyond `max_resources`.
    shared: TemplateMiner,
}

impl LogRollup {
    /// An empty rollup.
    pub fn new(config: LogRollupConfig) -> Self {
        LogRollup {
            shared: TemplateMiner::new(config.miner.clone()),
            config,
            resources: HashMap::new(),
            mining_resources: 0,
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
        if !self.resources.contains_key(resource_key) {
            let miner = (self.mining_resources < self.config.max_resources).then(|| {
                self.mining_resources += 1;
                TemplateMiner::new(self.config.miner.clone())
            });
            self.resources.insert(
                resource_key.into(),
                ResourceState {
                    miner,
                    groups: HashMap::new(),
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
                count: 0,
                first: time_unix_nano,
                last: time_unix_nano,
                samples: Vec::new(),
            });
        group.count += 1;
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
        let mut out = Vec::new();
        for (key, state) in &mut self.resources {
            let miner = state.miner.as_ref().unwrap_or(&self.shared);
            for ((severity, template_id), group) in state.groups.drain() {
                let template = miner
                    .template(template_id)
                    .map_or(group.template, str::to_owned);
                out.push(LogSummary {
                    resource_key: key.to_vec(),
                    severity,
                    template_id,
                    template,
                    count: group.count,
                    first_time_unix_nano: group.first,
                    last_time_unix_nano: group.last,
                    samples: group.samples,
                    overflow: template_id == OVERFLOW_TEMPLATE_ID,
                });
            }
        }
        // Resources without a miner of their own carry nothing across intervals.
        self.resources.retain(|_, state| state.miner.is_some());
        out.sort_by(|a, b| {
            (&a.resource_key, a.severity, a.template_id).cmp(&(
                &b.resource_key,
                b.severity,
                b.template_id,
            ))
        });
        out
    }
}

impl Default for LogRollup {
    fn default() -> Self {
        LogRollup::new(LogRollupConfig::default())
    }
}
