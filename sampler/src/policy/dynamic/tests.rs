use std::collections::{BTreeMap, HashSet};

use opentelemetry_proto::tonic::trace::v1::Status;
use otel_tail_shared::config::{Config, ConfigError};
use serde_json::{Value, json};

use super::super::{
    Decision, PolicyEngine, PolicyState, TraceStats, apply_sample_rate, apply_sampling_probability,
};
use super::*;
use otel_tail_shared::otlp::kv;

const SEC: u64 = 1_000_000_000;

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

/// A span named `name` with `attributes`; a root span unless `child`.
fn span(name: &str, child: bool, attributes: Vec<KeyValue>) -> Span {
    Span {
        name: name.to_owned(),
        parent_span_id: if child { vec![1; 8] } else { Vec::new() },
        attributes,
        ..Default::default()
    }
}

fn with_status(mut span: Span, code: StatusCode) -> Span {
    span.status = Some(Status {
        code: code as i32,
        message: String::new(),
    });
    span
}

/// A key over `fields` resolved against its own field registry.
fn trace_key(fields: &[&str], use_trace_length: bool) -> (TraceKey, KeyFields) {
    let names: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    let mut key = TraceKey::new(&names, use_trace_length);
    let mut registry = KeyFields::default();
    key.fields = key
        .names
        .iter()
        .map(|n| registry.index_of(n).unwrap())
        .collect();
    (key, registry)
}

/// The key of a trace made of `spans` (each with an optional resource).
fn key_of(fields: &[&str], use_trace_length: bool, spans: &[(Option<Resource>, Span)]) -> u64 {
    let (key, registry) = trace_key(fields, use_trace_length);
    let mut values = KeyValues::default();
    for (resource, span) in spans {
        registry.observe(&mut values, resource.as_ref(), span);
    }
    key.of(&values, spans.len() as u32)
}

fn plain(spans: Vec<Span>) -> Vec<(Option<Resource>, Span)> {
    spans.into_iter().map(|s| (None, s)).collect()
}

fn route(r: &str, child: bool) -> Span {
    span("op", child, vec![kv("http.route", s(r))])
}

#[test]
fn key_is_the_set_of_values_whatever_their_order_and_repeats() {
    let fields = ["http.route"];
    let a = key_of(
        &fields,
        false,
        &plain(vec![
            route("/a", false),
            route("/b", true),
            route("/a", true),
        ]),
    );
    let b = key_of(
        &fields,
        false,
        &plain(vec![route("/b", false), route("/a", true)]),
    );
    let only_a = key_of(&fields, false, &plain(vec![route("/a", false)]));
    let none = key_of(&fields, false, &plain(vec![span("op", false, vec![])]));
    assert_eq!(a, b, "same set of values, same key");
    assert_ne!(a, only_a);
    assert_ne!(only_a, none);
}

#[test]
fn values_of_different_fields_do_not_mix() {
    let fields = ["a", "b"];
    let a_only = key_of(
        &fields,
        false,
        &plain(vec![span("op", false, vec![kv("a", s("x"))])]),
    );
    let b_only = key_of(
        &fields,
        false,
        &plain(vec![span("op", false, vec![kv("b", s("x"))])]),
    );
    assert_ne!(a_only, b_only);
    // Field order is part of the key definition, not of the trace.
    let both = plain(vec![span(
        "op",
        false,
        vec![kv("a", s("x")), kv("b", s("y"))],
    )]);
    assert_eq!(key_of(&fields, false, &both), key_of(&fields, false, &both));
}

#[test]
fn values_compare_as_text() {
    let fields = ["http.status_code"];
    let int = key_of(
        &fields,
        false,
        &plain(vec![span(
            "op",
            false,
            vec![kv("http.status_code", any_value::Value::IntValue(200))],
        )]),
    );
    let text = key_of(
        &fields,
        false,
        &plain(vec![span(
            "op",
            false,
            vec![kv("http.status_code", s("200"))],
        )]),
    );
    let other = key_of(
        &fields,
        false,
        &plain(vec![span(
            "op",
            false,
            vec![kv("http.status_code", s("500"))],
        )]),
    );
    assert_eq!(int, text);
    assert_ne!(int, other);
}

