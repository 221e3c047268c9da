//! The OTTL converters a sampling condition may call, with their argument checks (done when
//! the condition is compiled) and their semantics (those of the Collector's `ottlfuncs`):
//!
//! | converter | result |
//! | --- | --- |
//! | `IsMatch(target, "regex")` | the regex (unanchored) matches the string form of target; `nil` → false |
//! | `IsString/IsInt/IsDouble/IsBool/IsMap/IsList(value)` | the value's type |
//! | `Len(value)` | bytes of a string or byte string, entries of a map or list; error otherwise |
//! | `Int(value)` / `Double(value)` | conversion; `nil` when it cannot convert |
//! | `String(value)` | the string form (hex for bytes, JSON for maps and lists); `nil` stays `nil` |
//! | `Concat([values], "delimiter")` | string forms joined (`<nil>` for `nil`) |
//! | `ConvertCase(target, "lower"\|"upper"\|"snake"\|"camel")`, `ToLowerCase`, `ToUpperCase` | case conversion of a string |
//! | `Substring(target, start, length)` | byte range of a string; error when out of range |
//! | `HasPrefix(target, "p")` / `HasSuffix(target, "s")` | string test |
//! | `Contains(list, item)` | the list has an item equal to item |
//! | `IsRootSpan()` | the span has no parent (span context only) |
//! | `TraceID(0x…)` / `SpanID(0x…)` | an id from 16 / 8 bytes |
//!
//! Converters that need a string (`ConvertCase`, `Substring`, `HasPrefix`, ...) fail on any other
//! type, `nil` included, as OTTL's string getters do; the policy's `error_mode` decides what a
//! failure means.

use std::borrow::Cow;

use regex::Regex;

use super::ParseError;
use super::context::ContextKind;
use super::parser::{Call, Value as Ast};
use super::value::{Value, equal};

/// A converter with its literal arguments compiled.
#[derive(Debug)]
pub(crate) enum Func {
    IsMatch(Regex),
    IsString,
    IsInt,
    IsDouble,
    IsBool,
    IsMap,
    IsList,
    Len,
    Int,
    Double,
    String,
    Concat(String),
    ConvertCase(Case),
    Substring,
    HasPrefix(String),
    HasSuffix(String),
    Contains,
    IsRootSpan,
    Id(Vec<u8>),
}

/// A `ConvertCase` target case.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Case {
    Lower,
    Upper,
    Snake,
    Camel,
}

