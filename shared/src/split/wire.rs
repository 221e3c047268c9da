//! The protobuf wire format, as much of it as the splitter needs: reading field tags and
//! skipping values without decoding them, and writing varints.
//!
//! All offsets are absolute positions in the request being split, so a field's bytes can be
//! copied to an output by range.

use thiserror::Error;

use super::SplitError;

/// Wire type of a varint field.
const VARINT: u8 = 0;
/// Wire type of an 8-byte fixed-width field.
const I64: u8 = 1;
/// Wire type of a length-delimited field (bytes, strings, messages, packed repeats).
pub(super) const LEN: u8 = 2;
/// Wire type that opens a (deprecated) group.
const SGROUP: u8 = 3;
/// Wire type that closes a group.
const EGROUP: u8 = 4;
/// Wire type of a 4-byte fixed-width field.
const I32: u8 = 5;

/// How deeply groups may nest inside an unknown field (prost's recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;

/// What was wrong with the bytes, reported inside [`SplitError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum Problem {
    /// The message ends in the middle of a varint.
    #[error("truncated varint")]
    TruncatedVarint,
    /// A varint does not fit in 64 bits.
    #[error("varint longer than 64 bits")]
    VarintOverflow,
    /// A field tag does not fit in 32 bits.
    #[error("field tag larger than 32 bits")]
    TagOverflow,
    /// Field number 0 is reserved.
    #[error("field number 0")]
    ZeroFieldNumber,
    /// Wire types 6 and 7 do not exist.
    #[error("invalid wire type {0}")]
    InvalidWireType(u8),
    /// A length-delimited or fixed-width value runs past the end of its enclosing message.
    #[error("a {needed}-byte value runs past the end of the message ({left} bytes left)")]
    Overrun {
        /// Bytes the value claims.
        needed: u64,
        /// Bytes left in the enclosing message.
        left: usize,
    },
    /// A known field arrived with a wire type its schema does not allow.
    #[error("field {field} has wire type {found}, expected {expected}")]
    WrongWireType {
        /// Field number.
        field: u32,
        /// Wire type found.
        found: u8,
        /// Wire type the schema requires.
        expected: u8,
    },
    /// A group was not closed before its message ended, or closed by the wrong field.
    #[error("unterminated or mismatched group")]
    UnterminatedGroup,
    /// An end-group tag appeared with no open group.
    #[error("end-group tag without a group")]
    UnexpectedEndGroup,
    /// Groups nested deeper than the recursion limit.
    #[error("groups nested more than {MAX_GROUP_DEPTH} deep")]
    GroupTooDeep,
    /// Messages nested more deeply than a decoder goes (prost's recursion limit).
    #[error("messages nested more than 100 deep")]
    NestedTooDeep,
}

/// One field as found on the wire.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    /// Field number.
    pub number: u32,
    /// Wire type.
    pub wire: u8,
    /// Offset of the tag's first byte.
    pub start: usize,
    /// Offset just past the value.
    pub end: usize,
    /// Offset of the payload of a length-delimited field (its bytes are `payload..end`);
    /// `end` for other wire types.
    pub payload: usize,
}

impl Field {
    /// Fails unless the field is length-delimited.
    pub fn expect_len(&self, message: &'static str) -> Result<(), SplitError> {
        if self.wire == LEN {
            Ok(())
        } else {
            Err(SplitError::Malformed {
                message,
                offset: self.start,
                problem: Problem::WrongWireType {
                    field: self.number,
                    found: self.wire,
                    expected: LEN,
                },
            })
        }
    }
}

