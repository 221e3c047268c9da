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
//!
//! Sealed packets carry the sender's clock (`sent_at_unix_ms`, inside the ciphertext). A
//! sealed datagram more than [`MAX_SKEW`] off the receiver's clock, or whose nonce the
//! receiver accepted within that window, is a replay: dropped and counted. Pure logic; the
//! caller passes the time.

use otel_tail_proto::v1 as pb;
use prost::Message as _;

use crate::forward::auth::{MAX_SKEW, ReplayGuard};
use crate::seal::{ClusterKey, NONCE_LEN};

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
    /// Authentic, but sent outside the time window or already received.
    #[error("datagram replayed or outside the time window")]
    Replayed,
    /// Not a valid datagram or gossip packet.
    #[error("malformed datagram: {0}")]
    Malformed(String),
}

/// Seals outgoing and opens incoming gossip datagrams.
pub(crate) struct Sealer {
    key: Option<ClusterKey>,
    seen: ReplayGuard,
}

impl Sealer {
    /// A sealer for `secret`, or one that sends and accepts only plain datagrams.
    pub(crate) fn new(secret: Option<&[u8]>) -> Self {
        Self {
            key: secret.map(|secret| ClusterKey::derive(secret, KDF_INFO)),
            seen: ReplayGuard::default(),
        }
    }

    /// Encodes `packet` into one datagram sent at `now_ms` (unix milliseconds), sealed
    /// when a secret is configured.
    pub(crate) fn seal(&mut self, packet: &pb::GossipPacket, now_ms: u64) -> Vec<u8> {
        let body = match &self.key {
            None => pb::datagram::Body::Plain(packet.clone()),
            Some(key) => {
                let stamped = pb::GossipPacket {
                    sent_at_unix_ms: now_ms,
                    ..packet.clone()
                };
                pb::datagram::Body::Sealed(key.seal(AAD, &stamped.encode_to_vec()))
            }
        };
        pb::Datagram { body: Some(body) }.encode_to_vec()
    }

