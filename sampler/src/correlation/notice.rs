//! What a sampler tells the others about a kept trace: [`DecisionNotice`], and the
//! [`ResourceIdentity`] that same-resource matching compares.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use otel_tail_proto::v1;
use otel_tail_shared::otlp::{self, TraceId};
use thiserror::Error;

/// Resource attribute naming the service.
const SERVICE_NAME: &str = "service.name";
/// Resource attribute naming the service instance.
const SERVICE_INSTANCE_ID: &str = "service.instance.id";
/// Resource attribute naming the Kubernetes pod.
const K8S_POD_NAME: &str = "k8s.pod.name";
/// Resource attribute naming the host.
const HOST_NAME: &str = "host.name";

/// The identity attributes of a resource, and the key that decides whether two resources
/// are "the same resource" for window correlation.
///
/// The key is `service.name` plus the first non-empty of `service.instance.id`,
/// `k8s.pod.name`, `host.name` — the same attributes and order the router uses to place
/// logs without a trace id, so a resource's data and the key agree on what an instance is.
/// Attributes that are missing, empty or not strings count as absent. A resource with
/// none of the four has no key and never window-matches: it would otherwise match every
/// other anonymous resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ResourceIdentity {
    service_name: String,
    service_instance_id: String,
    k8s_pod_name: String,
    host_name: String,
    /// `service_name ++ '\0' ++ instance`, computed once so lookups do not allocate;
    /// empty when no attribute is present.
    key: String,
}

impl ResourceIdentity {
    /// Builds an identity from attribute values (empty string: absent).
    pub fn new(
        service_name: impl Into<String>,
        service_instance_id: impl Into<String>,
        k8s_pod_name: impl Into<String>,
        host_name: impl Into<String>,
    ) -> ResourceIdentity {
        let service_name = service_name.into();
        let service_instance_id = service_instance_id.into();
        let k8s_pod_name = k8s_pod_name.into();
        let host_name = host_name.into();
        let instance = [&service_instance_id, &k8s_pod_name, &host_name]
            .into_iter()
            .find(|v| !v.is_empty())
            .map_or("", |v| v.as_str());
        let key = if service_name.is_empty() && instance.is_empty() {
            String::new()
        } else {
            format!("{service_name}\0{instance}")
        };
        ResourceIdentity {
            service_name,
            service_instance_id,
            k8s_pod_name,
            host_name,
            key,
        }
    }

    /// Reads the identity attributes of a decoded resource (`None`: no resource). For a
    /// repeated attribute key only the first occurrence counts, as in the router.
    pub fn from_resource(resource: Option<&Resource>) -> ResourceIdentity {
        let mut values: [Option<&str>; 4] = [None; 4];
        for kv in resource.iter().flat_map(|r| &r.attributes) {
            let slot = match kv.key.as_str() {
                SERVICE_NAME => 0,
                SERVICE_INSTANCE_ID => 1,
                K8S_POD_NAME => 2,
                HOST_NAME => 3,
                _ => continue,
            };
            if values[slot].is_none() {
                values[slot] = Some(match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.as_str(),
                    _ => "",
                });
            }
        }
        let [service, instance, pod, host] = values.map(Option::unwrap_or_default);
        ResourceIdentity::new(service, instance, pod, host)
    }

    /// The matching key, `None` when the resource has no identity attribute at all.
    pub fn key(&self) -> Option<&str> {
        (!self.key.is_empty()).then_some(self.key.as_str())
    }

    /// `service.name`, empty when absent.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Wire form.
    pub fn to_proto(&self) -> v1::ResourceIdentity {
        v1::ResourceIdentity {
            service_name: self.service_name.clone(),
            service_instance_id: self.service_instance_id.clone(),
            k8s_pod_name: self.k8s_pod_name.clone(),
            host_name: self.host_name.clone(),
        }
    }
}

impl From<v1::ResourceIdentity> for ResourceIdentity {
    fn from(p: v1::ResourceIdentity) -> ResourceIdentity {
        ResourceIdentity::new(
            p.service_name,
            p.service_instance_id,
            p.k8s_pod_name,
            p.host_name,
        )
    }
}

/// A kept trace as other samplers see it: what they match their held logs and metric
/// points against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionNotice {
    /// The kept trace.
    pub trace_id: TraceId,
    /// Every distinct resource the trace's spans came from.
    pub resources: Vec<ResourceIdentity>,
    /// Earliest span start, unix nanoseconds.
    pub start_unix_nano: u64,
    /// Latest span end, unix nanoseconds; `>= start_unix_nano`.
    pub end_unix_nano: u64,
    /// The policy that kept the trace.
    pub policy: String,
    /// Whether the deciding policy correlates by resource and time window.
    pub correlate: bool,
}

/// Why a received notice was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoticeError {
    /// The trace id is not 16 bytes, or is all zero.
    #[error("decision notice has an invalid trace id ({len} bytes; want 16, not all zero)")]
    InvalidTraceId {
        /// Length of the received id.
        len: usize,
    },
    /// The window ends before it starts.
    #[error("decision notice window ends ({end}) before it starts ({start})")]
    InvertedWindow {
        /// Received start, unix nanoseconds.
        start: u64,
        /// Received end, unix nanoseconds.
        end: u64,
    },
}

impl DecisionNotice {
    /// Wire form.
    pub fn to_proto(&self) -> v1::DecisionNotice {
        v1::DecisionNotice {
            trace_id: self.trace_id.to_vec(),
            resources: self
                .resources
                .iter()
                .map(ResourceIdentity::to_proto)
                .collect(),
            start_time_unix_nano: self.start_unix_nano,
            end_time_unix_nano: self.end_unix_nano,
            policy: self.policy.clone(),
            correlate: self.correlate,
        }
    }
}

impl TryFrom<v1::DecisionNotice> for DecisionNotice {
    type Error = NoticeError;

    /// Validates a received notice: a valid trace id and a window that does not end
    /// before it starts.
    fn try_from(p: v1::DecisionNotice) -> Result<DecisionNotice, NoticeError> {
        let trace_id = otlp::trace_id(&p.trace_id).ok_or(NoticeError::InvalidTraceId {
            len: p.trace_id.len(),
        })?;
        if p.end_time_unix_nano < p.start_time_unix_nano {
            return Err(NoticeError::InvertedWindow {
                start: p.start_time_unix_nano,
                end: p.end_time_unix_nano,
            });
        }
        Ok(DecisionNotice {
            trace_id,
            resources: p
                .resources
                .into_iter()
                .map(ResourceIdentity::from)
                .collect(),
            start_unix_nano: p.start_time_unix_nano,
            end_unix_nano: p.end_time_unix_nano,
            policy: p.policy,
            correlate: p.correlate,
        })
    }
}
