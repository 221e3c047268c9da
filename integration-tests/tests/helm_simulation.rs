//! The Helm chart, rendered with the real `helm` and run as real processes: what users
//! set in values must reach the binaries as they expect.
//!
//! `helm template` renders `ci/simulation-values.yaml` (non-default ports, a gossip
//! secret, a policy, an OTLP exporter whose headers name the pod through the downward
//! API). [`LocalCluster`] then starts every router and sampler pod the Deployment and
//! StatefulSet ask for, each on its own loopback address with the rendered command,
//! args, env, ConfigMap and Secret (see `otel_tail_integration_tests::helm` for the
//! mapping of pod networking, mounts and cluster DNS onto one machine). Traffic goes in
//! through the router Service's rendered port; the StatefulSet is scaled up and down the
//! way `kubectl scale` would (new ordinal started; highest ordinals given their preStop,
//! SIGTERM and the grace period), and every kept trace must come out whole, exactly once.
//!
//! helm comes from `$OTEL_TAIL_HELM_BIN` or `~/.cache/otel-tail-sampler/go-bin` (installed
//! by `helm/otel-tail-sampler/ci/check.sh`, which these tests run when it is missing). On a
//! machine with neither helm nor Go the tests are ignored (the build script leaves the
//! `helm` cfg unset), and [`helm_is_available_under_ci`] fails if that happens under CI;
//! see `otel_tail_integration_tests::prerequisites`.

use std::path::PathBuf;
use std::time::Duration;

use otel_tail_integration_tests::completeness::{Completeness, Exports, Ledger};
use otel_tail_integration_tests::generate::{Generator, TraceShape};
use otel_tail_integration_tests::helm::{self, LocalCluster, Manifests};
use otel_tail_integration_tests::metrics_text::MetricsSnapshot;
use otel_tail_integration_tests::prerequisites;
use otel_tail_integration_tests::traffic::send_split;
use otel_tail_integration_tests::wait::poll_until;
use otel_tail_integration_tests::{HarnessError, OtlpSink, SinkMode, http_client};

const RELEASE: &str = "sim";
const NAMESPACE: &str = "observability";
const ROUTERS: &str = "sim-otel-tail-sampler-router";
const SAMPLERS: &str = "sim-otel-tail-sampler-sampler";
const CONFIG_MAP: &str = "sim-otel-tail-sampler-config";
/// The export backend named in `ci/simulation-values.yaml`.
const BACKEND: &str = "trace-backend.observability.svc.cluster.local:4317";
/// `config.sampler.decision_wait` in `ci/simulation-values.yaml`.
const DECISION_WAIT: Duration = Duration::from_secs(2);
const SPANS_PER_PHASE: usize = 600;

/// The helm binary; the tests that call this are ignored where it cannot be had.
fn helm_bin() -> PathBuf {
    helm::helm_binary().unwrap_or_else(|error| panic!("{error}"))
}

/// Under CI helm must be available, and the build-time probe must still hold.
#[test]
fn helm_is_available_under_ci() {
    let verdict = prerequisites::guard(
        "helm",
        prerequisites::HELM_CFG,
        cfg!(helm),
        prerequisites::helm_missing(),
        prerequisites::in_ci(),
    );
    if let Err(reason) = verdict {
        panic!("{reason}");
    }
}

fn values(file: &str) -> PathBuf {
    helm::chart_dir().join("ci").join(file)
}

