//! Protobuf messages that OTEL Tail Sampler nodes exchange (gossip, decisions, handoff),
//! compiled from `proto/otel_tail/v1/*.proto` by `build.rs` with a vendored `protoc`.
//!
//! - `otel_tail/v1/cluster.proto`: the cluster membership wire format. Every gossip
//!   UDP datagram is one [`v1::Datagram`]; see the file's comments for the layout.
//! - `otel_tail/v1/handoff.proto`: decisions handed to a trace's new owner after a ring change.
//! - `otel_tail/v1/correlation.proto`: decision notices that let every node keep the logs
//!   and metric points correlated with a kept trace.

/// Version 1 of the internal wire formats (`package otel_tail.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/otel_tail.v1.rs"));
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1;

    /// Pins the field numbers of the gossip wire format: nodes of different versions
    /// must keep understanding each other.
    #[test]
    fn gossip_datagram_encoding_is_stable() {
        let datagram = v1::Datagram {
            body: Some(v1::datagram::Body::Plain(v1::GossipPacket {
                header: Some(v1::Header {
                    src: Some(v1::NodeIdentity {
                        node_id: "a".into(),
                        address: "1.2.3.4:5".into(),
                        role: v1::Role::Sampler as i32,
                        generation: 1,
                        forward: String::new(),
                    }),
                    message: Some(v1::header::Message::Ping(v1::Ping { probe_number: 1 })),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let mut identity = vec![0x0a, 1, b'a', 0x12, 9];
        identity.extend_from_slice(b"1.2.3.4:5");
        identity.extend_from_slice(&[0x18, 2, 0x20, 1]);
        let mut header = vec![0x0a, identity.len() as u8];
        header.extend_from_slice(&identity);
        header.extend_from_slice(&[0x22, 2, 0x08, 1]);
        let mut packet = vec![0x0a, header.len() as u8];
        packet.extend_from_slice(&header);
        let mut expected = vec![0x0a, packet.len() as u8];
        expected.extend_from_slice(&packet);

        let encoded = datagram.encode_to_vec();
        assert_eq!(encoded, expected);
        assert_eq!(v1::Datagram::decode(encoded.as_slice()).unwrap(), datagram);
    }

    #[test]
    fn sealed_and_plain_bodies_use_distinct_fields() {
        let sealed = v1::Datagram {
            body: Some(v1::datagram::Body::Sealed(v1::SealedPacket {
                nonce: vec![7; 24],
                ciphertext: vec![9; 16],
            })),
        };
        let encoded = sealed.encode_to_vec();
        assert_eq!(encoded[0], 0x12, "sealed is field 2, length-delimited");
        assert_eq!(v1::Datagram::decode(encoded.as_slice()).unwrap(), sealed);
    }
}
