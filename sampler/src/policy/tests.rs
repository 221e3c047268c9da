use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use otel_tail_shared::otlp::kv;
use otel_tail_shared::testing::{SplitMix64, resource};
use serde_json::{Value, json};

use super::*;

const SEC: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

fn policy(value: Value) -> PolicyConfig {
    let cfg: PolicyConfig = serde_json::from_value(value).expect("policy JSON");
    cfg.validate("test").expect("valid policy");
    cfg
}

fn engine(policies: Vec<Value>) -> PolicyEngine {
    let configs: Vec<PolicyConfig> = policies.into_iter().map(policy).collect();
    PolicyEngine::new(&configs, false).unwrap()
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

fn b(v: bool) -> any_value::Value {
    any_value::Value::BoolValue(v)
}

fn span(attributes: Vec<KeyValue>) -> Span {
    Span {
        attributes,
        ..Default::default()
    }
}

/// A deterministic, well-mixed stream of trace ids (splitmix64).
struct Ids(SplitMix64);

impl Ids {
    fn next_id(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.0.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.0.next_u64().to_be_bytes());
        id
    }
}

fn stats(span_count: u32) -> TraceStats {
    TraceStats {
        span_count,
        bytes: 100 * span_count,
        min_start_unix_nano: 0,
        max_end_unix_nano: 0,
    }
}

/// Folds `spans` (each with an optional resource) and decides at time `now`.
fn decide_spans(
    engine: &mut PolicyEngine,
    spans: &[(Option<Resource>, Span)],
    now: u64,
) -> Decision {
    let mut state = PolicyState::default();
    for (res, sp) in spans {
        engine.observe_span(&mut state, res.as_ref(), sp);
    }
    engine.decide(&[7; 16], &state, &stats(spans.len() as u32), now)
}

fn sampled(engine: &mut PolicyEngine, spans: &[(Option<Resource>, Span)]) -> bool {
    decide_spans(engine, spans, 0).sampled
}

#[test]
fn always_sample_keeps_and_names_the_policy() {
    let mut e = engine(vec![json!({"name": "all", "type": "always_sample"})]);
    let d = decide_spans(&mut e, &[(None, span(vec![]))], 0);
    assert_eq!(
        d,
        Decision {
            sampled: true,
            policy: Some(Arc::from("all")),
            probability: None,
            correlate: false,
        }
    );
    assert_eq!(e.policy_names(), vec![Arc::<str>::from("all")]);
}

#[test]
fn no_policies_drop_everything() {
    let mut e = engine(vec![]);
    assert!(!sampled(&mut e, &[(None, span(vec![]))]));
}

#[test]
fn latency_uses_the_whole_trace_duration() {
    let mut lower_only = engine(vec![
        json!({"name": "slow", "type": "latency", "latency": {"threshold_ms": 500}}),
    ]);
    let mut bounded = engine(vec![json!({
        "name": "band", "type": "latency", "latency": {"threshold_ms": 500, "upper_threshold_ms": 1000}
    })]);
    let state = PolicyState::default();
    let at = |start_ms: u64, end_ms: u64| TraceStats {
        span_count: 2,
        bytes: 0,
        min_start_unix_nano: 10 * SEC + start_ms * MS,
        max_end_unix_nano: 10 * SEC + end_ms * MS,
    };
    let id = [1; 16];
    // Two short spans far apart make a long trace.
    assert!(
        lower_only.decide(&id, &state, &at(0, 500), 0).sampled,
        "inclusive lower bound"
    );
    assert!(!lower_only.decide(&id, &state, &at(0, 499), 0).sampled);
    assert!(
        !bounded.decide(&id, &state, &at(0, 500), 0).sampled,
        "exclusive lower bound with an upper one"
    );
    assert!(bounded.decide(&id, &state, &at(0, 501), 0).sampled);
    assert!(bounded.decide(&id, &state, &at(0, 1000), 0).sampled);
    assert!(!bounded.decide(&id, &state, &at(0, 1001), 0).sampled);
    let empty = TraceStats {
        min_start_unix_nano: u64::MAX,
        ..Default::default()
    };
    assert!(!lower_only.decide(&id, &state, &empty, 0).sampled);
}