/// `otel_tail_ring_members{role="sampler"}` of every pod behind the Services' admin port
/// equals `expected`.
async fn wait_ring(cluster: &LocalCluster, expected: usize) -> Result<(), HarnessError> {
    let mut admins = cluster
        .service_endpoints(ROUTERS, "admin")
        .expect("router admin");
    admins.extend(
        cluster
            .service_endpoints(SAMPLERS, "admin")
            .expect("sampler admin"),
    );
    poll_until(
        &format!("every node to see {expected} samplers on the ring"),
        Duration::from_secs(60),
        || {
            let admins = admins.clone();
            async move {
                for admin in admins {
                    let response = http_client::get(&format!("http://{admin}/metrics")).await?;
                    let members = MetricsSnapshot::parse(&response.text())
                        .sum("otel_tail_ring_members", &[("role", "sampler")]);
                    if members as usize != expected {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            }
        },
    )
    .await
}

/// Sends one batch through the router Service (each trace's spans dealt over the router
/// pods, as a Service spreads connections) and returns what was sent.
async fn send_through_routers(cluster: &LocalCluster, generator: &mut Generator) -> Ledger {
    let endpoints: Vec<String> = cluster
        .service_endpoints(ROUTERS, "otlp-grpc")
        .expect("router Service endpoints")
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    assert_eq!(endpoints.len(), cluster.pod_names(ROUTERS).len());
    let (ledger, stats) = send_split(&endpoints, generator, SPANS_PER_PHASE)
        .await
        .expect("send through the routers");
    assert_eq!(
        ledger.acknowledged_count(),
        ledger.span_count(),
        "every span sent through the routers is acknowledged ({stats:?})"
    );
    ledger
}

fn assess(sink: &OtlpSink, sent: &Ledger) -> (Completeness, Exports) {
    let requests = sink.trace_requests_by_source();
    let exports = Exports::from_requests(requests.iter().map(|(s, r)| (s.as_str(), r)));
    (Completeness::assess(sent, &exports), exports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(helm),
    ignore = "helm is not installed and go is not on PATH to install it"
)]
async fn rendered_chart_runs_scales_and_keeps_whole_traces() {
    let helm_bin = helm_bin();
    let manifests = helm::render(
        &helm_bin,
        RELEASE,
        NAMESPACE,
        &[values("simulation-values.yaml")],
        &[],
    )
    .expect("helm template");
    let sink = OtlpSink::start(SinkMode::Record)
        .await
        .expect("backend sink");
    let mut cluster = LocalCluster::new(manifests, NAMESPACE, "cluster.local").expect("cluster");
    cluster.map_external(BACKEND, sink.addr());
    let workloads = cluster.workloads();
    assert!(
        workloads.contains(&("Deployment".into(), ROUTERS.into(), 2)),
        "{workloads:?}"
    );
    assert!(
        workloads.contains(&("StatefulSet".into(), SAMPLERS.into(), 3)),
        "{workloads:?}"
    );

    cluster.install().await.expect("install: every pod ready");
    assert_eq!(cluster.pod_names(SAMPLERS).len(), 3);
    assert_eq!(cluster.pod_names(ROUTERS).len(), 2);
    wait_ring(&cluster, 3)
        .await
        .expect("3 samplers on the ring");

    let mut generator = Generator::new(
        0x4e1,
        TraceShape {
            spans_per_trace: 4,
            error_share: 0.0,
            logs_per_trace: 0,
        },
    );
    let mut sent = send_through_routers(&cluster, &mut generator).await;

    // kubectl scale statefulset --replicas=4: ordinal 3 joins.
    let stopped = cluster.scale(SAMPLERS, 4).await.expect("scale up");
    assert!(stopped.is_empty());
    wait_ring(&cluster, 4)
        .await
        .expect("4 samplers on the ring");
    sent.merge(send_through_routers(&cluster, &mut generator).await);

    // kubectl scale statefulset --replicas=2: ordinals 3 and 2 leave at once, while
    // the traces just sent are still waiting for their decision.
    let terminations = cluster.scale(SAMPLERS, 2).await.expect("scale down");
    let names: Vec<&str> = terminations.iter().map(|t| t.pod.as_str()).collect();
    assert_eq!(names, [format!("{SAMPLERS}-2"), format!("{SAMPLERS}-3")]);
    for t in &terminations {
        assert!(
            !t.killed && t.status.is_some_and(|s| s.success()),
            "{} must hand off and exit cleanly within its {:?} grace period; took {:?}, {:?}\n{}",
            t.pod,
            t.grace,
            t.elapsed,
            t.status,
            t.log_tail
        );
        assert_eq!(
            t.grace,
            Duration::from_secs(40),
            "the rendered grace period"
        );
    }
    wait_ring(&cluster, 2)
        .await
        .expect("2 samplers on the ring");
    sent.merge(send_through_routers(&cluster, &mut generator).await);

    // Everything kept comes out; then one more decision round to catch late duplicates.
    poll_until("every kept trace to be exported", Duration::from_secs(60), || {
        let (c, _) = assess(&sink, &sent);
        async move { Ok((c.lost_acknowledged_spans == 0 && c.missing_traces == 0).then_some(())) }
    })
    .await
    .unwrap_or_else(|e| {
        let tails: Vec<String> = terminations
            .iter()
            .map(|t| format!("--- {} (terminated) ---\n{}", t.pod, t.log_tail))
            .collect();
        panic!("{e}: {}\n{}", assess(&sink, &sent).0, tails.join("\n"))
    });
    tokio::time::sleep(DECISION_WAIT * 2 + Duration::from_secs(1)).await;
    let (result, exports) = assess(&sink, &sent);
    eprintln!("{}", result.report_line("helm-simulation scale 3->4->2"));
    assert!(
        result.kept_traces > 0,
        "the keep policy from values kept traces: {result}"
    );
    assert_eq!(result.ratio(), 1.0, "whole traces: {result}");
    assert_eq!(result.duplicates, 0, "{result}");
    assert_eq!(result.split_traces, 0, "{result}");
    assert_eq!(
        result.leaked_spans, 0,
        "only what the values' policy keeps: {result}"
    );
    assert_eq!(result.lost_acknowledged_spans, 0, "{result}");

    // Each sampler names itself through `${env:POD_NAME}` (downward API) in the exporter
    // headers set in values.
    let all_samplers: Vec<String> = (0..4).map(|i| format!("{SAMPLERS}-{i}")).collect();
    let mut sources = std::collections::BTreeSet::new();
    for trace in sent.traces().keys() {
        sources.extend(exports.sources_of(trace).into_iter().map(str::to_string));
    }
    assert!(
        sources.len() >= 2,
        "kept traces spread over samplers: {sources:?}"
    );
    for source in &sources {
        assert!(
            all_samplers.contains(source),
            "exporter header {source:?} is a sampler pod name"
        );
    }
}

/// The `checksum/config` pod annotation of the router Deployment and the sampler
/// StatefulSet, which must agree.
fn config_checksum(manifests: &Manifests) -> String {
    let router = manifests.pod_annotation("Deployment", ROUTERS, "checksum/config");
    let sampler = manifests.pod_annotation("StatefulSet", SAMPLERS, "checksum/config");
    assert_eq!(
        router, sampler,
        "both workloads carry the checksum of the one ConfigMap"
    );
    router.expect("checksum/config annotation")
}

#[test]
#[cfg_attr(
    not(helm),
    ignore = "helm is not installed and go is not on PATH to install it"
)]
fn a_config_or_secret_change_rolls_the_pods_and_nothing_else_does() {
    let helm_bin = helm_bin();
    let render =
        |set: &[&str]| helm::render(&helm_bin, RELEASE, NAMESPACE, &[], set).expect("render");
    let base = render(&[]);
    let again = render(&[]);
    let changed = render(&["config.sampler.decision_wait=10s"]);
    let scaled = render(&["sampler.replicas=5"]);
    assert_eq!(
        config_checksum(&base),
        config_checksum(&again),
        "stable across renders"
    );
    assert_ne!(
        config_checksum(&base),
        config_checksum(&changed),
        "a config change rolls the pods"
    );
    assert_eq!(
        config_checksum(&base),
        config_checksum(&scaled),
        "scaling does not"
    );

    let secret = |m: &Manifests| m.pod_annotation("StatefulSet", SAMPLERS, "checksum/secret");
    let rekeyed = render(&["cluster.secret=another-secret-at-least-32-bytes-long"]);
    assert_eq!(secret(&base), secret(&again));
    assert_ne!(
        secret(&base),
        secret(&rekeyed),
        "a new gossip secret rolls the pods"
    );
}

