use std::collections::HashMap;
use std::time::Duration;

use super::policy::{PolicyType, StatusCodeName};
use super::*;

/// The Collector `tail_sampling` block with every policy type, shared with the end-to-end tests.
const COLLECTOR_BLOCK: &str =
    include_str!("../../../integration-tests/testdata/collector-tail-sampling.yaml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, &no_env)
}

fn invalid_path(text: &str) -> String {
    match load(text) {
        Err(ConfigError::Invalid { path, .. }) => path,
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = load("").unwrap();
    assert_eq!(c.receiver.grpc_endpoint.port(), 4317);
    assert_eq!(c.receiver.http_endpoint.port(), 4318);
    assert_eq!(c.receiver.max_request_bytes, 64 * 1024 * 1024);
    assert_eq!(c.sampler.decision_wait, Duration::from_secs(30));
    assert_eq!(c.sampler.num_traces, 50_000);
    assert_eq!(c.sampler.policies.len(), 2);
    assert!(!c.sampler.sample_on_first_match);
    assert_eq!(c.telemetry.admin_endpoint.port(), 8888);
    assert!(
        c.exporter.otlp.is_none() && c.exporter.otlphttp.is_none() && c.exporter.file.is_none()
    );
}

#[test]
fn comment_only_file_gives_defaults() {
    let c = load("# nothing configured\n").unwrap();
    assert_eq!(c.sampler.num_traces, 50_000);
}

#[test]
fn env_references_are_expanded() {
    let env: HashMap<&str, &str> = [("OTLP_HOST", "collector.example:4317"), ("WAIT", "5s")].into();
    let text = "exporter:\n  otlp:\n    endpoint: ${env:OTLP_HOST}\n\
                sampler:\n  decision_wait: ${WAIT}\n  num_traces: ${env:TRACES:-1234}\n";
    let c = Config::from_yaml(text, &|name| env.get(name).map(|v| v.to_string())).unwrap();
    assert_eq!(c.exporter.otlp.unwrap().endpoint, "collector.example:4317");
    assert_eq!(c.sampler.decision_wait, Duration::from_secs(5));
    assert_eq!(c.sampler.num_traces, 1234);
}

#[test]
fn missing_env_variable_is_named() {
    let err = load("exporter:\n  otlp:\n    endpoint: ${env:NOPE_NOT_SET}\n").unwrap_err();
    match err {
        ConfigError::MissingEnv(name) => assert_eq!(name, "NOPE_NOT_SET"),
        other => panic!("expected MissingEnv, got {other:?}"),
    }
}

#[test]
fn dollar_dollar_escapes_a_literal_dollar() {
    let c = load("telemetry:\n  log_level: \"info$$x\"\n").unwrap();
    assert_eq!(c.telemetry.log_level, "info$x");
}

#[test]
fn unknown_top_level_key_is_rejected() {
    let err = load("recevier: {}\n").unwrap_err();
    assert!(err.to_string().contains("recevier"), "{err}");
}

#[test]
fn unknown_nested_key_names_its_path() {
    let path = invalid_path("sampler:\n  decision_wiat: 1s\n");
    assert!(path.starts_with("sampler"), "{path}");
}

#[test]
fn unknown_key_in_a_policy_names_the_policy() {
    let text = "sampler:\n  policies:\n    - name: a\n      type: always_sample\n    - name: b\n      type: latency\n      latency: {threshold_ms: 5, treshold_typo: 1}\n";
    let err = load(text).unwrap_err();
    let ConfigError::Invalid { path, message } = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert!(path.starts_with("sampler.policies[1]"), "{path}");
    assert!(message.contains("treshold_typo"), "{message}");
}

#[test]
fn unknown_policy_type_is_rejected_at_its_key() {
    let text = "sampler:\n  policies:\n    - name: a\n      type: cascading\n";
    let err = load(text).unwrap_err();
    let ConfigError::Invalid { path, message } = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    assert_eq!(path, "sampler.policies[0].type");
    assert!(message.contains("cascading"), "{message}");
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        invalid_path("receiver:\n  max_request_bytes: 0\n"),
        "receiver.max_request_bytes"
    );
    assert_eq!(
        invalid_path("sampler:\n  num_traces: 0\n"),
        "sampler.num_traces"
    );
    assert!(invalid_path("sampler:\n  num_traces: lots\n").starts_with("sampler.num_traces"));
    assert!(
        invalid_path("receiver:\n  grpc_endpoint: not-an-address\n")
            .starts_with("receiver.grpc_endpoint")
    );
}