#[test]
fn root_prefix_reads_only_the_root_span() {
    let fields = ["root.name"];
    let a = key_of(
        &fields,
        false,
        &plain(vec![
            span("GET /cart", false, vec![]),
            span("db", true, vec![]),
        ]),
    );
    let b = key_of(
        &fields,
        false,
        &plain(vec![
            span("cache", true, vec![]),
            span("GET /cart", false, vec![]),
        ]),
    );
    let c = key_of(
        &fields,
        false,
        &plain(vec![span("GET /pay", false, vec![])]),
    );
    assert_eq!(a, b, "child span names are not part of a root.name key");
    assert_ne!(a, c);
    // Without the prefix every span's name counts.
    let all = ["name"];
    assert_ne!(
        key_of(
            &all,
            false,
            &plain(vec![
                span("GET /cart", false, vec![]),
                span("db", true, vec![])
            ])
        ),
        key_of(&all, false, &plain(vec![span("GET /cart", false, vec![])])),
    );
}

#[test]
fn derived_fields_read_status_kind_and_error() {
    let ok = || plain(vec![with_status(span("op", false, vec![]), StatusCode::Ok)]);
    let failed = || {
        plain(vec![
            with_status(span("op", false, vec![]), StatusCode::Ok),
            with_status(span("op", true, vec![]), StatusCode::Error),
        ])
    };
    assert_ne!(
        key_of(&["status.code"], false, &ok()),
        key_of(&["status.code"], false, &failed())
    );
    assert_ne!(
        key_of(&["error"], false, &ok()),
        key_of(&["error"], false, &failed())
    );
    // `error` is absent on spans without an error, as in Refinery: OK and UNSET look alike.
    let unset = plain(vec![span("op", false, vec![])]);
    assert_eq!(
        key_of(&["error"], false, &ok()),
        key_of(&["error"], false, &unset)
    );
    let mut server = span("op", false, vec![]);
    server.kind = 2;
    let mut client = span("op", false, vec![]);
    client.kind = 3;
    assert_ne!(
        key_of(&["span.kind"], false, &plain(vec![server])),
        key_of(&["span.kind"], false, &plain(vec![client]))
    );
}

#[test]
fn resource_attributes_count_when_the_span_lacks_the_field() {
    let res = |service: &str| {
        Some(Resource {
            attributes: vec![kv("service.name", s(service))],
            ..Default::default()
        })
    };
    let fields = ["service.name"];
    let cart = key_of(&fields, false, &[(res("cart"), span("op", false, vec![]))]);
    let pay = key_of(&fields, false, &[(res("pay"), span("op", false, vec![]))]);
    let both = key_of(
        &fields,
        false,
        &[
            (res("cart"), span("op", false, vec![])),
            (res("pay"), span("op", true, vec![])),
        ],
    );
    assert_ne!(cart, pay);
    assert_ne!(both, cart);
    // A span attribute of the same name wins over its resource's.
    let overridden = key_of(
        &fields,
        false,
        &[(
            res("cart"),
            span("op", false, vec![kv("service.name", s("pay"))]),
        )],
    );
    assert_eq!(overridden, pay);
}

#[test]
fn trace_length_joins_the_key_when_asked() {
    let two = plain(vec![route("/a", false), route("/a", true)]);
    let three = plain(vec![
        route("/a", false),
        route("/a", true),
        route("/a", true),
    ]);
    assert_eq!(
        key_of(&["http.route"], false, &two),
        key_of(&["http.route"], false, &three)
    );
    assert_ne!(
        key_of(&["http.route"], true, &two),
        key_of(&["http.route"], true, &three)
    );
    assert_ne!(
        key_of(&["http.route", "meta.span_count"], false, &two),
        key_of(&["http.route", "meta.span_count"], false, &three)
    );
}