#[test]
fn numeric_attribute_matches_resource_or_any_span() {
    let mut e = engine(vec![json!({
        "name": "http-errors", "type": "numeric_attribute",
        "numeric_attribute": {"key": "http.status_code", "min_value": 500, "max_value": 599}
    })]);
    assert!(sampled(
        &mut e,
        &[
            (None, span(vec![kv("http.status_code", i(200))])),
            (None, span(vec![kv("http.status_code", i(503))]))
        ]
    ));
    assert!(!sampled(
        &mut e,
        &[(None, span(vec![kv("http.status_code", i(404))]))]
    ));
    assert!(
        !sampled(
            &mut e,
            &[(None, span(vec![kv("http.status_code", s("503"))]))]
        ),
        "strings are not numbers"
    );
    let res = resource(vec![kv("http.status_code", i(500))]);
    assert!(sampled(&mut e, &[(Some(res), span(vec![]))]));

    let mut open_ended = engine(vec![json!({
        "name": "big", "type": "numeric_attribute", "numeric_attribute": {"key": "n", "min_value": 50}
    })]);
    assert!(sampled(
        &mut open_ended,
        &[(None, span(vec![kv("n", i(i64::MAX))]))]
    ));
    assert!(!sampled(
        &mut open_ended,
        &[(None, span(vec![kv("n", i(49))]))]
    ));
}

#[test]
fn string_attribute_exact_and_regex() {
    let mut exact = engine(vec![json!({
        "name": "svc", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["checkout", "cart"]}
    })]);
    assert!(sampled(
        &mut exact,
        &[(
            Some(resource(vec![kv("service.name", s("cart"))])),
            span(vec![])
        )]
    ));
    assert!(sampled(
        &mut exact,
        &[(None, span(vec![kv("service.name", s("checkout"))]))]
    ));
    assert!(!sampled(
        &mut exact,
        &[(None, span(vec![kv("service.name", s("checkout-v2"))]))]
    ));
    assert!(!sampled(
        &mut exact,
        &[(None, span(vec![kv("other", s("cart"))]))]
    ));

    let mut regex = engine(vec![json!({
        "name": "routes", "type": "string_attribute",
        "string_attribute": {"key": "http.route", "values": ["^/api/v[0-9]+/orders", "\\/health"], "enabled_regex_matching": true}
    })]);
    assert!(sampled(
        &mut regex,
        &[(None, span(vec![kv("http.route", s("/api/v2/orders/7"))]))]
    ));
    assert!(
        sampled(
            &mut regex,
            &[(None, span(vec![kv("http.route", s("/internal/health"))]))]
        ),
        "unanchored like Go"
    );
    assert!(!sampled(
        &mut regex,
        &[(None, span(vec![kv("http.route", s("/api/vX/orders"))]))]
    ));
}

#[test]
fn boolean_attribute_matches_the_value() {
    let mut e = engine(vec![json!({
        "name": "force", "type": "boolean_attribute", "boolean_attribute": {"key": "app.force_sample", "value": true}
    })]);
    assert!(sampled(
        &mut e,
        &[(None, span(vec![kv("app.force_sample", b(true))]))]
    ));
    assert!(!sampled(
        &mut e,
        &[(None, span(vec![kv("app.force_sample", b(false))]))]
    ));
    assert!(!sampled(
        &mut e,
        &[(None, span(vec![kv("app.force_sample", s("true"))]))]
    ));
}

