//! Preprocessing of a log line: split into tokens and mask the variable parts.
//!
//! One pass over the bytes, no regexes and no per-line allocation: the caller owns the
//! output buffers and reuses them. The rules are generic — none names a system or a log
//! format — and are applied in this order:
//!
//! - **Quoted strings** (`"…"`, `'…'`, also as a `key="…"` value) are one variable,
//!   whatever their length: `"<*>"`. A quote opens only at the start of a token (after
//!   opening brackets or `key=`) and closes at a token end (before closing punctuation),
//!   so apostrophes inside words are left alone.
//! - **Paths and URLs** (`/var/log/x.log`, `C:\Windows\…`, `hdfs://host/path`) are one
//!   variable; a URL keeps its scheme (`hdfs://<*>`). A path needs at least two
//!   separators (or a drive letter), so a lone `/default-rack` stays a word.
//! - **`key=value`**: the value is a variable whatever its characters (`user=<*>`);
//!   an empty value stays empty.
//! - **Host and port** (`api.example.com:8443`): the whole address is one variable.
//! - **Month, weekday and time zone names** (`Oct`, `Monday`, `UTC`) are variables, so
//!   dates of any month mask alike.
//! - **Anything with a digit**: inside a token every maximal run of word characters
//!   (ASCII letters and digits, `_` excluded, plus any non-ASCII byte) that contains a
//!   digit becomes `<*>`. That covers numbers, hex (`0x7fed806eb5d`), UUIDs, IPv4/IPv6
//!   addresses, ports, versions, dates and times, durations and sizes with units (`250ms`,
//!   `1.5GB`), block and job ids (`blk_-123`, `job_1445144423722_0020`) and host names
//!   with numbers (`node-246`), while the constant words around them stay (`blk_<*>`,
//!   `HWID=<*>`, `/<*>`). Variables separated only by joining punctuation collapse into one
//!   (`10.251.73.220:50010` → `<*>`), and a `-` right before a number is its sign.
//! - **Runs of variables**: consecutive tokens that are each wholly a variable become one
//!   `<*>` token, so a list of addresses or a multi-part timestamp has the same shape
//!   whatever its length.

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

/// A quoted string or bracketed group may be this many times `max_token_len` long.
const SPAN_TOKENS: usize = 4;

/// Whether two differing plain words differ in their letters (`state:` and `state,` do
/// not).
pub(crate) fn words_differ(a: &[u8], b: &[u8]) -> bool {
    let letter = |c: &&u8| c.is_ascii_alphabetic() || **c >= 0x80;
    !a.iter().filter(letter).eq(b.iter().filter(letter))
}

/// Characters that make up words; everything else is punctuation.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Punctuation that joins the parts of one value (addresses, dates, versions, paths).
fn is_joiner(b: u8) -> bool {
    matches!(b, b'.' | b':' | b'-' | b'/' | b'_' | b',' | b'+' | b'@')
}

/// Punctuation that may open a token before its value (`(`, `[`, `{`, `<`).
fn is_opening(b: u8) -> bool {
    matches!(b, b'(' | b'[' | b'{' | b'<')
}

/// Punctuation that may close a token after its value.
fn is_closing(b: u8) -> bool {
    matches!(
        b,
        b')' | b']' | b'}' | b'>' | b',' | b';' | b':' | b'.' | b'!' | b'?'
    )
}

