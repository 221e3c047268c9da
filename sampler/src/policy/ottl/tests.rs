use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

use super::*;
use otel_tail_shared::otlp::kv;

// ---------------------------------------------------------------------------------------------
// Parser goldens: input → canonical printed form.

#[test]
fn parser_prints_the_canonical_form() {
    let cases = [
        (r#"name == "GET /health""#, r#"name == "GET /health""#),
        (
            r#"attributes["http.route"]=="/healthz" and kind==SPAN_KIND_SERVER"#,
            r#"attributes["http.route"] == "/healthz" and kind == SPAN_KIND_SERVER"#,
        ),
        // `and` binds tighter than `or`.
        (
            "a == 1 or b == 2 and c == 3",
            "a == 1 or (b == 2 and c == 3)",
        ),
        (
            "(a == 1 or b == 2) and c == 3",
            "(a == 1 or b == 2) and c == 3",
        ),
        ("not a == 1 and b != 2", "not a == 1 and b != 2"),
        ("not (a == 1 or b == 2)", "not (a == 1 or b == 2)"),
        ("not not true", "not not true"),
        ("true", "true"),
        ("false or true", "false or true"),
        (
            r#"IsMatch(attributes["url.path"], "^/api/.*")"#,
            r#"IsMatch(attributes["url.path"], "^/api/.*")"#,
        ),
        (
            "end_time_unix_nano - start_time_unix_nano > 1000000000",
            "(end_time_unix_nano - start_time_unix_nano) > 1000000000",
        ),
        // `*` binds tighter than `+`; parentheses group math.
        ("a + b * 2 >= 10", "(a + (b * 2)) >= 10"),
        ("(a + b) * 2 < 10", "((a + b) * 2) < 10"),
        ("attributes[\"x\"] == nil", "attributes[\"x\"] == nil"),
        ("attributes[\"n\"] <= -3", "attributes[\"n\"] <= -3"),
        ("attributes[\"d\"] > 1.5e3", "attributes[\"d\"] > 1500.0"),
        ("trace_id == 0x0102ABcd", "trace_id == 0x0102abcd"),
        (
            r#"resource.attributes["k8s"]["pod"][0] == "a\"b\\c\n""#,
            r#"resource.attributes["k8s"]["pod"][0] == "a\"b\\c\n""#,
        ),
        (
            r#"Contains(["a", "b"], span.name)"#,
            r#"Contains(["a", "b"], span.name)"#,
        ),
        ("Len(attributes) > 0", "Len(attributes) > 0"),
        (
            "status.code==STATUS_CODE_ERROR",
            "status.code == STATUS_CODE_ERROR",
        ),
    ];
    for (input, want) in cases {
        let ast = parser::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(ast.to_string(), want, "input: {input}");
    }
}

#[test]
fn printed_form_parses_back_to_itself() {
    for input in [
        r#"a == 1 or b == 2 and not (c == "x" or d < 2.5)"#,
        "(x + 2) * y / 3 - 1 != 0",
        r#"IsMatch(String(attributes["a"]), "b") and HasPrefix(name, "GET")"#,
    ] {
        let printed = parser::parse(input).unwrap().to_string();
        let again = parser::parse(&printed).unwrap().to_string();
        assert_eq!(printed, again, "input: {input}");
    }
}

/// Parse (and compile) errors name the column where the problem is.
#[test]
fn errors_point_at_the_column() {
    let cases = [
        (
            "name = \"x\"",
            ContextKind::Span,
            "column 6: expected a comparison operator",
        ),
        (
            "name == ",
            ContextKind::Span,
            "column 9: expected a value, found the end of the condition",
        ),
        (
            "name == \"x",
            ContextKind::Span,
            "column 9: unterminated string",
        ),
        (
            "name == \"x\" and",
            ContextKind::Span,
            "column 16: expected a value, found the end",
        ),
        (
            "name == \"x\" xor true",
            ContextKind::Span,
            "column 13: unexpected `xor` after the end",
        ),
        (
            "(name == \"x\"",
            ContextKind::Span,
            "column 13: expected `)`",
        ),
        (
            "name",
            ContextKind::Span,
            "column 1: expected a comparison operator",
        ),
        (
            "name ! \"x\"",
            ContextKind::Span,
            "column 6: unexpected `!`",
        ),
        (
            "attribute[\"k\"] == 1",
            ContextKind::Span,
            "column 1: unknown path `attribute` in the span context",
        ),
        (
            "name == 1 and resource.attrs[\"k\"] == 1",
            ContextKind::Span,
            "column 15: unknown path `resource.attrs`",
        ),
        (
            "time_unix_nano > 0",
            ContextKind::Span,
            "column 1: unknown path `time_unix_nano` in the span context",
        ),
        (
            "name[\"k\"] == 1",
            ContextKind::Span,
            "column 1: path `name` cannot be indexed",
        ),
        (
            "kind == SPAN_KIND_SERVR",
            ContextKind::Span,
            "column 9: unknown enum `SPAN_KIND_SERVR`",
        ),
        (
            "IsMatc(name, \"x\")",
            ContextKind::Span,
            "column 1: unknown converter `IsMatc`",
        ),
        (
            "IsMatch(name)",
            ContextKind::Span,
            "column 1: `IsMatch` takes 2 arguments, got 1",
        ),
        (
            "IsMatch(name, \"(\")",
            ContextKind::Span,
            "column 1: invalid regular expression",
        ),
        (
            "name == \"a\" and set(name, \"b\")",
            ContextKind::Span,
            "column 17: `set` is an editor",
        ),
        (
            "IsRootSpan()",
            ContextKind::SpanEvent,
            "column 1: `IsRootSpan` is only available in span conditions",
        ),
        (
            "ConvertCase(name, \"title\") == \"x\"",
            ContextKind::Span,
            "column 1: `ConvertCase` case must be",
        ),
        (
            "trace_id == 0x123",
            ContextKind::Span,
            "column 13: a bytes literal needs an even",
        ),
        (
            "name == \"x\" + 1",
            ContextKind::Span,
            "cannot be used in arithmetic",
        ),
        (
            "{} == nil",
            ContextKind::Span,
            "column 1: map literals are not supported",
        ),
    ];
    for (input, context, want) in cases {
        let err = compile_condition(input, context).expect_err(input);
        assert!(
            err.to_string().starts_with(want) || err.to_string().contains(want),
            "input: {input}\n got: {err}\nwant: {want}"
        );
    }
}

#[test]
fn condition_errors_name_the_list_and_index() {
    let cfg = OttlConditionConfig {
        error_mode: OttlErrorMode::Ignore,
        span: vec!["name == \"a\"".into()],
        spanevent: vec!["name == \"a\"".into(), "span.nme == \"x\"".into()],
    };
    let err = OttlCondition::compile("p", &cfg).unwrap_err();
    assert_eq!(
        err.to_string(),
        "ottl_condition.spanevent[1] column 1: unknown path `span.nme` in the spanevent context"
    );
}

// ---------------------------------------------------------------------------------------------
// Evaluation over spans built the way an SDK sends them.

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.to_owned())
}

