use std::collections::{HashMap, HashSet};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, NumberDataPoint, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use proptest::prelude::*;
use prost::Message;

use super::record::body_text;
use super::*;
use crate::rollup::metrics::ROLLUP_ATTRIBUTE;

fn string(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.to_owned())),
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn resource(attributes: &[(&str, &str)]) -> Resource {
    Resource {
        attributes: attributes.iter().map(|(k, v)| kv(k, string(v))).collect(),
        ..Default::default()
    }
}

fn record(severity: i32, text: &str, body: &str, time: u64) -> LogRecord {
    LogRecord {
        time_unix_nano: time,
        severity_number: severity,
        severity_text: text.to_owned(),
        body: Some(string(body)),
        ..Default::default()
    }
}

fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    let mut found = attributes.iter().filter(|kv| kv.key == key);
    let value = found.next()?.value.as_ref()?.value.as_ref();
    assert!(found.next().is_none(), "attribute {key} appears twice");
    value
}

fn int_attr(attributes: &[KeyValue], key: &str) -> i64 {
    match attr(attributes, key) {
        Some(Value::IntValue(i)) => *i,
        other => panic!("{key} is not an int: {other:?}"),
    }
}

fn str_attr<'a>(attributes: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{key} is not a string: {other:?}"),
    }
}

fn records(logs: &ExportLogsServiceRequest) -> impl Iterator<Item = &LogRecord> {
    logs.resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .flat_map(|sl| &sl.log_records)
}

fn points(metrics: &ExportMetricsServiceRequest) -> impl Iterator<Item = &NumberDataPoint> {
    metrics
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .flat_map(|m| match &m.data {
            Some(metric::Data::Sum(sum)) => &sum.data_points,
            other => panic!("log.records is not a sum: {other:?}"),
        })
}

fn point_value(p: &NumberDataPoint) -> i64 {
    match p.value {
        Some(number_data_point::Value::AsInt(v)) => v,
        other => panic!("not an int point: {other:?}"),
    }
}