/// Whether `b` may be part of a `key` of `key=value`.
fn is_key(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// If a masked token ends in `<*>` followed by closing punctuation only, the end of that
/// `<*>`.
fn wild_end(token: &[u8]) -> Option<usize> {
    // Not a plain strip of closing bytes: the `>` of `<*>` is one.
    let mut end = token.len();
    loop {
        if token[..end].ends_with(WILDCARD.as_bytes()) {
            return Some(end);
        }
        if end == 0 || !is_closing(token[end - 1]) {
            return None;
        }
        end -= 1;
    }
}

/// Whether a masked token is `<*>` followed by closing punctuation only.
fn wild_then_closing(token: &[u8]) -> bool {
    token.starts_with(WILDCARD.as_bytes()) && token[WILDCARD.len()..].iter().all(|&b| is_closing(b))
}

/// Whether `word` is a unit of size, duration or rate, as written after a number
/// (`5.2 KB`, `30 s`).
fn is_unit(word: &[u8]) -> bool {
    if word.is_empty() || word.len() > 7 {
        return false;
    }
    matches!(
        word,
        b"B" | b"KB"
            | b"MB"
            | b"GB"
            | b"TB"
            | b"PB"
            | b"KiB"
            | b"MiB"
            | b"GiB"
            | b"TiB"
            | b"kB"
            | b"bytes"
            | b"ns"
            | b"us"
            | b"\xc2\xb5s"
            | b"ms"
            | b"s"
            | b"sec"
            | b"secs"
            | b"second"
            | b"seconds"
            | b"min"
            | b"mins"
            | b"minute"
            | b"minutes"
            | b"h"
            | b"hr"
            | b"hrs"
            | b"hour"
            | b"hours"
            | b"day"
            | b"days"
            | b"%"
    )
}

/// If the whitespace-free token `raw` is a unit, possibly followed by closing punctuation,
/// the length of the unit.
fn unit_len(raw: &[u8]) -> Option<usize> {
    let core = raw.len() - raw.iter().rev().take_while(|&&b| is_closing(b)).count();
    is_unit(&raw[..core]).then_some(core)
}

/// Whether `word` is a month, weekday or time zone name, as written in timestamps.
fn is_calendar_word(word: &[u8]) -> bool {
    // Most words fail this cheap test and skip the comparisons.
    if !(3..=9).contains(&word.len()) || !word[0].is_ascii_uppercase() {
        return false;
    }
    matches!(
        word,
        b"Jan"
            | b"Feb"
            | b"Mar"
            | b"Apr"
            | b"May"
            | b"Jun"
            | b"Jul"
            | b"Aug"
            | b"Sep"
            | b"Sept"
            | b"Oct"
            | b"Nov"
            | b"Dec"
            | b"January"
            | b"February"
            | b"March"
            | b"April"
            | b"June"
            | b"July"
            | b"August"
            | b"September"
            | b"October"
            | b"November"
            | b"December"
            | b"Mon"
            | b"Tue"
            | b"Wed"
            | b"Thu"
            | b"Fri"
            | b"Sat"
            | b"Sun"
            | b"Monday"
            | b"Tuesday"
            | b"Wednesday"
            | b"Thursday"
            | b"Friday"
            | b"Saturday"
            | b"Sunday"
            | b"UTC"
            | b"GMT"
            | b"EST"
            | b"EDT"
            | b"CST"
            | b"CDT"
            | b"MST"
            | b"MDT"
            | b"PST"
            | b"PDT"
            | b"CET"
            | b"CEST"
            | b"BST"
            | b"IST"
            | b"JST"
    )
}

/// Splits `line` on ASCII whitespace into at most `max_tokens` tokens and masks each into
/// `out` (cleared first); see the module docs. A token longer than `max_token_len` bytes is
/// taken as a payload and masked whole, which also bounds the memory of a template.
pub(crate) fn mask_line(line: &str, max_tokens: usize, max_token_len: usize, out: &mut MaskedLine) {
    out.bytes.clear();
    out.tokens.clear();
    let bytes = line.as_bytes();
    // Longest quoted string or bracketed group masked as one token.
    let span_len = max_token_len.saturating_mul(SPAN_TOKENS);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        let mut quote = false;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            quote |= matches!(bytes[i], b'"' | b'\'');
            i += 1;
        }
        let out_start = out.bytes.len();
        let variable = if i - start > max_token_len {
            out.bytes.extend_from_slice(WILDCARD.as_bytes());
            true
        } else if let Some(end) = mask_bracketed(bytes, start, span_len, &mut out.bytes) {
            i = end;
            true
        } else if let Some(end) = quote
            .then(|| mask_quoted(bytes, start, i, span_len, &mut out.bytes))
            .flatten()
        {
            i = end;
            true
        } else {
            mask_token(&bytes[start..i], &mut out.bytes)
        };
        if let Some(previous) = out.tokens.last_mut()
            && previous.variable
        {
            let (prev_start, prev_end) = (previous.start as usize, previous.end as usize);
            // The same variable token again (a list): one token stands for the run.
            if variable && out.bytes[prev_start..prev_end] == out.bytes[out_start..] {
                out.bytes.truncate(out_start);
                continue;
            }
            // After a token ending in `<*>` (plus closing punctuation), a unit (`5.2 KB,`)
            // or a `<*>` (plus closing punctuation) joins it: the merged token keeps the
            // closing punctuation of the last (`(1, 2, 3)` → `(<*>)`).
            if let Some(wild_end) = wild_end(&out.bytes[prev_start..prev_end]) {
                let closing = match unit_len(&bytes[start..i]) {
                    Some(len) => Some(out_start + len),
                    None => (variable && wild_then_closing(&out.bytes[out_start..]))
                        .then_some(out_start + WILDCARD.len()),
                };
                if let Some(from) = closing {
                    let to = prev_start + wild_end;
                    let len = out.bytes.len() - from;
                    out.bytes.copy_within(from.., to);
                    out.bytes.truncate(to + len);
                    previous.end = out.bytes.len() as u32;
                    continue;
                }
            }
        }
        if out.tokens.len() == max_tokens {
            out.bytes.truncate(out_start);
            break;
        }
        out.tokens.push(Token {
            start: out_start as u32,
            end: out.bytes.len() as u32,
            variable,
        });
    }
}

