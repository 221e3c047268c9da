//! Routing keys for data without a trace id: the identity of a resource, and of a metric
//! series. Computed two ways that must agree byte for byte: from the wire (the router's
//! splitter) and from decoded messages (a sampler checking that it owns what it received).
//!
//! A resource's instance identity, which places log records without a trace id, is
//! `service.name` and the first present of `service.instance.id`, `k8s.pod.name`,
//! `host.name`: the finest of the usual instance attributes, so one service's instances
//! spread over the samplers while each instance's logs stay on one. The key is
//! `service.name ++ 0x00 ++ instance`. A resource with none of these attributes gets the
//! key `"\0"`: all such data goes to one owner, which is consistent though not balanced —
//! OpenTelemetry SDKs always set `service.name`.
//!
//! A metric series key is `service identity ++ 0x00 ++ metric name`, where the service
//! identity is the value of each of [`SERVICE_IDENTITY_ATTRIBUTES`], in that order, each
//! followed by 0x00. These are exactly the resource attributes the metric rollup keeps, so
//! every input of a rolled-up output series — whichever pod sent it — routes to the same
//! sampler, and each output series has a single writer per interval.
//!
//! In both keys, attributes that are missing, or whose value is not a string, contribute
//! empty bytes, and only the first attribute with a given key counts (the OTLP data model
//! forbids duplicates).

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::SplitError;
use super::wire::{Field, Reader};

/// Resource attributes naming a service rather than one of its instances, in the order
/// they enter the metric series key; `service.name` comes first. The metric rollup reduces
/// output resources to these, and metrics route by them.
pub const SERVICE_IDENTITY_ATTRIBUTES: [&str; 4] = [
    "service.name",
    "service.namespace",
    "deployment.environment",
    "deployment.environment.name",
];
/// Instance attributes, finest first.
const INSTANCE_KEYS: [&[u8]; 3] = [b"service.instance.id", b"k8s.pod.name", b"host.name"];

/// Writes the instance identity key of a decoded resource (`None`: no resource) into
/// `out`, replacing its contents. Log records without a trace id route by it.
pub fn resource_identity_key(resource: Option<&Resource>, out: &mut Vec<u8>) {
    Found::of(resource).write_instance(out);
}

/// Writes the series key of metric `metric_name` under a decoded resource (`None`: no
/// resource) into `out`, replacing its contents: the resource's service identity and the
/// metric name, so all instances of a service route a metric to the same owner.
pub fn metric_series_key(resource: Option<&Resource>, metric_name: &str, out: &mut Vec<u8>) {
    Found::of(resource).write_service(out);
    append_metric_name(out, metric_name.as_bytes());
}

/// Turns a service identity key in `key` into the series key of metric `name`.
pub(super) fn append_metric_name(key: &mut Vec<u8>, name: &[u8]) {
    key.push(0);
    key.extend_from_slice(name);
}

/// An identity attribute: unseen (`None`), or its value if a string (`Some(None)`: not a
/// string).
type Slot<'a> = Option<Option<&'a [u8]>>;

/// The identity attributes seen so far: slices of the attribute values.
#[derive(Default)]
pub(super) struct Found<'a> {
    /// [`SERVICE_IDENTITY_ATTRIBUTES`], in order.
    service: [Slot<'a>; 4],
    /// [`INSTANCE_KEYS`], in order.
    instance: [Slot<'a>; 3],
}

impl<'a> Found<'a> {
    /// The identity attributes of a decoded resource.
    fn of(resource: Option<&'a Resource>) -> Self {
        let mut found = Found::default();
        for kv in resource.iter().flat_map(|r| &r.attributes) {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => Some(s.as_bytes()),
                _ => None,
            };
            found.offer(kv.key.as_bytes(), value);
        }
        found
    }

    /// Records attribute `key` with `value` (`None`: not a string) unless an attribute
    /// with that key was already seen.
    fn offer(&mut self, key: &[u8], value: Option<&'a [u8]>) {
        let slot = if let Some(i) = SERVICE_IDENTITY_ATTRIBUTES
            .iter()
            .position(|k| k.as_bytes() == key)
        {
            &mut self.service[i]
        } else if let Some(i) = INSTANCE_KEYS.iter().position(|k| *k == key) {
            &mut self.instance[i]
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    /// Writes the instance identity key into `out`, replacing its contents.
    pub(super) fn write_instance(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.service[0].flatten().unwrap_or_default());
        out.push(0);
        let instance = self.instance.iter().find_map(|v| v.flatten());
        out.extend_from_slice(instance.unwrap_or_default());
    }

    /// Writes the service identity key into `out`, replacing its contents.
    pub(super) fn write_service(&self, out: &mut Vec<u8>) {
        out.clear();
        for value in &self.service {
            out.extend_from_slice(value.flatten().unwrap_or_default());
            out.push(0);
        }
    }
}

/// Resource fields.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// KeyValue fields.
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
/// AnyValue's `string_value`.
const ANY_STRING: u32 = 1;

/// Reads the identity attributes of the resource whose encoded `Resource` messages (one or
/// more occurrences of the field, which protobuf merges) are `payloads`. Agrees with the
/// decoded path: [`resource_identity_key`] and [`metric_series_key`] on the decoded
/// resource.
pub(super) fn identity_from_wire<'a>(
    buf: &'a [u8],
    payloads: &[Field],
) -> Result<Found<'a>, SplitError> {
    let mut found = Found::default();
    for resource in payloads {
        let mut fields = Reader::of(buf, resource, "Resource");
        while let Some(field) = fields.next_field()? {
            if field.number != RESOURCE_ATTRIBUTES {
                continue;
            }
            field.expect_len("Resource")?;
            let (key, value) = key_value(buf, &field)?;
            found.offer(key, value);
        }
    }
    Ok(found)
}

/// Reads a KeyValue: its key and, if its value is a string, the string.
fn key_value<'a>(buf: &'a [u8], kv: &Field) -> Result<(&'a [u8], Option<&'a [u8]>), SplitError> {
    let mut key: &[u8] = &[];
    // The oneof field set last wins, across all occurrences of `value` (which merge).
    let mut last_value: Option<(u32, &[u8])> = None;
    let mut fields = Reader::of(buf, kv, "KeyValue");
    while let Some(field) = fields.next_field()? {
        match field.number {
            KV_KEY => {
                field.expect_len("KeyValue")?;
                key = &buf[field.payload..field.end];
            }
            KV_VALUE => {
                field.expect_len("KeyValue")?;
                let mut value = Reader::of(buf, &field, "AnyValue");
                while let Some(v) = value.next_field()? {
                    if v.number == ANY_STRING {
                        v.expect_len("AnyValue")?;
                    }
                    if (1..=8).contains(&v.number) {
                        last_value = Some((v.number, &buf[v.payload..v.end]));
                    }
                }
            }
            _ => {}
        }
    }
    let value = match last_value {
        Some((ANY_STRING, s)) => Some(s),
        _ => None,
    };
    Ok((key, value))
}