#[test]
fn key_values_are_capped_and_merge_as_a_union() {
    let (_, registry) = trace_key(&["id"], false);
    let mut first = KeyValues::default();
    let mut second = KeyValues::default();
    for i in 0..60 {
        registry.observe(
            &mut first,
            None,
            &span("op", false, vec![kv("id", s(&i.to_string()))]),
        );
    }
    for i in 30..150 {
        registry.observe(
            &mut second,
            None,
            &span("op", false, vec![kv("id", s(&i.to_string()))]),
        );
    }
    assert_eq!(first.len(), 60);
    assert_eq!(second.len(), MAX_KEY_VALUES);
    let mut small = first.clone();
    small.merge(&first);
    assert_eq!(small, first, "merging the same values changes nothing");
    first.merge(&second);
    assert_eq!(first.len(), MAX_KEY_VALUES);
}

#[test]
fn allocation_keeps_rare_keys_whole_and_spends_the_budget_on_frequent_ones() {
    let counts: HashMap<u64, f64> = [(1, 1000.0), (2, 1.0), (3, 30.0)].into();
    let rates = allocate(&counts, 103.1);
    assert_eq!(rates[&2], 1, "a key seen once is kept whole");
    assert_eq!(rates[&3], 1, "30 spans fit their log share of the budget");
    assert!(rates[&1] > 1);
    let kept: f64 = counts.iter().map(|(k, c)| c / f64::from(rates[k])).sum();
    assert!(
        (kept - 103.1).abs() < 0.15 * 103.1,
        "kept {kept} of a 103.1 budget with rates {rates:?}"
    );
    // Nothing to thin out when every key was seen about once.
    let ones: HashMap<u64, f64> = [(1, 1.0), (2, 0.6)].into();
    assert!(allocate(&ones, 0.2).values().all(|&r| r == 1));
}

fn ema(goal: EmaGoal) -> EmaRates {
    EmaRates::new(EmaSettings {
        goal,
        interval_nanos: SEC,
        weight: 0.5,
        age_out_value: 0.5,
        burst_multiple: 2.0,
        burst_detection_delay: 3,
        max_keys: 500,
        initial_rate: 7,
    })
}

/// Feeds `per_key[k]` traces of one span under key `k` evenly through the second starting at
/// `start`; returns the last rate seen per key.
fn feed(
    rates: &mut dyn FnMut(u64, u64) -> u32,
    per_key: &[(u64, u32)],
    start: u64,
) -> BTreeMap<u64, u32> {
    let total: u32 = per_key.iter().map(|(_, n)| n).sum();
    let mut seen = BTreeMap::new();
    let mut i = 0u64;
    for &(key, n) in per_key {
        for _ in 0..n {
            let at = start + i * SEC / u64::from(total.max(1));
            seen.insert(key, rates(key, at));
            i += 1;
        }
    }
    seen
}

#[test]
fn ema_starts_at_the_initial_rate_then_learns_per_key_rates() {
    let mut r = ema(EmaGoal::SampleRate(10.0));
    let first = feed(&mut |k, t| r.observe(k, 1, t), &[(1, 1000), (2, 1)], 0);
    assert_eq!(
        first,
        BTreeMap::from([(1, 7), (2, 7)]),
        "initial rate before any adjustment"
    );
    let second = feed(&mut |k, t| r.observe(k, 1, t), &[(1, 1000), (2, 1)], SEC);
    assert_eq!(second[&2], 1, "the rare key is kept whole");
    assert!(
        second[&1] >= 9,
        "the frequent key pays for the goal: {second:?}"
    );
    assert_eq!(
        r.averages[&1], 500.0,
        "EMA with weight 0.5 after one interval of 1000"
    );
    assert_eq!(r.observe(3, 1, SEC + SEC / 2), 1, "a new key is kept whole");
}

#[test]
fn ema_averages_move_by_weight_ignore_quiet_intervals_and_age_out() {
    let mut r = ema(EmaGoal::SampleRate(10.0));
    r.observe(1, 100, 0);
    r.observe(2, 1, 0);
    r.observe(1, 100, SEC); // closes [0, 1s)
    assert_eq!(r.averages[&1], 50.0);
    assert_eq!(r.averages[&2], 0.5);
    // Five quiet seconds, then traffic: only the interval with traffic is folded in.
    r.observe(1, 100, 7 * SEC);
    assert_eq!(r.averages[&1], 75.0, "0.5·100 + 0.5·50");
    assert!(
        !r.averages.contains_key(&2),
        "0.5·0 + 0.5·0.5 < age_out_value 0.5"
    );
    assert_eq!(r.intervals, 7);
}

