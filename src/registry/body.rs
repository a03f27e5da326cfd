//! Response bodies. One boxed type for every response so the router can
//! return whatever each endpoint builds; unsync because blob streams are
//! `Send` but not `Sync`.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use crate::catalog::ByteStream;

/// The body of every response the registry sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// A body with nothing in it (HEAD, 304).
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body held entirely in memory (manifests, JSON).
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body that streams `stream`, which must yield exactly `len` bytes: the
/// response already promised that many in `Content-Length`. A stream that
/// errors, ends short or runs long turns into a body error, which makes
/// hyper abort the connection, so the client sees a truncated response and
/// never one that looks complete but is wrong.
pub fn streaming(stream: ByteStream, len: u64) -> ResponseBody {
    let exact = ExactLength {
        inner: stream,
        remaining: len,
        done: false,
    };
    StreamBody::new(exact).boxed_unsync()
}

/// Enforces the promised length on a byte stream.
struct ExactLength {
    inner: ByteStream,
    remaining: u64,
    done: bool,
}

impl Stream for ExactLength {
    type Item = io::Result<Frame<Bytes>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let result = match item {
            Some(Ok(chunk)) if chunk.len() as u64 <= self.remaining => {
                self.remaining -= chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Some(Ok(_)) => Err(io::Error::other(
                "blob stream yielded more bytes than promised",
            )),
            Some(Err(e)) => Err(e),
            None if self.remaining == 0 => {
                self.done = true;
                return Poll::Ready(None);
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob stream ended {} bytes short", self.remaining),
            )),
        };
        self.done = true;
        if let Err(e) = &result {
            tracing::warn!(error = %e, "cutting blob response");
        }
        Poll::Ready(Some(result.map(Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    async fn collect(chunks: Vec<io::Result<&'static [u8]>>, len: u64) -> io::Result<Bytes> {
        let items: Vec<io::Result<Bytes>> = chunks
            .into_iter()
            .map(|c| c.map(Bytes::from_static))
            .collect();
        let body = streaming(Box::pin(stream::iter(items)), len);
        body.collect().await.map(|c| c.to_bytes())
    }

    #[tokio::test]
    async fn exact_length_passes() {
        let got = collect(vec![Ok(b"ab"), Ok(b"cd")], 4).await;
        assert_eq!(got.ok(), Some(Bytes::from_static(b"abcd")));
        assert_eq!(collect(vec![], 0).await.ok(), Some(Bytes::new()));
    }

    #[tokio::test]
    async fn short_long_or_failing_streams_fail_the_body() {
        assert!(collect(vec![Ok(b"ab")], 3).await.is_err());
        assert!(collect(vec![Ok(b"ab"), Ok(b"cd")], 3).await.is_err());
        assert!(
            collect(vec![Ok(b"ab"), Err(io::Error::other("bad"))], 2)
                .await
                .is_err()
        );
    }
}
