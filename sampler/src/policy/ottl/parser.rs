//! A recursive-descent parser for OTTL boolean expressions, producing an [`Condition`] syntax
//! tree that prints back in a canonical form (used by the golden tests).
//!
//! Grammar, loosest binding first (our own transcription of the OTTL grammar's condition part):
//! ```text
//! condition  := or EOF
//! or         := and ("or" and)*
//! and        := not ("and" not)*
//! not        := "not" not | boolean
//! boolean    := "(" or ")"                  -- unless a comparison or math operator follows
//!             | value (cmp value)?          -- without a comparison: `true`, `false` or a converter
//! value      := term (("+" | "-") term)*
//! term       := factor (("*" | "/") factor)*
//! factor     := "-" number | literal | ENUM | path | Converter "(" args ")" keys
//!             | "[" values "]" | "(" value ")"
//! path       := name ("." name)* keys
//! keys       := ("[" (string | int) "]")*
//! ```
//! Converters start with an upper-case letter; editors (lower-case calls) are refused, as in the
//! Collector's conditions.

use std::fmt;

use super::ParseError;
use super::lexer::{CompareOp, MathOp, Spanned, Token, tokenize};

/// A boolean expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    Or(Box<Condition>, Box<Condition>),
    And(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    /// `true` or `false`.
    Const(bool),
    /// `left op right`.
    Compare {
        left: Value,
        op: CompareOp,
        right: Value,
    },
    /// A converter whose result must be a boolean.
    Converter(Call),
}

/// A value expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    /// An enum symbol (`SPAN_KIND_SERVER`) and where it was written.
    Enum {
        name: String,
        column: usize,
    },
    Path(Path),
    Call(Call),
    List(Vec<Value>),
    Math {
        op: MathOp,
        left: Box<Value>,
        right: Box<Value>,
    },
}

/// A path as written: dotted names and index keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Path {
    pub(crate) names: Vec<String>,
    pub(crate) keys: Vec<Key>,
    pub(crate) column: usize,
}

/// An index key: `["name"]` or `[0]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Key {
    Str(String),
    Int(i64),
}

/// A converter invocation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub(crate) name: String,
    pub(crate) args: Vec<Value>,
    pub(crate) keys: Vec<Key>,
    pub(crate) column: usize,
}