#[test]
fn policy_value_errors_name_the_key() {
    let cases = [
        (
            "- {name: p, type: probabilistic, probabilistic: {sampling_percentage: -1}}",
            "sampler.policies[0].probabilistic.sampling_percentage",
        ),
        (
            "- {name: s, type: string_attribute, string_attribute: {key: k, values: [ok, '(unclosed'], enabled_regex_matching: true}}",
            "sampler.policies[0].string_attribute.values[1]",
        ),
        (
            "- {name: r, type: rate_limiting, rate_limiting: {spans_per_second: 0}}",
            "sampler.policies[0].rate_limiting.spans_per_second",
        ),
        ("- {name: l, type: latency}", "sampler.policies[0].latency"),
        (
            "- {name: l, type: latency, latency: {threshold_ms: 1}, span_count: {min_spans: 1}}",
            "sampler.policies[0].span_count",
        ),
        (
            "- {name: '', type: always_sample}",
            "sampler.policies[0].name",
        ),
        (
            "- {name: num, type: numeric_attribute, numeric_attribute: {key: k}}",
            "sampler.policies[0].numeric_attribute.min_value",
        ),
        (
            "- {name: sc, type: status_code, status_code: {status_codes: []}}",
            "sampler.policies[0].status_code.status_codes",
        ),
        (
            "- {name: a, type: and, and: {and_sub_policy: [{name: x1, type: always_sample}, {name: x2, type: drop, drop: {drop_sub_policy: [{name: x3, type: always_sample}]}}]}}",
            "sampler.policies[0].and.and_sub_policy[1].type",
        ),
        (
            "- {name: inv, type: not, not: {not_sub_policy: {name: x, type: always_sample, correlate: true}}}",
            "sampler.policies[0].not.not_sub_policy.correlate",
        ),
        (
            "- {name: c, type: composite, composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: x, type: always_sample}], rate_allocation: [{policy: other, percent: 10}]}}",
            "sampler.policies[0].composite.rate_allocation[0].policy",
        ),
        (
            "- {name: c, type: composite, composite: {max_total_spans_per_second: 10, composite_sub_policy: [{name: x, type: always_sample}, {name: x2, type: always_sample}], rate_allocation: [{policy: x, percent: 60}, {policy: x2, percent: 60}]}}",
            "sampler.policies[0].composite.rate_allocation",
        ),
    ];
    for (policy, want) in cases {
        let text = format!("sampler:\n  policies:\n  {policy}\n");
        assert_eq!(invalid_path(&text), want, "for {policy}");
    }
}

#[test]
fn unknown_status_code_is_rejected() {
    let text = "sampler:\n  policies:\n  - {name: s, type: status_code, status_code: {status_codes: [FAILED]}}\n";
    assert!(invalid_path(text).starts_with("sampler.policies[0].status_code.status_codes"));
}

