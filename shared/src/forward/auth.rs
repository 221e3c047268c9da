//! Authentication of calls to a sampler's forward endpoint (`:4319`) with a credential
//! derived from the cluster secret.
//!
//! Every call carries [`AUTH_HEADER`]: the sender's clock (unix milliseconds), a random
//! 192-bit nonce and a Poly1305 tag over the method path and that time, under a key derived
//! from `cluster.secret` for this use alone ([`ClusterKey`], XChaCha20-Poly1305 with an
//! empty plaintext). The receiver accepts a call when the tag verifies for the called path,
//! the time is within [`MAX_SKEW`] of its own clock, and the nonce was not seen within that
//! window ([`ReplayGuard`]). So a node without the secret can call nothing, a credential
//! cannot be moved to another method, and one captured in transit cannot be used again.
//! The tag does not cover the body: an on-path attacker who can stop a call in flight could
//! reuse its credential once with another body, which is what `cluster.tls` is for on
//! networks that are not trusted.
//!
//! Pure logic; time is passed in.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use otel_tail_proto::v1::SealedPacket;

use crate::seal::{ClusterKey, NONCE_LEN};

/// Metadata header carrying the credential.
pub const AUTH_HEADER: &str = "x-otel-tail-auth";
/// Largest difference between the sender's and the receiver's clock, milliseconds; also
/// how long a nonce is remembered.
pub const MAX_SKEW: u64 = 60_000;
/// Most nonces remembered at once; past it the oldest go first (a replay of one of those
/// within the window would then pass — it takes more than this many calls per window).
pub const MAX_NONCES: usize = 1 << 20;
/// HKDF info of the forward-call key.
const KEY_INFO: &[u8] = b"forward-call";
/// Bytes of the Poly1305 tag.
const TAG_LEN: usize = 16;
/// Bytes of a decoded credential: time, nonce, tag.
const CREDENTIAL_LEN: usize = 8 + NONCE_LEN + TAG_LEN;

/// Why a call was refused; the `reason` label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential.
    #[error("no cluster credential")]
    Missing,
    /// Not a credential, or not made with this cluster's secret for this method.
    #[error("invalid cluster credential")]
    Invalid,
    /// Made too long ago or too far ahead (clock skew beyond the window).
    #[error("cluster credential outside the time window")]
    Expired,
    /// Seen before.
    #[error("cluster credential replayed")]
    Replayed,
}

impl AuthError {
    /// The metric label of this refusal.
    pub fn reason(self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Invalid => "invalid",
            AuthError::Expired => "expired",
            AuthError::Replayed => "replayed",
        }
    }
}

/// Makes and checks credentials of forward calls. Shared (`Arc`) by all callers.
#[derive(Debug)]
pub struct ForwardAuth {
    key: ClusterKey,
}

fn aad(path: &str, time_ms: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(path.len() + 8);
    aad.extend_from_slice(&time_ms.to_be_bytes());
    aad.extend_from_slice(path.as_bytes());
    aad
}

impl ForwardAuth {
    /// The credential maker for `secret` (the cluster secret).
    pub fn new(secret: &[u8]) -> ForwardAuth {
        ForwardAuth {
            key: ClusterKey::derive(secret, KEY_INFO),
        }
    }

