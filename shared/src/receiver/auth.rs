//! Bearer-token authentication of OTLP clients (`receiver.auth.bearer_tokens_file`): one
//! token per line (blank lines and `#` comments ignored). A request must carry
//! `authorization: Bearer <token>` with one of them; others get HTTP 401 / gRPC
//! `UNAUTHENTICATED`, counted as `otel_tail_requests_refused_total{reason="unauthenticated"}`.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token is looked up by its
//! digest, so the comparison's timing says nothing about the tokens. The file is read again
//! when it changes (checked every few seconds), so tokens rotate without a restart; a file
//! that cannot be read or holds no token keeps the previous set.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// How often the tokens file is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The accepted tokens, by digest.
#[derive(Debug)]
pub struct BearerTokens {
    path: PathBuf,
    digests: RwLock<HashSet<[u8; 32]>>,
    /// Modification time and length of the file as last read.
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The tokens of a tokens file's text.
pub fn parse(text: &str) -> HashSet<[u8; 32]> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|token| digest(token.as_bytes()))
        .collect()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &Path) -> Result<HashSet<[u8; 32]>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens = parse(&text);
    if tokens.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(tokens)
}

impl BearerTokens {
    /// The tokens of the file at `path`; an error when it cannot be read or is empty.
    pub fn load(path: &Path) -> Result<BearerTokens, String> {
        let stamped = stamp(path);
        Ok(BearerTokens {
            path: path.to_owned(),
            digests: RwLock::new(read(path)?),
            stamp: Mutex::new(stamped),
        })
    }

    /// Whether `authorization` (the header's value) is `Bearer <token>` with a known token.
    pub fn check(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = value
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|_| value[7..].trim_ascii())
        else {
            return false;
        };
        self.digests
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&digest(token))
    }

    /// Reads the file again when its modification time or length changed; returns whether
    /// the token set was replaced.
    pub fn reload_if_changed(&self) -> bool {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        if now == *last {
            return false;
        }
        *last = now;
        match read(&self.path) {
            Ok(tokens) => {
                *self.digests.write().unwrap_or_else(|e| e.into_inner()) = tokens;
                tracing::info!(path = %self.path.display(), "bearer tokens reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "bearer tokens file unusable; keeping the previous tokens");
                false
            }
        }
    }

    /// Checks the file every [`RELOAD_INTERVAL`] for as long as `tokens` is in use.
    pub fn watch(tokens: &Arc<BearerTokens>) {
        let weak = Arc::downgrade(tokens);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_INTERVAL).await;
                let Some(tokens) = weak.upgrade() else {
                    return;
                };
                tokens.reload_if_changed();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_lines_without_comments_and_checked_by_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# ingest tokens\n\n  alpha-token  \nbeta\n").unwrap();
        let tokens = BearerTokens::load(&path).unwrap();
        assert!(tokens.check(Some(b"Bearer alpha-token")));
        assert!(tokens.check(Some(b"bearer beta")));
        assert!(!tokens.check(Some(b"Bearer gamma")));
        assert!(!tokens.check(Some(b"Basic YWxwaGEtdG9rZW4=")));
        assert!(!tokens.check(Some(b"Bearer # ingest tokens")));
        assert!(!tokens.check(Some(b"Bearer ")));
        assert!(!tokens.check(None));
    }

    #[test]
    fn a_changed_file_replaces_the_tokens_and_a_bad_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old\n").unwrap();
        let tokens = BearerTokens::load(&path).unwrap();
        assert!(!tokens.reload_if_changed(), "unchanged");
        std::fs::write(&path, "new-token-longer\n").unwrap();
        assert!(tokens.reload_if_changed());
        assert!(tokens.check(Some(b"Bearer new-token-longer")));
        assert!(!tokens.check(Some(b"Bearer old")));
        std::fs::write(&path, "# nothing left\n").unwrap();
        assert!(!tokens.reload_if_changed());
        assert!(
            tokens.check(Some(b"Bearer new-token-longer")),
            "an empty file keeps the previous tokens"
        );
        assert!(BearerTokens::load(&dir.path().join("missing")).is_err());
    }
}