fn i(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

/// An HTTP server span as an SDK would send it, with an exception event.
fn server_span() -> Span {
    Span {
        trace_id: (1..=16).collect(),
        span_id: vec![0xaa; 8],
        parent_span_id: vec![],
        trace_state: "ot=th:8;rv:abc,vendor=x".to_owned(),
        name: "GET /api/users".to_owned(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_001_500_000_000,
        attributes: vec![
            kv("http.route", s("/api/users")),
            kv("http.response.status_code", i(503)),
            kv("retry", any_value::Value::BoolValue(true)),
            kv("ratio", any_value::Value::DoubleValue(0.25)),
            kv(
                "tags",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue {
                            value: Some(s("blue")),
                        },
                        AnyValue {
                            value: Some(s("green")),
                        },
                    ],
                }),
            ),
            kv(
                "peer",
                any_value::Value::KvlistValue(KeyValueList {
                    values: vec![kv("zone", s("eu-1"))],
                }),
            ),
            kv("raw", any_value::Value::BytesValue(vec![0xde, 0xad])),
        ],
        dropped_attributes_count: 2,
        events: vec![Event {
            time_unix_nano: 1_700_000_001_000_000_000,
            name: "exception".to_owned(),
            attributes: vec![
                kv("exception.type", s("java.lang.NullPointerException")),
                kv("exception.message", s("boom")),
            ],
            dropped_attributes_count: 0,
        }],
        status: Some(Status {
            message: "upstream unavailable".to_owned(),
            code: 2,
        }),
        ..Default::default()
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![
            kv("service.name", s("checkout")),
            kv("deployment.environment", s("prod")),
        ],
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "io.opentelemetry.tomcat".to_owned(),
        version: "2.1.0".to_owned(),
        ..Default::default()
    }
}