    /// A credential for calling `path` (e.g. `/opentelemetry.proto.collector.trace.v1.TraceService/Export`)
    /// at `now_ms` (unix milliseconds).
    pub fn credential(&self, path: &str, now_ms: u64) -> String {
        let sealed = self.key.seal(&aad(path, now_ms), &[]);
        let mut bytes = Vec::with_capacity(CREDENTIAL_LEN);
        bytes.extend_from_slice(&now_ms.to_be_bytes());
        bytes.extend_from_slice(&sealed.nonce);
        bytes.extend_from_slice(&sealed.ciphertext);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks `credential` (the header's value, if any) for a call of `path` received at
    /// `now_ms`; a valid one's nonce is remembered in `guard`.
    pub fn verify(
        &self,
        path: &str,
        credential: Option<&[u8]>,
        now_ms: u64,
        guard: &ReplayGuard,
    ) -> Result<(), AuthError> {
        let credential = credential.ok_or(AuthError::Missing)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(credential)
            .map_err(|_| AuthError::Invalid)?;
        if bytes.len() != CREDENTIAL_LEN {
            return Err(AuthError::Invalid);
        }
        let (time, rest) = bytes.split_at(8);
        let time = u64::from_be_bytes(time.try_into().map_err(|_| AuthError::Invalid)?);
        let (nonce, tag) = rest.split_at(NONCE_LEN);
        let sealed = SealedPacket {
            nonce: nonce.to_vec(),
            ciphertext: tag.to_vec(),
        };
        self.key
            .open(&aad(path, time), &sealed)
            .ok_or(AuthError::Invalid)?;
        if time.abs_diff(now_ms) > MAX_SKEW {
            return Err(AuthError::Expired);
        }
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| AuthError::Invalid)?;
        guard.admit(nonce, now_ms)
    }
}

/// Nonces of the credentials accepted within the last [`MAX_SKEW`], at most
/// [`MAX_NONCES`], so none is accepted twice.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    set: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// Remembers `nonce` seen at `now_ms`; refuses one already remembered. Forgets nonces
    /// older than the window (a credential that old is refused by its time anyway).
    pub fn admit(&self, nonce: [u8; NONCE_LEN], now_ms: u64) -> Result<(), AuthError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(at, old)) = seen.order.front() {
            if now_ms.saturating_sub(at) <= 2 * MAX_SKEW && seen.order.len() < MAX_NONCES {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if !seen.set.insert(nonce) {
            return Err(AuthError::Replayed);
        }
        seen.order.push_back((now_ms, nonce));
        Ok(())
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/otel_tail.v1.Handoff/Decisions";
    const NOW: u64 = 1_767_225_600_000;

    #[test]
    fn a_credential_verifies_once_for_its_path_and_secret() {
        let auth = ForwardAuth::new(b"0123456789abcdef0123456789abcdef");
        let guard = ReplayGuard::default();
        let credential = auth.credential(PATH, NOW);
        let bytes = Some(credential.as_bytes());
        assert_eq!(auth.verify(PATH, bytes, NOW + 10, &guard), Ok(()));
        assert_eq!(
            auth.verify(PATH, bytes, NOW + 20, &guard),
            Err(AuthError::Replayed)
        );
        let fresh = auth.credential(PATH, NOW);
        assert_eq!(
            auth.verify("/other/Method", Some(fresh.as_bytes()), NOW, &guard),
            Err(AuthError::Invalid),
            "bound to its method"
        );
        let other = ForwardAuth::new(b"another secret of thirty-two bytes!!");
        assert_eq!(
            other.verify(PATH, Some(fresh.as_bytes()), NOW, &guard),
            Err(AuthError::Invalid),
            "bound to its secret"
        );
        assert_eq!(
            auth.verify(PATH, None, NOW, &guard),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.verify(PATH, Some(b"not a credential"), NOW, &guard),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn credentials_outside_the_window_or_tampered_are_refused() {
        let auth = ForwardAuth::new(b"0123456789abcdef0123456789abcdef");
        let guard = ReplayGuard::default();
        let old = auth.credential(PATH, NOW - MAX_SKEW - 1);
        assert_eq!(
            auth.verify(PATH, Some(old.as_bytes()), NOW, &guard),
            Err(AuthError::Expired)
        );
        let ahead = auth.credential(PATH, NOW + MAX_SKEW + 1);
        assert_eq!(
            auth.verify(PATH, Some(ahead.as_bytes()), NOW, &guard),
            Err(AuthError::Expired)
        );
        // Moving the time field breaks the tag.
        let mut bytes = URL_SAFE_NO_PAD
            .decode(auth.credential(PATH, NOW - MAX_SKEW - 1))
            .unwrap();
        bytes[..8].copy_from_slice(&NOW.to_be_bytes());
        let moved = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(
            auth.verify(PATH, Some(moved.as_bytes()), NOW, &guard),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn the_guard_forgets_nonces_past_the_window_only() {
        let guard = ReplayGuard::default();
        assert_eq!(guard.admit([1; NONCE_LEN], NOW), Ok(()));
        assert_eq!(guard.admit([2; NONCE_LEN], NOW + 1), Ok(()));
        assert_eq!(
            guard.admit([1; NONCE_LEN], NOW + MAX_SKEW),
            Err(AuthError::Replayed)
        );
        assert_eq!(guard.admit([3; NONCE_LEN], NOW + 2 * MAX_SKEW + 2), Ok(()));
        assert_eq!(guard.len(), 1, "both older nonces aged out");
    }
}