#[test]
fn a_burst_adjusts_early_but_only_after_the_detection_delay() {
    // A throughput goal, so that the rate follows the volume.
    let mut r = ema(EmaGoal::Throughput(10.0));
    // Three steady intervals of 100 spans (the detection delay).
    for second in 0..3 {
        feed(&mut |k, t| r.observe(k, 1, t), &[(1, 100)], second * SEC);
    }
    r.observe(1, 1, 3 * SEC); // closes the third interval
    let threshold = r.burst_threshold;
    assert!(threshold > 0.0);
    let before = r.rates.as_ref().unwrap()[&1];
    // A burst within one interval: the rates follow before the interval ends.
    let mut during = 0;
    for i in 0..(3.0 * threshold) as u64 {
        during = r.observe(1, 1, 3 * SEC + 1 + i);
    }
    assert!(
        during > before,
        "rate {during} should rise above {before} during the burst"
    );

    // Before the delay has passed, the same burst waits for the interval's end.
    let mut early = ema(EmaGoal::Throughput(10.0));
    feed(&mut |k, t| early.observe(k, 1, t), &[(1, 100)], 0);
    early.observe(1, 1, SEC);
    let rate = early.rates.as_ref().unwrap()[&1];
    let mut during = 0;
    for i in 0..1000 {
        during = early.observe(1, 1, SEC + 1 + i);
    }
    assert_eq!(during, rate, "no early adjustment in the first intervals");
}

#[test]
fn keys_beyond_max_keys_share_one_overflow_key() {
    let mut r = EmaRates::new(EmaSettings {
        max_keys: 2,
        ..ema(EmaGoal::SampleRate(10.0)).settings
    });
    let per_key: Vec<(u64, u32)> = (1..=50).map(|k| (k, 20)).collect();
    feed(&mut |k, t| r.observe(k, 1, t), &per_key, 0);
    r.observe(1, 1, SEC);
    assert_eq!(
        r.averages.len(),
        3,
        "two keys and the overflow key: {:?}",
        r.averages.keys()
    );
    let overflow_rate = r.rates.as_ref().unwrap()[&OVERFLOW_KEY];
    assert!(overflow_rate > 1, "48 keys × 20 spans sampled together");
    // Once this interval counts two keys, a third takes the overflow key's rate.
    assert_eq!(r.observe(2, 1, SEC + 1), 1);
    assert_eq!(r.observe(40, 1, SEC + 2), overflow_rate);
}

#[test]
fn ema_throughput_meets_its_goal_and_follows_the_share() {
    let mut r = ema(EmaGoal::Throughput(100.0));
    for second in 0..2 {
        feed(&mut |k, t| r.observe(k, 1, t), &[(1, 1000)], second * SEC);
    }
    let full = r.observe(1, 1, 2 * SEC);
    // Average 750 after two intervals of 1000: 100 spans per 1 s interval needs rate 8.
    assert_eq!(full, 8);
    r.set_share(0.5);
    assert_eq!(
        r.observe(1, 1, 2 * SEC + 1),
        15,
        "half the goal: ceil(750 / 50)"
    );
}

fn windowed(goal: f64) -> WindowedRates {
    WindowedRates::new(WindowedSettings {
        goal_per_sec: goal,
        update_nanos: SEC,
        buckets: 10,
        max_keys: 500,
    })
}