#[test]
fn collector_tail_sampling_block_loads_unchanged() {
    let c = load(COLLECTOR_BLOCK).unwrap();
    let s = &c.sampler;
    assert_eq!(s.decision_wait, Duration::from_secs(10));
    assert_eq!(s.num_traces, 100);
    assert_eq!(s.expected_new_traces_per_sec, 10);
    assert_eq!(s.decision_cache.sampled_cache_size, 100_000);
    assert_eq!(s.decision_cache.non_sampled_cache_size, 100_000);

    let types: Vec<PolicyType> = s.policies.iter().map(|p| p.policy_type).collect();
    for ty in [
        PolicyType::AlwaysSample,
        PolicyType::Latency,
        PolicyType::NumericAttribute,
        PolicyType::Probabilistic,
        PolicyType::StatusCode,
        PolicyType::StringAttribute,
        PolicyType::BooleanAttribute,
        PolicyType::SpanCount,
        PolicyType::TraceState,
        PolicyType::TraceFlags,
        PolicyType::RateLimiting,
        PolicyType::BytesLimiting,
        PolicyType::And,
        PolicyType::Not,
        PolicyType::Drop,
        PolicyType::Composite,
    ] {
        assert!(
            types.contains(&ty),
            "the collector block lacks a {ty:?} policy"
        );
    }

    let by_name = |name: &str| s.policies.iter().find(|p| p.name == name).unwrap();
    let latency = by_name("test-policy-2").latency.as_ref().unwrap();
    assert_eq!(
        (latency.threshold_ms, latency.upper_threshold_ms),
        (5000, 10000)
    );
    let prob = by_name("test-policy-4").probabilistic.as_ref().unwrap();
    assert_eq!(prob.hash_salt, "custom-salt");
    assert_eq!(prob.sampling_percentage, 0.1);
    let codes = &by_name("test-policy-5")
        .status_code
        .as_ref()
        .unwrap()
        .status_codes;
    assert_eq!(codes, &[StatusCodeName::Error, StatusCodeName::Unset]);
    let regex = by_name("test-policy-7").string_attribute.as_ref().unwrap();
    assert!(regex.enabled_regex_matching);
    assert_eq!(regex.cache_max_size, 10);
    assert_eq!(regex.values, ["value1", "val*"]);
    let bytes = by_name("test-policy-9").bytes_limiting.as_ref().unwrap();
    assert_eq!(
        (bytes.bytes_per_second, bytes.burst_capacity),
        (1_024_000, 2_048_000)
    );
    let inverted = by_name("test-policy-15")
        .numeric_attribute
        .as_ref()
        .unwrap();
    assert_eq!(
        (
            inverted.min_value,
            inverted.max_value,
            inverted.invert_match
        ),
        (Some(400), None, true)
    );

    let and = by_name("and-policy-1").and.as_ref().unwrap();
    assert_eq!(and.and_sub_policy.len(), 2);
    let not = by_name("not-policy-1").not.as_ref().unwrap();
    assert_eq!(not.not_sub_policy.name, "test-not-policy-1");
    assert_eq!(
        not.not_sub_policy.string_attribute.as_ref().unwrap().values,
        ["/health", "/ready"]
    );
    let drop = by_name("drop-policy-1").drop.as_ref().unwrap();
    assert_eq!(
        drop.drop_sub_policy[0]
            .string_attribute
            .as_ref()
            .unwrap()
            .values,
        ["\\/health", "\\/metrics"]
    );
    let composite = by_name("composite-policy-1").composite.as_ref().unwrap();
    assert_eq!(composite.max_total_spans_per_second, 1000);
    assert_eq!(composite.policy_order.len(), 3);
    assert_eq!(composite.composite_sub_policy.len(), 3);
    assert_eq!(
        composite.rate_allocation[1].policy,
        "test-composite-policy-2"
    );
    assert_eq!(composite.rate_allocation[1].percent, 25);
}

#[test]
fn printed_config_loads_back_identically() {
    let c = load(COLLECTOR_BLOCK).unwrap();
    let printed = c.to_yaml();
    let again = load(&printed).unwrap_or_else(|e| panic!("{e}\n---\n{printed}"));
    assert_eq!(again.sampler.policies, c.sampler.policies);
    assert_eq!(again.sampler.num_traces, c.sampler.num_traces);
    assert_eq!(again.sampler.decision_wait, c.sampler.decision_wait);
}

#[test]
fn correlate_flag_is_accepted_and_printed() {
    let text = "sampler:\n  policies:\n  - {name: errors, type: status_code, correlate: true, status_code: {status_codes: [ERROR]}}\n";
    let c = load(text).unwrap();
    assert_eq!(c.sampler.policies[0].correlate, Some(true));
    assert!(c.to_yaml().contains("correlate: true"));
    let plain = load("sampler:\n  policies:\n  - {name: all, type: always_sample}\n").unwrap();
    assert!(!plain.to_yaml().contains("correlate"));
}