    /// Authenticates and decodes one datagram received at `now_ms`.
    pub(crate) fn open(
        &self,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<pb::GossipPacket, PacketError> {
        let datagram =
            pb::Datagram::decode(datagram).map_err(|e| PacketError::Malformed(e.to_string()))?;
        match (datagram.body, &self.key) {
            (None, _) => Err(PacketError::Malformed("empty datagram".into())),
            (Some(pb::datagram::Body::Plain(packet)), None) => Ok(packet),
            (Some(pb::datagram::Body::Sealed(_)), None)
            | (Some(pb::datagram::Body::Plain(_)), Some(_)) => Err(PacketError::AuthFailed),
            (Some(pb::datagram::Body::Sealed(sealed)), Some(key)) => {
                let plaintext = key.open(AAD, &sealed).ok_or(PacketError::AuthFailed)?;
                let packet = pb::GossipPacket::decode(plaintext.as_slice())
                    .map_err(|e| PacketError::Malformed(e.to_string()))?;
                if packet.sent_at_unix_ms.abs_diff(now_ms) > MAX_SKEW {
                    return Err(PacketError::Replayed);
                }
                let nonce: [u8; NONCE_LEN] = sealed
                    .nonce
                    .as_slice()
                    .try_into()
                    .map_err(|_| PacketError::AuthFailed)?;
                self.seen
                    .admit(nonce, now_ms)
                    .map_err(|_| PacketError::Replayed)?;
                Ok(packet)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_767_225_600_000;

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
            sent_at_unix_ms: 0,
        }
    }

    #[test]
    fn sealed_datagrams_round_trip_and_hide_the_payload() {
        let mut sealer = Sealer::new(Some(b"correct horse battery staple"));
        let datagram = sealer.seal(&packet(), NOW);
        let stamped = pb::GossipPacket {
            sent_at_unix_ms: NOW,
            ..packet()
        };
        assert_eq!(sealer.open(&datagram, NOW), Ok(stamped));
        assert!(
            !datagram.windows(13).any(|w| w == b"keep trace 42"),
            "payload must not travel in clear"
        );
        assert_ne!(
            sealer.seal(&packet(), NOW),
            datagram,
            "each datagram gets a fresh nonce"
        );
    }

    #[test]
    fn a_sealed_datagram_is_accepted_once_and_only_within_the_window() {
        let sender = &mut Sealer::new(Some(b"secret"));
        let receiver = Sealer::new(Some(b"secret"));
        let datagram = sender.seal(&packet(), NOW);
        assert!(receiver.open(&datagram, NOW + 5).is_ok());
        assert_eq!(
            receiver.open(&datagram, NOW + 6),
            Err(PacketError::Replayed),
            "a captured datagram sent again"
        );
        let old = sender.seal(&packet(), NOW - MAX_SKEW - 1);
        assert_eq!(receiver.open(&old, NOW), Err(PacketError::Replayed));
        let ahead = sender.seal(&packet(), NOW + MAX_SKEW + 1);
        assert_eq!(receiver.open(&ahead, NOW), Err(PacketError::Replayed));
        let fresh = sender.seal(&packet(), NOW - MAX_SKEW);
        assert!(receiver.open(&fresh, NOW).is_ok());
    }

    #[test]
    fn plain_datagrams_round_trip_without_a_secret() {
        let mut sealer = Sealer::new(None);
        let datagram = sealer.seal(&packet(), NOW);
        assert_eq!(sealer.open(&datagram, NOW), Ok(packet()));
    }

    #[test]
    fn a_wrong_key_fails_authentication() {
        let datagram = Sealer::new(Some(b"secret-a")).seal(&packet(), NOW);
        assert_eq!(
            Sealer::new(Some(b"secret-b")).open(&datagram, NOW),
            Err(PacketError::AuthFailed)
        );
    }

    #[test]
    fn sealed_and_plain_nodes_reject_each_other() {
        let sealed = Sealer::new(Some(b"secret")).seal(&packet(), NOW);
        let plain = Sealer::new(None).seal(&packet(), NOW);
        assert_eq!(
            Sealer::new(None).open(&sealed, NOW),
            Err(PacketError::AuthFailed)
        );
        assert_eq!(
            Sealer::new(Some(b"secret")).open(&plain, NOW),
            Err(PacketError::AuthFailed)
        );
    }

    #[test]
    fn any_tampered_byte_is_rejected() {
        let sealer = Sealer::new(Some(b"secret"));
        let datagram = Sealer::new(Some(b"secret")).seal(&packet(), NOW);
        for at in 0..datagram.len() {
            for flip in [0x01u8, 0x80] {
                let mut tampered = datagram.clone();
                tampered[at] ^= flip;
                assert!(
                    sealer.open(&tampered, NOW).is_err(),
                    "flip {flip:#x} at byte {at}"
                );
            }
        }
        let mut ciphertext_flip = datagram.clone();
        let last = ciphertext_flip.len() - 1;
        ciphertext_flip[last] ^= 1;
        assert_eq!(
            sealer.open(&ciphertext_flip, NOW),
            Err(PacketError::AuthFailed)
        );
    }

    #[test]
    fn short_and_garbage_datagrams_are_malformed() {
        let sealer = Sealer::new(Some(b"secret"));
        let datagram = Sealer::new(Some(b"secret")).seal(&packet(), NOW);
        for cut in 0..datagram.len() {
            assert!(sealer.open(&datagram[..cut], NOW).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            sealer.open(&[], NOW),
            Err(PacketError::Malformed(_))
        ));
        assert!(matches!(
            sealer.open(&[0xff; 64], NOW),
            Err(PacketError::Malformed(_))
        ));
        assert!(matches!(
            Sealer::new(None).open(b"GET / HTTP/1.1\r\n\r\n", NOW),
            Err(PacketError::Malformed(_))
        ));
    }
}