#[test]
fn windowed_splits_the_goal_equally_over_the_window_keys() {
    let mut r = windowed(100.0);
    for second in 0..10 {
        feed(
            &mut |k, t| r.observe(k, 1, t),
            &[(1, 900), (2, 100), (3, 1)],
            second * SEC,
        );
    }
    let rates = feed(
        &mut |k, t| r.observe(k, 1, t),
        &[(1, 1), (2, 1), (3, 1)],
        10 * SEC,
    );
    // 1000 kept spans per 10 s window, 333 per key: 9000/333 → 27, 1000/333 → 3, 10 → 1.
    assert_eq!(rates, BTreeMap::from([(1, 27), (2, 3), (3, 1)]));
    r.set_share(0.5);
    assert_eq!(r.observe(1, 1, 10 * SEC + 2), 54);
    // Twenty quiet seconds empty the window: every key is new again.
    assert_eq!(r.observe(1, 1, 31 * SEC), 1);
}

/// One trace per id with a root span on `route`, decided at `now`.
fn decide_route(engine: &mut PolicyEngine, id: &TraceId, route: &str, now: u64) -> Decision {
    let mut state = PolicyState::default();
    engine.observe_span(
        &mut state,
        None,
        &span("GET", false, vec![kv("http.route", s(route))]),
    );
    let stats = TraceStats {
        span_count: 1,
        bytes: 100,
        min_start_unix_nano: now,
        max_end_unix_nano: now,
    };
    engine.decide(id, &state, &stats, now)
}

fn engine_of(policies: Value) -> PolicyEngine {
    let configs: Vec<PolicyConfig> = serde_json::from_value(policies).unwrap();
    for (i, c) in configs.iter().enumerate() {
        c.validate(&format!("p[{i}]")).unwrap();
    }
    PolicyEngine::new(&configs, false).unwrap()
}

/// Deterministic, well-mixed trace ids (splitmix64).
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> TraceId {
        let mut id = [0u8; 16];
        for half in id.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            half.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        id
    }
}

/// Per key: traces sent, traces kept, Σ rate over kept traces (the re-weighted count),
/// Σ rate·(rate − 1) over kept traces (an unbiased estimate of its variance, Σ (rate − 1)
/// over all traces), and the rates kept traces carried.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    kept: u64,
    estimate: f64,
    variance: f64,
    rates: HashSet<u64>,
}

/// Sends `seconds` seconds of a skewed workload (`hot` traces per second on `/hot`, one on
/// `/rare`) through `policy`, and tallies the seconds after `warm_up`.
fn skewed(policy: Value, seconds: u64, warm_up: u64, hot: u64) -> BTreeMap<&'static str, Tally> {
    let mut engine = engine_of(json!([policy]));
    let mut ids = Ids(42);
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    for second in 0..seconds {
        let per_second = hot + 1;
        for i in 0..per_second {
            // The rare trace sits in the middle of each second.
            let route = if i == per_second / 2 { "/rare" } else { "/hot" };
            let now = 1_700_000_000 * SEC + second * SEC + i * SEC / per_second;
            let decision = decide_route(&mut engine, &ids.next(), route, now);
            if second < warm_up {
                continue;
            }
            let tally = tallies.entry(route).or_default();
            tally.sent += 1;
            if decision.sampled {
                let rate = 1.0 / decision.probability.expect("kept with a recorded rate");
                tally.kept += 1;
                tally.estimate += rate;
                tally.variance += rate * (rate - 1.0);
                tally.rates.insert(rate.round() as u64);
            }
        }
    }
    tallies
}

/// Kept counts × sample rates estimate the true counts: the frequent key within 4σ (σ² of the
/// Horvitz–Thompson estimate, Σ (rate − 1) over its traces) and within 10%; the rare key
/// exactly, every trace kept at rate 1.
fn assert_reweighted(name: &str, tallies: &BTreeMap<&'static str, Tally>) {
    let hot = &tallies["/hot"];
    let rare = &tallies["/rare"];
    let sigma = hot.variance.sqrt();
    let error = (hot.estimate - hot.sent as f64).abs();
    assert!(
        error <= 4.0 * sigma && error <= 0.10 * hot.sent as f64,
        "{name}: /hot estimate {} of {} sent (error {error:.0}, σ {sigma:.0}); kept {} at rates {:?}",
        hot.estimate,
        hot.sent,
        hot.kept,
        hot.rates
    );
    assert!(
        hot.rates.iter().all(|&r| r > 1),
        "{name}: /hot is thinned out: {:?}",
        hot.rates
    );
    assert_eq!(rare.kept, rare.sent, "{name}: every /rare trace kept");
    assert_eq!(
        rare.rates,
        HashSet::from([1]),
        "{name}: /rare kept at rate 1"
    );
    assert_eq!(rare.estimate, rare.sent as f64, "{name}: /rare count exact");
}

