//! gRPC codecs that carry already-encoded protobuf messages as [`Bytes`], so a request
//! can be relayed without a prost decode and re-encode.
//!
//! [`ClientCodec`] sends `Bytes` as the request message and decodes the response with
//! prost; [`ServerCodec`] is its mirror for a server that receives raw request bytes and
//! answers with a prost response.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Writes a message that is already protobuf-encoded as-is.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put(item);
        Ok(())
    }
}

/// Takes a received message's bytes without decoding them. The bytes are split off
/// tonic's receive buffer, not copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Client codec: raw request bytes out, prost-decoded response `R` in.
#[derive(Debug)]
pub(crate) struct ClientCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for ClientCodec<R> {
    fn default() -> Self {
        ClientCodec(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for ClientCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder::default()
    }
}

/// Server codec: raw request bytes in, prost-encoded response `R` out.
#[derive(Debug)]
pub struct ServerCodec<R>(PhantomData<fn() -> R>);

impl<R> Default for ServerCodec<R> {
    fn default() -> Self {
        ServerCodec(PhantomData)
    }
}

impl<R: prost::Message + Send + 'static> Codec for ServerCodec<R> {
    type Encode = R;
    type Decode = Bytes;
    type Encoder = ProstEncoder<R>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> ProstEncoder<R> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}