#[test]
fn flush_emits_summaries_and_counts_as_otlp_that_round_trips() {
    let mut rollup = LogRollup::default();
    let checkout = resource(&[
        ("host.name", "node-7"),
        ("service.name", "checkout"),
        ("telemetry.sdk.name", "opentelemetry"),
        ("service.instance.id", "pod-1"),
    ]);
    let id = rollup.add_record(
        Some(&checkout),
        &record(9, "", "order 17 paid in 31 ms", 2_000),
    );
    assert_eq!(
        rollup.add_record(
            Some(&checkout),
            &record(9, "Information", "order 18 paid in 9 ms", 1_000)
        ),
        id
    );
    rollup.add_record(
        Some(&checkout),
        &record(17, "", "payment gateway unreachable", 3_000),
    );
    rollup.add_record(None, &record(13, "", "disk almost full", 4_000));

    let out = rollup.flush(100, 5_000);
    assert_eq!(out.lines, 4);
    assert_eq!(out.summaries, 3);

    let logs = ExportLogsServiceRequest::decode(out.logs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(logs, out.logs);
    let metrics =
        ExportMetricsServiceRequest::decode(out.metrics.encode_to_vec().as_slice()).unwrap();
    assert_eq!(metrics, out.metrics);

    // Resources in key order: the one without attributes has the empty key.
    assert_eq!(logs.resource_logs.len(), 2);
    assert!(
        logs.resource_logs[0]
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .is_empty()
    );
    let rl = &logs.resource_logs[1];
    assert_eq!(
        rl.resource.as_ref().unwrap().attributes,
        [
            kv("service.name", string("checkout")),
            kv("service.instance.id", string("pod-1")),
            kv("host.name", string("node-7")),
        ],
        "identity attributes only, in fixed order"
    );
    assert_eq!(rl.scope_logs.len(), 1);
    assert_eq!(rl.scope_logs[0].scope.as_ref().unwrap().name, ROLLUP_SCOPE);
    let paid = &rl.scope_logs[0].log_records[0];
    assert_eq!(
        paid.body,
        Some(string("order <*> paid in <*>")),
        "the body is the template (a duration with its unit is one variable)"
    );
    assert_eq!(paid.time_unix_nano, 1_000);
    assert_eq!(paid.observed_time_unix_nano, 5_000);
    assert_eq!(paid.severity_number, 9);
    assert_eq!(paid.severity_text, "Information", "first non-empty text");
    assert!(paid.trace_id.is_empty() && paid.span_id.is_empty());
    let a = &paid.attributes;
    assert_eq!(int_attr(a, COUNT_ATTRIBUTE), 2);
    assert_eq!(str_attr(a, TEMPLATE_ID_ATTRIBUTE), format!("{:016x}", id.0));
    assert_eq!(str_attr(a, TEMPLATE_ID_ATTRIBUTE).len(), 16);
    assert_eq!(int_attr(a, FIRST_TIMESTAMP_ATTRIBUTE), 1_000);
    assert_eq!(int_attr(a, LAST_TIMESTAMP_ATTRIBUTE), 2_000);
    assert_eq!(
        attr(a, SAMPLES_ATTRIBUTE),
        Some(&Value::ArrayValue(ArrayValue {
            values: vec![string("order 17 paid in 31 ms")]
        }))
    );
    assert_eq!(attr(a, ROLLUP_ATTRIBUTE), Some(&Value::BoolValue(true)));
    assert_eq!(attr(a, OVERFLOW_ATTRIBUTE), None);
    let failed = &rl.scope_logs[0].log_records[1];
    assert_eq!(failed.severity_number, 17);
    assert_eq!(failed.severity_text, "");

    assert_eq!(metrics.resource_metrics.len(), 2);
    let rm = &metrics.resource_metrics[1];
    assert_eq!(rm.resource, rl.resource);
    assert_eq!(
        rm.scope_metrics[0].scope.as_ref().unwrap().name,
        ROLLUP_SCOPE
    );
    let metric = &rm.scope_metrics[0].metrics[0];
    assert_eq!(metric.name, LOG_RECORDS_METRIC);
    assert_eq!(metric.unit, "{record}");
    assert_eq!(
        metric.description,
        "Log records rolled up, by service, severity and template"
    );
    let Some(metric::Data::Sum(sum)) = &metric.data else {
        panic!("not a sum")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Delta as i32
    );
    let labels: Vec<(&str, &str, i64)> = sum
        .data_points
        .iter()
        .map(|p| {
            assert_eq!(p.start_time_unix_nano, 100);
            assert_eq!(p.time_unix_nano, 5_000);
            assert_eq!(str_attr(&p.attributes, "service.name"), "checkout");
            assert_eq!(
                attr(&p.attributes, ROLLUP_ATTRIBUTE),
                Some(&Value::BoolValue(true))
            );
            assert_eq!(p.attributes.len(), 4);
            (
                str_attr(&p.attributes, SEVERITY_ATTRIBUTE),
                str_attr(&p.attributes, TEMPLATE_ID_ATTRIBUTE),
                point_value(p),
            )
        })
        .collect();
    let paid_id = format!("{:016x}", id.0);
    assert!(labels.contains(&("Information", paid_id.as_str(), 2)));
    assert!(labels.iter().any(|&(s, _, n)| s == "ERROR" && n == 1));
    let anonymous = &metrics.resource_metrics[0].scope_metrics[0].metrics[0];
    let Some(metric::Data::Sum(sum)) = &anonymous.data else {
        panic!("not a sum")
    };
    let p = &sum.data_points[0];
    assert_eq!(str_attr(&p.attributes, "service.name"), "");
    assert_eq!(str_attr(&p.attributes, SEVERITY_ATTRIBUTE), "WARN");

    let empty = rollup.flush(5_000, 10_000);
    assert_eq!(empty, LogRollupOutput::default());
    assert!(empty.logs.resource_logs.is_empty() && empty.metrics.resource_metrics.is_empty());
}

#[test]
fn severity_labels_follow_the_otlp_ranges_and_same_labels_share_a_point() {
    let names: Vec<&str> = [0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, -1]
        .into_iter()
        .map(severity_name)
        .collect();
    assert_eq!(
        names,
        [
            "UNSPECIFIED",
            "TRACE",
            "TRACE",
            "DEBUG",
            "DEBUG",
            "INFO",
            "INFO",
            "WARN",
            "WARN",
            "ERROR",
            "ERROR",
            "FATAL",
            "FATAL",
            "UNSPECIFIED",
            "UNSPECIFIED"
        ]
    );

    let mut rollup = LogRollup::default();
    let svc = resource(&[("service.name", "api")]);
    rollup.add_record(Some(&svc), &record(9, "", "cache hit for key 1", 1));
    rollup.add_record(Some(&svc), &record(10, "", "cache hit for key 2", 2));
    rollup.add_record(Some(&svc), &record(0, "", "cache hit for key 3", 3));
    rollup.add_record(Some(&svc), &record(99, "", "cache hit for key 4", 4));
    let out = rollup.flush(0, 10);
    let severities: Vec<i32> = records(&out.logs).map(|r| r.severity_number).collect();
    assert_eq!(severities, [0, 9, 10], "out of range counts as unspecified");
    assert_eq!(
        out.summaries, 3,
        "log summaries keep severity numbers apart"
    );
    let points: Vec<_> = points(&out.metrics).collect();
    assert_eq!(points.len(), 2, "INFO and INFO2 add into one point");
    let by_label: HashMap<&str, i64> = points
        .iter()
        .map(|p| (str_attr(&p.attributes, SEVERITY_ATTRIBUTE), point_value(p)))
        .collect();
    assert_eq!(by_label, HashMap::from([("INFO", 2), ("UNSPECIFIED", 2)]));
}

#[test]
fn records_of_different_severity_never_share_a_summary() {
    let mut rollup = LogRollup::default();
    let svc = resource(&[("service.name", "payments")]);
    // One template, three severities, interleaved.
    for (i, severity) in [9, 17, 9, 21, 17, 9].into_iter().enumerate() {
        let body = format!("charge {i} for order {} failed after 3 retries", 100 + i);
        rollup.add_record(Some(&svc), &record(severity, "", &body, i as u64));
    }
    // Unparsed bodies (no severity number) still keep their level words apart.
    rollup.add_record(Some(&svc), &record(0, "", "[INFO] disk 1 at 80%", 7));
    rollup.add_record(Some(&svc), &record(0, "", "[ERROR] disk 2 at 99%", 8));
    let out = rollup.flush(0, 10);
    let summaries: Vec<(i32, i64, String)> = records(&out.logs)
        .map(|r| {
            let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                other => panic!("template body expected, got {other:?}"),
            };
            (
                r.severity_number,
                int_attr(&r.attributes, COUNT_ATTRIBUTE),
                body,
            )
        })
        .collect();
    let template = "charge <*> for order <*> failed after <*> retries";
    let mut sorted = summaries;
    sorted.sort();
    assert_eq!(
        sorted,
        [
            (0, 1, "[ERROR] disk <*> at <*>%".to_owned()),
            (0, 1, "[INFO] disk <*> at <*>%".to_owned()),
            (9, 3, template.to_owned()),
            (17, 2, template.to_owned()),
            (21, 1, template.to_owned()),
        ]
    );
    let by_label: HashMap<&str, i64> = points(&out.metrics)
        .filter(|p| str_attr(&p.attributes, SEVERITY_ATTRIBUTE) != "UNSPECIFIED")
        .map(|p| (str_attr(&p.attributes, SEVERITY_ATTRIBUTE), point_value(p)))
        .collect();
    assert_eq!(
        by_label,
        HashMap::from([("INFO", 3), ("ERROR", 2), ("FATAL", 1)])
    );
}