/// `invert_match` as in the v0.161 Collector: a plain sampled / not-sampled decision on "no
/// resource or span matches", which vetoes no other policy (older releases' InvertNotSampled
/// did).
#[test]
fn invert_match_is_a_plain_decision_that_vetoes_nothing() {
    let team_a = json!({
        "name": "not-team-a", "type": "string_attribute",
        "string_attribute": {"key": "team", "values": ["team_a"], "invert_match": true}
    });
    let mut e = engine(vec![team_a.clone()]);
    // No span has team_a (one has another team, one none): sampled, named.
    let d = decide_spans(
        &mut e,
        &[
            (None, span(vec![kv("team", s("team_b"))])),
            (None, span(vec![])),
        ],
        0,
    );
    assert!(d.sampled);
    assert_eq!(d.policy.as_deref(), Some("not-team-a"));
    // One span has team_a: not sampled by this policy...
    let with_team_a = [
        (None, span(vec![kv("team", s("team_b"))])),
        (None, span(vec![kv("team", s("team_a"))])),
    ];
    assert!(!sampled(&mut e, &with_team_a));
    // ...a resource with team_a counts too...
    assert!(!sampled(
        &mut e,
        &[(Some(resource(vec![kv("team", s("team_a"))])), span(vec![]))]
    ));
    // ...but another policy's Sampled still keeps the trace: nothing is vetoed.
    let mut with_always = engine(vec![
        team_a.clone(),
        json!({"name": "all", "type": "always_sample"}),
    ]);
    let d = decide_spans(&mut with_always, &with_team_a, 0);
    assert!(d.sampled);
    assert_eq!(d.policy.as_deref(), Some("all"));
    // And a NotSampled elsewhere does not block an inverted match (older releases required no
    // NotSampled for an InvertSampled to count).
    let mut with_miss = engine(vec![
        json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}),
        team_a.clone(),
    ]);
    let d = decide_spans(
        &mut with_miss,
        &[(None, span(vec![kv("team", s("team_b"))]))],
        0,
    );
    assert_eq!(d.policy.as_deref(), Some("not-team-a"));
    // Inside `and` it is an ordinary sub-policy decision.
    let mut and = engine(vec![json!({
        "name": "prod-not-team-a", "type": "and", "and": {"and_sub_policy": [
            team_a,
            {"name": "prod", "type": "string_attribute", "string_attribute": {"key": "env", "values": ["prod"]}}
        ]}
    })]);
    assert!(sampled(
        &mut and,
        &[(
            None,
            span(vec![kv("env", s("prod")), kv("team", s("team_b"))])
        )]
    ));
    assert!(!sampled(
        &mut and,
        &[(
            None,
            span(vec![kv("env", s("prod")), kv("team", s("team_a"))])
        )]
    ));

    let mut numeric = engine(vec![
        json!({
            "name": "no-errors", "type": "numeric_attribute",
            "numeric_attribute": {"key": "code", "min_value": 500, "max_value": 599, "invert_match": true}
        }),
        json!({"name": "all", "type": "always_sample"}),
    ]);
    let d = decide_spans(&mut numeric, &[(None, span(vec![kv("code", i(200))]))], 0);
    assert_eq!(d.policy.as_deref(), Some("no-errors"));
    let d = decide_spans(
        &mut numeric,
        &[(Some(resource(vec![kv("code", i(502))])), span(vec![]))],
        0,
    );
    assert_eq!(
        d.policy.as_deref(),
        Some("all"),
        "not vetoed by the inverted match"
    );

    let mut boolean = engine(vec![json!({
        "name": "not-bot", "type": "boolean_attribute", "boolean_attribute": {"key": "bot", "value": true, "invert_match": true}
    })]);
    assert!(sampled(&mut boolean, &[(None, span(vec![]))]));
    assert!(!sampled(
        &mut boolean,
        &[(None, span(vec![kv("bot", b(true))]))]
    ));
}

#[test]
fn status_code_matches_any_span() {
    let mut e = engine(vec![
        json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}),
    ]);
    let error = Span {
        status: Some(Status {
            code: 2,
            message: "boom".into(),
        }),
        ..Default::default()
    };
    assert!(sampled(&mut e, &[(None, span(vec![])), (None, error)]));
    assert!(!sampled(&mut e, &[(None, span(vec![]))]));
    let mut unset = engine(vec![
        json!({"name": "unset", "type": "status_code", "status_code": {"status_codes": ["UNSET", "OK"]}}),
    ]);
    assert!(
        sampled(&mut unset, &[(None, span(vec![]))]),
        "a span without status is UNSET"
    );
}

#[test]
fn span_count_bounds_are_inclusive() {
    let mut e = engine(vec![
        json!({"name": "mid", "type": "span_count", "span_count": {"min_spans": 2, "max_spans": 3}}),
    ]);
    let state = PolicyState::default();
    let results: Vec<bool> = (1..=4)
        .map(|n| e.decide(&[1; 16], &state, &stats(n), 0).sampled)
        .collect();
    assert_eq!(results, [false, true, true, false]);
    let mut min_only = engine(vec![
        json!({"name": "many", "type": "span_count", "span_count": {"min_spans": 2}}),
    ]);
    assert!(min_only.decide(&[1; 16], &state, &stats(10_000), 0).sampled);
}

#[test]
fn trace_state_and_trace_flags() {
    let mut ts = engine(vec![
        json!({"name": "ts", "type": "trace_state", "trace_state": {"key": "vendor", "values": ["gold"]}}),
    ]);
    let with_state = |state: &str| Span {
        trace_state: state.into(),
        ..Default::default()
    };
    assert!(sampled(
        &mut ts,
        &[(None, with_state("ot=th:8, vendor=gold"))]
    ));
    assert!(!sampled(
        &mut ts,
        &[(None, with_state("vendor=silver,other=gold"))]
    ));

    let mut flags = engine(vec![
        json!({"name": "upstream-sampled", "type": "trace_flags"}),
    ]);
    let flagged = Span {
        flags: 0x101,
        ..Default::default()
    };
    assert!(sampled(
        &mut flags,
        &[(None, span(vec![])), (None, flagged)]
    ));
    let unflagged = Span {
        flags: 0x100,
        ..Default::default()
    };
    assert!(!sampled(&mut flags, &[(None, unflagged)]));
}