/// Evaluates one span condition against the server span.
fn eval_span(condition: &str) -> Result<bool, String> {
    let compiled = compile_condition(condition, ContextKind::Span)
        .unwrap_or_else(|e| panic!("{condition}: {e}"));
    let (span, resource, scope) = (server_span(), resource(), scope());
    compiled.eval(&Data {
        resource: Some(&resource),
        scope: Some(&scope),
        span: &span,
        event: None,
    })
}

/// Evaluates one span event condition against the server span's first event.
fn eval_event(condition: &str) -> Result<bool, String> {
    let compiled = compile_condition(condition, ContextKind::SpanEvent)
        .unwrap_or_else(|e| panic!("{condition}: {e}"));
    let (span, resource, scope) = (server_span(), resource(), scope());
    compiled.eval(&Data {
        resource: Some(&resource),
        scope: Some(&scope),
        span: &span,
        event: Some(&span.events[0]),
    })
}

fn assert_all(eval: fn(&str) -> Result<bool, String>, cases: &[(&str, bool)]) {
    for (condition, want) in cases {
        assert_eq!(eval(condition), Ok(*want), "condition: {condition}");
    }
}

#[test]
fn span_paths_read_the_span_its_scope_and_resource() {
    assert_all(
        eval_span,
        &[
            (r#"name == "GET /api/users""#, true),
            (r#"span.name == "GET /api/users""#, true),
            ("kind == SPAN_KIND_SERVER", true),
            ("kind == SPAN_KIND_CLIENT", false),
            ("kind == 2", true),
            (r#"kind.string == "Server""#, true),
            (r#"kind.deprecated_string == "SPAN_KIND_SERVER""#, true),
            ("status.code == STATUS_CODE_ERROR", true),
            ("status.code != STATUS_CODE_OK", true),
            (r#"status.message == "upstream unavailable""#, true),
            (r#"attributes["http.route"] == "/api/users""#, true),
            (r#"attributes["http.response.status_code"] >= 500"#, true),
            (r#"attributes["missing"] == nil"#, true),
            (r#"attributes["peer"]["zone"] == "eu-1""#, true),
            (r#"attributes["tags"][1] == "green""#, true),
            (r#"attributes["raw"] == 0xdead"#, true),
            (r#"resource.attributes["service.name"] == "checkout""#, true),
            (
                r#"instrumentation_scope.name == "io.opentelemetry.tomcat""#,
                true,
            ),
            (r#"instrumentation_scope.version == "2.1.0""#, true),
            (
                r#"trace_id.string == "0102030405060708090a0b0c0d0e0f10""#,
                true,
            ),
            (
                "trace_id == TraceID(0x0102030405060708090a0b0c0d0e0f10)",
                true,
            ),
            ("span_id == SpanID(0xaaaaaaaaaaaaaaaa)", true),
            (r#"span_id.string == "aaaaaaaaaaaaaaaa""#, true),
            (r#"parent_span_id.string == """#, true),
            (r#"trace_state["vendor"] == "x""#, true),
            (r#"trace_state["absent"] == nil"#, true),
            (r#"trace_state == "ot=th:8;rv:abc,vendor=x""#, true),
            ("start_time_unix_nano == 1700000000000000000", true),
            (
                "end_time_unix_nano - start_time_unix_nano > 1000000000",
                true,
            ),
            (
                "end_time_unix_nano - start_time_unix_nano > 2000000000",
                false,
            ),
            (
                "(end_time_unix_nano - start_time_unix_nano) / 1000000 == 1500",
                true,
            ),
            ("dropped_attributes_count == 2", true),
            ("IsRootSpan()", true),
        ],
    );
}

#[test]
fn span_event_paths_read_the_event_and_its_span() {
    assert_all(
        eval_event,
        &[
            (r#"name == "exception""#, true),
            (r#"spanevent.name == "exception""#, true),
            (
                r#"attributes["exception.type"] == "java.lang.NullPointerException""#,
                true,
            ),
            (r#"span.name == "GET /api/users""#, true),
            (r#"span.attributes["http.route"] == "/api/users""#, true),
            ("span.kind == SPAN_KIND_SERVER", true),
            ("time_unix_nano > span.start_time_unix_nano", true),
            (
                r#"resource.attributes["deployment.environment"] == "prod""#,
                true,
            ),
        ],
    );
}

#[test]
fn boolean_operators_and_precedence() {
    assert_all(
        eval_span,
        &[
            ("true and false", false),
            ("true or false", true),
            ("not true", false),
            ("false or true and false", false),
            ("(false or true) and true", true),
            (
                "not (kind == SPAN_KIND_SERVER and status.code == STATUS_CODE_ERROR)",
                false,
            ),
            (
                r#"kind == SPAN_KIND_SERVER and not attributes["retry"] == false"#,
                true,
            ),
        ],
    );
}

/// OTTL's comparison rules: numbers across int and double, strings and bytes lexically,
/// booleans only by equality, nil equal only to nil, different kinds never equal.
#[test]
fn comparisons_follow_ottl_rules() {
    assert_all(
        eval_span,
        &[
            (r#"attributes["ratio"] == 0.25"#, true),
            (r#"attributes["ratio"] < 1"#, true),
            (r#"attributes["http.response.status_code"] == 503.0"#, true),
            (r#"attributes["http.response.status_code"] > 502.5"#, true),
            (r#"name > "GET /api""#, true),
            (r#"name < "A""#, false),
            (r#"attributes["raw"] > 0xdeac"#, true),
            (r#"attributes["retry"] == true"#, true),
            (r#"attributes["retry"] > false"#, false),
            (r#"attributes["http.response.status_code"] == "503""#, false),
            (r#"attributes["http.response.status_code"] != "503""#, true),
            (r#"attributes["http.response.status_code"] > "5""#, false),
            ("nil == nil", true),
            (r#"attributes["missing"] != nil"#, false),
            (r#"attributes["missing"] < 1"#, false),
            (r#"attributes["missing"] == 0"#, false),
            (r#"attributes["tags"] == ["blue", "green"]"#, true),
            (r#"attributes["tags"] == ["green", "blue"]"#, false),
        ],
    );
}

#[test]
fn converters_match_ottl_semantics() {
    assert_all(
        eval_span,
        &[
            (r#"IsMatch(attributes["http.route"], "^/api/")"#, true),
            (r#"IsMatch(attributes["http.route"], "users")"#, true),
            (r#"IsMatch(attributes["missing"], ".*")"#, false),
            (
                r#"IsMatch(attributes["http.response.status_code"], "^5\\d\\d$")"#,
                true,
            ),
            (
                r#"IsString(name) and IsInt(kind) and IsDouble(attributes["ratio"])"#,
                true,
            ),
            (
                r#"IsBool(attributes["retry"]) and IsMap(attributes["peer"])"#,
                true,
            ),
            (
                r#"IsList(attributes["tags"]) and not IsString(attributes["missing"])"#,
                true,
            ),
            (
                r#"Len(attributes["tags"]) == 2 and Len(name) == 14 and Len(attributes) == 7"#,
                true,
            ),
            (
                r#"Int("42") == 42 and Int(2.9) == 2 and Int(true) == 1"#,
                true,
            ),
            (r#"Int("x") == nil"#, true),
            (r#"Double("2.5") == 2.5 and Double(3) == 3.0"#, true),
            (
                r#"String(attributes["http.response.status_code"]) == "503""#,
                true,
            ),
            (r#"String(attributes["raw"]) == "dead""#, true),
            (
                r#"String(attributes["peer"]) == "{\"zone\":\"eu-1\"}""#,
                true,
            ),
            (r#"String(attributes["missing"]) == nil"#, true),
            (
                r#"Concat([name, kind, attributes["missing"]], "|") == "GET /api/users|2|<nil>""#,
                true,
            ),
            (r#"ConvertCase(name, "lower") == "get /api/users""#, true),
            (r#"ConvertCase(name, "upper") == "GET /API/USERS""#, true),
            (
                r#"ConvertCase("HTTPServer requestCount", "snake") == "http_server_request_count""#,
                true,
            ),
            (
                r#"ConvertCase("any kind_of string", "camel") == "AnyKindOfString""#,
                true,
            ),
            (
                r#"ToLowerCase(name) == "get /api/users" and ToUpperCase("a") == "A""#,
                true,
            ),
            (r#"Substring(name, 4, 4) == "/api""#, true),
            (
                r#"HasPrefix(name, "GET ") and HasSuffix(name, "/users")"#,
                true,
            ),
            (r#"Contains(attributes["tags"], "green")"#, true),
            (r#"Contains(["GET /health", "GET /ready"], name)"#, false),
            (r#"Len(Concat(["a", "b"], ""))  == 2"#, true),
        ],
    );
}

#[test]
fn evaluation_errors_are_reported() {
    for (condition, want) in [
        (
            r#"Substring(name, 10, 20) == "x""#,
            "exceeds the string's 14 bytes",
        ),
        (r#"Substring(name, -1, 2) == "x""#, "invalid start"),
        (
            r#"HasPrefix(attributes["missing"], "x")"#,
            "expected string but got nil",
        ),
        (
            r#"ConvertCase(kind, "lower") == "x""#,
            "expected string but got int",
        ),
        (r#"Len(kind) == 1"#, "Len: unsupported type int"),
        (r#"Contains(name, "x")"#, "expected a list"),
        (r#"kind / 0 == 1"#, "divide by zero"),
        (r#"attributes["tags"][5] == "x""#, "out of bounds"),
        (r#"String(name)"#, "must return a bool"),
    ] {
        let err = eval_span(condition).expect_err(condition);
        assert!(err.contains(want), "{condition}: got {err}, want {want}");
    }
}

// ---------------------------------------------------------------------------------------------
// Condition lists and error_mode.

fn block(mode: OttlErrorMode, span: &[&str], spanevent: &[&str]) -> OttlCondition {
    let cfg = OttlConditionConfig {
        error_mode: mode,
        span: span.iter().map(|s| s.to_string()).collect(),
        spanevent: spanevent.iter().map(|s| s.to_string()).collect(),
    };
    OttlCondition::compile("test", &cfg).unwrap()
}

fn run(condition: &OttlCondition, span: &Span) -> SpanOutcome {
    condition.evaluate(Some(&resource()), Some(&scope()), span)
}

#[test]
fn any_true_condition_of_span_or_event_matches() {
    let span = server_span();
    let by_span = block(
        OttlErrorMode::Propagate,
        &["name == \"x\"", "kind == SPAN_KIND_SERVER"],
        &[],
    );
    assert_eq!(run(&by_span, &span), SpanOutcome::Matched);
    let by_event = block(
        OttlErrorMode::Propagate,
        &["name == \"x\""],
        &["name == \"exception\""],
    );
    assert_eq!(run(&by_event, &span), SpanOutcome::Matched);
    let neither = block(
        OttlErrorMode::Propagate,
        &["name == \"x\""],
        &["name == \"y\""],
    );
    assert_eq!(run(&neither, &span), SpanOutcome::NotMatched);
    let mut no_events = span.clone();
    no_events.events.clear();
    assert_eq!(run(&by_event, &no_events), SpanOutcome::NotMatched);
}

#[test]
fn error_mode_decides_what_a_failing_condition_does() {
    let span = server_span();
    let failing = r#"Substring(name, 50, 1) == "x""#;
    let later_true = "kind == SPAN_KIND_SERVER";
    // propagate: the first failure is reported, even if a later condition would be true.
    assert!(matches!(
        run(&block(OttlErrorMode::Propagate, &[failing, later_true], &[]), &span),
        SpanOutcome::Failed(e) if e.contains(failing)
    ));
    // ...but a condition that is true before the failing one decides.
    assert_eq!(
        run(
            &block(OttlErrorMode::Propagate, &[later_true, failing], &[]),
            &span
        ),
        SpanOutcome::Matched
    );
    // ignore / silent: the failing condition is false and the others still count.
    for mode in [OttlErrorMode::Ignore, OttlErrorMode::Silent] {
        assert_eq!(
            run(&block(mode, &[failing, later_true], &[]), &span),
            SpanOutcome::Matched
        );
        assert_eq!(
            run(&block(mode, &[failing], &[]), &span),
            SpanOutcome::NotMatched
        );
    }
}