/// Which arguments of a call are evaluated at run time (the others were compiled into the
/// [`Func`]).
pub(crate) fn compile(call: &Call, context: ContextKind) -> Result<(Func, Vec<usize>), ParseError> {
    let column = call.column;
    let arity = |n: usize| -> Result<(), ParseError> {
        if call.args.len() == n {
            Ok(())
        } else {
            Err(ParseError::new(
                column,
                format!(
                    "`{}` takes {n} argument{}, got {}",
                    call.name,
                    if n == 1 { "" } else { "s" },
                    call.args.len()
                ),
            ))
        }
    };
    let literal = |i: usize, what: &str| -> Result<String, ParseError> {
        match &call.args[i] {
            Ast::Str(s) => Ok(s.clone()),
            other => Err(ParseError::new(
                column,
                format!(
                    "`{}` needs a string literal as its {what}, got `{other}`",
                    call.name
                ),
            )),
        }
    };
    let unary = |func: Func| -> Result<(Func, Vec<usize>), ParseError> {
        arity(1)?;
        Ok((func, vec![0]))
    };
    match call.name.as_str() {
        "IsMatch" => {
            arity(2)?;
            let pattern = literal(1, "pattern")?;
            let regex = Regex::new(&pattern).map_err(|e| {
                ParseError::new(
                    column,
                    format!("invalid regular expression {pattern:?}: {e}"),
                )
            })?;
            Ok((Func::IsMatch(regex), vec![0]))
        }
        "IsString" => unary(Func::IsString),
        "IsInt" => unary(Func::IsInt),
        "IsDouble" => unary(Func::IsDouble),
        "IsBool" => unary(Func::IsBool),
        "IsMap" => unary(Func::IsMap),
        "IsList" => unary(Func::IsList),
        "Len" => unary(Func::Len),
        "Int" => unary(Func::Int),
        "Double" => unary(Func::Double),
        "String" => unary(Func::String),
        "ToLowerCase" => unary(Func::ConvertCase(Case::Lower)),
        "ToUpperCase" => unary(Func::ConvertCase(Case::Upper)),
        "Concat" => {
            arity(2)?;
            if !matches!(call.args[0], Ast::List(_)) {
                return Err(ParseError::new(
                    column,
                    "`Concat` takes a list of values and a delimiter: Concat([a, b], \"-\")",
                ));
            }
            Ok((Func::Concat(literal(1, "delimiter")?), vec![0]))
        }
        "ConvertCase" => {
            arity(2)?;
            let case = match literal(1, "case")?.as_str() {
                "lower" => Case::Lower,
                "upper" => Case::Upper,
                "snake" => Case::Snake,
                "camel" => Case::Camel,
                other => {
                    return Err(ParseError::new(
                        column,
                        format!(
                            "`ConvertCase` case must be lower, upper, snake or camel, got {other:?}"
                        ),
                    ));
                }
            };
            Ok((Func::ConvertCase(case), vec![0]))
        }
        "Substring" => {
            arity(3)?;
            Ok((Func::Substring, vec![0, 1, 2]))
        }
        "HasPrefix" => {
            arity(2)?;
            Ok((Func::HasPrefix(literal(1, "prefix")?), vec![0]))
        }
        "HasSuffix" => {
            arity(2)?;
            Ok((Func::HasSuffix(literal(1, "suffix")?), vec![0]))
        }
        "Contains" => {
            arity(2)?;
            Ok((Func::Contains, vec![0, 1]))
        }
        "IsRootSpan" => {
            arity(0)?;
            if context != ContextKind::Span {
                return Err(ParseError::new(
                    column,
                    "`IsRootSpan` is only available in span conditions",
                ));
            }
            Ok((Func::IsRootSpan, vec![]))
        }
        "TraceID" | "SpanID" => {
            arity(1)?;
            let want = if call.name == "TraceID" { 16 } else { 8 };
            match &call.args[0] {
                Ast::Bytes(b) if b.len() == want => Ok((Func::Id(b.clone()), vec![])),
                other => Err(ParseError::new(
                    column,
                    format!(
                        "`{}` takes a {want}-byte literal (0x…), got `{other}`",
                        call.name
                    ),
                )),
            }
        }
        other => Err(ParseError::new(
            column,
            format!("unknown converter `{other}`"),
        )),
    }
}

/// Why a converter failed at run time.
pub(crate) type CallError = String;

