//! Authentication of gossip datagrams with the cluster secret.
//!
//! With a secret, each datagram is a [`pb::Datagram`] holding a [`pb::SealedPacket`]: a
//! random 24-byte nonce and the encoded [`pb::GossipPacket`] encrypted and
//! authenticated with XChaCha20-Poly1305 (tag appended), under the gossip key derived from
//! the secret (see [`crate::seal`]). Without a secret, datagrams carry the packet as
//! `plain`.
//!
//! A node accepts only its own form: a sealed node counts a plain datagram as an
//! authentication failure and vice versa, so a misconfigured node cannot half-join.

use otel_tail_proto::v1 as pb;
use prost::Message as _;

use crate::seal::ClusterKey;

/// HKDF info: binds the derived key to its one use.
const KDF_INFO: &[u8] = b"gossip datagram xchacha20-poly1305 key";
/// Associated data authenticated with every sealed packet.
const AAD: &[u8] = b"otel_tail.v1.GossipPacket";

/// Why a received datagram was dropped; the variants are the `outcome` label values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    /// Not sealed with our key (wrong secret, tampered, or sealed/unsealed mismatch).
    #[error("datagram failed authentication")]
    AuthFailed,
    /// Not a valid datagram or gossip packet.
    #[error("malformed datagram: {0}")]
    Malformed(String),
}

/// Seals outgoing and opens incoming gossip datagrams.
pub(crate) struct Sealer {
    key: Option<ClusterKey>,
}

impl Sealer {
    /// A sealer for `secret`, or one that sends and accepts only plain datagrams.
    pub(crate) fn new(secret: Option<&[u8]>) -> Self {
        Self {
            key: secret.map(|secret| ClusterKey::derive(secret, KDF_INFO)),
        }
    }

    /// Encodes `packet` into one datagram, sealed when a secret is configured.
    pub(crate) fn seal(&mut self, packet: &pb::GossipPacket) -> Vec<u8> {
        let body = match &self.key {
            None => pb::datagram::Body::Plain(packet.clone()),
            Some(key) => pb::datagram::Body::Sealed(key.seal(AAD, &packet.encode_to_vec())),
        };
        pb::Datagram { body: Some(body) }.encode_to_vec()
    }

    /// Authenticates and decodes one received datagram.
    pub(crate) fn open(&self, datagram: &[u8]) -> Result<pb::GossipPacket, PacketError> {
        let datagram =
            pb::Datagram::decode(datagram).map_err(|e| PacketError::Malformed(e.to_string()))?;
        match (datagram.body, &self.key) {
            (None, _) => Err(PacketError::Malformed("empty datagram".into())),
            (Some(pb::datagram::Body::Plain(packet)), None) => Ok(packet),
            (Some(pb::datagram::Body::Sealed(_)), None)
            | (Some(pb::datagram::Body::Plain(_)), Some(_)) => Err(PacketError::AuthFailed),
            (Some(pb::datagram::Body::Sealed(sealed)), Some(key)) => {
                let plaintext = key.open(AAD, &sealed).ok_or(PacketError::AuthFailed)?;
                pb::GossipPacket::decode(plaintext.as_slice())
                    .map_err(|e| PacketError::Malformed(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> pb::GossipPacket {
        pb::GossipPacket {
            header: Some(pb::Header {
                src: Some(pb::NodeIdentity {
                    node_id: "sampler-0".into(),
                    address: "127.0.0.1:7946".into(),
                    role: pb::Role::Sampler as i32,
                    generation: 7,
                    forward: String::new(),
                }),
                message: Some(pb::header::Message::Ping(pb::Ping { probe_number: 3 })),
                ..Default::default()
            }),
            updates: vec![],
            broadcasts: vec![pb::ClusterBroadcast {
                origin: "sampler-0".into(),
                origin_generation: 7,
                sequence: 1,
                payload: b"keep trace 42".to_vec(),
            }],
        }
    }

    #[test]
    fn sealed_datagrams_round_trip_and_hide_the_payload() {
        let mut sealer = Sealer::new(Some(b"correct horse battery staple"));
        let datagram = sealer.seal(&packet());
        assert_eq!(sealer.open(&datagram), Ok(packet()));
        assert!(
            !datagram.windows(13).any(|w| w == b"keep trace 42"),
            "payload must not travel in clear"
        );
        assert_ne!(
            sealer.seal(&packet()),
            datagram,
            "each datagram gets a fresh nonce"
        );
    }

    #[test]
    fn plain_datagrams_round_trip_without_a_secret() {
        let mut sealer = Sealer::new(None);
        let datagram = sealer.seal(&packet());
        assert_eq!(sealer.open(&datagram), Ok(packet()));
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let datagram = Sealer::new(Some(b"secret-a")).seal(&packet());
        assert_eq!(
            Sealer::new(Some(b"secret-b")).open(&datagram),
            Err(PacketError::AuthFailed)
        );
    }

    #[test]
    fn sealed_and_plain_nodes_reject_each_other() {
        let sealed = Sealer::new(Some(b"secret")).seal(&packet());
        let plain = Sealer::new(None).seal(&packet());
        assert_eq!(
            Sealer::new(None).open(&sealed),
            Err(PacketError::AuthFailed)
        );
        assert_eq!(
            Sealer::new(Some(b"secret")).open(&plain),
            Err(PacketError::AuthFailed)
        );
    }

    #[test]
    fn any_tampered_byte_is_rejected() {
        let sealer = Sealer::new(Some(b"secret"));
        let datagram = Sealer::new(Some(b"secret")).seal(&packet());
        for at in 0..datagram.len() {
            for flip in [0x01u8, 0x80] {
                let mut tampered = datagram.clone();
                tampered[at] ^= flip;
                assert!(
                    sealer.open(&tampered).is_err(),
                    "flip {flip:#x} at byte {at}"
                );
            }
        }
        let mut ciphertext_flip = datagram.clone();
        let last = ciphertext_flip.len() - 1;
        ciphertext_flip[last] ^= 1;
        assert_eq!(sealer.open(&ciphertext_flip), Err(PacketError::AuthFailed));
    }

    #[test]
    fn short_and_garbage_datagrams_are_malformed() {
        let sealer = Sealer::new(Some(b"secret"));
        let datagram = Sealer::new(Some(b"secret")).seal(&packet());
        for cut in 0..datagram.len() {
            assert!(sealer.open(&datagram[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(sealer.open(&[]), Err(PacketError::Malformed(_))));
        assert!(matches!(
            sealer.open(&[0xff; 64]),
            Err(PacketError::Malformed(_))
        ));
        assert!(matches!(
            Sealer::new(None).open(b"GET / HTTP/1.1\r\n\r\n"),
            Err(PacketError::Malformed(_))
        ));
    }
}