#[test]
fn probabilistic_rate_is_within_statistical_bounds() {
    let mut e = engine(vec![
        json!({"name": "ten", "type": "probabilistic", "probabilistic": {"sampling_percentage": 10}}),
    ]);
    let state = PolicyState::default();
    let mut ids = Ids(SplitMix64(42));
    let n = 100_000;
    let kept = (0..n)
        .filter(|_| e.decide(&ids.next_id(), &state, &stats(1), 0).sampled)
        .count();
    // Binomial(100000, 0.1): sd ≈ 95; allow 5 sd.
    assert!((9_525..=10_475).contains(&kept), "kept {kept} of {n}");
    let d = (0..)
        .map(|_| e.decide(&ids.next_id(), &state, &stats(1), 0))
        .find(|d| d.sampled)
        .unwrap();
    assert_eq!(d.probability, Some(0.1));
    assert_eq!(d.policy.as_deref(), Some("ten"));
}

#[test]
fn probabilistic_is_deterministic_per_trace_and_salt() {
    let mk = |salt: &str| {
        engine(vec![
            json!({"name": "half", "type": "probabilistic", "probabilistic": {"hash_salt": salt, "sampling_percentage": 50}}),
        ])
    };
    let (mut a, mut a2, mut other) = (mk("s1"), mk("s1"), mk("s2"));
    let state = PolicyState::default();
    let mut ids = Ids(SplitMix64(7));
    let mut differs = 0;
    for _ in 0..1000 {
        let id = ids.next_id();
        let first = a.decide(&id, &state, &stats(1), 0).sampled;
        assert_eq!(first, a.decide(&id, &state, &stats(1), 5 * SEC).sampled);
        assert_eq!(first, a2.decide(&id, &state, &stats(1), 0).sampled);
        differs += usize::from(first != other.decide(&id, &state, &stats(1), 0).sampled);
    }
    assert!(
        differs > 300,
        "different salts decide independently ({differs} of 1000 differ)"
    );
}

#[test]
fn probabilistic_matches_the_collector_hash() {
    // FNV-1a 64 reference values (Go's hash/fnv).
    assert_eq!(fnv1a_64(&[b""]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a_64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a_64(&[b"foo", b"bar"]), fnv1a_64(&[b"foobar"]));
    let mut none = engine(vec![
        json!({"name": "zero", "type": "probabilistic", "probabilistic": {"sampling_percentage": 0}}),
    ]);
    let mut all = engine(vec![
        json!({"name": "all", "type": "probabilistic", "probabilistic": {"sampling_percentage": 150}}),
    ]);
    let mut ids = Ids(SplitMix64(3));
    let state = PolicyState::default();
    for _ in 0..1000 {
        let id = ids.next_id();
        assert!(!none.decide(&id, &state, &stats(1), 0).sampled);
        let d = all.decide(&id, &state, &stats(1), 0);
        assert!(d.sampled);
        assert_eq!(d.probability, Some(1.0));
    }
}

#[test]
fn drop_wins_over_every_sample() {
    let mut e = engine(vec![
        json!({"name": "all", "type": "always_sample"}),
        json!({"name": "drop-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "health", "type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/health"]}},
            {"name": "ok", "type": "status_code", "status_code": {"status_codes": ["OK", "UNSET"]}}
        ]}}),
    ]);
    assert!(!sampled(
        &mut e,
        &[(None, span(vec![kv("http.route", s("/health"))]))]
    ));
    assert!(sampled(
        &mut e,
        &[(None, span(vec![kv("http.route", s("/orders"))]))]
    ));
    // Every drop sub-policy must match: an errored health check is not dropped.
    let errored = Span {
        attributes: vec![kv("http.route", s("/health"))],
        status: Some(Status {
            code: 2,
            message: String::new(),
        }),
        ..Default::default()
    };
    let mut errors_only = engine(vec![
        json!({"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}),
        json!({"name": "drop-healthy-health", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "health", "type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/health"]}},
            {"name": "no-error", "type": "not", "not": {"not_sub_policy":
                {"name": "any-error", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}}}
        ]}}),
    ]);
    let d = decide_spans(&mut errors_only, &[(None, errored)], 0);
    assert!(d.sampled);
    assert_eq!(d.policy.as_deref(), Some("errors"));
}