#[test]
fn non_string_bodies_are_rendered_deterministically() {
    let int = |i| AnyValue {
        value: Some(Value::IntValue(i)),
    };
    let cases = [
        (None, ""),
        (Some(AnyValue { value: None }), ""),
        (Some(int(-42)), "-42"),
        (
            Some(AnyValue {
                value: Some(Value::DoubleValue(2.5)),
            }),
            "2.5",
        ),
        (
            Some(AnyValue {
                value: Some(Value::BoolValue(false)),
            }),
            "false",
        ),
        (
            Some(AnyValue {
                value: Some(Value::BytesValue(vec![0x00, 0xab, 0x7f])),
            }),
            "00ab7f",
        ),
        (
            Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: vec![
                        int(1),
                        string("a \"b\"\n"),
                        AnyValue { value: None },
                        AnyValue {
                            value: Some(Value::BytesValue(vec![1])),
                        },
                    ],
                })),
            }),
            r#"[1,"a \"b\"\n",null,"01"]"#,
        ),
        (
            Some(AnyValue {
                value: Some(Value::KvlistValue(KeyValueList {
                    values: vec![
                        kv("user", string("ann")),
                        kv(
                            "tags",
                            AnyValue {
                                value: Some(Value::ArrayValue(ArrayValue {
                                    values: vec![int(7)],
                                })),
                            },
                        ),
                        KeyValue {
                            key: "none".to_owned(),
                            value: None,
                            ..Default::default()
                        },
                    ],
                })),
            }),
            r#"{"user":"ann","tags":[7],"none":null}"#,
        ),
    ];
    for (body, text) in &cases {
        assert_eq!(body_text(body.as_ref()), *text);
    }

    let mut rollup = LogRollup::default();
    for (i, (body, _)) in cases.iter().enumerate() {
        rollup.add_record(
            None,
            &LogRecord {
                // Unset time: the observed time counts.
                observed_time_unix_nano: 100 + i as u64,
                severity_number: i as i32,
                body: body.clone(),
                ..Default::default()
            },
        );
    }
    let out = rollup.flush(0, 1_000);
    assert_eq!(out.lines, cases.len() as u64);
    let samples: Vec<(i32, i64, &Value)> = records(&out.logs)
        .map(|r| {
            (
                r.severity_number,
                int_attr(&r.attributes, FIRST_TIMESTAMP_ATTRIBUTE),
                attr(&r.attributes, SAMPLES_ATTRIBUTE).unwrap(),
            )
        })
        .collect();
    assert_eq!(samples.len(), cases.len());
    for ((severity, time, sample), (_, text)) in samples.into_iter().zip(&cases) {
        assert_eq!(time, 100 + severity as i64);
        assert_eq!(
            sample,
            &Value::ArrayValue(ArrayValue {
                values: vec![string(text)]
            })
        );
    }
}