/// If a token starts at `line[start]` with `[`, and the bracket closes (counting nested
/// ones) within `max_len` bytes at a token end, masks the group as one token `[<*>]` plus
/// the closing punctuation after it, unless it holds a single plain word (`[main]`,
/// `[INFO]`), which stays as it is. A bracketed group is a context field — a thread, a
/// module, a request or a list — whose text varies while the event stays the same.
/// Returns the end of the consumed text.
fn mask_bracketed(line: &[u8], start: usize, max_len: usize, out: &mut Vec<u8>) -> Option<usize> {
    if line[start] != b'[' {
        return None;
    }
    let limit = (start + max_len).min(line.len());
    let mut depth = 0usize;
    let mut plain_word = true;
    let mut close = start;
    loop {
        match line[..limit].get(close)? {
            b'[' => depth += 1,
            b']' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            &b => plain_word &= b.is_ascii_alphabetic() || b == b'_',
        }
        close += 1;
    }
    let mut after = close + 1;
    while after < line.len() && is_closing(line[after]) {
        after += 1;
    }
    if (after < line.len() && !line[after].is_ascii_whitespace()) || close == start + 1 {
        return None;
    }
    if plain_word {
        return None;
    }
    out.extend_from_slice(b"[<*>");
    out.extend_from_slice(&line[close..after]);
    Some(after)
}

