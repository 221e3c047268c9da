//! The Helm chart run without Kubernetes: render `helm/otel-tail-sampler` with the real
//! `helm` binary, read the objects it renders, and play kubelet and the workload
//! controllers for them with real `otel-tail-router` / `otel-tail-sampler` processes on
//! the loopback network. What users set in values reaches these processes exactly as it
//! would reach pods: through the rendered command, args, env, ConfigMap and Secret.
//!
//! What stands in for what:
//! - **A pod's network namespace → its own loopback address.** Every pod gets an address
//!   in `127.A.B.0/24` (A and B from the test's process id, so concurrent runs do not
//!   meet) and keeps the ports the chart renders. Listen addresses `0.0.0.0:P` in its
//!   config files become `<pod ip>:P`; `status.podIP` (env `POD_IP`) is that address.
//! - **Mounts → directories.** ConfigMap and Secret volumes become files in the pod's
//!   directory, an emptyDir a fresh directory, a volumeClaimTemplate a directory per claim
//!   and pod name that outlives the pod, as a PersistentVolumeClaim does. Container paths
//!   in args, env values and config files are rewritten to these directories (mount path
//!   prefix → host directory).
//! - **Cluster DNS → addresses.** `<service>.<namespace>.svc.<domain>` of a headless
//!   Service in front of a StatefulSet becomes the address of its pod with ordinal 0 (a
//!   real resolver returns every pod; one is enough for a gossip seed, and ordinal 0 is
//!   the pod that scaling keeps). Hosts outside the release (an export backend) are
//!   mapped by the test with [`LocalCluster::map_external`]. A config that still names a
//!   `.svc` host after that is an error, never a silent miss.
//! - **kubelet.** A container starts with exactly the rendered command (its file name
//!   picks the binary built from this workspace), args and env (the environment is
//!   cleared; downward-API and Secret references are resolved; `HOSTNAME` is the pod
//!   name). It is ready when its rendered readinessProbe answers. Termination runs the
//!   preStop sleep, sends SIGTERM, and SIGKILLs at the end of
//!   `terminationGracePeriodSeconds`, counted from the start, as kubelet does.
//! - **Controllers.** Scaling a StatefulSet adds or removes the highest ordinals, all at
//!   once (`podManagementPolicy: Parallel`); a Deployment adds or removes its newest pod.
//!   A Service resolves its selector and named `targetPort` to the pods' container ports.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::wait::poll_until;
use crate::{HarnessError, binary, http_client, prerequisites};

/// The chart, relative to the workspace root.
pub const CHART_PATH: &str = "helm/otel-tail-sampler";

/// The Kubernetes version rendered for: a `go install`ed helm reports an old default,
/// below the chart's `kubeVersion` constraint.
pub const KUBE_VERSION: &str = "1.31.0";

pub use crate::prerequisites::HELM_BIN_ENV;

/// How long a pod may take from start to a passing readiness probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// kubelet's default when a pod names no grace period.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What went wrong rendering or running the chart.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// No helm binary, and the chart's installer could not provide one.
    #[error("helm is not available: {0}")]
    HelmUnavailable(String),
    /// `helm template` failed.
    #[error("helm template failed ({status}):\n{stderr}")]
    Render {
        /// helm's exit status.
        status: ExitStatus,
        /// What helm printed on stderr.
        stderr: String,
    },
    /// The rendered output is not a YAML stream of objects.
    #[error("the rendered chart is not valid YAML: {0}")]
    Yaml(String),
    /// A rendered object lacks something the simulation needs, or names something that
    /// was not rendered.
    #[error("{kind} {name}: {message}")]
    Manifest {
        /// Kind of the offending object.
        kind: String,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A pod's files still name a cluster host nobody mapped to an address.
    #[error(
        "pod {pod}: {place} names the cluster host in `{text}`, which is not mapped to an address"
    )]
    UnmappedHost {
        /// The pod.
        pod: String,
        /// Which file, arg or env var.
        place: String,
        /// The line naming the host.
        text: String,
    },
    /// A pod did not become ready.
    #[error("pod {pod} did not become ready: {reason}\n--- {pod} log (tail) ---\n{log}")]
    NotReady {
        /// The pod.
        pod: String,
        /// Why (exited, or timed out).
        reason: String,
        /// The end of its output.
        log: String,
    },
    /// A process, file or HTTP operation of the harness failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
}

