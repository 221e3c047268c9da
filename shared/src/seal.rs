//! Authenticated encryption of cluster messages with the shared cluster secret:
//! XChaCha20-Poly1305 under a key derived from the secret with HKDF-SHA256 (so any secret
//! length works and the raw secret is never a key), a random 192-bit nonce per message (so
//! nonce reuse is negligible however much a long-lived cluster sends), and associated data
//! naming the message type (so a message sealed for one use is refused for another).
//!
//! Gossip datagrams and decision-notice batches are sealed this way, each under its own
//! derived key.

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use hkdf::Hkdf;
use otel_tail_proto::v1::SealedPacket;
use std::sync::Mutex;

use rand::Rng;
use rand::rngs::StdRng;
use sha2::Sha256;

/// Bytes in a sealed message's nonce.
pub const NONCE_LEN: usize = 24;
/// HKDF salt: binds derived keys to this product and wire version.
const KDF_SALT: &[u8] = b"otel-tail-sampler/cluster/v1";

/// A key derived from the cluster secret for one use.
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
    /// Nonce source: a CSPRNG seeded by the operating system.
    rng: Mutex<StdRng>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// The key for the use named by `info` (HKDF info), derived from `secret`.
    pub fn derive(secret: &[u8], info: &[u8]) -> ClusterKey {
        let mut key = [0u8; 32];
        Hkdf::<Sha256>::new(Some(KDF_SALT), secret)
            .expand(info, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        ClusterKey {
            cipher: XChaCha20Poly1305::new(&key.into()),
            rng: Mutex::new(rand::make_rng()),
        }
    }

    /// Encrypts and authenticates `plaintext` together with `aad`, under a fresh nonce from
    /// a CSPRNG seeded by the operating system.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> SealedPacket {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 accepts messages of any size we send");
        SealedPacket {
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// The plaintext of `sealed`, or `None` when it was not sealed with this key and `aad`
    /// (wrong secret, other use, or tampered).
    pub fn open(&self, aad: &[u8], sealed: &SealedPacket) -> Option<Vec<u8>> {
        let nonce = <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice()).ok()?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_only_with_the_same_secret_use_and_aad() {
        let key = ClusterKey::derive(b"secret", b"use-a");
        let sealed = key.seal(b"type", b"hello");
        assert_eq!(key.open(b"type", &sealed).as_deref(), Some(&b"hello"[..]));
        assert_eq!(key.open(b"other type", &sealed), None);
        assert_eq!(
            ClusterKey::derive(b"secret", b"use-b").open(b"type", &sealed),
            None
        );
        assert_eq!(
            ClusterKey::derive(b"secreT", b"use-a").open(b"type", &sealed),
            None
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(key.open(b"type", &tampered), None);
        assert_ne!(
            key.seal(b"type", b"hello").nonce,
            sealed.nonce,
            "fresh nonce"
        );
    }
}
