//! The `ottl_condition` policy: OpenTelemetry Transformation Language conditions over spans and
//! span events, as the Collector's `tail_sampling` processor evaluates them.
//!
//! A condition is parsed ([`parser`]) and compiled once, when the policies are built: paths are
//! resolved against the span or span event context ([`context`]), converters are looked up and
//! their literal arguments checked ([`funcs`]), enum symbols are replaced by their values. So a
//! typo is a start-up error naming the policy and the column, never a surprise at run time.
//!
//! Evaluation is per span, as spans arrive: the span conditions, then the span event conditions
//! for each of its events, each list OR-ed. Per condition, an evaluation error (a converter given
//! a value it cannot handle) is handled by `error_mode` like OTTL's condition sequences:
//! `ignore` logs it and counts the condition false, `silent` does the same without the log,
//! `propagate` stops and reports the error, which makes the policy error for the trace.
//!
//! We wrote our own parser rather than take a parser-combinator crate: the condition grammar is
//! small, and a hand-written descent gives the exact columns and messages we want.

mod context;
mod funcs;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;
mod value;

use std::fmt;

use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use otel_tail_shared::config::policy::{OttlConditionConfig, OttlErrorMode};

use context::{Accessor, ContextKind, Data};
use funcs::Func;
use lexer::{CompareOp, MathOp};
use value::Value;

/// A syntax or compile error in one condition, at a 1-based column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Column (in characters, from 1) where the problem starts.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        ParseError {
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// Why an `ottl_condition` block does not compile: which condition, and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// The condition's place in the block: `span[0]`, `spanevent[2]`.
    pub condition: String,
    /// The problem and its column.
    pub error: ParseError,
}

impl fmt::Display for ConditionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ottl_condition.{} {}", self.condition, self.error)
    }
}

impl std::error::Error for ConditionError {}

/// What evaluating the conditions on one span (and its events) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpanOutcome {
    /// Some condition is true.
    Matched,
    /// No condition is true (errors, if any, were ignored per `error_mode`).
    NotMatched,
    /// A condition failed with `error_mode: propagate`.
    Failed(String),
}

/// A compiled `ottl_condition` block.
#[derive(Debug)]
pub struct OttlCondition {
    policy: String,
    error_mode: OttlErrorMode,
    span: Vec<Compiled>,
    spanevent: Vec<Compiled>,
}

/// One compiled condition and its source text (for logs).
#[derive(Debug)]
struct Compiled {
    text: String,
    condition: Cond,
}

