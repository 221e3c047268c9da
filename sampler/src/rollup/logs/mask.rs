//! Preprocessing of a log line: split into tokens and mask the variable parts.
//!
//! One pass over the bytes, no regexes and no per-line allocation: the caller owns the
//! output buffers and reuses them. Inside a whitespace-separated token, every maximal run of
//! word characters (ASCII letters and digits, `_` excluded, plus any non-ASCII byte) that
//! contains a digit is a variable and becomes `<*>`. That one rule covers numbers, hex
//! (`0x7fed806eb5d`), UUIDs, IPv4/IPv6 addresses, ports, versions, dates and times, block
//! and job ids (`blk_-123`, `job_1445144423722_0020`), key=value numbers (`HWID=1973`) and
//! host names with numbers (`node-246`), while the constant words around them stay
//! (`blk_<*>`, `HWID=<*>`, `/<*>`). Variables separated only by joining punctuation collapse
//! into one (`10.251.73.220:50010` → `<*>`), so addresses, timestamps and versions of any
//! shape mask alike; a `-` right before a number is taken as its sign.

/// The mask that replaces a variable; also the wildcard of a template.
pub const WILDCARD: &str = "<*>";

/// A token of the masked line: its byte range in the buffer and whether it holds a variable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    /// Start offset in the masked buffer.
    pub start: u32,
    /// End offset (exclusive) in the masked buffer.
    pub end: u32,
    /// Whether masking replaced something in it (such tokens never key the prefix tree).
    pub variable: bool,
}

/// Reusable output of [`mask_line`].
#[derive(Debug, Default)]
pub(crate) struct MaskedLine {
    /// Masked token bytes, back to back (always valid UTF-8 once complete: only whole runs
    /// of non-ASCII bytes and ASCII bytes are copied).
    pub bytes: Vec<u8>,
    /// The tokens, in order.
    pub tokens: Vec<Token>,
}

impl MaskedLine {
    /// The bytes of token `i`.
    pub fn token(&self, i: usize) -> &[u8] {
        let t = self.tokens[i];
        &self.bytes[t.start as usize..t.end as usize]
    }
}

/// Characters that make up words; everything else is punctuation.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Punctuation that joins the parts of one value (addresses, dates, versions, paths).
fn is_joiner(b: u8) -> bool {
    matches!(b, b'.' | b':' | b'-' | b'/' | b'_' | b',' | b'+' | b'@')
}

/// Splits `line` on ASCII whitespace into at most `max_tokens` tokens and masks each into
/// `out` (cleared first). A token longer than `max_token_len` bytes is taken as a payload
/// and masked whole, which also bounds the memory of a template.
pub(crate) fn mask_line(line: &str, max_tokens: usize, max_token_len: usize, out: &mut MaskedLine) {
    out.bytes.clear();
    out.tokens.clear();
    for raw in line.as_bytes().split(u8::is_ascii_whitespace) {
        if raw.is_empty() {
            continue;
        }
        if out.tokens.len() == max_tokens {
            break;
        }
        let start = out.bytes.len();
        let variable = if raw.len() > max_token_len {
            out.bytes.extend_from_slice(WILDCARD.as_bytes());
            true
        } else {
            mask_token(raw, &mut out.bytes)
        };
        out.tokens.push(Token {
            start: start as u32,
            end: out.bytes.len() as u32,
            variable,
        });
    }
}

/// Appends the masked form of one token to `out`; returns whether anything was masked.
fn mask_token(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    // End offset in `out` of the last `<*>` written, to collapse joined variables.
    let mut last_variable_end: Option<usize> = None;
    let mut i = 0;
    while i < raw.len() {
        if !is_word(raw[i]) {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let run_start = i;
        let mut digit = false;
        while i < raw.len() && is_word(raw[i]) {
            digit |= raw[i].is_ascii_digit();
            i += 1;
        }
        if !digit {
            out.extend_from_slice(&raw[run_start..i]);
            continue;
        }
        // A '-' at the token start or after punctuation is the number's sign.
        let len = out.len();
        if len > start && out[len - 1] == b'-' && (len - 1 == start || !is_word(out[len - 2])) {
            out.pop();
        }
        if let Some(end) = last_variable_end
            && out[end..].iter().all(|&b| is_joiner(b))
        {
            out.truncate(end);
            continue;
        }
        out.extend_from_slice(WILDCARD.as_bytes());
        last_variable_end = Some(out.len());
    }
    last_variable_end.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(line: &str) -> Vec<String> {
        let mut out = MaskedLine::default();
        mask_line(line, 128, 128, &mut out);
        (0..out.tokens.len())
            .map(|i| String::from_utf8(out.token(i).to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn masks_numbers_ids_and_addresses() {
        assert_eq!(
            masked("PacketResponder 1 for block blk_-6952295868487656571 terminating"),
            [
                "PacketResponder",
                "<*>",
                "for",
                "block",
                "blk_<*>",
                "terminating"
            ]
        );
        assert_eq!(
            masked("blockMap updated: 10.251.73.220:50010 is added"),
            ["blockMap", "updated:", "<*>", "is", "added"]
        );
        assert_eq!(
            masked("from /10.10.34.11:45307 state (HWID=1973)"),
            ["from", "/<*>", "state", "(HWID=<*>)"]
        );
        assert_eq!(masked("at 0x7fed806eb5d"), ["at", "<*>"]);
        assert_eq!(
            masked("id 550e8400-e29b-41d4-a716-446655440000 v6.1.7601 fe80::1:8080"),
            ["id", "<*>", "<*>", "<*>"]
        );
        assert_eq!(masked("keyId: -127633188"), ["keyId:", "<*>"]);
        assert_eq!(masked("node-246 up"), ["node-<*>", "up"]);
    }

    #[test]
    fn keeps_words_and_non_ascii() {
        assert_eq!(
            masked("  Send worker\tleaving  "),
            ["Send", "worker", "leaving"]
        );
        assert_eq!(masked("état réseau 5"), ["état", "réseau", "<*>"]);
    }

    #[test]
    fn bounds_tokens_and_token_length() {
        let mut out = MaskedLine::default();
        mask_line("a b c d e", 3, 128, &mut out);
        assert_eq!(out.tokens.len(), 3);
        let long = "x".repeat(200);
        mask_line(&format!("payload {long}"), 8, 128, &mut out);
        assert_eq!(out.token(1), b"<*>");
        assert!(out.tokens[1].variable);
    }
}