#[test]
fn overflow_summary_is_marked() {
    let mut rollup = LogRollup::new(LogRollupOptions {
        miner: MinerConfig {
            max_templates: 1,
            min_idle_lines: 1_000,
            ..MinerConfig::default()
        },
        samples_per_template: 0,
        ..LogRollupOptions::default()
    });
    let svc = resource(&[("service.name", "batch")]);
    let kept = rollup.add_record(Some(&svc), &record(9, "", "job started", 1));
    let over = rollup.add_record(
        Some(&svc),
        &record(9, "", "unrelated event with more words", 2),
    );
    assert_eq!(over, OVERFLOW_TEMPLATE_ID);
    let out = rollup.flush(0, 10);
    let records: Vec<&LogRecord> = records(&out.logs).collect();
    assert_eq!(records.len(), 2);
    // Sorted by template id: the overflow id is 0.
    let (overflow, mined) = (records[0], records[1]);
    assert_eq!(overflow.body, Some(string(OVERFLOW_TEMPLATE)));
    assert_eq!(
        attr(&overflow.attributes, OVERFLOW_ATTRIBUTE),
        Some(&Value::BoolValue(true))
    );
    assert_eq!(
        str_attr(&overflow.attributes, TEMPLATE_ID_ATTRIBUTE),
        "0000000000000000"
    );
    assert_eq!(attr(&mined.attributes, OVERFLOW_ATTRIBUTE), None);
    assert_eq!(
        str_attr(&mined.attributes, TEMPLATE_ID_ATTRIBUTE),
        format!("{:016x}", kept.0)
    );
    assert_eq!(
        attr(&mined.attributes, SAMPLES_ATTRIBUTE),
        None,
        "no samples kept, no attribute"
    );
}