impl Func {
    /// Applies the converter to its evaluated arguments; `is_root` answers `IsRootSpan`.
    pub(crate) fn apply<'a>(
        &'a self,
        name: &str,
        mut args: Vec<Value<'a>>,
        is_root: bool,
    ) -> Result<Value<'a>, CallError> {
        let mut arg = |i: usize| std::mem::replace(&mut args[i], Value::Nil);
        Ok(match self {
            Func::IsMatch(regex) => {
                let target = arg(0);
                Value::Bool(target.to_string_like().is_some_and(|s| regex.is_match(&s)))
            }
            Func::IsString => Value::Bool(matches!(arg(0), Value::Str(_))),
            Func::IsInt => Value::Bool(matches!(arg(0), Value::Int(_))),
            Func::IsDouble => Value::Bool(matches!(arg(0), Value::Double(_))),
            Func::IsBool => Value::Bool(matches!(arg(0), Value::Bool(_))),
            Func::IsMap => Value::Bool(matches!(arg(0), Value::Map(_))),
            Func::IsList => Value::Bool(matches!(arg(0), Value::List(_))),
            Func::Len => match arg(0) {
                Value::Str(s) => len(s.len()),
                Value::Bytes(b) => len(b.len()),
                Value::Map(m) => len(m.len()),
                Value::List(l) => len(l.len()),
                other => return Err(format!("Len: unsupported type {}", other.kind())),
            },
            Func::Int => match arg(0) {
                Value::Int(i) => Value::Int(i),
                Value::Double(d) if d.is_finite() => Value::Int(d.trunc() as i64),
                Value::Bool(b) => Value::Int(i64::from(b)),
                Value::Str(s) => s.trim().parse::<i64>().map_or(Value::Nil, Value::Int),
                _ => Value::Nil,
            },
            Func::Double => match arg(0) {
                Value::Double(d) => Value::Double(d),
                Value::Int(i) => Value::Double(i as f64),
                Value::Bool(b) => Value::Double(if b { 1.0 } else { 0.0 }),
                Value::Str(s) => s.trim().parse::<f64>().map_or(Value::Nil, Value::Double),
                _ => Value::Nil,
            },
            Func::String => {
                let value = arg(0);
                match value.to_string_like() {
                    None => Value::Nil,
                    Some(s) => Value::Str(Cow::Owned(s.into_owned())),
                }
            }
            Func::Concat(delimiter) => {
                let Value::List(items) = arg(0) else {
                    return Err("Concat: expected a list".to_owned());
                };
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| {
                        v.to_string_like()
                            .map_or_else(|| "<nil>".to_owned(), Cow::into_owned)
                    })
                    .collect();
                Value::Str(Cow::Owned(parts.join(delimiter)))
            }
            Func::ConvertCase(case) => {
                let s = string_arg(name, arg(0))?;
                Value::Str(Cow::Owned(convert_case(&s, *case)))
            }
            Func::Substring => {
                let target = string_arg(name, arg(0))?;
                let start = int_arg(name, "start", arg(1))?;
                let length = int_arg(name, "length", arg(2))?;
                if start < 0 {
                    return Err(format!("Substring: invalid start {start}"));
                }
                if length <= 0 {
                    return Err(format!("Substring: invalid length {length}"));
                }
                let end = start.saturating_add(length);
                if end > target.len() as i64 {
                    return Err(format!(
                        "Substring: start {start} + length {length} exceeds the string's {} bytes",
                        target.len()
                    ));
                }
                let bytes = &target.as_bytes()[start as usize..end as usize];
                Value::Str(Cow::Owned(String::from_utf8_lossy(bytes).into_owned()))
            }
            Func::HasPrefix(prefix) => {
                Value::Bool(string_arg(name, arg(0))?.starts_with(prefix.as_str()))
            }
            Func::HasSuffix(suffix) => {
                Value::Bool(string_arg(name, arg(0))?.ends_with(suffix.as_str()))
            }
            Func::Contains => {
                let item = arg(1);
                match arg(0) {
                    Value::List(items) => Value::Bool(items.iter().any(|v| equal(v, &item))),
                    other => {
                        return Err(format!("Contains: expected a list, got {}", other.kind()));
                    }
                }
            }
            Func::IsRootSpan => Value::Bool(is_root),
            Func::Id(bytes) => Value::Bytes(Cow::Borrowed(bytes)),
        })
    }
}

fn len(n: usize) -> Value<'static> {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A string argument, as OTTL's string getter: any other type (`nil` too) is an error.
fn string_arg<'a>(name: &str, value: Value<'a>) -> Result<Cow<'a, str>, CallError> {
    match value {
        Value::Str(s) => Ok(s),
        other => Err(format!("{name}: expected string but got {}", other.kind())),
    }
}

fn int_arg(name: &str, what: &str, value: Value<'_>) -> Result<i64, CallError> {
    match value {
        Value::Int(i) => Ok(i),
        other => Err(format!(
            "{name}: expected an int {what} but got {}",
            other.kind()
        )),
    }
}

/// Case conversion: words split at non-alphanumerics and at case boundaries; `snake`
/// joins them lower-case with `_`, `camel` capitalizes each (`AnyKindOfString`).
fn convert_case(s: &str, case: Case) -> String {
    match case {
        Case::Lower => s.to_lowercase(),
        Case::Upper => s.to_uppercase(),
        Case::Snake => words(s)
            .iter()
            .map(|w| w.to_lowercase())
            .collect::<Vec<_>>()
            .join("_"),
        Case::Camel => words(s)
            .iter()
            .map(|w| {
                let mut chars = w.chars();
                chars.next().map_or_else(String::new, |first| {
                    first
                        .to_uppercase()
                        .chain(chars.flat_map(char::to_lowercase))
                        .collect()
                })
            })
            .collect(),
    }
}

fn words(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            continue;
        }
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        // A word starts at an upper-case letter after a lower-case one or a digit
        // (`requestCount`), or at the last capital of an acronym (`HTTPServer`).
        let boundary = c.is_uppercase()
            && previous.is_some_and(|p| {
                p.is_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_uppercase() && next.is_some_and(|n| n.is_lowercase()))
            });
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}
