//! Splits an OTTL condition into tokens, each with the 1-based column where it starts, so parse
//! errors can point at the offending character.

use super::ParseError;

/// One token of an OTTL condition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Token {
    /// A name: a path segment, a keyword (`and`, `nil`, ...), a converter or an enum.
    Ident(String),
    /// A string literal, escapes resolved.
    Str(String),
    /// An integer literal (without sign; the parser applies a leading `-`).
    Int(i64),
    /// A floating-point literal (without sign).
    Float(f64),
    /// A byte-string literal (`0x0a1b`).
    Bytes(Vec<u8>),
    /// A comparison operator.
    Compare(CompareOp),
    /// `+`, `-`, `*` or `/`.
    Math(MathOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Dot,
    /// `=` (named arguments).
    Assign,
    /// End of input.
    End,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    /// How the operator is written.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MathOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl MathOp {
    /// How the operator is written.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MathOp::Add => "+",
            MathOp::Sub => "-",
            MathOp::Mul => "*",
            MathOp::Div => "/",
        }
    }
}

/// A token and the column (1-based, in characters) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spanned {
    pub(crate) token: Token,
    pub(crate) column: usize,
}

/// Tokenizes `text`; the last token is always [`Token::End`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Spanned>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let single = match c {
            '(' => Some(Token::LParen),
            ')' => Some(Token::RParen),
            '[' => Some(Token::LBracket),
            ']' => Some(Token::RBracket),
            '{' => Some(Token::LBrace),
            '}' => Some(Token::RBrace),
            ',' => Some(Token::Comma),
            '.' => Some(Token::Dot),
            '+' => Some(Token::Math(MathOp::Add)),
            '-' => Some(Token::Math(MathOp::Sub)),
            '*' => Some(Token::Math(MathOp::Mul)),
            '/' => Some(Token::Math(MathOp::Div)),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push(Spanned { token, column });
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).copied();
        let (token, len) = match (c, next) {
            ('=', Some('=')) => (Token::Compare(CompareOp::Eq), 2),
            ('=', _) => (Token::Assign, 1),
            ('!', Some('=')) => (Token::Compare(CompareOp::Ne), 2),
            ('!', _) => {
                return Err(ParseError::new(
                    column,
                    "unexpected `!`; negate with `not`, compare with `!=`",
                ));
            }
            ('<', Some('=')) => (Token::Compare(CompareOp::Le), 2),
            ('<', _) => (Token::Compare(CompareOp::Lt), 1),
            ('>', Some('=')) => (Token::Compare(CompareOp::Ge), 2),
            ('>', _) => (Token::Compare(CompareOp::Gt), 1),
            ('"', _) => string(&chars, i)?,
            ('0', Some('x' | 'X')) => bytes(&chars, i)?,
            (d, _) if d.is_ascii_digit() => number(&chars, i)?,
            (a, _) if a.is_ascii_alphabetic() || a == '_' => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                (Token::Ident(chars[i..i + len].iter().collect()), len)
            }
            (other, _) => {
                return Err(ParseError::new(
                    column,
                    format!("unexpected character `{other}`"),
                ));
            }
        };
        tokens.push(Spanned { token, column });
        i += len;
    }
    tokens.push(Spanned {
        token: Token::End,
        column: chars.len() + 1,
    });
    Ok(tokens)
}

/// A string literal starting at `start` (the opening quote); returns it and its length.
fn string(chars: &[char], start: usize) -> Result<(Token, usize), ParseError> {
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(ParseError::new(start + 1, "unterminated string"));
        };
        match c {
            '"' => return Ok((Token::Str(out), i + 1 - start)),
            '\\' => {
                let Some(&escaped) = chars.get(i + 1) else {
                    return Err(ParseError::new(start + 1, "unterminated string"));
                };
                let (ch, used) = match escaped {
                    '"' => ('"', 2),
                    '\\' => ('\\', 2),
                    '\'' => ('\'', 2),
                    '/' => ('/', 2),
                    'n' => ('\n', 2),
                    't' => ('\t', 2),
                    'r' => ('\r', 2),
                    'a' => ('\u{7}', 2),
                    'b' => ('\u{8}', 2),
                    'f' => ('\u{c}', 2),
                    'v' => ('\u{b}', 2),
                    'x' | 'u' | 'U' => {
                        let digits = match escaped {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.iter().skip(i + 2).take(digits).collect();
                        let ch = (hex.len() == digits)
                            .then(|| u32::from_str_radix(&hex, 16).ok())
                            .flatten()
                            .and_then(char::from_u32)
                            .ok_or_else(|| {
                                ParseError::new(i + 1, format!("invalid escape `\\{escaped}{hex}`"))
                            })?;
                        (ch, 2 + digits)
                    }
                    other => {
                        return Err(ParseError::new(
                            i + 1,
                            format!("invalid escape `\\{other}` in string"),
                        ));
                    }
                };
                out.push(ch);
                i += used;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// A `0x...` byte-string literal starting at `start`.
fn bytes(chars: &[char], start: usize) -> Result<(Token, usize), ParseError> {
    let hex: String = chars[start + 2..]
        .iter()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(ParseError::new(
            start + 1,
            "a bytes literal needs an even, non-zero number of hex digits after `0x`",
        ));
    }
    let value = (0..hex.len())
        .step_by(2)
        .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).expect("hex digits"))
        .collect();
    Ok((Token::Bytes(value), 2 + hex.len()))
}

/// An integer or float literal starting at `start`.
fn number(chars: &[char], start: usize) -> Result<(Token, usize), ParseError> {
    let digits = |from: usize| {
        chars[from..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    let mut end = start + digits(start);
    let mut float = false;
    if chars.get(end) == Some(&'.') && chars.get(end + 1).is_some_and(char::is_ascii_digit) {
        float = true;
        end += 1 + digits(end + 1);
    }
    if matches!(chars.get(end), Some('e' | 'E')) {
        let mut exp = end + 1;
        if matches!(chars.get(exp), Some('+' | '-')) {
            exp += 1;
        }
        let n = digits(exp);
        if n > 0 {
            float = true;
            end = exp + n;
        }
    }
    if chars
        .get(end)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
    {
        return Err(ParseError::new(start + 1, "invalid number"));
    }
    let text: String = chars[start..end].iter().collect();
    let token = if float {
        Token::Float(
            text.parse()
                .map_err(|_| ParseError::new(start + 1, "invalid number"))?,
        )
    } else {
        Token::Int(
            text.parse()
                .map_err(|_| ParseError::new(start + 1, "integer does not fit in 64 bits"))?,
        )
    };
    Ok((token, end - start))
}