#[test]
fn resources_are_told_apart_by_identity_attributes_only() {
    let mut rollup = LogRollup::default();
    let a = resource(&[("service.name", "web"), ("process.pid", "1")]);
    let a_again = resource(&[("process.pid", "2"), ("service.name", "web")]);
    let empty_namespace = resource(&[("service.name", "web"), ("service.namespace", "")]);
    let non_string = Resource {
        attributes: vec![
            kv("service.name", string("web")),
            kv(
                "host.name",
                AnyValue {
                    value: Some(Value::IntValue(3)),
                },
            ),
        ],
        ..Default::default()
    };
    let duplicate = Resource {
        attributes: vec![
            kv("service.name", string("web")),
            kv("service.name", string("other")),
        ],
        ..Default::default()
    };
    let b = resource(&[("service.name", "web"), ("k8s.pod.name", "web-1")]);
    // Values that would collide if concatenated without lengths.
    let c = resource(&[("service.name", "we"), ("service.namespace", "b")]);
    for r in [
        &a,
        &a_again,
        &empty_namespace,
        &non_string,
        &duplicate,
        &b,
        &c,
    ] {
        rollup.add_record(Some(r), &record(9, "", "request served", 1));
    }
    let out = rollup.flush(0, 10);
    let counts: Vec<(Vec<KeyValue>, i64)> = out
        .logs
        .resource_logs
        .iter()
        .map(|rl| {
            let records = &rl.scope_logs[0].log_records;
            assert_eq!(records.len(), 1);
            (
                rl.resource.clone().unwrap().attributes,
                int_attr(&records[0].attributes, COUNT_ATTRIBUTE),
            )
        })
        .collect();
    assert_eq!(counts.len(), 3);
    assert!(counts.contains(&(vec![kv("service.name", string("web"))], 5)));
    assert!(counts.contains(&(
        vec![
            kv("service.name", string("web")),
            kv("k8s.pod.name", string("web-1"))
        ],
        1
    )));
    assert!(counts.contains(&(
        vec![
            kv("service.name", string("we")),
            kv("service.namespace", string("b"))
        ],
        1
    )));
}

#[test]
fn shared_miner_resources_keep_their_attributes_until_drained() {
    let mut rollup = LogRollup::new(LogRollupOptions {
        max_resources: 1,
        ..LogRollupOptions::default()
    });
    let own = resource(&[("service.name", "own")]);
    let shared = resource(&[("service.name", "shared")]);
    for interval in 0..2u64 {
        rollup.add_record(Some(&own), &record(9, "", "tick", interval));
        rollup.add_record(Some(&shared), &record(9, "", "tick", interval));
        let out = rollup.flush(interval, interval + 1);
        let resources: Vec<&str> = out
            .logs
            .resource_logs
            .iter()
            .map(|rl| str_attr(&rl.resource.as_ref().unwrap().attributes, "service.name"))
            .collect();
        assert_eq!(resources, ["own", "shared"]);
    }
}

/// A few resources, including none at all and ones that differ only outside the identity.
fn resource_strategy() -> impl Strategy<Value = Option<Resource>> {
    prop::sample::select(vec![
        None,
        Some(resource(&[("service.name", "a")])),
        Some(resource(&[("service.name", "a"), ("k8s.pod.name", "a-1")])),
        Some(resource(&[
            ("service.name", "b"),
            ("deployment.environment.name", "prod"),
        ])),
        Some(resource(&[
            ("service.name", "b"),
            ("deployment.environment.name", "prod"),
            ("os.type", "linux"),
        ])),
        Some(resource(&[("host.name", "h")])),
    ])
}