#[test]
fn skewed_traffic_reweights_to_the_true_counts_per_key() {
    // /hot is 1000 times as frequent as /rare; 40 s after a warm-up of 2 s (10 s for the
    // window to fill), about 40,000 /hot traces against 40 /rare ones.
    let ema_dynamic = skewed(
        json!({"name": "dyn", "type": "ema_dynamic", "ema_dynamic": {
            "key_fields": ["http.route"], "goal_sample_rate": 10, "adjustment_interval": "1s"}}),
        42,
        2,
        1000,
    );
    assert_reweighted("ema_dynamic", &ema_dynamic);
    let ema_throughput = skewed(
        json!({"name": "thr", "type": "ema_throughput", "ema_throughput": {
            "key_fields": ["http.route"], "goal_throughput_per_sec": 100,
            "adjustment_interval": "1s"}}),
        42,
        2,
        1000,
    );
    assert_reweighted("ema_throughput", &ema_throughput);
    let windowed = skewed(
        json!({"name": "win", "type": "windowed_throughput", "windowed_throughput": {
            "key_fields": ["http.route"], "goal_throughput_per_sec": 100,
            "update_frequency": "1s", "lookback_frequency": "10s"}}),
        50,
        10,
        1000,
    );
    assert_reweighted("windowed_throughput", &windowed);
}

#[test]
fn the_decision_is_a_function_of_the_trace_id_and_the_rate() {
    let policy = json!([{"name": "dyn", "type": "ema_dynamic", "ema_dynamic": {
        "key_fields": ["http.route"], "goal_sample_rate": 4}}]);
    let (mut a, mut b) = (engine_of(policy.clone()), engine_of(policy));
    let mut ids = Ids(7);
    let mut kept = 0;
    for i in 0..4000u64 {
        let id = ids.next();
        // Before the first adjustment every trace has rate 4, on both engines.
        let da = decide_route(&mut a, &id, "/x", i);
        let db = decide_route(&mut b, &id, "/other", 4000 - i);
        assert_eq!(da.sampled, db.sampled, "same id, same rate, same decision");
        if da.sampled {
            assert_eq!(da.probability, Some(0.25));
            kept += 1;
        }
    }
    // Binomial(4000, 0.25): mean 1000, σ 27.
    assert!(
        (kept - 1000i32).abs() < 140,
        "kept {kept} of 4000 at rate 4"
    );
    assert!(keeps(b"p", &[9; 16], 1), "rate 1 keeps everything");
}

#[test]
fn the_recorded_rate_follows_the_combination_rules() {
    let dynamic = json!({"name": "dyn", "type": "ema_dynamic", "ema_dynamic": {
        "key_fields": ["http.route"], "goal_sample_rate": 1}});
    let errors = json!({"name": "errors", "type": "status_code",
        "status_code": {"status_codes": ["ERROR"]}});
    let mut engine = engine_of(json!([errors, dynamic]));
    let stats = TraceStats {
        span_count: 1,
        ..Default::default()
    };
    let mut failed = PolicyState::default();
    engine.observe_span(
        &mut failed,
        None,
        &with_status(route("/a", false), StatusCode::Error),
    );
    let d = engine.decide(&[1; 16], &failed, &stats, 0);
    assert!(d.sampled);
    assert_eq!(d.policy.as_deref(), Some("errors"));
    assert_eq!(
        d.probability, None,
        "kept by errors anyway: weight 1, no rate recorded"
    );
    let mut fine = PolicyState::default();
    engine.observe_span(&mut fine, None, &route("/a", false));
    let d = engine.decide(&[2; 16], &fine, &stats, 0);
    assert_eq!((d.sampled, d.policy.as_deref()), (true, Some("dyn")));
    assert_eq!(d.probability, Some(1.0));

    // Inside `and`, the rate applies to the traces the other sub-policies let through.
    let mut and = engine_of(
        json!([{"name": "checkout", "type": "and", "and": {"and_sub_policy": [
            {"name": "route", "type": "string_attribute",
             "string_attribute": {"key": "http.route", "values": ["/checkout"]}},
            {"name": "dyn", "type": "ema_dynamic", "ema_dynamic": {
                "key_fields": ["http.route"], "goal_sample_rate": 5}}
        ]}}]),
    );
    let mut ids = Ids(3);
    let mut seen = 0;
    while seen < 50 {
        let d = decide_route(&mut and, &ids.next(), "/checkout", 0);
        if d.sampled {
            assert_eq!(d.probability, Some(0.2));
            seen += 1;
        }
    }
    assert!(!decide_route(&mut and, &[5; 16], "/other", 0).sampled);
}