#[test]
fn and_requires_every_sub_policy_and_not_inverts() {
    let mut e = engine(vec![
        json!({"name": "prod-errors", "type": "and", "and": {"and_sub_policy": [
            {"name": "prod", "type": "string_attribute", "string_attribute": {"key": "env", "values": ["prod"]}},
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
        ]}}),
    ]);
    let error = |env: &str| Span {
        attributes: vec![kv("env", s(env))],
        status: Some(Status {
            code: 2,
            message: String::new(),
        }),
        ..Default::default()
    };
    assert!(sampled(&mut e, &[(None, error("prod"))]));
    assert!(!sampled(&mut e, &[(None, error("dev"))]));
    assert!(!sampled(
        &mut e,
        &[(None, span(vec![kv("env", s("prod"))]))]
    ));

    let mut not = engine(vec![
        json!({"name": "not-health", "type": "not", "not": {"not_sub_policy":
        {"name": "health", "type": "string_attribute", "string_attribute": {"key": "http.route", "values": ["/health"]}}}}),
    ]);
    assert!(sampled(
        &mut not,
        &[(None, span(vec![kv("http.route", s("/orders"))]))]
    ));
    assert!(!sampled(
        &mut not,
        &[(None, span(vec![kv("http.route", s("/health"))]))]
    ));
}

#[test]
fn and_with_probabilistic_reports_its_probability() {
    let mut e = engine(vec![
        json!({"name": "svc-1pct", "type": "and", "and": {"and_sub_policy": [
            {"name": "svc", "type": "string_attribute", "string_attribute": {"key": "service.name", "values": ["api"]}},
            {"name": "quarter", "type": "probabilistic", "probabilistic": {"sampling_percentage": 25}}
        ]}}),
    ]);
    let res = resource(vec![kv("service.name", s("api"))]);
    let mut ids = Ids(SplitMix64(11));
    let mut state = PolicyState::default();
    e.observe_span(&mut state, Some(&res), &span(vec![]));
    let d = (0..1000)
        .map(|_| e.decide(&ids.next_id(), &state, &stats(1), 0))
        .find(|d| d.sampled)
        .unwrap();
    assert_eq!(d.probability, Some(0.25));
}

#[test]
fn probability_is_dropped_when_a_deterministic_policy_also_keeps() {
    let mut e = engine(vec![
        json!({"name": "all-pct", "type": "probabilistic", "probabilistic": {"sampling_percentage": 100}}),
        json!({"name": "all", "type": "always_sample"}),
    ]);
    let d = decide_spans(&mut e, &[(None, span(vec![]))], 0);
    assert_eq!(d.policy.as_deref(), Some("all-pct"));
    assert_eq!(d.probability, None);
}

#[test]
fn sample_on_first_match_stops_at_the_first_sampled() {
    let configs: Vec<PolicyConfig> = vec![
        policy(json!({"name": "all", "type": "always_sample"})),
        policy(
            json!({"name": "budget", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 1}}),
        ),
    ];
    let mut first_match = PolicyEngine::new(&configs, true).unwrap();
    let mut all = PolicyEngine::new(&configs, false).unwrap();
    let state = PolicyState::default();
    for _ in 0..3 {
        assert!(first_match.decide(&[1; 16], &state, &stats(1), 0).sampled);
        assert!(all.decide(&[1; 16], &state, &stats(1), 0).sampled);
    }
    // The engine that evaluated every policy spent the rate limiter's burst of 2; the other never
    // reached it.
    let (Node::RateLimiting(spent), Node::RateLimiting(untouched)) =
        (&mut all.policies[1].node, &mut first_match.policies[1].node)
    else {
        panic!("second policy is the rate limiter")
    };
    assert!(!spent.try_take(1.0, 0));
    assert!(untouched.try_take(2.0, 0));
}

#[test]
fn rate_limiting_refills_over_simulated_time() {
    let mut e = engine(vec![
        json!({"name": "100sps", "type": "rate_limiting", "rate_limiting": {"spans_per_second": 100}}),
    ]);
    let state = PolicyState::default();
    let t0 = 1_700_000_000 * SEC;
    // Starts full with a burst of 200 spans.
    let kept_at_start = (0..30)
        .filter(|_| e.decide(&[1; 16], &state, &stats(10), t0).sampled)
        .count();
    assert_eq!(kept_at_start, 20);
    // Half a second refills 50 spans.
    let kept = (0..30)
        .filter(|_| e.decide(&[1; 16], &state, &stats(10), t0 + SEC / 2).sampled)
        .count();
    assert_eq!(kept, 5);
    // Over 10 simulated seconds, one 10-span trace every 10 ms: sustained 100 spans/s.
    let mut kept_spans = 0;
    for step in 1..=1000u64 {
        if e.decide(&[1; 16], &state, &stats(10), t0 + SEC / 2 + step * 10 * MS)
            .sampled
        {
            kept_spans += 10;
        }
    }
    assert!(
        (990..=1010).contains(&kept_spans),
        "kept {kept_spans} spans in 10 s"
    );
    // A trace larger than the burst never passes.
    assert!(
        !e.decide(&[1; 16], &state, &stats(201), t0 + 100 * SEC)
            .sampled
    );
}