fn record_strategy() -> impl Strategy<Value = LogRecord> {
    let body = prop_oneof![
        (0u32..1_000).prop_map(|n| string(&format!("request {n} served"))),
        ("[a-z]{1,6}", 0u32..50).prop_map(|(w, n)| string(&format!("{w} failed with code {n}"))),
        "[a-z ]{0,12}".prop_map(|s| string(&s)),
        any::<i64>().prop_map(|i| AnyValue {
            value: Some(Value::IntValue(i))
        }),
        Just(AnyValue { value: None }),
    ];
    let text = prop::sample::select(vec!["", "", "INFO", "warning", "Err"]);
    (-1i32..26, text, body, 0u64..10_000, 0u64..10_000).prop_map(
        |(severity, text, body, time, observed)| LogRecord {
            time_unix_nano: if time % 4 == 0 { 0 } else { time },
            observed_time_unix_nano: observed,
            severity_number: severity,
            severity_text: text.to_owned(),
            body: Some(body),
            ..Default::default()
        },
    )
}

proptest! {
    #[test]
    fn flushed_counts_add_up_to_the_records_added(
        intervals in prop::collection::vec(
            prop::collection::vec((resource_strategy(), record_strategy()), 0..80),
            1..5,
        ),
        max_templates in 1usize..6,
        max_resources in 0usize..4,
    ) {
        let mut rollup = LogRollup::new(LogRollupOptions {
            miner: MinerConfig { max_templates, min_idle_lines: 5, ..MinerConfig::default() },
            samples_per_template: 1,
            max_resources,
        });
        for (i, batch) in intervals.iter().enumerate() {
            for (resource, record) in batch {
                rollup.add_record(resource.as_ref(), record);
            }
            let (start, end) = (i as u64 * 10_000, (i as u64 + 1) * 10_000);
            let out = rollup.flush(start, end);
            let added = batch.len() as u64;
            prop_assert_eq!(out.lines, added);
            let mut logged = 0i64;
            let mut summaries = 0usize;
            for r in records(&out.logs) {
                summaries += 1;
                logged += int_attr(&r.attributes, COUNT_ATTRIBUTE);
                prop_assert_eq!(attr(&r.attributes, ROLLUP_ATTRIBUTE), Some(&Value::BoolValue(true)));
                prop_assert!(
                    int_attr(&r.attributes, FIRST_TIMESTAMP_ATTRIBUTE)
                        <= int_attr(&r.attributes, LAST_TIMESTAMP_ATTRIBUTE)
                );
            }
            prop_assert_eq!(summaries, out.summaries);
            prop_assert_eq!(logged, added as i64);
            let mut counted = 0i64;
            for rm in &out.metrics.resource_metrics {
                let mut series = HashSet::new();
                for p in points(&ExportMetricsServiceRequest { resource_metrics: vec![rm.clone()] }) {
                    prop_assert_eq!(p.start_time_unix_nano, start);
                    prop_assert_eq!(p.time_unix_nano, end);
                    let series_key = (
                        str_attr(&p.attributes, "service.name"),
                        str_attr(&p.attributes, SEVERITY_ATTRIBUTE),
                        str_attr(&p.attributes, TEMPLATE_ID_ATTRIBUTE),
                    );
                    prop_assert_eq!(p.attributes.len(), 4);
                    prop_assert!(series.insert(series_key), "one point per series");
                    counted += point_value(p);
                }
            }
            prop_assert_eq!(counted, added as i64);
            prop_assert_eq!(out.logs.resource_logs.len(), out.metrics.resource_metrics.len());
            let logs = ExportLogsServiceRequest::decode(out.logs.encode_to_vec().as_slice()).unwrap();
            prop_assert_eq!(&logs, &out.logs);
        }
    }
}
