//! Routing keys for data without a trace id: the identity of a resource, and of a metric
//! series. Computed two ways that must agree byte for byte: from the wire (the router's
//! splitter) and from decoded messages (a sampler checking that it owns what it received).
//!
//! A resource's identity is `service.name` and the first present of
//! `service.instance.id`, `k8s.pod.name`, `host.name`: the finest of the usual instance
//! attributes, so one service's instances spread over the samplers while each instance's
//! logs stay on one. The key is `service.name ++ 0x00 ++ instance`; attributes that are
//! missing, or whose value is not a string, contribute empty bytes. Only the first
//! attribute with a given key counts (the OTLP data model forbids duplicates). A resource
//! with none of these attributes gets the key `"\0"`: all such data goes to one owner,
//! which is consistent though not balanced — OpenTelemetry SDKs always set `service.name`.
//!
//! A metric series key is `resource key ++ 0x00 ++ metric name`.

use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::SplitError;
use super::wire::{Field, Reader};

/// Resource attribute naming the service.
const SERVICE_NAME: &[u8] = b"service.name";
/// Instance attributes, finest first.
const INSTANCE_KEYS: [&[u8]; 3] = [b"service.instance.id", b"k8s.pod.name", b"host.name"];

/// Writes the identity key of a decoded resource (`None`: no resource) into `out`,
/// replacing its contents.
pub fn resource_identity_key(resource: Option<&Resource>, out: &mut Vec<u8>) {
    let mut found = Found::default();
    for kv in resource.iter().flat_map(|r| &r.attributes) {
        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => Some(s.as_bytes()),
            _ => None,
        };
        found.offer(kv.key.as_bytes(), value);
    }
    found.write(out);
}

/// Writes the series key of metric `metric_name` under a decoded resource into `out`,
/// replacing its contents.
pub fn metric_series_key(resource: Option<&Resource>, metric_name: &str, out: &mut Vec<u8>) {
    resource_identity_key(resource, out);
    out.push(0);
    out.extend_from_slice(metric_name.as_bytes());
}

/// The identity attributes seen so far: slices of the attribute values.
#[derive(Default)]
struct Found<'a> {
    service: Option<Option<&'a [u8]>>,
    instance: [Option<Option<&'a [u8]>>; 3],
}

impl<'a> Found<'a> {
    /// Records attribute `key` with `value` (`None`: not a string) unless an attribute
    /// with that key was already seen.
    fn offer(&mut self, key: &[u8], value: Option<&'a [u8]>) {
        let slot = if key == SERVICE_NAME {
            &mut self.service
        } else if let Some(i) = INSTANCE_KEYS.iter().position(|k| *k == key) {
            &mut self.instance[i]
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.service.flatten().unwrap_or_default());
        out.push(0);
        let instance = self.instance.iter().find_map(|v| v.flatten());
        out.extend_from_slice(instance.unwrap_or_default());
    }
}

/// Resource fields.
const RESOURCE_ATTRIBUTES: u32 = 1;
/// KeyValue fields.
const KV_KEY: u32 = 1;
const KV_VALUE: u32 = 2;
/// AnyValue's `string_value`.
const ANY_STRING: u32 = 1;

/// Writes the identity key of the resource whose encoded `Resource` messages (one or more
/// occurrences of the field, which protobuf merges) are `payloads` into `out`, replacing
/// its contents. Agrees with [`resource_identity_key`] on the decoded resource.
pub(super) fn resource_identity_key_from_wire(
    buf: &[u8],
    payloads: &[Field],
    out: &mut Vec<u8>,
) -> Result<(), SplitError> {
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
    found.write(out);
    Ok(())
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