#[test]
fn the_ring_share_reaches_nested_throughput_policies() {
    let throughput = |name: &str, follow: bool| {
        json!({"name": name, "type": "ema_throughput", "ema_throughput": {
            "key_fields": ["http.route"], "goal_throughput_per_sec": 100,
            "adjustment_interval": "1s", "use_cluster_size": follow}})
    };
    let policies = json!([
        {"name": "c", "type": "composite", "composite": {"max_total_spans_per_second": 1000000,
            "composite_sub_policy": [throughput("nested", true)]}},
    ]);
    let mut follows = engine_of(policies);
    let mut fixed = engine_of(json!([throughput("fixed", false)]));
    let mut ids = Ids(11);
    // The rate of the next kept trace at `now`.
    let kept_rate = |engine: &mut PolicyEngine, ids: &mut Ids, now: u64| loop {
        let d = decide_route(engine, &ids.next(), "/hot", now);
        if d.sampled {
            return 1.0 / d.probability.unwrap();
        }
    };
    for engine in [&mut follows, &mut fixed] {
        for i in 0..1000u64 {
            decide_route(engine, &ids.next(), "/hot", i * SEC / 1000);
        }
    }
    // One interval of 1000 spans: average 500, 100 kept per second → rate 5.
    let follows_full = kept_rate(&mut follows, &mut ids, SEC);
    assert_eq!(follows_full, 5.0);
    assert_eq!(kept_rate(&mut fixed, &mut ids, SEC), 5.0);
    follows.set_share(0.25);
    fixed.set_share(0.25);
    assert_eq!(
        kept_rate(&mut follows, &mut ids, SEC + 1),
        20.0,
        "a quarter of the goal inside the composite"
    );
    assert_eq!(
        kept_rate(&mut fixed, &mut ids, SEC + 1),
        5.0,
        "use_cluster_size: false"
    );
}

#[test]
fn kept_spans_carry_the_rate_as_attribute_and_threshold() {
    let mut attributes = vec![];
    apply_sample_rate(&mut attributes, 0.25);
    assert_eq!(
        attributes,
        vec![kv("SampleRate", any_value::Value::IntValue(4))]
    );
    // A span sampled upstream at 1 in 3 now stands for 12.
    apply_sample_rate(&mut attributes, 1.0 / 3.0);
    assert_eq!(
        attributes,
        vec![kv("SampleRate", any_value::Value::IntValue(12))]
    );
    let mut doubles = vec![kv("SampleRate", any_value::Value::DoubleValue(2.0))];
    apply_sample_rate(&mut doubles, 0.1);
    assert_eq!(
        doubles,
        vec![kv("SampleRate", any_value::Value::IntValue(20))]
    );
    let mut none = vec![];
    apply_sample_rate(&mut none, 0.0);
    assert!(none.is_empty());
    assert_eq!(apply_sampling_probability("", 1.0 / 4.0), "ot=th:c");
}

fn config_error(policy: &str) -> (String, String) {
    let text = format!("sampler:\n  policies:\n    {policy}\n");
    match Config::from_yaml(&text, &|_| None) {
        Err(ConfigError::Invalid { path, message }) => (path, message),
        other => panic!("expected an invalid-config error for {policy}, got {other:?}"),
    }
}