/// Walks the fields of one message: the bytes `pos..end` of `buf`.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    /// Name of the message being read, for errors.
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf[start..end]`, a message of type `message`.
    pub fn new(buf: &'a [u8], start: usize, end: usize, message: &'static str) -> Self {
        debug_assert!(start <= end && end <= buf.len());
        Reader {
            buf,
            pos: start,
            end,
            message,
        }
    }

    /// A reader over the payload of a length-delimited field.
    pub fn of(buf: &'a [u8], field: &Field, message: &'static str) -> Self {
        Reader::new(buf, field.payload, field.end, message)
    }

    /// The next field, or `None` at the end of the message.
    #[inline]
    pub fn next_field(&mut self) -> Result<Option<Field>, SplitError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let start = self.pos;
        let (number, wire) = self.tag().map_err(|p| self.error(start, p))?;
        // The common wire types inline; groups (rare, deprecated) go the slow way.
        let payload = match wire {
            LEN => {
                let len = self.varint().map_err(|p| self.error(start, p))?;
                let payload = self.pos;
                self.advance(len).map_err(|p| self.error(start, p))?;
                payload
            }
            VARINT => {
                self.varint().map_err(|p| self.error(start, p))?;
                self.pos
            }
            I64 => {
                self.advance(8).map_err(|p| self.error(start, p))?;
                self.pos
            }
            I32 => {
                self.advance(4).map_err(|p| self.error(start, p))?;
                self.pos
            }
            _ => self
                .skip(number, wire, 0)
                .map_err(|p| self.error(start, p))?,
        };
        Ok(Some(Field {
            number,
            wire,
            start,
            end: self.pos,
            payload,
        }))
    }

    fn error(&self, offset: usize, problem: Problem) -> SplitError {
        SplitError::Malformed {
            message: self.message,
            offset,
            problem,
        }
    }

    #[inline]
    fn tag(&mut self) -> Result<(u32, u8), Problem> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| Problem::TagOverflow)?;
        let number = key >> 3;
        if number == 0 {
            return Err(Problem::ZeroFieldNumber);
        }
        Ok((number, (key & 7) as u8))
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, Problem> {
        // Fast path: one-byte varints (most tags and small lengths).
        if self.pos < self.end && self.buf[self.pos] < 0x80 {
            let value = u64::from(self.buf[self.pos]);
            self.pos += 1;
            return Ok(value);
        }
        let mut value = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err(Problem::TruncatedVarint);
            }
            let byte = self.buf[self.pos];
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(Problem::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Problem::VarintOverflow)
    }

    #[inline]
    fn advance(&mut self, needed: u64) -> Result<(), Problem> {
        let left = self.end - self.pos;
        match usize::try_from(needed) {
            Ok(n) if n <= left => {
                self.pos += n;
                Ok(())
            }
            _ => Err(Problem::Overrun { needed, left }),
        }
    }

    /// Skips the value of a field whose tag was just read; returns where a length-delimited
    /// payload starts (or the value's end for other wire types).
    #[cold]
    fn skip(&mut self, number: u32, wire: u8, depth: u32) -> Result<usize, Problem> {
        match wire {
            VARINT => {
                self.varint()?;
            }
            I64 => self.advance(8)?,
            LEN => {
                let len = self.varint()?;
                let payload = self.pos;
                self.advance(len)?;
                return Ok(payload);
            }
            I32 => self.advance(4)?,
            SGROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(Problem::GroupTooDeep);
                }
                loop {
                    if self.pos >= self.end {
                        return Err(Problem::UnterminatedGroup);
                    }
                    let (inner, inner_wire) = self.tag()?;
                    if inner_wire == EGROUP {
                        if inner == number {
                            break;
                        }
                        return Err(Problem::UnterminatedGroup);
                    }
                    self.skip(inner, inner_wire, depth + 1)?;
                }
            }
            EGROUP => return Err(Problem::UnexpectedEndGroup),
            other => return Err(Problem::InvalidWireType(other)),
        }
        Ok(self.pos)
    }
}

/// Appends `value` as a varint.
#[inline]
pub(super) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `value` takes as a varint.
#[inline]
pub(super) fn varint_len(value: u64) -> usize {
    // 1 byte per started 7 bits, at least 1.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes a length-delimited field with a one-byte tag and a `len`-byte payload takes.
#[inline]
pub(super) fn len_field_size(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Appends the tag of length-delimited field `number` (1..=15: one byte).
#[inline]
pub(super) fn put_len_tag(out: &mut Vec<u8>, number: u8) {
    debug_assert!((1..=15).contains(&number));
    out.push((number << 3) | LEN);
}