impl HelmError {
    fn manifest(kind: &str, name: &str, message: impl Into<String>) -> Self {
        HelmError::Manifest {
            kind: kind.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    binary::workspace_root().join(CHART_PATH)
}

/// The helm binary: `$OTEL_TAIL_HELM_BIN`, else the one `ci/check.sh` installs into
/// `~/.cache/otel-tail-sampler/go-bin`, installing it (with `go install`) when missing.
pub fn helm_binary() -> Result<PathBuf, HelmError> {
    if let Some(path) = std::env::var_os(HELM_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let cached = prerequisites::cached_helm()
        .ok_or_else(|| HelmError::HelmUnavailable("$HOME is not set".into()))?;
    if cached.is_file() {
        return Ok(cached);
    }
    if !prerequisites::go_on_path() {
        return Err(HelmError::HelmUnavailable(format!(
            "{} does not exist and the go command needed to install it is not on PATH \
             (run helm/otel-tail-sampler/ci/check.sh --install-only)",
            cached.display()
        )));
    }
    let installer = chart_dir().join("ci/check.sh");
    eprintln!("[helm] installing helm with {}", installer.display());
    let output = Command::new("bash")
        .arg(&installer)
        .arg("--install-only")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| HarnessError::io(format!("running {}", installer.display()), e))?;
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_file());
    match (output.status.success(), path) {
        (true, Some(path)) => Ok(path),
        _ => Err(HelmError::HelmUnavailable(format!(
            "{} --install-only exited with {}",
            installer.display(),
            output.status
        ))),
    }
}

/// The gossip secret [`render`] gives the chart unless the values set one.
pub const RENDER_SECRET: &str = "rendered-gossip-secret-0123456789abcdef";

/// Runs `helm template RELEASE <chart> --namespace NAMESPACE` with the given values files
/// and `--set` expressions and parses the result. Like a GitOps pipeline, it first gives
/// the chart a gossip secret ([`RENDER_SECRET`]; the values files and expressions may
/// override it): rendering without a cluster cannot generate one.
pub fn render(
    helm: &Path,
    release: &str,
    namespace: &str,
    values_files: &[PathBuf],
    set: &[&str],
) -> Result<Manifests, HelmError> {
    let mut cmd = Command::new(helm);
    cmd.arg("template").arg(release).arg(chart_dir()).args([
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]);
    let secret_values = tempfile::NamedTempFile::new()
        .map_err(|e| HarnessError::io("creating the secret values file", e))?;
    std::fs::write(
        secret_values.path(),
        format!("cluster:\n  secret: {RENDER_SECRET}\n"),
    )
    .map_err(|e| HarnessError::io("writing the secret values file", e))?;
    cmd.arg("--values").arg(secret_values.path());
    for file in values_files {
        cmd.arg("--values").arg(file);
    }
    for expression in set {
        cmd.args(["--set", expression]);
    }
    let output = cmd
        .output()
        .map_err(|e| HarnessError::io(format!("running {}", helm.display()), e))?;
    if !output.status.success() {
        return Err(HelmError::Render {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Manifests::parse(&String::from_utf8_lossy(&output.stdout))
}

/// The objects a render produced.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    objects: Vec<Value>,
}

impl Manifests {
    /// Parses a YAML stream of objects (`---` separated; empty documents skipped).
    pub fn parse(yaml: &str) -> Result<Self, HelmError> {
        let documents: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| HelmError::Yaml(e.to_string()))?;
        Ok(Manifests {
            objects: documents.into_iter().filter(|d| !d.is_null()).collect(),
        })
    }

    /// Every object, in render order.
    pub fn objects(&self) -> &[Value] {
        &self.objects
    }

    /// The object of `kind` named `name`.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// The objects of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    /// The decoded `data` of a rendered Secret (`stringData` included).
    pub fn secret_data(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, HelmError> {
        let secret: DataObject = self.typed("Secret", name)?;
        let mut data = BTreeMap::new();
        for (key, encoded) in secret.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| HelmError::manifest("Secret", name, format!("data.{key}: {e}")))?;
            data.insert(key, bytes);
        }
        for (key, text) in secret.string_data {
            data.insert(key, text.into_bytes());
        }
        Ok(data)
    }

    /// The `data` of a rendered ConfigMap.
    pub fn config_map_data(&self, name: &str) -> Result<BTreeMap<String, String>, HelmError> {
        let map: DataObject = self.typed("ConfigMap", name)?;
        Ok(map.data)
    }

    /// A pod-template annotation of the Deployment or StatefulSet `name`.
    pub fn pod_annotation(&self, kind: &str, name: &str, key: &str) -> Option<String> {
        self.find(kind, name)?["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    }

    fn typed<T: DeserializeOwned>(&self, kind: &str, name: &str) -> Result<T, HelmError> {
        let object = self
            .find(kind, name)
            .ok_or_else(|| HelmError::manifest(kind, name, "not rendered"))?;
        serde_json::from_value(object.clone())
            .map_err(|e| HelmError::manifest(kind, name, e.to_string()))
    }

    fn workloads(&self) -> Result<Vec<Workload>, HelmError> {
        let mut workloads = Vec::new();
        for kind in ["StatefulSet", "Deployment"] {
            for object in self.of_kind(kind) {
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                workloads.push(self.typed(kind, name)?);
            }
        }
        Ok(workloads)
    }
}

// The subset of the Kubernetes API the simulation reads. Fields it does not know are
// ignored: they change nothing for a process on one machine.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Workload {
    kind: String,
    metadata: ObjectMeta,
    spec: WorkloadSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WorkloadSpec {
    replicas: Option<u32>,
    template: PodTemplate,
    #[serde(default)]
    volume_claim_templates: Vec<ClaimTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
struct ClaimTemplate {
    metadata: ObjectMeta,
}

#[derive(Debug, Clone, Deserialize)]
struct PodTemplate {
    metadata: ObjectMeta,
    spec: PodSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
    termination_grace_period_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    readiness_probe: Option<Probe>,
    lifecycle: Option<Lifecycle>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvSource>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    field_ref: Option<FieldRef>,
    secret_key_ref: Option<KeyRef>,
    config_map_key_ref: Option<KeyRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldRef {
    field_path: String,
}

#[derive(Debug, Clone, Deserialize)]
struct KeyRef {
    name: String,
    key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Debug, Clone, Deserialize)]
struct HttpGet {
    #[serde(default = "root_path")]
    path: String,
    port: PortRef,
}

fn root_path() -> String {
    "/".to_string()
}

/// A port given by number or by the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lifecycle {
    pre_stop: Option<LifecycleHandler>,
}

#[derive(Debug, Clone, Deserialize)]
struct LifecycleHandler {
    sleep: Option<SleepAction>,
}

#[derive(Debug, Clone, Deserialize)]
struct SleepAction {
    seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    config_map: Option<ConfigMapSource>,
    secret: Option<SecretSource>,
    empty_dir: Option<Value>,
    persistent_volume_claim: Option<ClaimSource>,
}

#[derive(Debug, Clone, Deserialize)]
struct ConfigMapSource {
    name: String,
    #[serde(default)]
    items: Vec<KeyToPath>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretSource {
    secret_name: String,
    #[serde(default)]
    items: Vec<KeyToPath>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimSource {
    claim_name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct KeyToPath {
    key: String,
    path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataObject {
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Service {
    metadata: ObjectMeta,
    spec: ServiceSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<ServicePort>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePort {
    name: Option<String>,
    port: u16,
    target_port: Option<PortRef>,
}

/// Text substitutions that move a pod's files from the cluster onto this machine:
/// container paths to host directories, wildcard listen addresses to the pod's address,
/// cluster host names to addresses. Longer patterns are applied first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translation {
    rewrites: Vec<(String, String)>,
}

impl Translation {
    /// Adds `from` → `to`.
    pub fn add(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.rewrites.push((from.into(), to.into()));
        self.rewrites
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    }

    /// `text` with every substitution applied (each place rewritten once).
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for (from, to) in &self.rewrites {
                if let Some(after) = rest.strip_prefix(from.as_str()) {
                    out.push_str(to);
                    rest = after;
                    continue 'scan;
                }
            }
            let next = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..next]);
            rest = &rest[next..];
        }
        out
    }
}

/// The first line of `text` that names an in-cluster host (`*.svc` or `*.svc.<domain>`).
pub fn cluster_host_line(text: &str) -> Option<&str> {
    text.lines().find(|line| {
        line.match_indices(".svc").any(|(at, _)| {
            let after = line[at + 4..].chars().next();
            after.is_none_or(|c| matches!(c, '.' | ':' | '/' | '"' | '\'' | ' '))
        })
    })
}

/// The outcome of a pod's termination.
#[derive(Debug)]
pub struct Termination {
    /// The pod.
    pub pod: String,
    /// Exit status (after SIGKILL when `killed`).
    pub status: Option<ExitStatus>,
    /// Whether the grace period ran out and the pod was SIGKILLed.
    pub killed: bool,
    /// From the start of the preStop hook to exit.
    pub elapsed: Duration,
    /// The grace period it had.
    pub grace: Duration,
    /// The end of its output.
    pub log_tail: String,
}

/// A container running as a local process.
struct LocalPod {
    name: String,
    workload: String,
    ordinal: usize,
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    readiness_url: Option<String>,
    pre_stop: Duration,
    grace: Duration,
    child: Option<Child>,
    log_path: PathBuf,
    /// Config, Secret and emptyDir volumes; removed with the pod.
    _dir: TempDir,
}

impl LocalPod {
    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// preStop sleep, SIGTERM, SIGKILL when the grace period (counted from the start)
    /// runs out.
    async fn terminate(mut self) -> Termination {
        let started = Instant::now();
        let deadline = started + self.grace;
        tokio::time::sleep(self.pre_stop.min(self.grace)).await;
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let mut status = None;
        while Instant::now() < deadline {
            status = self.exited();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let killed = status.is_none();
        if killed && let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            status = child.wait().ok();
        }
        self.child = None;
        Termination {
            pod: self.name.clone(),
            status,
            killed,
            elapsed: started.elapsed(),
            grace: self.grace,
            log_tail: self.log_tail(40),
        }
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod prepared to run: files written, command resolved.
struct PreparedPod {
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    dir: TempDir,
    pod: LocalPodSpec,
}

/// What a [`LocalPod`] keeps of its template.
struct LocalPodSpec {
    name: String,
    workload: String,
    ordinal: usize,
    labels: BTreeMap<String, String>,
    ports: BTreeMap<String, u16>,
    readiness_url: Option<String>,
    pre_stop: Duration,
    grace: Duration,
}

/// The rendered release running on this machine. Every process is killed when it drops;
/// when the test is panicking, the end of every pod's log is printed first.
pub struct LocalCluster {
    manifests: Manifests,
    workloads: Vec<Workload>,
    namespace: String,
    cluster_domain: String,
    subnet: [u8; 3],
    addresses: BTreeMap<String, Ipv4Addr>,
    external: Vec<(String, String)>,
    extra_secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    root: TempDir,
    pods: Vec<LocalPod>,
    next_instance: usize,
}

impl LocalCluster {
    /// A cluster for `manifests` rendered into `namespace` (with the chart's
    /// `clusterDomain`). Nothing runs until [`Self::install`].
    pub fn new(
        manifests: Manifests,
        namespace: &str,
        cluster_domain: &str,
    ) -> Result<Self, HelmError> {
        let workloads = manifests.workloads()?;
        let pid = std::process::id();
        let root = tempfile::Builder::new()
            .prefix("otel-tail-helm-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the cluster temp dir", e))?;
        Ok(LocalCluster {
            manifests,
            workloads,
            namespace: namespace.to_string(),
            cluster_domain: cluster_domain.to_string(),
            subnet: [127, 100 + (pid % 100) as u8, 1 + ((pid / 100) % 250) as u8],
            addresses: BTreeMap::new(),
            external: Vec::new(),
            extra_secrets: BTreeMap::new(),
            root,
            pods: Vec::new(),
            next_instance: 0,
        })
    }

    /// Maps `host:port` outside the release (e.g. the export backend's Service) to `target`.
    pub fn map_external(&mut self, host_port: &str, target: SocketAddr) {
        self.external
            .push((host_port.to_string(), target.to_string()));
    }

    /// Provides a Secret the release expects to exist (`cluster.existingSecret`).
    pub fn add_existing_secret(&mut self, name: &str, data: &[(&str, &[u8])]) {
        self.extra_secrets.insert(
            name.to_string(),
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        );
    }

    /// The rendered Deployments and StatefulSets: (kind, name, replicas).
    pub fn workloads(&self) -> Vec<(String, String, u32)> {
        self.workloads
            .iter()
            .map(|w| {
                (
                    w.kind.clone(),
                    w.metadata.name.clone(),
                    w.spec.replicas.unwrap_or(1),
                )
            })
            .collect()
    }

    /// The address pod `name` has (or will have).
    pub fn pod_ip(&mut self, name: &str) -> Ipv4Addr {
        let next = self.addresses.len();
        let [a, b, c] = self.subnet;
        *self
            .addresses
            .entry(name.to_string())
            .or_insert_with(|| Ipv4Addr::new(a, b, c, u8::try_from(2 + next).unwrap_or(254)))
    }

    /// Starts every workload at its rendered replica count, all at once as the API server
    /// would, and waits until every pod is ready.
    pub async fn install(&mut self) -> Result<(), HelmError> {
        let plan: Vec<(usize, usize)> = self
            .workloads
            .iter()
            .enumerate()
            .flat_map(|(w, workload)| {
                (0..workload.spec.replicas.unwrap_or(1) as usize).map(move |o| (w, o))
            })
            .collect();
        let first_new = self.pods.len();
        for (w, ordinal) in plan {
            let pod = self.start_pod(w, ordinal)?;
            self.pods.push(pod);
        }
        self.wait_ready(first_new).await
    }

    /// Scales the workload `name` to `replicas`, as `kubectl scale` and its controller
    /// would. New pods are waited for until ready; removed pods are terminated in
    /// parallel and their terminations returned.
    pub async fn scale(
        &mut self,
        name: &str,
        replicas: usize,
    ) -> Result<Vec<Termination>, HelmError> {
        let w = self
            .workloads
            .iter()
            .position(|w| w.metadata.name == name)
            .ok_or_else(|| HelmError::manifest("workload", name, "not rendered"))?;
        let running: Vec<usize> = self.pods_of(name).iter().map(|p| p.ordinal).collect();
        if running.len() < replicas {
            let first_new = self.pods.len();
            let mut ordinal = 0;
            while self.pods_of(name).len() < replicas {
                if !running.contains(&ordinal) {
                    let pod = self.start_pod(w, ordinal)?;
                    self.pods.push(pod);
                }
                ordinal += 1;
            }
            self.wait_ready(first_new).await?;
            return Ok(Vec::new());
        }
        // Highest ordinals go first (for a Deployment: the newest pods).
        let mut doomed: Vec<usize> = running.clone();
        doomed.sort_unstable_by(|a, b| b.cmp(a));
        doomed.truncate(running.len() - replicas);
        let mut leaving = Vec::new();
        let mut staying = Vec::new();
        for pod in self.pods.drain(..) {
            if pod.workload == name && doomed.contains(&pod.ordinal) {
                leaving.push(pod);
            } else {
                staying.push(pod);
            }
        }
        self.pods = staying;
        let mut tasks = JoinSet::new();
        for pod in leaving {
            tasks.spawn(pod.terminate());
        }
        let mut terminations = Vec::new();
        while let Some(done) = tasks.join_next().await {
            terminations.push(
                done.map_err(|e| HarnessError::io("terminating a pod", std::io::Error::other(e)))?,
            );
        }
        terminations.sort_by(|a, b| a.pod.cmp(&b.pod));
        Ok(terminations)
    }

    /// Names of the running pods of workload `name`, by ordinal.
    pub fn pod_names(&self, name: &str) -> Vec<String> {
        self.pods_of(name).iter().map(|p| p.name.clone()).collect()
    }

    /// Where Service `service`'s port `port_name` sends traffic: the selected pods'
    /// container ports (by the named or numbered `targetPort`), as `ip:port`.
    pub fn service_endpoints(
        &self,
        service: &str,
        port_name: &str,
    ) -> Result<Vec<SocketAddr>, HelmError> {
        let svc: Service = self.manifests.typed("Service", service)?;
        let port = svc
            .spec
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port_name))
            .ok_or_else(|| {
                HelmError::manifest("Service", service, format!("has no port named {port_name}"))
            })?;
        let target = port
            .target_port
            .clone()
            .unwrap_or(PortRef::Number(port.port));
        let mut endpoints = Vec::new();
        for pod in self.selected(&svc.spec.selector) {
            let container_port = match &target {
                PortRef::Number(n) => *n,
                PortRef::Name(name) => *pod.ports.get(name).ok_or_else(|| {
                    HelmError::manifest(
                        "Service",
                        service,
                        format!("targetPort {name} is no container port of pod {}", pod.name),
                    )
                })?,
            };
            let ip = self
                .addresses
                .get(&pod.name)
                .copied()
                .unwrap_or(Ipv4Addr::LOCALHOST);
            endpoints.push(SocketAddr::from((ip, container_port)));
        }
        Ok(endpoints)
    }

    /// Runs the first pod of every workload as a one-shot command with `extra_args`
    /// appended (e.g. `--check-config`), with the files, args and env it would start with.
    /// Returns (pod, exit status, output) per workload.
    pub fn run_each_workload_once(
        &mut self,
        extra_args: &[&str],
    ) -> Result<Vec<(String, ExitStatus, String)>, HelmError> {
        let mut results = Vec::new();
        for w in 0..self.workloads.len() {
            let prepared = self.prepare_pod(w, 0)?;
            let output = Command::new(&prepared.program)
                .args(&prepared.args)
                .args(extra_args)
                .env_clear()
                .envs(&prepared.env)
                .current_dir(prepared.dir.path())
                .stdin(Stdio::null())
                .output()
                .map_err(|e| {
                    HarnessError::io(format!("running {}", prepared.program.display()), e)
                })?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            results.push((prepared.pod.name, output.status, text));
        }
        Ok(results)
    }

    fn pods_of(&self, workload: &str) -> Vec<&LocalPod> {
        let mut pods: Vec<&LocalPod> = self
            .pods
            .iter()
            .filter(|p| p.workload == workload)
            .collect();
        pods.sort_by_key(|p| p.ordinal);
        pods
    }

    fn selected<'a>(
        &'a self,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a LocalPod> + 'a {
        self.pods.iter().filter(move |pod| {
            !selector.is_empty() && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
        })
    }

    async fn wait_ready(&mut self, from: usize) -> Result<(), HelmError> {
        for index in from..self.pods.len() {
            let Some(url) = self.pods[index].readiness_url.clone() else {
                continue;
            };
            let result = poll_until(&format!("{url} to return 200"), READY_TIMEOUT, || {
                let exited = self.pods[index].exited();
                let url = url.clone();
                async move {
                    if let Some(status) = exited {
                        return Err(HarnessError::io(
                            "waiting for readiness",
                            std::io::Error::other(format!("the process exited with {status}")),
                        ));
                    }
                    Ok(match http_client::get(&url).await {
                        Ok(r) if r.status.is_success() => Some(()),
                        _ => None,
                    })
                }
            })
            .await;
            if let Err(error) = result {
                let pod = &self.pods[index];
                return Err(HelmError::NotReady {
                    pod: pod.name.clone(),
                    reason: error.to_string(),
                    log: pod.log_tail(60),
                });
            }
        }
        Ok(())
    }

    fn start_pod(&mut self, w: usize, ordinal: usize) -> Result<LocalPod, HelmError> {
        let prepared = self.prepare_pod(w, ordinal)?;
        let log_path = prepared.dir.path().join("container.log");
        let log = File::create(&log_path).map_err(|e| HarnessError::io("creating a pod log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| HarnessError::io("sharing a pod log", e))?;
        let child = Command::new(&prepared.program)
            .args(&prepared.args)
            .env_clear()
            .envs(&prepared.env)
            .current_dir(prepared.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", prepared.program.display()), e))?;
        let spec = prepared.pod;
        Ok(LocalPod {
            name: spec.name,
            workload: spec.workload,
            ordinal: spec.ordinal,
            labels: spec.labels,
            ports: spec.ports,
            readiness_url: spec.readiness_url,
            pre_stop: spec.pre_stop,
            grace: spec.grace,
            child: Some(child),
            log_path,
            _dir: prepared.dir,
        })
    }

    /// Lays out pod `ordinal` of workload `w`: its directory, volumes and files, the
    /// translation of its paths and addresses, its command and env.
    fn prepare_pod(&mut self, w: usize, ordinal: usize) -> Result<PreparedPod, HelmError> {
        let workload = self.workloads[w].clone();
        let kind = workload.kind.as_str();
        let wname = workload.metadata.name.as_str();
        let name = if kind == "StatefulSet" {
            format!("{wname}-{ordinal}")
        } else {
            format!("{wname}-local-{ordinal}")
        };
        let ip = self.pod_ip(&name);
        let spec = &workload.spec.template.spec;
        let [container] = spec.containers.as_slice() else {
            return Err(HelmError::manifest(
                kind,
                wname,
                "the simulation runs pods of exactly one container",
            ));
        };
        self.next_instance += 1;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-{}-", self.next_instance))
            .tempdir_in(self.root.path())
            .map_err(|e| HarnessError::io("creating a pod dir", e))?;

        // Volumes → host directories.
        let claims: Vec<&str> = workload
            .spec
            .volume_claim_templates
            .iter()
            .map(|c| c.metadata.name.as_str())
            .collect();
        let mut volume_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut config_files: Vec<(PathBuf, String)> = Vec::new();
        for mount in &container.volume_mounts {
            let host = if claims.contains(&mount.name.as_str()) {
                self.root
                    .path()
                    .join("pvc")
                    .join(format!("{}-{name}", mount.name))
            } else {
                let volume = spec
                    .volumes
                    .iter()
                    .find(|v| v.name == mount.name)
                    .ok_or_else(|| {
                        HelmError::manifest(
                            kind,
                            wname,
                            format!("mounts undefined volume {}", mount.name),
                        )
                    })?;
                if let Some(claim) = &volume.persistent_volume_claim {
                    self.root.path().join("pvc").join(&claim.claim_name)
                } else {
                    let host = dir.path().join("volumes").join(&volume.name);
                    if let Some(source) = &volume.config_map {
                        let data = self.manifests.config_map_data(&source.name)?;
                        for (key, path) in pick(&data, &source.items) {
                            config_files.push((host.join(path), data[&key].clone()));
                        }
                    } else if let Some(source) = &volume.secret {
                        let data = match self.extra_secrets.get(&source.secret_name) {
                            Some(data) => data.clone(),
                            None => self.manifests.secret_data(&source.secret_name)?,
                        };
                        for (key, path) in pick(&data, &source.items) {
                            write_file(&host.join(path), &data[&key])?;
                        }
                    } else if volume.empty_dir.is_none() {
                        return Err(HelmError::manifest(
                            kind,
                            wname,
                            format!(
                                "volume {} has a source the simulation does not provide",
                                volume.name
                            ),
                        ));
                    }
                    host
                }
            };
            std::fs::create_dir_all(&host)
                .map_err(|e| HarnessError::io("creating a volume dir", e))?;
            volume_dirs.insert(mount.mount_path.clone(), host);
        }

        let translation = self.translation(&volume_dirs, ip);
        let check = |place: &str, text: &str| match cluster_host_line(text) {
            Some(line) => Err(HelmError::UnmappedHost {
                pod: name.clone(),
                place: place.to_string(),
                text: line.trim().to_string(),
            }),
            None => Ok(()),
        };
        for (path, text) in config_files {
            let text = translation.apply(&text);
            check(&path.display().to_string(), &text)?;
            write_file(&path, text.as_bytes())?;
        }
        let args: Vec<String> = container
            .args
            .iter()
            .map(|a| translation.apply(a))
            .collect();
        for arg in &args {
            check("an argument", arg)?;
        }

        let mut env = BTreeMap::new();
        env.insert("HOSTNAME".to_string(), name.clone());
        for var in &container.env {
            let value = self.env_value(var, &name, ip, kind, wname)?;
            let value = translation.apply(&value);
            check(&format!("env {}", var.name), &value)?;
            env.insert(var.name.clone(), value);
        }

        let program = container
            .command
            .first()
            .and_then(|c| Path::new(c).file_name())
            .and_then(|f| f.to_str())
            .ok_or_else(|| {
                HelmError::manifest(
                    kind,
                    wname,
                    "the container has no command (the image entrypoint is unknown here)",
                )
            })?;
        let mut args = args;
        args.splice(
            0..0,
            container.command[1..].iter().map(|a| translation.apply(a)),
        );
        let program = match program {
            "otel-tail-sampler" => binary::sampler_binary()?,
            "otel-tail-router" => binary::router_binary()?,
            other => {
                return Err(HelmError::manifest(
                    kind,
                    wname,
                    format!("runs `{other}`, not a binary of this workspace"),
                ));
            }
        };

        let ports: BTreeMap<String, u16> = container
            .ports
            .iter()
            .filter_map(|p| p.name.clone().map(|n| (n, p.container_port)))
            .collect();
        let readiness_url = match container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
        {
            Some(get) => {
                let port = match &get.port {
                    PortRef::Number(n) => *n,
                    PortRef::Name(n) => *ports.get(n).ok_or_else(|| {
                        HelmError::manifest(
                            kind,
                            wname,
                            format!("readinessProbe names unknown port {n}"),
                        )
                    })?,
                };
                Some(format!("http://{ip}:{port}{}", get.path))
            }
            None => None,
        };
        let pre_stop = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map_or(Duration::ZERO, |s| Duration::from_secs(s.seconds));
        let grace = spec
            .termination_grace_period_seconds
            .map_or(DEFAULT_GRACE, Duration::from_secs);
        Ok(PreparedPod {
            program,
            args,
            env,
            dir,
            pod: LocalPodSpec {
                name,
                workload: wname.to_string(),
                ordinal,
                labels: workload.spec.template.metadata.labels.clone(),
                ports,
                readiness_url,
                pre_stop,
                grace,
            },
        })
    }

    /// The translation of one pod: its mounts, its address, cluster DNS, external hosts.
    fn translation(&mut self, mounts: &BTreeMap<String, PathBuf>, ip: Ipv4Addr) -> Translation {
        let mut t = Translation::default();
        for (container_path, host) in mounts {
            t.add(container_path.clone(), host.display().to_string());
        }
        t.add("0.0.0.0:", format!("{ip}:"));
        t.add("[::]:", format!("{ip}:"));
        for (host_port, target) in &self.external {
            t.add(host_port.clone(), target.clone());
        }
        // Headless Services in front of a StatefulSet: the address of its ordinal 0.
        let headless: Vec<(String, String)> = self
            .manifests
            .of_kind("Service")
            .filter_map(|s| serde_json::from_value::<Service>(s.clone()).ok())
            .filter(|s| s.spec.cluster_ip.as_deref() == Some("None"))
            .filter_map(|s| {
                let set = self.workloads.iter().find(|w| {
                    w.kind == "StatefulSet"
                        && !s.spec.selector.is_empty()
                        && s.spec
                            .selector
                            .iter()
                            .all(|(k, v)| w.spec.template.metadata.labels.get(k) == Some(v))
                })?;
                Some((s.metadata.name.clone(), format!("{}-0", set.metadata.name)))
            })
            .collect();
        for (service, pod) in headless {
            let address = self.pod_ip(&pod);
            t.add(
                format!("{service}.{}.svc.{}", self.namespace, self.cluster_domain),
                address.to_string(),
            );
        }
        t
    }

    fn env_value(
        &self,
        var: &EnvVar,
        pod: &str,
        ip: Ipv4Addr,
        kind: &str,
        wname: &str,
    ) -> Result<String, HelmError> {
        if let Some(value) = &var.value {
            return Ok(value.clone());
        }
        let Some(source) = &var.value_from else {
            return Ok(String::new());
        };
        if let Some(field) = &source.field_ref {
            return match field.field_path.as_str() {
                "metadata.name" => Ok(pod.to_string()),
                "metadata.namespace" => Ok(self.namespace.clone()),
                "status.podIP" | "status.hostIP" => Ok(ip.to_string()),
                "spec.nodeName" => Ok("localhost".to_string()),
                other => Err(HelmError::manifest(
                    kind,
                    wname,
                    format!(
                        "env {} reads {other}, which the simulation does not provide",
                        var.name
                    ),
                )),
            };
        }
        if let Some(key_ref) = &source.secret_key_ref {
            let data = match self.extra_secrets.get(&key_ref.name) {
                Some(data) => data.clone(),
                None => self.manifests.secret_data(&key_ref.name)?,
            };
            let value = data.get(&key_ref.key).ok_or_else(|| {
                HelmError::manifest(
                    "Secret",
                    &key_ref.name,
                    format!("has no key {}", key_ref.key),
                )
            })?;
            return Ok(String::from_utf8_lossy(value).into_owned());
        }
        if let Some(key_ref) = &source.config_map_key_ref {
            let data = self.manifests.config_map_data(&key_ref.name)?;
            return data.get(&key_ref.key).cloned().ok_or_else(|| {
                HelmError::manifest(
                    "ConfigMap",
                    &key_ref.name,
                    format!("has no key {}", key_ref.key),
                )
            });
        }
        Err(HelmError::manifest(
            kind,
            wname,
            format!(
                "env {} has a source the simulation does not provide",
                var.name
            ),
        ))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pod in &self.pods {
                eprintln!(
                    "--- pod {} (tail) ---\n{}\n--- end {} ---",
                    pod.name,
                    pod.log_tail(60),
                    pod.name
                );
            }
        }
        self.pods.clear();
    }
}

/// The (key, file path) pairs a volume projects: its `items`, or every key.
fn pick<V>(data: &BTreeMap<String, V>, items: &[KeyToPath]) -> Vec<(String, String)> {
    if items.is_empty() {
        data.keys().map(|k| (k.clone(), k.clone())).collect()
    } else {
        items
            .iter()
            .filter(|i| data.contains_key(&i.key))
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect()
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), HelmError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| HarnessError::io("creating a volume dir", e))?;
    }
    std::fs::write(path, bytes)
        .map_err(|e| HarnessError::io(format!("writing {}", path.display()), e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = "---\n# Source: a.yaml\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ndata:\n  k: aGVsbG8=\nstringData:\n  t: plain\n---\n# Source: b.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  config.yaml: |\n    a: 1\n---\n";

    #[test]
    fn parses_a_rendered_stream_and_decodes_secrets() {
        let manifests = Manifests::parse(RENDERED).expect("parses");
        assert_eq!(manifests.objects().len(), 2);
        assert!(manifests.find("ConfigMap", "c").is_some());
        assert!(manifests.find("ConfigMap", "s").is_none());
        let secret = manifests.secret_data("s").expect("secret");
        assert_eq!(secret["k"], b"hello");
        assert_eq!(secret["t"], b"plain");
        assert_eq!(
            manifests.config_map_data("c").expect("map")["config.yaml"],
            "a: 1\n"
        );
        assert!(matches!(
            manifests.secret_data("nope"),
            Err(HelmError::Manifest { .. })
        ));
    }

    #[test]
    fn translation_prefers_longer_patterns_and_rewrites_each_place_once() {
        let mut t = Translation::default();
        t.add("/etc/app", "/tmp/x");
        t.add("/etc/app/secret", "/tmp/s");
        t.add("0.0.0.0:", "127.1.2.3:");
        t.add("/tmp", "/never");
        let text = "dir: /etc/app/secret/key\ncfg: /etc/app/config.yaml\nlisten: 0.0.0.0:4317";
        assert_eq!(
            t.apply(text),
            "dir: /tmp/s/key\ncfg: /tmp/x/config.yaml\nlisten: 127.1.2.3:4317"
        );
    }

    #[test]
    fn finds_cluster_host_names_but_not_lookalikes() {
        assert_eq!(
            cluster_host_line("a: 1\n  endpoint: http://tempo.tracing.svc.cluster.local:4317\n"),
            Some("  endpoint: http://tempo.tracing.svc.cluster.local:4317")
        );
        assert!(cluster_host_line("seed: samplers.ns.svc:7946").is_some());
        assert!(cluster_host_line("path: /data/my.svcfile\nname: x.svc_y").is_none());
    }

    #[test]
    fn ports_are_numbers_or_names() {
        let by_name: PortRef = serde_json::from_value(serde_json::json!("admin")).expect("name");
        let by_number: PortRef = serde_json::from_value(serde_json::json!(8888)).expect("number");
        assert_eq!(by_name, PortRef::Name("admin".into()));
        assert_eq!(by_number, PortRef::Number(8888));
    }
}