impl OttlCondition {
    /// Parses and compiles every condition of `cfg`; `policy` names the policy in logs.
    pub fn compile(policy: &str, cfg: &OttlConditionConfig) -> Result<Self, ConditionError> {
        let compile_list = |list: &[String], name: &str, kind: ContextKind| {
            list.iter()
                .enumerate()
                .map(|(i, text)| {
                    compile_condition(text, kind)
                        .map(|condition| Compiled {
                            text: text.clone(),
                            condition,
                        })
                        .map_err(|error| ConditionError {
                            condition: format!("{name}[{i}]"),
                            error,
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(OttlCondition {
            policy: policy.to_owned(),
            error_mode: cfg.error_mode,
            span: compile_list(&cfg.span, "span", ContextKind::Span)?,
            spanevent: compile_list(&cfg.spanevent, "spanevent", ContextKind::SpanEvent)?,
        })
    }

    /// Whether `error_mode` is `propagate` (errors then need a state of their own).
    pub fn propagates_errors(&self) -> bool {
        self.error_mode == OttlErrorMode::Propagate
    }

    /// Evaluates the span conditions on `span`, then the span event conditions on each of its
    /// events, stopping at the first that is true (or, with `propagate`, fails).
    pub fn evaluate(
        &self,
        resource: Option<&Resource>,
        scope: Option<&InstrumentationScope>,
        span: &Span,
    ) -> SpanOutcome {
        let mut data = Data {
            resource,
            scope,
            span,
            event: None,
        };
        if let Some(outcome) = self.any(&self.span, &data) {
            return outcome;
        }
        if !self.spanevent.is_empty() {
            for event in &span.events {
                data.event = Some(event);
                if let Some(outcome) = self.any(&self.spanevent, &data) {
                    return outcome;
                }
            }
        }
        SpanOutcome::NotMatched
    }

    /// `Some(Matched)` if a condition is true, `Some(Failed)` if one fails under `propagate`.
    fn any(&self, conditions: &[Compiled], data: &Data<'_>) -> Option<SpanOutcome> {
        for compiled in conditions {
            match compiled.condition.eval(data) {
                Ok(true) => return Some(SpanOutcome::Matched),
                Ok(false) => {}
                Err(error) => match self.error_mode {
                    OttlErrorMode::Propagate => {
                        return Some(SpanOutcome::Failed(format!(
                            "failed to eval condition `{}`: {error}",
                            compiled.text
                        )));
                    }
                    OttlErrorMode::Ignore => tracing::warn!(
                        policy = %self.policy,
                        condition = %compiled.text,
                        %error,
                        "failed to evaluate OTTL condition; counted as false"
                    ),
                    OttlErrorMode::Silent => {}
                },
            }
        }
        None
    }
}

/// Parses and compiles one condition for `context`.
fn compile_condition(text: &str, context: ContextKind) -> Result<Cond, ParseError> {
    Cond::compile(&parser::parse(text)?, context)
}

/// A compiled boolean expression.
#[derive(Debug)]
enum Cond {
    Or(Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Const(bool),
    Compare(Expr, CompareOp, Expr),
    Converter(Expr),
}

/// A compiled value expression.
#[derive(Debug)]
enum Expr {
    Literal(Literal),
    Path(Accessor),
    Call {
        name: String,
        func: Func,
        args: Vec<Expr>,
        keys: Vec<parser::Key>,
    },
    List(Vec<Expr>),
    Math(MathOp, Box<Expr>, Box<Expr>),
}

/// A literal value, owned by the compiled expression.
#[derive(Debug)]
enum Literal {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Bytes(Vec<u8>),
}

impl Cond {
    fn compile(ast: &parser::Condition, context: ContextKind) -> Result<Cond, ParseError> {
        use parser::Condition as C;
        Ok(match ast {
            C::Or(l, r) => Cond::Or(
                Box::new(Cond::compile(l, context)?),
                Box::new(Cond::compile(r, context)?),
            ),
            C::And(l, r) => Cond::And(
                Box::new(Cond::compile(l, context)?),
                Box::new(Cond::compile(r, context)?),
            ),
            C::Not(inner) => Cond::Not(Box::new(Cond::compile(inner, context)?)),
            C::Const(b) => Cond::Const(*b),
            C::Compare { left, op, right } => Cond::Compare(
                Expr::compile(left, context)?,
                *op,
                Expr::compile(right, context)?,
            ),
            C::Converter(call) => Cond::Converter(Expr::compile_call(call, context)?),
        })
    }

    fn eval(&self, data: &Data<'_>) -> Result<bool, String> {
        Ok(match self {
            Cond::Or(l, r) => l.eval(data)? || r.eval(data)?,
            Cond::And(l, r) => l.eval(data)? && r.eval(data)?,
            Cond::Not(inner) => !inner.eval(data)?,
            Cond::Const(b) => *b,
            Cond::Compare(left, op, right) => {
                value::compare(&left.eval(data)?, *op, &right.eval(data)?)
            }
            Cond::Converter(call) => match call.eval(data)? {
                Value::Bool(b) => b,
                other => {
                    return Err(format!(
                        "a converter used as a condition must return a bool, got {}",
                        other.kind()
                    ));
                }
            },
        })
    }
}

impl Expr {
    fn compile(ast: &parser::Value, context: ContextKind) -> Result<Expr, ParseError> {
        use parser::Value as V;
        Ok(match ast {
            V::Nil => Expr::Literal(Literal::Nil),
            V::Bool(b) => Expr::Literal(Literal::Bool(*b)),
            V::Int(i) => Expr::Literal(Literal::Int(*i)),
            V::Float(f) => Expr::Literal(Literal::Double(*f)),
            V::Str(s) => Expr::Literal(Literal::Str(s.clone())),
            V::Bytes(b) => Expr::Literal(Literal::Bytes(b.clone())),
            V::Enum { name, column } => match context::enum_value(name) {
                Some(v) => Expr::Literal(Literal::Int(v)),
                None => {
                    return Err(ParseError::new(*column, format!("unknown enum `{name}`")));
                }
            },
            V::Path(path) => Expr::Path(context::resolve(path, context)?),
            V::Call(call) => Expr::compile_call(call, context)?,
            V::List(items) => Expr::List(
                items
                    .iter()
                    .map(|item| Expr::compile(item, context))
                    .collect::<Result<_, _>>()?,
            ),
            V::Math { op, left, right } => {
                for operand in [left, right] {
                    if let V::Nil | V::Bool(_) | V::Str(_) | V::Bytes(_) | V::List(_) = **operand {
                        return Err(ParseError::new(
                            math_column(ast),
                            format!("`{operand}` cannot be used in arithmetic"),
                        ));
                    }
                }
                Expr::Math(
                    *op,
                    Box::new(Expr::compile(left, context)?),
                    Box::new(Expr::compile(right, context)?),
                )
            }
        })
    }

    fn compile_call(call: &parser::Call, context: ContextKind) -> Result<Expr, ParseError> {
        let (func, evaluated) = funcs::compile(call, context)?;
        let args = evaluated
            .into_iter()
            .map(|i| Expr::compile(&call.args[i], context))
            .collect::<Result<_, _>>()?;
        Ok(Expr::Call {
            name: call.name.clone(),
            func,
            args,
            keys: call.keys.clone(),
        })
    }

    fn eval<'a>(&'a self, data: &Data<'a>) -> Result<Value<'a>, String> {
        Ok(match self {
            Expr::Literal(literal) => match literal {
                Literal::Nil => Value::Nil,
                Literal::Bool(b) => Value::Bool(*b),
                Literal::Int(i) => Value::Int(*i),
                Literal::Double(d) => Value::Double(*d),
                Literal::Str(s) => Value::Str(s.as_str().into()),
                Literal::Bytes(b) => Value::Bytes(b.as_slice().into()),
            },
            Expr::Path(accessor) => accessor.read(data)?,
            Expr::Call {
                name,
                func,
                args,
                keys,
            } => {
                let values = args
                    .iter()
                    .map(|a| a.eval(data))
                    .collect::<Result<Vec<_>, _>>()?;
                let is_root = data.span.parent_span_id.is_empty();
                context::index(func.apply(name, values, is_root)?, keys)?
            }
            Expr::List(items) => Value::List(
                items
                    .iter()
                    .map(|item| item.eval(data))
                    .collect::<Result<_, _>>()?,
            ),
            Expr::Math(op, left, right) => arithmetic(*op, left.eval(data)?, right.eval(data)?)?,
        })
    }
}

/// The column of the first path or call inside a math expression (for error messages).
fn math_column(ast: &parser::Value) -> usize {
    match ast {
        parser::Value::Path(p) => p.column,
        parser::Value::Call(c) => c.column,
        parser::Value::Enum { column, .. } => *column,
        parser::Value::Math { left, right, .. } => match math_column(left) {
            0 => math_column(right),
            c => c,
        },
        _ => 0,
    }
}

/// `left op right` on numbers: integers stay integers (division truncates, overflow and
/// division by zero are errors); with a double involved the result is a double.
fn arithmetic<'a>(op: MathOp, left: Value<'a>, right: Value<'a>) -> Result<Value<'a>, String> {
    match (left, right) {
        (Value::Int(a), Value::Int(b)) => {
            let result = match op {
                MathOp::Add => a.checked_add(b),
                MathOp::Sub => a.checked_sub(b),
                MathOp::Mul => a.checked_mul(b),
                MathOp::Div => {
                    if b == 0 {
                        return Err("attempted to divide by zero".to_owned());
                    }
                    a.checked_div(b)
                }
            };
            result
                .map(Value::Int)
                .ok_or_else(|| format!("integer overflow in {a} {} {b}", op.as_str()))
        }
        (Value::Int(a), Value::Double(b)) => double_math(op, a as f64, b),
        (Value::Double(a), Value::Int(b)) => double_math(op, a, b as f64),
        (Value::Double(a), Value::Double(b)) => double_math(op, a, b),
        (l, r) => Err(format!(
            "unsupported operands for `{}`: {} and {}",
            op.as_str(),
            l.kind(),
            r.kind()
        )),
    }
}

fn double_math<'a>(op: MathOp, a: f64, b: f64) -> Result<Value<'a>, String> {
    Ok(Value::Double(match op {
        MathOp::Add => a + b,
        MathOp::Sub => a - b,
        MathOp::Mul => a * b,
        MathOp::Div => {
            if b == 0.0 {
                return Err("attempted to divide by zero".to_owned());
            }
            a / b
        }
    }))
}