/// If the token `line[start..end]` opens a quoted string (after opening brackets or a
/// `key=`), masks the whole string, which may span whitespace, as one token: the text
/// before the quote masked as usual, `"<*>"` (or the empty quotes), and whatever closing
/// punctuation follows. Returns the end of the consumed text; `None` (writing nothing) if
/// it is not a quoted string or it does not close within `max_len` bytes at a token end.
fn mask_quoted(
    line: &[u8],
    start: usize,
    end: usize,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Option<usize> {
    let token = &line[start..end];
    let mut open = 0;
    while open < token.len() && is_opening(token[open]) {
        open += 1;
    }
    if open == token.len() || !matches!(token[open], b'"' | b'\'') {
        // `key="value"`: the key must be a plain key.
        let eq = token.iter().position(|&b| b == b'=')?;
        let quoted = eq + 1 < token.len() && matches!(token[eq + 1], b'"' | b'\'');
        if !quoted || eq == open || !token[open..eq].iter().all(|&b| is_key(b)) {
            return None;
        }
        open = eq + 1;
    }
    let quote = token[open];
    let body = start + open + 1;
    let limit = (start + max_len).min(line.len());
    // The closing quote: followed by closing punctuation up to whitespace or the end.
    let mut close = body;
    let after = loop {
        close += line.get(close..limit)?.iter().position(|&b| b == quote)?;
        let mut after = close + 1;
        while after < line.len() && is_closing(line[after]) {
            after += 1;
        }
        if after == line.len() || line[after].is_ascii_whitespace() {
            break after;
        }
        close += 1;
    };
    mask_token(&token[..open], out);
    out.push(quote);
    if close > body {
        out.extend_from_slice(WILDCARD.as_bytes());
    }
    out.extend_from_slice(&line[close..after]);
    Some(after)
}

/// Appends the masked form of one whitespace-free token to `out`; returns whether anything
/// was masked. Applies the path, `key=value`, host:port and calendar rules, then masks
/// digit-bearing runs.
fn mask_token(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut lead = 0;
    while lead < raw.len() && is_opening(raw[lead]) {
        lead += 1;
    }
    let mut trail = raw.len();
    while trail > lead && is_closing(raw[trail - 1]) {
        trail -= 1;
    }
    let core = &raw[lead..trail];
    if core.is_empty() {
        out.extend_from_slice(raw);
        return false;
    }
    let shape = Shape::of(core);
    if let Some(keep) = whole_variable(core, &shape) {
        out.extend_from_slice(&raw[..lead]);
        out.extend_from_slice(&core[..keep]);
        out.extend_from_slice(WILDCARD.as_bytes());
        out.extend_from_slice(&raw[trail..]);
        return true;
    }
    if !shape.digit {
        out.extend_from_slice(raw);
        return false;
    }
    mask_runs(raw, out)
}

/// What [`whole_variable`] and [`mask_token`] need to know of a token's core, found in
/// one pass.
#[derive(Debug, Default, Clone, Copy)]
struct Shape {
    digit: bool,
    slashes: u32,
    backslashes: u32,
    dots: u32,
    /// Offset of the first `:`.
    colon: Option<usize>,
    /// Offset of the first `=`.
    eq: Option<usize>,
}

impl Shape {
    fn of(core: &[u8]) -> Shape {
        let mut shape = Shape::default();
        for (i, &b) in core.iter().enumerate() {
            match b {
                b'0'..=b'9' => shape.digit = true,
                b'/' => shape.slashes += 1,
                b'\\' => shape.backslashes += 1,
                b'.' => shape.dots += 1,
                b':' if shape.colon.is_none() => shape.colon = Some(i),
                b'=' if shape.eq.is_none() => shape.eq = Some(i),
                _ => {}
            }
        }
        shape
    }
}

/// If `core` (a token without its opening and closing punctuation) is a value as a whole —
/// a path, a URL, a `key=value`, a host:port or a calendar name — the length of its
/// prefix to keep before `<*>`: the scheme of a URL (`hdfs://`), the `key=`, else 0.
fn whole_variable(core: &[u8], shape: &Shape) -> Option<usize> {
    let Shape {
        slashes,
        backslashes,
        dots,
        colon,
        eq,
        ..
    } = *shape;
    // key=value, the key a plain word; `a==b` and `=x` are not.
    if let Some(eq) = eq
        && eq > 0
        && eq + 1 < core.len()
        && core[eq + 1] != b'='
        && core[0].is_ascii_alphabetic()
        && core[..eq].iter().all(|&b| is_key(b))
    {
        return Some(eq + 1);
    }
    // scheme://rest
    if let Some(c) = colon
        && core[c + 1..].starts_with(b"//")
        && c > 0
        && core[..c].iter().all(|b| b.is_ascii_alphanumeric())
    {
        return (c + 3 < core.len()).then_some(c + 3);
    }
    // Paths of at least two separators (absolute, relative or home); Windows paths.
    if slashes >= 2 || backslashes >= 2 || core.get(1..3) == Some(b":\\") {
        return Some(0);
    }
    // host.name:port
    if let Some(c) = colon
        && dots > 0
        && c + 1 < core.len()
        && core[c + 1..].iter().all(u8::is_ascii_digit)
        && core[0].is_ascii_alphanumeric()
        && core[..c]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Some(0);
    }
    is_calendar_word(core).then_some(0)
}

/// Whether the text between two variables of a token makes them one value: joining
/// punctuation, possibly around short letter runs (`_m_` in `attempt_<*>_m_<*>`, `T`
/// between a date and a time).
fn joins_variables(between: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (between.first(), between.last()) else {
        return true;
    };
    if !is_joiner(first) || !is_joiner(last) {
        return false;
    }
    let mut letters = 0;
    for &b in between {
        if is_joiner(b) {
            letters = 0;
        } else if b.is_ascii_alphabetic() && letters < 2 {
            letters += 1;
        } else {
            return false;
        }
    }
    true
}