/// Parses one OTTL condition.
pub(crate) fn parse(text: &str) -> Result<Condition, ParseError> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
    };
    let condition = parser.or()?;
    match parser.peek() {
        Token::End => Ok(condition),
        other => Err(ParseError::new(
            parser.column(),
            format!(
                "unexpected {} after the end of the condition",
                describe(other)
            ),
        )),
    }
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos].token
    }

    fn peek_at(&self, offset: usize) -> &Token {
        let i = (self.pos + offset).min(self.tokens.len() - 1);
        &self.tokens[i].token
    }

    fn column(&self) -> usize {
        self.tokens[self.pos].column
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.pos].token.clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        token
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Token::Ident(w) if w == word)
    }

    fn expect(&mut self, want: &Token, what: &str) -> Result<(), ParseError> {
        if self.peek() == want {
            self.advance();
            Ok(())
        } else {
            Err(ParseError::new(
                self.column(),
                format!("expected {what}, found {}", describe(self.peek())),
            ))
        }
    }

    fn or(&mut self) -> Result<Condition, ParseError> {
        let mut left = self.and()?;
        while self.is_keyword("or") {
            self.advance();
            let right = self.and()?;
            left = Condition::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Condition, ParseError> {
        let mut left = self.not()?;
        while self.is_keyword("and") {
            self.advance();
            let right = self.not()?;
            left = Condition::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Condition, ParseError> {
        if self.is_keyword("not") {
            self.advance();
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        self.boolean()
    }

    fn boolean(&mut self) -> Result<Condition, ParseError> {
        if self.peek() == &Token::LParen {
            let start = self.pos;
            self.advance();
            let grouped = self.or().and_then(|inner| {
                self.expect(&Token::RParen, "`)`")?;
                Ok(inner)
            });
            match grouped {
                Ok(inner) if !matches!(self.peek(), Token::Compare(_) | Token::Math(_)) => {
                    return Ok(inner);
                }
                Ok(_) => self.pos = start,
                Err(group_error) => {
                    // Perhaps a parenthesized math expression: `(a + b) > 3`.
                    self.pos = start;
                    return self.comparison().map_err(|value_error| {
                        if value_error.column >= group_error.column {
                            value_error
                        } else {
                            group_error
                        }
                    });
                }
            }
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Condition, ParseError> {
        let column = self.column();
        let left = self.value()?;
        if let Token::Compare(op) = *self.peek() {
            self.advance();
            let right = self.value()?;
            return Ok(Condition::Compare { left, op, right });
        }
        match left {
            Value::Bool(b) => Ok(Condition::Const(b)),
            Value::Call(call) => Ok(Condition::Converter(call)),
            _ => Err(ParseError::new(
                if matches!(self.peek(), Token::End) {
                    column
                } else {
                    self.column()
                },
                format!(
                    "expected a comparison operator (==, !=, <, <=, >, >=) after `{left}`; \
                     a condition is a comparison, `true`/`false` or a converter returning a boolean"
                ),
            )),
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        let mut left = self.term()?;
        while let Token::Math(op @ (MathOp::Add | MathOp::Sub)) = *self.peek() {
            self.advance();
            let right = self.term()?;
            left = math(op, left, right);
        }
        Ok(left)
    }

    fn term(&mut self) -> Result<Value, ParseError> {
        let mut left = self.factor()?;
        while let Token::Math(op @ (MathOp::Mul | MathOp::Div)) = *self.peek() {
            self.advance();
            let right = self.factor()?;
            left = math(op, left, right);
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Value, ParseError> {
        let column = self.column();
        match self.advance() {
            Token::Math(MathOp::Sub) => match self.advance() {
                Token::Int(i) => Ok(Value::Int(-i)),
                Token::Float(f) => Ok(Value::Float(-f)),
                _ => Err(ParseError::new(
                    column,
                    "`-` must be followed by a number here",
                )),
            },
            Token::Math(MathOp::Add) => match self.advance() {
                Token::Int(i) => Ok(Value::Int(i)),
                Token::Float(f) => Ok(Value::Float(f)),
                _ => Err(ParseError::new(
                    column,
                    "`+` must be followed by a number here",
                )),
            },
            Token::Int(i) => Ok(Value::Int(i)),
            Token::Float(f) => Ok(Value::Float(f)),
            Token::Str(s) => Ok(Value::Str(s)),
            Token::Bytes(b) => Ok(Value::Bytes(b)),
            Token::LParen => {
                let inner = self.value()?;
                self.expect(&Token::RParen, "`)`")?;
                Ok(inner)
            }
            Token::LBracket => {
                let mut items = Vec::new();
                if self.peek() != &Token::RBracket {
                    loop {
                        items.push(self.value()?);
                        if self.peek() == &Token::Comma {
                            self.advance();
                            continue;
                        }
                        break;
                    }
                }
                self.expect(&Token::RBracket, "`,` or `]`")?;
                Ok(Value::List(items))
            }
            Token::LBrace => Err(ParseError::new(
                column,
                "map literals are not supported in sampling conditions",
            )),
            Token::Ident(name) => self.named(name, column),
            other => Err(ParseError::new(
                column,
                format!("expected a value, found {}", describe(&other)),
            )),
        }
    }

    /// A value that starts with a name: keyword literal, enum, converter or path.
    fn named(&mut self, name: String, column: usize) -> Result<Value, ParseError> {
        match name.as_str() {
            "nil" => return Ok(Value::Nil),
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "and" | "or" | "not" => {
                return Err(ParseError::new(
                    column,
                    format!("expected a value, found keyword `{name}`"),
                ));
            }
            _ => {}
        }
        let upper_first = name.starts_with(|c: char| c.is_ascii_uppercase());
        if self.peek() == &Token::LParen {
            if !upper_first {
                return Err(ParseError::new(
                    column,
                    format!(
                        "`{name}` is an editor; conditions may only call converters \
                         (names starting with an upper-case letter)"
                    ),
                ));
            }
            self.advance();
            let args = self.arguments()?;
            let keys = self.keys()?;
            return Ok(Value::Call(Call {
                name,
                args,
                keys,
                column,
            }));
        }
        if upper_first {
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Ok(Value::Enum { name, column });
            }
            return Err(ParseError::new(
                column,
                format!("`{name}` is neither a path, an enum nor a converter call"),
            ));
        }
        let mut names = vec![name];
        while self.peek() == &Token::Dot {
            self.advance();
            let at = self.column();
            match self.advance() {
                Token::Ident(n) => names.push(n),
                other => {
                    return Err(ParseError::new(
                        at,
                        format!(
                            "expected a path segment after `.`, found {}",
                            describe(&other)
                        ),
                    ));
                }
            }
        }
        let keys = self.keys()?;
        Ok(Value::Path(Path {
            names,
            keys,
            column,
        }))
    }

    fn arguments(&mut self) -> Result<Vec<Value>, ParseError> {
        let mut args = Vec::new();
        if self.peek() == &Token::RParen {
            self.advance();
            return Ok(args);
        }
        loop {
            if matches!(self.peek(), Token::Ident(_)) && self.peek_at(1) == &Token::Assign {
                return Err(ParseError::new(
                    self.column(),
                    "named arguments are not supported; pass arguments by position",
                ));
            }
            args.push(self.value()?);
            match self.advance() {
                Token::Comma => continue,
                Token::RParen => return Ok(args),
                other => {
                    return Err(ParseError::new(
                        self.tokens[self.pos.saturating_sub(1)].column,
                        format!(
                            "expected `,` or `)` in arguments, found {}",
                            describe(&other)
                        ),
                    ));
                }
            }
        }
    }

    fn keys(&mut self) -> Result<Vec<Key>, ParseError> {
        let mut keys = Vec::new();
        while self.peek() == &Token::LBracket {
            self.advance();
            let column = self.column();
            let key = match self.advance() {
                Token::Str(s) => Key::Str(s),
                Token::Int(i) => Key::Int(i),
                other => {
                    return Err(ParseError::new(
                        column,
                        format!(
                            "expected a string or integer key, found {}",
                            describe(&other)
                        ),
                    ));
                }
            };
            self.expect(&Token::RBracket, "`]`")?;
            keys.push(key);
        }
        Ok(keys)
    }
}

fn math(op: MathOp, left: Value, right: Value) -> Value {
    Value::Math {
        op,
        left: Box::new(left),
        right: Box::new(right),
    }
}

/// A token as named in error messages.
fn describe(token: &Token) -> String {
    match token {
        Token::Ident(name) => format!("`{name}`"),
        Token::Str(s) => format!("string {s:?}"),
        Token::Int(i) => format!("number {i}"),
        Token::Float(f) => format!("number {f}"),
        Token::Bytes(_) => "a bytes literal".to_owned(),
        Token::Compare(op) => format!("`{}`", op.as_str()),
        Token::Math(op) => format!("`{}`", op.as_str()),
        Token::LParen => "`(`".to_owned(),
        Token::RParen => "`)`".to_owned(),
        Token::LBracket => "`[`".to_owned(),
        Token::RBracket => "`]`".to_owned(),
        Token::LBrace => "`{`".to_owned(),
        Token::RBrace => "`}`".to_owned(),
        Token::Comma => "`,`".to_owned(),
        Token::Dot => "`.`".to_owned(),
        Token::Assign => "`=`".to_owned(),
        Token::End => "the end of the condition".to_owned(),
    }
}

/// Canonical form: `and` inside `or` and anything compound under `not` are parenthesized, and
/// every arithmetic operation is, so the printed form shows the tree.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Or(l, r) => {
                write_or_operand(f, l)?;
                f.write_str(" or ")?;
                write_or_operand(f, r)
            }
            Condition::And(l, r) => {
                write_and_operand(f, l)?;
                f.write_str(" and ")?;
                write_and_operand(f, r)
            }
            Condition::Not(inner) => match **inner {
                Condition::Or(..) | Condition::And(..) => write!(f, "not ({inner})"),
                _ => write!(f, "not {inner}"),
            },
            Condition::Const(b) => write!(f, "{b}"),
            Condition::Compare { left, op, right } => {
                write!(f, "{left} {} {right}", op.as_str())
            }
            Condition::Converter(call) => write!(f, "{call}"),
        }
    }
}

fn write_or_operand(f: &mut fmt::Formatter<'_>, c: &Condition) -> fmt::Result {
    match c {
        Condition::And(..) => write!(f, "({c})"),
        _ => write!(f, "{c}"),
    }
}

fn write_and_operand(f: &mut fmt::Formatter<'_>, c: &Condition) -> fmt::Result {
    match c {
        Condition::Or(..) => write!(f, "({c})"),
        _ => write!(f, "{c}"),
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write_string(f, s),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
            Value::Enum { name, .. } => f.write_str(name),
            Value::Path(p) => {
                f.write_str(&p.names.join("."))?;
                write_keys(f, &p.keys)
            }
            Value::Call(call) => write!(f, "{call}"),
            Value::List(items) => {
                f.write_str("[")?;
                write_list(f, items)?;
                f.write_str("]")
            }
            Value::Math { op, left, right } => write!(f, "({left} {} {right})", op.as_str()),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.name)?;
        write_list(f, &self.args)?;
        f.write_str(")")?;
        write_keys(f, &self.keys)
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, items: &[Value]) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

fn write_keys(f: &mut fmt::Formatter<'_>, keys: &[Key]) -> fmt::Result {
    for key in keys {
        match key {
            Key::Str(s) => {
                f.write_str("[")?;
                write_string(f, s)?;
                f.write_str("]")?;
            }
            Key::Int(i) => write!(f, "[{i}]")?,
        }
    }
    Ok(())
}

fn write_string(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}