#[test]
fn bad_dynamic_settings_fail_at_their_key() {
    let cases = [
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a], goal_sample_rate: 0}}",
            "sampler.policies[0].ema_dynamic.goal_sample_rate",
        ),
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a], adjustment_interval: 0s}}",
            "sampler.policies[0].ema_dynamic.adjustment_interval",
        ),
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: []}}",
            "sampler.policies[0].ema_dynamic.key_fields",
        ),
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a, 'root.']}}",
            "sampler.policies[0].ema_dynamic.key_fields[1]",
        ),
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a], weight: 1.5}}",
            "sampler.policies[0].ema_dynamic.weight",
        ),
        (
            "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a], burst_multiple: 0.5}}",
            "sampler.policies[0].ema_dynamic.burst_multiple",
        ),
        (
            "- {name: t, type: ema_throughput, ema_throughput: {key_fields: [a], goal_throughput_per_sec: 0}}",
            "sampler.policies[0].ema_throughput.goal_throughput_per_sec",
        ),
        (
            "- {name: t, type: ema_throughput, ema_throughput: {key_fields: [a], initial_sample_rate: 0}}",
            "sampler.policies[0].ema_throughput.initial_sample_rate",
        ),
        (
            "- {name: t, type: ema_throughput, ema_throughput: {key_fields: [a], max_keys: 0}}",
            "sampler.policies[0].ema_throughput.max_keys",
        ),
        (
            "- {name: w, type: windowed_throughput, windowed_throughput: {key_fields: [a], update_frequency: 0s}}",
            "sampler.policies[0].windowed_throughput.update_frequency",
        ),
        (
            "- {name: w, type: windowed_throughput, windowed_throughput: {key_fields: [a], update_frequency: 10s, lookback_frequency: 5s}}",
            "sampler.policies[0].windowed_throughput.lookback_frequency",
        ),
        (
            "- {name: w, type: windowed_throughput}",
            "sampler.policies[0].windowed_throughput",
        ),
        (
            "- {name: n, type: not, not: {not_sub_policy: {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a]}}}}",
            "sampler.policies[0].not.not_sub_policy",
        ),
        (
            "- {name: x, type: drop, drop: {drop_sub_policy: [{name: a, type: and, and: {and_sub_policy: [{name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a]}}]}}]}}",
            "sampler.policies[0].drop.drop_sub_policy",
        ),
    ];
    for (policy, expected) in cases {
        let (path, message) = config_error(policy);
        assert_eq!(path, expected, "{policy}: {message}");
    }
    let (path, message) = config_error(
        "- {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [a], goal_rate: 3}}",
    );
    assert!(
        path.starts_with("sampler.policies[0].ema_dynamic"),
        "{path}"
    );
    assert!(message.contains("goal_rate"), "{message}");
}

#[test]
fn dynamic_blocks_take_refinery_defaults() {
    let text = "sampler:\n  policies:\n    - {name: d, type: ema_dynamic, ema_dynamic: {key_fields: [http.route, root.name]}}\n    - {name: w, type: windowed_throughput, windowed_throughput: {key_fields: [service.name], goal_throughput_per_sec: 2.5}}\n";
    let config = Config::from_yaml(text, &|_| None).unwrap();
    let d = config.sampler.policies[0].ema_dynamic.as_ref().unwrap();
    assert_eq!(d.goal_sample_rate, 10);
    assert_eq!(d.adjustment_interval, std::time::Duration::from_secs(15));
    assert_eq!(
        (d.weight, d.age_out_value, d.burst_multiple),
        (0.5, 0.5, 2.0)
    );
    assert_eq!((d.burst_detection_delay, d.max_keys), (3, 500));
    let w = config.sampler.policies[1]
        .windowed_throughput
        .as_ref()
        .unwrap();
    assert_eq!(w.lookback_frequency, std::time::Duration::from_secs(30));
    assert!(w.use_cluster_size);
    assert!(PolicyEngine::new(&config.sampler.policies, false).is_ok());
}