#[test]
fn bytes_limiting_uses_trace_bytes_and_burst_capacity() {
    let mut e = engine(vec![json!({
        "name": "1kBps", "type": "bytes_limiting", "bytes_limiting": {"bytes_per_second": 1000, "burst_capacity": 1500}
    })]);
    let state = PolicyState::default();
    let sized = |bytes| TraceStats {
        span_count: 1,
        bytes,
        min_start_unix_nano: 0,
        max_end_unix_nano: 0,
    };
    assert!(e.decide(&[1; 16], &state, &sized(1000), 0).sampled);
    assert!(!e.decide(&[1; 16], &state, &sized(600), 0).sampled);
    assert!(e.decide(&[1; 16], &state, &sized(500), 0).sampled);
    assert!(!e.decide(&[1; 16], &state, &sized(1), 0).sampled);
    assert!(e.decide(&[1; 16], &state, &sized(1000), SEC).sampled);
    assert!(!e.decide(&[1; 16], &state, &sized(1501), 100 * SEC).sampled);
}

#[test]
fn composite_allocates_the_budget_in_order() {
    let mut e = engine(vec![
        json!({"name": "composite", "type": "composite", "composite": {
            "max_total_spans_per_second": 100,
            "policy_order": ["errors", "rest"],
            "composite_sub_policy": [
                {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
                {"name": "rest", "type": "always_sample"}
            ],
            "rate_allocation": [{"policy": "errors", "percent": 70}]
        }}),
    ]);
    let error = Span {
        status: Some(Status {
            code: 2,
            message: String::new(),
        }),
        ..Default::default()
    };
    let mut error_state = PolicyState::default();
    e.observe_span(&mut error_state, None, &error);
    let ok_state = PolicyState::default();
    let t = 50 * SEC;
    // Errors get 70 spans/s, the unlisted rest gets the remaining 30.
    let errors_kept = (0..10)
        .filter(|_| e.decide(&[1; 16], &error_state, &stats(10), t).sampled)
        .count();
    let rest_kept = (0..10)
        .filter(|_| e.decide(&[1; 16], &ok_state, &stats(10), t + 1).sampled)
        .count();
    assert_eq!((errors_kept, rest_kept), (7, 3));
    // Within the same second the budget is spent; the next second resets it.
    assert!(
        !e.decide(&[1; 16], &ok_state, &stats(1), t + SEC / 2)
            .sampled
    );
    assert!(e.decide(&[1; 16], &ok_state, &stats(10), t + SEC).sampled);
    let d = e.decide(&[1; 16], &error_state, &stats(10), t + SEC);
    assert_eq!(d.policy.as_deref(), Some("composite"));
}

#[test]
fn composite_total_budget_caps_all_sub_policies() {
    let mut e = engine(vec![
        json!({"name": "c", "type": "composite", "composite": {
            "max_total_spans_per_second": 10,
            "composite_sub_policy": [
                {"name": "a", "type": "always_sample"},
                {"name": "b", "type": "always_sample"}
            ],
            "rate_allocation": [{"policy": "a", "percent": 100}, {"policy": "b", "percent": 0}]
        }}),
    ]);
    let state = PolicyState::default();
    let kept = (0..5)
        .filter(|_| e.decide(&[1; 16], &state, &stats(3), SEC).sampled)
        .count();
    assert_eq!(kept, 3, "3 traces of 3 spans fit in 10 spans/s");
}

#[test]
fn too_many_span_conditions_is_an_error() {
    let configs: Vec<PolicyConfig> = (0..=MAX_SPAN_CONDITIONS)
        .map(|n| {
            policy(json!({"name": format!("p{n}"), "type": "boolean_attribute", "boolean_attribute": {"key": format!("k{n}"), "value": true}}))
        })
        .collect();
    let err = PolicyEngine::new(&configs, false).unwrap_err();
    assert!(
        matches!(err, PolicyError::TooManySpanConditions { found } if found == MAX_SPAN_CONDITIONS + 1)
    );
    assert!(PolicyEngine::new(&configs[..MAX_SPAN_CONDITIONS], false).is_ok());
}

#[test]
fn unvalidated_structural_errors_are_reported() {
    let missing: PolicyConfig =
        serde_json::from_value(json!({"name": "l", "type": "latency"})).unwrap();
    assert!(matches!(
        PolicyEngine::new(&[missing], false),
        Err(PolicyError::MissingBlock {
            policy_type: "latency",
            ..
        })
    ));
    let bad_regex: PolicyConfig =
        serde_json::from_value(json!({"name": "r", "type": "string_attribute",
        "string_attribute": {"key": "k", "values": ["("], "enabled_regex_matching": true}}))
        .unwrap();
    assert!(matches!(
        PolicyEngine::new(&[bad_regex], false),
        Err(PolicyError::Regex { .. })
    ));
}

#[test]
fn policy_state_stays_tiny() {
    // 8 bytes of condition bits and one pointer, null unless a dynamic policy saw a key value.
    assert_eq!(std::mem::size_of::<PolicyState>(), 16);
}

#[test]
fn merged_states_decide_like_one_stream_of_spans() {
    let mut e = engine(vec![
        json!({"name": "prod-errors", "type": "and", "and": {"and_sub_policy": [
            {"name": "prod", "type": "string_attribute", "string_attribute": {"key": "env", "values": ["prod"]}},
            {"name": "errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}}
        ]}}),
    ]);
    let prod = span(vec![kv("env", s("prod"))]);
    let error = Span {
        status: Some(Status {
            code: 2,
            message: String::new(),
        }),
        ..Default::default()
    };
    let (mut first, mut second) = (PolicyState::default(), PolicyState::default());
    e.observe_span(&mut first, None, &prod);
    e.observe_span(&mut second, None, &error);
    assert!(!e.decide(&[1; 16], &first, &stats(1), 0).sampled);
    first.merge(&second);
    assert!(e.decide(&[1; 16], &first, &stats(2), 0).sampled);
    assert_eq!(PolicyState::from_bits(first.to_bits()), first);
}

#[test]
fn tracestate_gets_a_threshold() {
    assert_eq!(apply_sampling_probability("", 1.0), "ot=th:0");
    assert_eq!(apply_sampling_probability("", 0.5), "ot=th:8");
    assert_eq!(apply_sampling_probability("", 0.25), "ot=th:c");
    assert_eq!(apply_sampling_probability("", 0.1), "ot=th:e6666666666666");
    assert_eq!(apply_sampling_probability("", 0.01), "ot=th:fd70a3d70a3d71");
    assert_eq!(apply_sampling_probability("", 0.0), "ot=th:ffffffffffffff");
}

#[test]
fn tracestate_combines_with_an_incoming_threshold() {
    assert_eq!(apply_sampling_probability("ot=th:8", 0.5), "ot=th:c");
    assert_eq!(apply_sampling_probability("ot=th:c", 1.0), "ot=th:c");
    assert_eq!(
        apply_sampling_probability("vendor=a,ot=rv:0123456789abcd;th:8;x:y, other=b", 0.5),
        "ot=rv:0123456789abcd;th:c;x:y,vendor=a,other=b"
    );
    // New th goes first, other ot sub-keys and list-members are kept.
    assert_eq!(
        apply_sampling_probability("ot=rv:0123456789abcd,k=v", 0.5),
        "ot=th:8;rv:0123456789abcd,k=v"
    );
    // An unparseable incoming threshold is replaced as if absent.
    assert_eq!(apply_sampling_probability("ot=th:zz", 0.5), "ot=th:8");
}

fn health_check(route: &str, kind: i32) -> Span {
    Span {
        name: format!("GET {route}"),
        kind,
        attributes: vec![kv("http.route", s(route))],
        ..Default::default()
    }
}

fn with_exception(mut span: Span) -> Span {
    span.events
        .push(opentelemetry_proto::tonic::trace::v1::span::Event {
            name: "exception".to_owned(),
            attributes: vec![kv("exception.type", s("IOException"))],
            ..Default::default()
        });
    span
}

#[test]
fn ottl_condition_samples_when_any_span_or_event_matches() {
    let mut e = engine(vec![json!({
        "name": "exceptions-or-slow-server", "type": "ottl_condition",
        "ottl_condition": {
            "error_mode": "ignore",
            "span": ["kind == SPAN_KIND_SERVER and end_time_unix_nano - start_time_unix_nano > 2000000000"],
            "spanevent": ["name == \"exception\" and IsMatch(attributes[\"exception.type\"], \"IO\")"]
        }
    })]);
    let plain = health_check("/users", 2);
    assert!(!sampled(&mut e, &[(None, plain.clone())]));
    // One span of the trace has an exception event.
    assert!(sampled(
        &mut e,
        &[
            (None, plain.clone()),
            (None, with_exception(health_check("/db", 3)))
        ]
    ));
    // A slow server span.
    let slow = Span {
        start_time_unix_nano: SEC,
        end_time_unix_nano: 4 * SEC,
        ..plain
    };
    assert!(sampled(&mut e, &[(None, slow)]));
}

#[test]
fn ottl_condition_reads_the_instrumentation_scope() {
    let mut e = engine(vec![json!({
        "name": "grpc", "type": "ottl_condition",
        "ottl_condition": {"span": ["instrumentation_scope.name == \"io.grpc\""]}
    })]);
    let scope = opentelemetry_proto::tonic::common::v1::InstrumentationScope {
        name: "io.grpc".to_owned(),
        ..Default::default()
    };
    let mut state = PolicyState::default();
    e.observe_span(&mut state, None, &span(vec![]));
    assert!(!e.decide(&[1; 16], &state, &stats(1), 0).sampled);
    e.observer()
        .observe_scoped_span(&mut state, None, Some(&scope), &span(vec![]));
    assert!(e.decide(&[1; 16], &state, &stats(2), 0).sampled);
}

/// The Collector's "drop health checks" recipe: an OTTL condition inside `drop` beats the
/// baseline, and works inside `and` and `composite` like any sub-policy.
#[test]
fn ottl_condition_works_inside_drop_and_and_composite() {
    let health = json!({
        "name": "health", "type": "ottl_condition",
        "ottl_condition": {"span": [
            "IsMatch(attributes[\"http.route\"], \"^/(healthz|ready)$\") and kind == SPAN_KIND_SERVER"
        ]}
    });
    let mut e = engine(vec![
        json!({"name": "drop-health", "type": "drop", "drop": {"drop_sub_policy": [health.clone()]}}),
        json!({"name": "all", "type": "always_sample"}),
    ]);
    assert!(!sampled(&mut e, &[(None, health_check("/healthz", 2))]));
    assert!(
        sampled(&mut e, &[(None, health_check("/healthz", 3))]),
        "client span"
    );
    assert!(sampled(&mut e, &[(None, health_check("/users", 2))]));

    let mut and = engine(vec![json!({
        "name": "prod-health", "type": "and", "and": {"and_sub_policy": [
            health.clone(),
            {"name": "prod", "type": "string_attribute", "string_attribute": {"key": "env", "values": ["prod"]}}
        ]}
    })]);
    let prod = resource(vec![kv("env", s("prod"))]);
    assert!(sampled(
        &mut and,
        &[(Some(prod.clone()), health_check("/ready", 2))]
    ));
    assert!(!sampled(&mut and, &[(None, health_check("/ready", 2))]));

    let mut composite = engine(vec![json!({
        "name": "budget", "type": "composite", "composite": {
            "max_total_spans_per_second": 100,
            "composite_sub_policy": [health]
        }
    })]);
    assert!(sampled(
        &mut composite,
        &[(None, health_check("/ready", 2))]
    ));
    assert!(!sampled(
        &mut composite,
        &[(None, health_check("/users", 2))]
    ));
}

/// `error_mode: propagate`: a policy whose condition failed on a span (and matched none) takes
/// no part in the decision, as an erroring policy in the Collector; the failure propagates
/// through `and` and `not`. `ignore` counts the failing condition as false.
#[test]
fn ottl_errors_follow_error_mode() {
    let failing = |mode: &str| {
        json!({
            "name": format!("substr-{mode}"), "type": "ottl_condition",
            "ottl_condition": {"error_mode": mode, "span": ["Substring(name, 0, 10) == \"GET /users\""]}
        })
    };
    let short = span(vec![]); // name "" → Substring fails
    let long = Span {
        name: "GET /users/42".to_owned(),
        ..Default::default()
    };

    // Alone, a failed policy keeps nothing...
    let mut alone = engine(vec![failing("propagate")]);
    assert!(!sampled(&mut alone, &[(None, short.clone())]));
    // ...and, wrapped in `not`, its failure is not turned into a Sampled.
    let mut negated = engine(vec![json!({
        "name": "not-substr", "type": "not", "not": {"not_sub_policy": failing("propagate")}
    })]);
    assert!(!sampled(&mut negated, &[(None, short.clone())]));
    let mut negated_ignore = engine(vec![json!({
        "name": "not-substr", "type": "not", "not": {"not_sub_policy": failing("ignore")}
    })]);
    assert!(
        sampled(&mut negated_ignore, &[(None, short.clone())]),
        "ignore: false, negated"
    );

    // A failed `drop` sub-policy does not drop.
    let mut dropper = engine(vec![
        json!({"name": "drop-it", "type": "drop", "drop": {"drop_sub_policy": [
            {"name": "inverse", "type": "not", "not": {"not_sub_policy": failing("propagate")}}
        ]}}),
        json!({"name": "all", "type": "always_sample"}),
    ]);
    assert!(sampled(&mut dropper, &[(None, short.clone())]));

    // A span that matches wins over another span that failed, in either order.
    let mut e = engine(vec![failing("propagate")]);
    assert!(sampled(
        &mut e,
        &[(None, short.clone()), (None, long.clone())]
    ));
    assert!(sampled(&mut e, &[(None, long), (None, short)]));
}