#[test]
fn duplicate_policy_names_are_refused() {
    let yaml = "sampler:\n  policies:\n    - {name: a, type: always_sample}\n    - {name: a, type: always_sample}\n";
    let err = Config::from_yaml(yaml, &|_| None).unwrap_err().to_string();
    assert!(err.contains("sampler.policies[1].name"), "{err}");
}

#[test]
fn yaml_1_1_boolean_words_stay_strings() {
    let yaml = "sampler:\n  policies:\n    - {name: n, type: always_sample}\n";
    let config = Config::from_yaml(yaml, &|_| None).unwrap();
    assert_eq!(config.sampler.policies[0].name, "n");
}

#[test]
fn cluster_section_defaults_to_standalone_and_validates() {
    let c = Config::from_yaml("", &|_| None).unwrap();
    assert!(c.cluster.is_standalone());
    assert_eq!(c.cluster.gossip_endpoint.port(), 7946);
    assert_eq!(c.cluster.forward_endpoint.port(), 4319);

    let env = |name: &str| (name == "POD_IP").then(|| "10.1.2.3".to_owned());
    let c = Config::from_yaml(
        "cluster:\n  advertise_address: ${env:POD_IP}\n  seeds: [a:7946]\n  insecure: true\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.cluster.advertise().unwrap().to_string(), "10.1.2.3:7946");
    assert!(!c.cluster.is_standalone());

    let err = Config::from_yaml("cluster:\n  seeds: [nohostport]\n", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.seeds[0]"), "{err}");
    let err = Config::from_yaml("cluster:\n  advertise_address: not-an-ip\n", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.advertise_address"), "{err}");
}

#[test]
fn absent_policies_default_to_errors_and_a_baseline_and_empty_is_refused() {
    let c = Config::from_yaml("", &|_| None).unwrap();
    let names: Vec<_> = c.sampler.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["errors", "baseline"]);
    let err = Config::from_yaml("sampler:\n  policies: []\n", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sampler.policies"), "{err}");
}

#[test]
fn correlation_and_rollup_default_to_on_with_documented_values() {
    let c = load("sampler: {decision_wait: 2s}").unwrap();
    assert!(c.correlation.enabled);
    assert_eq!(
        c.correlation.effective_window(c.sampler.decision_wait),
        Duration::from_secs(7),
        "decision_wait + 5s"
    );
    assert_eq!(c.correlation.before, Duration::from_millis(100));
    assert!(c.rollup.logs.enabled && c.rollup.metrics.enabled);
    assert_eq!(c.rollup.logs.interval, Duration::from_secs(60));
    assert_eq!(c.rollup.metrics.interval, Duration::from_secs(60));
    assert_eq!(c.rollup.metrics.cardinality_limit, 2000);
    assert_eq!(c.rollup.logs.samples_per_template, 1);
    let explicit = load("correlation: {window: 3s}").unwrap();
    assert_eq!(
        explicit
            .correlation
            .effective_window(Duration::from_secs(30)),
        Duration::from_secs(3)
    );
    let printed = load(&c.to_yaml()).unwrap();
    assert_eq!(printed.rollup, c.rollup);
    assert_eq!(printed.correlation, c.correlation);
}

#[test]
fn bad_correlation_and_rollup_keys_are_named() {
    assert_eq!(
        invalid_path("correlation: {windw: 3s}"),
        "correlation.windw"
    );
    assert_eq!(
        invalid_path("correlation: {window: 0s}"),
        "correlation.window"
    );
    assert_eq!(
        invalid_path("correlation: {max_held_items: 0}"),
        "correlation.max_held_items"
    );
    assert_eq!(
        invalid_path("rollup: {logs: {interval: 0s}}"),
        "rollup.logs.interval"
    );
    assert_eq!(
        invalid_path("rollup: {metrics: {cardinality_limit: 0}}"),
        "rollup.metrics.cardinality_limit"
    );
    assert_eq!(
        invalid_path("rollup: {metrics: {temporality: weekly}}"),
        "rollup.metrics.temporality"
    );
    assert_eq!(
        invalid_path("rollup: {metrics: {rules: [{metric: \"/(/\"}]}}"),
        "rollup.metrics.rules[0]"
    );
}

#[test]
fn span_metrics_default_to_the_collector_shape() {
    let c = load("").unwrap();
    let t = &c.rollup.traces;
    assert!(t.enabled && t.exemplars.enabled);
    assert_eq!(t.interval, Duration::from_secs(60));
    assert_eq!(t.histogram.unit.as_str(), "ms");
    assert_eq!(t.histogram.explicit.buckets.len(), 16);
    assert_eq!(t.histogram.explicit.buckets[0], Duration::from_millis(2));
    assert!(t.histogram.exponential.is_none());
    let custom = load(
        "rollup:\n  traces:\n    interval: 10s\n    dimensions: [{name: http.route}, {name: region, default: none}]\n    histogram: {unit: s, explicit: {buckets: [100ms, 1s, 1m]}}\n    exemplars: {max_per_data_point: 2}\n",
    )
    .unwrap();
    let t = &custom.rollup.traces;
    assert_eq!(t.dimensions[1].default.as_deref(), Some("none"));
    assert_eq!(t.histogram.explicit.buckets[2], Duration::from_secs(60));
    let printed = load(&custom.to_yaml()).unwrap();
    assert_eq!(printed.rollup.traces, custom.rollup.traces);
}

#[test]
fn bad_span_metrics_keys_are_named() {
    assert_eq!(
        invalid_path("rollup: {traces: {interval: 0s}}"),
        "rollup.traces.interval"
    );
    assert_eq!(
        invalid_path("rollup: {traces: {histogram: {explicit: {buckets: [1s, 10ms]}}}}"),
        "rollup.traces.histogram.explicit.buckets"
    );
    assert_eq!(
        invalid_path("rollup: {traces: {histogram: {unit: minutes}}}"),
        "rollup.traces.histogram.unit"
    );
    assert_eq!(
        invalid_path("rollup: {traces: {dimensions: [{name: span.name}]}}"),
        "rollup.traces.dimensions[0].name"
    );
    assert_eq!(
        invalid_path("rollup: {traces: {histogram: {exponential: {max_size: 1}}}}"),
        "rollup.traces.histogram.exponential.max_size"
    );
    assert_eq!(
        invalid_path("rollup: {traces: {cardinality_limit: 0}}"),
        "rollup.traces.cardinality_limit"
    );
}

#[test]
fn policies_correlate_by_window_per_type_unless_told() {
    let c = load(
        "sampler:\n  policies:\n  - {name: e, type: status_code, status_code: {status_codes: [ERROR]}}\n  - {name: l, type: latency, latency: {threshold_ms: 10}}\n  - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 1}}\n  - {name: a, type: always_sample}\n  - {name: b, type: always_sample, correlate: true}\n  - {name: s, type: status_code, correlate: false, status_code: {status_codes: [ERROR]}}\n",
    )
    .unwrap();
    let flags: Vec<bool> = c.sampler.policies.iter().map(|p| p.correlates()).collect();
    assert_eq!(flags, vec![true, true, false, false, true, false]);
}

/// The configuration example in the README is a valid configuration (docs match code).
#[test]
fn readme_configuration_example_loads() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## Configuration").expect("section")..];
    let start = section.find("```yaml\n").expect("yaml block") + "```yaml\n".len();
    let block = &section[start..start + section[start..].find("```").expect("block end")];
    let c = Config::from_yaml(block, &|_| Some("key".into())).unwrap();
    assert_eq!(c.rollup.metrics.rules.len(), 2);
    assert_eq!(c.correlation.before, Duration::from_millis(100));
}

/// A `processors.tail_sampling` block as a v0.161 Collector config has it, with every
/// top-level key of the processor, pasted under `sampler:` unchanged.
const COLLECTOR_V0_161_BLOCK: &str = r#"
sampler:
  decision_wait: 15s
  decision_wait_after_root_received: 2s
  num_traces: 200000
  expected_new_traces_per_sec: 2000
  sample_on_first_match: true
  drop_pending_traces_on_shutdown: true
  maximum_trace_size_bytes: 10485760
  block_on_overflow: true
  sampling_strategy: trace-complete
  num_shards: 4
  tail_storage: pebble_tail_storage
  decision_cache:
    sampled_cache_size: 500000
    non_sampled_cache_size: 2000000
  policies:
    - name: drop-health-checks
      type: drop
      drop:
        drop_sub_policy:
          - name: health-route
            type: ottl_condition
            ottl_condition:
              error_mode: ignore
              span:
                - 'IsMatch(attributes["http.route"], "^/(healthz|readyz|livez)$") and kind == SPAN_KIND_SERVER'
    - name: keep-exceptions
      type: ottl_condition
      ottl_condition:
        error_mode: silent
        spanevent:
          - 'name == "exception"'
    - name: keep-errors
      type: status_code
      status_code: {status_codes: [ERROR]}
    - name: keep-slow
      type: latency
      latency: {threshold_ms: 2000}
    - name: not-team-a
      type: string_attribute
      string_attribute: {key: team, values: [team_a], invert_match: true}
    - name: checkout-slow-spans
      type: and
      and:
        and_sub_policy:
          - name: checkout
            type: ottl_condition
            ottl_condition:
              span:
                - 'resource.attributes["service.name"] == "checkout"'
                - 'end_time_unix_nano - start_time_unix_nano > 500000000'
          - name: sometimes
            type: probabilistic
            probabilistic: {sampling_percentage: 50}
    - name: budget
      type: composite
      composite:
        max_total_spans_per_second: 1000
        policy_order: [vip, rest]
        composite_sub_policy:
          - name: vip
            type: ottl_condition
            ottl_condition:
              span: ['attributes["customer.tier"] == "gold"']
          - name: rest
            type: always_sample
        rate_allocation:
          - {policy: vip, percent: 60}
    - name: baseline
      type: probabilistic
      probabilistic: {sampling_percentage: 5}
"#;

#[test]
fn collector_v0_161_block_with_every_key_loads() {
    let c = load(COLLECTOR_V0_161_BLOCK).unwrap();
    let s = &c.sampler;
    assert_eq!(s.decision_wait, Duration::from_secs(15));
    assert_eq!(
        s.decision_wait_after_root_received,
        Some(Duration::from_secs(2))
    );
    assert_eq!(s.num_traces, 200_000);
    assert_eq!(s.expected_new_traces_per_sec, 2000);
    assert!(s.sample_on_first_match);
    assert!(s.drop_pending_traces_on_shutdown);
    assert_eq!(s.maximum_trace_size_bytes, 10 * 1024 * 1024);
    assert!(s.block_on_overflow);
    assert_eq!(s.sampling_strategy, SamplingStrategy::TraceComplete);
    assert_eq!(s.num_shards, 4);
    assert_eq!(s.tail_storage.as_deref(), Some("pebble_tail_storage"));
    assert_eq!(s.decision_cache.non_sampled_cache_size, 2_000_000);
    assert_eq!(s.policies.len(), 8);

    let exceptions = s.policies[1].ottl_condition.as_ref().unwrap();
    assert_eq!(exceptions.error_mode, policy::OttlErrorMode::Silent);
    assert_eq!(exceptions.spanevent, ["name == \"exception\""]);
    assert!(exceptions.span.is_empty());
    let health = &s.policies[0].drop.as_ref().unwrap().drop_sub_policy[0];
    assert_eq!(
        health.ottl_condition.as_ref().unwrap().error_mode,
        policy::OttlErrorMode::Ignore
    );
    let checkout = &s.policies[5].and.as_ref().unwrap().and_sub_policy[0];
    let checkout = checkout.ottl_condition.as_ref().unwrap();
    assert_eq!(
        checkout.error_mode,
        policy::OttlErrorMode::Propagate,
        "the default"
    );
    assert_eq!(checkout.span.len(), 2);

    // The printed config loads back to the same values.
    let again = load(&c.to_yaml()).unwrap();
    assert_eq!(again.sampler.policies, s.policies);
    assert_eq!(again.sampler.num_shards, 4);
    assert!(again.sampler.block_on_overflow);
}

#[test]
fn new_collector_keys_default_and_validate() {
    let s = load("").unwrap().sampler;
    assert_eq!(s.maximum_trace_size_bytes, 0);
    assert!(!s.block_on_overflow && !s.drop_pending_traces_on_shutdown);
    assert_eq!(s.sampling_strategy, SamplingStrategy::TraceComplete);
    assert_eq!((s.num_shards, s.tail_storage), (1, None));

    assert_eq!(
        invalid_path("sampler: {num_shards: 0}"),
        "sampler.num_shards"
    );
    assert_eq!(
        invalid_path("sampler: {num_shards: 257}"),
        "sampler.num_shards"
    );
    assert_eq!(
        invalid_path("sampler: {tail_storage: \"\"}"),
        "sampler.tail_storage"
    );
    assert_eq!(
        invalid_path("sampler: {sampling_strategy: eventually}"),
        "sampler.sampling_strategy"
    );
    let span_ingest = load(
        "sampler: {sampling_strategy: span-ingest, policies: [{name: e, type: status_code, status_code: {status_codes: [ERROR]}}]}",
    )
    .unwrap();
    assert_eq!(
        span_ingest.sampler.sampling_strategy,
        SamplingStrategy::SpanIngest
    );
    // As in the Collector, span-ingest refuses policies whose outcome depends on timing,
    // nested ones included.
    let err = load(
        "sampler: {sampling_strategy: span-ingest, policies: [{name: a, type: and, and: {and_sub_policy: [{name: r, type: rate_limiting, rate_limiting: {spans_per_second: 5}}]}}]}",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sampler.policies[0]") && err.contains("rate_limiting"),
        "{err}"
    );
}

#[test]
fn ottl_condition_blocks_are_checked() {
    assert_eq!(
        invalid_path("sampler: {policies: [{name: o, type: ottl_condition, ottl_condition: {}}]}"),
        "sampler.policies[0].ottl_condition"
    );
    assert_eq!(
        invalid_path(
            "sampler: {policies: [{name: o, type: ottl_condition, ottl_condition: {span: ['name == \"a\"', ' ']}}]}"
        ),
        "sampler.policies[0].ottl_condition.span[1]"
    );
    assert_eq!(
        invalid_path(
            "sampler: {policies: [{name: o, type: ottl_condition, ottl_condition: {error_mode: loud, span: ['true']}}]}"
        ),
        "sampler.policies[0].ottl_condition.error_mode"
    );
    assert_eq!(
        invalid_path(
            "sampler: {policies: [{name: o, type: ottl_condition, ottl_condition: {span: ['true'], log: ['true']}}]}"
        ),
        "sampler.policies[0].ottl_condition.log"
    );
    assert_eq!(
        invalid_path("sampler: {policies: [{name: o, type: ottl_condition}]}"),
        "sampler.policies[0].ottl_condition"
    );
}

#[test]
fn a_cluster_needs_a_long_secret_unless_explicitly_insecure() {
    let seeds = "cluster: {seeds: [\"10.0.0.2:7946\"]";
    let err = load(&format!("{seeds}}}")).unwrap_err().to_string();
    assert!(err.contains("cluster.secret"), "{err}");
    assert!(err.contains("cluster.insecure"), "{err}");
    assert_eq!(
        invalid_path(&format!("{seeds}, secret: short}}")),
        "cluster.secret"
    );
    assert_eq!(
        invalid_path("cluster: {secret: \"\"}"),
        "cluster.secret",
        "empty is short too"
    );
    let long = "0123456789abcdef0123456789abcdef";
    assert!(load(&format!("{seeds}, secret: {long}}}")).is_ok());
    assert!(load(&format!("{seeds}, insecure: true}}")).is_ok());
    assert!(load("").is_ok(), "standalone needs no secret");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "too short\n").unwrap();
    let c = load(&format!("{seeds}, secret_file: {}}}", file.display())).unwrap();
    let err = c.cluster.load_secret().unwrap_err().to_string();
    assert!(
        err.contains("cluster.secret_file") && err.contains("32"),
        "{err}"
    );
    std::fs::write(&file, format!("{long}\n")).unwrap();
    assert_eq!(
        c.cluster.load_secret().unwrap(),
        Some(long.as_bytes().to_vec())
    );
}

#[test]
fn receiver_read_deadline_and_byte_budget_are_checked() {
    let c = load("").unwrap();
    assert_eq!(c.receiver.read_timeout, Duration::from_secs(30));
    assert_eq!(c.receiver.max_buffered_bytes, 256 * 1024 * 1024);
    assert_eq!(
        invalid_path("receiver: {read_timeout: 0s}"),
        "receiver.read_timeout"
    );
    assert_eq!(
        invalid_path("receiver: {max_request_bytes: 1000, max_buffered_bytes: 999}"),
        "receiver.max_buffered_bytes"
    );
    assert_eq!(c.receiver.max_connection_bytes, 128 * 1024 * 1024);
    assert_eq!(
        invalid_path("receiver: {max_request_bytes: 1000, max_connection_bytes: 999}"),
        "receiver.max_connection_bytes"
    );
}

#[test]
fn exporter_tls_and_header_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, "s3cret\n").unwrap();
    let c = load(&format!(
        "exporter:\n  otlphttp:\n    endpoint: https://backend.example:4318\n    headers_from_files: {{x-api-key: {}}}\n    tls: {{server_name: backend.internal}}\n",
        key.display()
    ))
    .unwrap();
    let http = c.exporter.otlphttp.as_ref().unwrap();
    let headers = crate::config::resolve_headers(
        &http.headers,
        &http.headers_from_files,
        "exporter.otlphttp.headers_from_files",
    )
    .unwrap();
    assert_eq!(headers["x-api-key"], "s3cret");
    assert_eq!(
        invalid_path("exporter:\n  otlphttp: {endpoint: \"ftp://x\"}\n"),
        "exporter.otlphttp.endpoint"
    );
    assert_eq!(
        invalid_path("exporter:\n  otlp: {endpoint: \"x:4317\", tls: {cert_file: /a.pem}}\n"),
        "exporter.otlp.tls.cert_file"
    );
    assert_eq!(
        invalid_path(
            "exporter:\n  otlp: {endpoint: \"x:4317\", tls: {ca_file: /nonexistent/ca.pem}}\n"
        ),
        "exporter.otlp.tls.ca_file"
    );
    assert_eq!(
        invalid_path(
            "exporter:\n  otlp: {endpoint: \"x:4317\", headers_from_files: {k: /nonexistent/key}}\n"
        ),
        "exporter.otlp.headers_from_files.k"
    );
}

#[test]
fn buffer_memory_has_a_floor_and_a_default() {
    assert_eq!(
        load("").unwrap().sampler.buffer_memory_bytes,
        64 * 1024 * 1024
    );
    assert_eq!(
        load("sampler: {buffer_memory_bytes: 1073741824}")
            .unwrap()
            .sampler
            .buffer_memory_bytes,
        1 << 30
    );
    assert_eq!(
        invalid_path("sampler: {buffer_memory_bytes: 1048576}"),
        "sampler.buffer_memory_bytes"
    );
}

#[test]
fn request_size_has_a_ceiling() {
    assert_eq!(
        invalid_path(
            "receiver: {max_request_bytes: 536870913, max_buffered_bytes: 1073741824, max_connection_bytes: 1073741824}"
        ),
        "receiver.max_request_bytes"
    );
    load("receiver: {max_request_bytes: 536870912, max_buffered_bytes: 1073741824, max_connection_bytes: 1073741824}")
        .unwrap();
}
