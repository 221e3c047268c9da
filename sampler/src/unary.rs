//! The body of the internal unary gRPC methods we serve by hand (`otel_tail.v1.Handoff`,
//! `otel_tail.v1.Correlation`): the proto crate generates messages only, so each service's
//! tower `call` routes its one path here and answers `UNIMPLEMENTED` for any other.

use std::convert::Infallible;

use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::{Grpc, UnaryService};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

/// Serves `request` with `method` when it targets `path`; otherwise answers `UNIMPLEMENTED`.
pub(crate) fn call<M, Req, Resp, B>(
    path: &'static str,
    request: http::Request<B>,
    method: M,
) -> BoxFuture<http::Response<tonic::body::Body>, Infallible>
where
    M: UnaryService<Req, Response = Resp> + Send + 'static,
    M::Future: Send + 'static,
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Send + 'static,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    if request.uri().path() != path {
        return Box::pin(async {
            let mut response = http::Response::new(tonic::body::Body::default());
            let headers = response.headers_mut();
            headers.insert(Status::GRPC_STATUS, (Code::Unimplemented as i32).into());
            headers.insert(
                http::header::CONTENT_TYPE,
                tonic::metadata::GRPC_CONTENT_TYPE,
            );
            Ok(response)
        });
    }
    Box::pin(async move {
        let codec = ProstCodec::<Resp, Req>::default();
        Ok(Grpc::new(codec).unary(method, request).await)
    })
}