#[test]
#[cfg_attr(
    not(helm),
    ignore = "helm is not installed and go is not on PATH to install it"
)]
fn with_policy_reload_a_policy_change_does_not_roll_the_pods_and_other_changes_do() {
    let helm_bin = helm_bin();
    let render = |set: &[&str]| {
        let mut all = vec!["sampler.policyReload.enabled=true"];
        all.extend_from_slice(set);
        helm::render(&helm_bin, RELEASE, NAMESPACE, &[], &all).expect("render")
    };
    let base = render(&[]);
    let policies = render(&["config.sampler.sample_on_first_match=true"]);
    let other = render(&["config.sampler.decision_wait=10s"]);
    assert_eq!(
        config_checksum(&base),
        config_checksum(&policies),
        "a policy change is reloaded in place"
    );
    assert_ne!(
        config_checksum(&base),
        config_checksum(&other),
        "any other config change rolls the pods"
    );
    let without = helm::render(
        &helm_bin,
        RELEASE,
        NAMESPACE,
        &[],
        &["config.sampler.sample_on_first_match=true"],
    )
    .expect("render");
    assert_ne!(
        config_checksum(&base),
        config_checksum(&without),
        "without policyReload a policy change rolls the pods"
    );
    let config = policies
        .config_map_data(CONFIG_MAP)
        .expect("the ConfigMap")
        .remove("config.yaml")
        .expect("config.yaml");
    assert!(
        config.contains("config_watch_interval: 10s")
            && config.contains("sample_on_first_match: true"),
        "the samplers watch their config file and get the new policy set:\n{config}"
    );
}

#[test]
#[cfg_attr(
    not(helm),
    ignore = "helm is not installed and go is not on PATH to install it"
)]
fn every_ci_values_file_renders_configs_both_binaries_accept() {
    let helm_bin = helm_bin();
    let mut files: Vec<Option<PathBuf>> = vec![None];
    let mut entries: Vec<PathBuf> = std::fs::read_dir(helm::chart_dir().join("ci"))
        .expect("ci dir")
        .map(|e| e.expect("ci entry").path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    entries.sort();
    assert!(entries.len() >= 3, "ci values files: {entries:?}");
    files.extend(entries.into_iter().map(Some));
    let unused_backend = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
    for file in files {
        let label = file
            .as_ref()
            .map_or("default values".into(), |f| f.display().to_string());
        let manifests = helm::render(&helm_bin, RELEASE, NAMESPACE, file.as_slice(), &[])
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut cluster =
            LocalCluster::new(manifests, NAMESPACE, "cluster.local").expect("cluster");
        // Hosts and Secrets these values name outside the release.
        cluster.map_external(BACKEND, unused_backend);
        cluster.map_external(
            "tempo-distributor.tracing.svc.cluster.local:4317",
            unused_backend,
        );
        cluster.add_existing_secret(
            "otel-tail-gossip",
            &[("key", b"production-gossip-secret-of-40-bytes-abc")],
        );
        let runs = cluster
            .run_each_workload_once(&["--check-config"])
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(runs.len(), 2, "{label}: a router and a sampler workload");
        for (pod, status, output) in runs {
            assert!(status.success(), "{label}: {pod} --check-config: {output}");
            assert!(output.contains("config OK"), "{label}: {pod}: {output}");
        }
    }
}