/// Appends `raw` with every digit-bearing run of word characters masked; see the module
/// docs. Returns whether anything was masked.
fn mask_runs(raw: &[u8], out: &mut Vec<u8>) -> bool {
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
            && joins_variables(&out[end..])
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
            masked("id 550e8400-e29b-41d4-a716-446655440000 v6.1.7601 fe80::1:8080 ok"),
            ["id", "<*>", "ok"],
            "consecutive variables are one"
        );
        assert_eq!(masked("keyId: -127633188"), ["keyId:", "<*>"]);
        assert_eq!(masked("node-246 up"), ["node-<*>", "up"]);
    }

    #[test]
    fn variable_runs_lists_and_units_keep_one_shape() {
        // Lists of any length.
        assert_eq!(
            masked("delete blk_1 blk_-2 blk_3 now"),
            ["delete", "blk_<*>", "now"]
        );
        assert_eq!(
            masked("peers 10.0.0.1, 10.0.0.2, 10.0.0.3"),
            ["peers", "<*>"]
        );
        assert_eq!(masked("peers 10.0.0.1, 10.0.0.2."), ["peers", "<*>."]);
        assert_eq!(masked("IRQs (3, 4, 5) *0"), ["IRQs", "(<*>)", "*<*>"]);
        // Sizes and durations with their units, whatever the unit.
        assert_eq!(
            masked("(estimated size 5.2 KB, free 1.1 GB) took 30 ms"),
            ["(estimated", "size", "<*>,", "free", "<*>)", "took", "<*>"]
        );
        assert_eq!(masked("took 250ms"), ["took", "<*>"]);
        // Short letter runs inside an id, and a date-time with `T`.
        assert_eq!(
            masked("attempt_1445144423722_0020_m_000000_0 at 2024-05-01T10:00:00Z"),
            ["attempt_<*>", "at", "<*>"]
        );
        // A run is only merged with a variable before it: a unit alone stays a word.
        assert_eq!(masked("size in KB"), ["size", "in", "KB"]);
    }

    #[test]
    fn masks_quoted_strings_paths_urls_keys_hosts_and_dates() {
        assert_eq!(
            masked(r#"open "my file.txt" failed: 'no such file' (code="E 1")"#),
            ["open", "\"<*>\"", "failed:", "'<*>'", "(code=\"<*>\")"]
        );
        assert_eq!(masked(r#"empty "" value"#), ["empty", "\"\"", "value"]);
        assert_eq!(masked("don't stop"), ["don't", "stop"], "an apostrophe");
        assert_eq!(
            masked("read /var/log/app.log and C:\\Windows\\x.dll from hdfs://nn/a/b."),
            ["read", "<*>", "and", "<*>", "from", "hdfs://<*>."]
        );
        assert_eq!(
            masked("resolved to /default-rack"),
            ["resolved", "to", "/default-rack"]
        );
        assert_eq!(
            masked("user=alice status=ok retry= (class=org.example.Filter)"),
            ["user=<*>", "status=<*>", "retry=", "(class=<*>)"]
        );
        assert_eq!(
            masked("proxy.example.com:443 open through gw.example.org:8080"),
            ["<*>", "open", "through", "<*>"]
        );
        assert_eq!(
            masked("Oct 11 22:14:15 host sshd[42]: closed"),
            ["<*>", "host", "sshd[<*>]:", "closed"]
        );
        assert_eq!(
            masked("built Fri Dec 10 19:02:14 EST 2004)"),
            ["built", "<*>)"]
        );
        assert_eq!(
            masked("update (/var/rrds/C Nodes/cn304/pkts.rrd): failed"),
            ["update", "(<*>):", "failed"],
            "a relative path joins the path before it"
        );
    }

    #[test]
    fn bracketed_groups_are_one_variable_unless_a_single_word() {
        assert_eq!(
            masked("INFO [IPC Server handler 13 on 62270] Client: done"),
            ["INFO", "[<*>]", "Client:", "done"]
        );
        assert_eq!(
            masked("[QuorumPeer[myid=1]/0:2181:Election@774] - up"),
            ["[<*>]", "-", "up"],
            "nested brackets"
        );
        assert_eq!(
            masked("[main] started [TERM, HUP]."),
            ["[main]", "started", "[<*>]."]
        );
        assert_eq!(masked("[unclosed group"), ["[unclosed", "group"]);
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
