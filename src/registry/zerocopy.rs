//! The HTTP/1.1 front for plain TCP connections, which sends verified blob
//! bytes with `sendfile(2)`: page cache to socket, never through user space.
//!
//! hyper's body API only moves `Bytes` the server has read, so the warm
//! path of a blob would cost a read and a write of every byte. This front
//! parses request heads itself (`httparse`, the parser hyper uses), hands
//! every request to the same router (`handle_with`), and writes the response it
//! gets back. When the blob endpoint answers from a file whose bytes are
//! verified (a cached blob, or a blob of a local archive verified at its
//! current version) it says so in a [`ZeroCopy`] response extension; this
//! front then writes the head and gives the file range to `sendfile`
//! instead of polling the body. A cold blob being filled into the disk
//! cache is sent the same way from the fill's temp file ([`ZeroCopyFill`]),
//! as far as the fill has written it, the response's last byte only once
//! the blob is verified.
//! Every other response (and every response
//! on TLS or HTTP/2 connections, which stay with hyper and stream the same
//! file with positional reads) is written from its body.
//!
//! What is kept: `Content-Length` and every header come from the router,
//! ranges and HEAD included; keep-alive and pipelining (HTTP/1.1, or 1.0
//! with `Connection: keep-alive`); a request with a body (no endpoint takes
//! one) is answered and the connection closed; the integrity rule: only
//! [`FileSpan`]s, which are verified, take this path, and the last byte of
//! a file read in place is sent only after the file was checked to be still
//! at the version it was verified at (a file replaced by a rename keeps
//! serving the open inode; one rewritten in place is cut). A client that
//! goes away mid-blob ends `sendfile` with EPIPE/ECONNRESET and the
//! connection task with it. The server's limits apply as on hyper's
//! connections: a connection without a request in flight for the idle
//! timeout is closed (a half-sent head counts as idle), a response whose
//! client takes nothing for the write timeout is dropped, and idle
//! connections close themselves under pressure (at the connection cap).
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::ResponseBody;
use super::server::{SHED_IDLE_AFTER_MS, Shared};
use crate::cache::Sendable;
use crate::catalog::{FileSpan, FillSpan};
use crate::metrics::{METRICS, inc};

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// Bodies up to this size are written with the head in one syscall.
const COALESCE: usize = 64 * 1024;

/// Set by the blob endpoint on a response whose body is bytes
/// `start..=end` of a verified file: the front may send them with
/// `sendfile` instead of polling the body.
#[derive(Clone, Debug)]
pub struct ZeroCopy {
    pub span: Arc<FileSpan>,
    pub start: u64,
    pub end: u64,
}

/// Set by the blob endpoint on a response whose body follows a fill in
/// progress (a cold blob): the front may send bytes `start..=end` from the
/// fill's temp file with `sendfile` as the fill writes them, the last
/// byte (the response's, and the blob's) only once its digest matched.
/// Not the verified path: these responses keep the `fill`/`follower` tier
/// and are not counted as zero-copy bytes.
#[derive(Clone, Debug)]
pub struct ZeroCopyFill {
    pub span: FillSpan,
    pub start: u64,
    pub end: u64,
}

/// Waits for a new connection's first bytes, under the same limits as a
/// connection between requests (idle timeout, shedding under pressure,
/// shutdown): whether it opens with the HTTP/2 preface (h2c with prior
/// knowledge, for hyper) or not (HTTP/1.x, for this front); None when it
/// was closed first. Peeks, so the bytes stay for whoever serves them.
pub(super) async fn opening(
    stream: &TcpStream,
    peer: std::net::SocketAddr,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Option<bool> {
    let since = Instant::now();
    let deadline = tokio::time::sleep(shared.limits.idle_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            h2 = is_h2_preface(stream) => return h2,
            () = &mut deadline => {
                inc(&METRICS.connections_closed_idle);
                tracing::debug!(%peer, "closing an idle connection");
                return None;
            }
            _ = shared.pressure.notified() => {
                if since.elapsed().as_millis() as u64 >= SHED_IDLE_AFTER_MS {
                    inc(&METRICS.connections_shed);
                    return None;
                }
            }
            _ = stop.changed() => return None,
        }
    }
}

async fn is_h2_preface(stream: &TcpStream) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; 14];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                // `peek` fills at most `buf`, which is as long as the preface.
                let seen = buf.get(..n)?;
                if seen == PREFACE {
                    return Some(true);
                }
                if !PREFACE.starts_with(seen) {
                    return Some(false);
                }
                // A preface split across packets: wait for the rest.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Serves one plain HTTP/1.x connection until the client closes it, it
/// goes idle or stalls, an error, or `stop` (between requests).
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let (idle, write) = (shared.limits.idle_timeout, shared.limits.write_timeout);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        if *stop.borrow() {
            return;
        }
        let since = Instant::now();
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        let parsed = loop {
            tokio::select! {
                r = read_head(&mut stream, &mut buf) => break Some(r),
                () = &mut deadline => break None,
                _ = shared.pressure.notified() => {
                    if since.elapsed().as_millis() as u64 >= SHED_IDLE_AFTER_MS {
                        inc(&METRICS.connections_shed);
                        return;
                    }
                }
                _ = stop.changed() => return,
            }
        };
        let Some(parsed) = parsed else {
            // Nothing, or a head that did not arrive whole in time.
            if buf.is_empty() {
                inc(&METRICS.connections_closed_idle);
                tracing::debug!(%peer, "closing an idle connection");
            } else {
                inc(&METRICS.connections_closed_header_timeout);
                tracing::debug!(%peer, "closing a connection whose request head did not arrive in time");
            }
            return;
        };
        let parsed = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                return;
            }
        };
        let (req, keep_alive) = match parsed {
            Ok(p) => p,
            Err(status) => {
                let mut resp = Response::new(super::body::empty());
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                let _ = write_response(
                    &mut stream,
                    resp,
                    false,
                    Version::HTTP_11,
                    false,
                    write,
                    &mut 0,
                )
                .await;
                return;
            }
        };
        let head = req.method() == Method::HEAD;
        let version = req.version();
        let (resp, mut access) = super::log::handle(&shared, req).await;
        if !head && resp.extensions().get::<ZeroCopy>().is_some() {
            access.tier = crate::metrics::Tier::ZeroCopy;
        }
        let mut sent = 0;
        let written = write_response(
            &mut stream,
            resp,
            keep_alive,
            version,
            head,
            write,
            &mut sent,
        )
        .await;
        access.finish(sent, written.is_ok());
        if let Err(e) = written {
            if e.kind() == io::ErrorKind::TimedOut {
                inc(&METRICS.connections_closed_write_timeout);
                tracing::info!(%peer, "dropping a response its client stopped reading");
            } else {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        if !keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

type Parsed = Result<(Request<Empty<bytes::Bytes>>, bool), StatusCode>;

/// Reads one request head into a request (with an empty body) and whether
/// the connection may be kept after answering it. None at a clean end of
/// the connection; `Err(status)` for a head that cannot be served.
async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Parsed>> {
    loop {
        if !buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let parsed = build(&req);
                    buf.advance(n);
                    return Ok(Some(parsed));
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
                    return Ok(Some(Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)));
                }
                Err(_) => return Ok(Some(Err(StatusCode::BAD_REQUEST))),
            }
        }
        buf.reserve(8 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn build(req: &httparse::Request) -> Parsed {
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(StatusCode::BAD_REQUEST)?;
    let uri: http::Uri = req
        .path
        .ok_or(StatusCode::BAD_REQUEST)?
        .parse()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(StatusCode::HTTP_VERSION_NOT_SUPPORTED),
    };
    let mut r = Request::new(Empty::new());
    *r.method_mut() = method;
    *r.uri_mut() = uri;
    *r.version_mut() = version;
    let headers = r.headers_mut();
    headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| StatusCode::BAD_REQUEST)?;
        headers.append(name, value);
    }
    let close = has_token(headers, "close");
    let mut keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => has_token(headers, "keep-alive") && !close,
    };
    // No endpoint reads a body; rather than skip one, answer and close.
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body || headers.contains_key(header::EXPECT) {
        keep_alive = false;
    }
    Ok((r, keep_alive))
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Writes `resp`: the head, then the file range with `sendfile` when the
/// response carries [`ZeroCopy`], else the body (with the head in one
/// write when it is small and whole).
async fn write_response(
    stream: &mut TcpStream,
    mut resp: Response<ResponseBody>,
    keep_alive: bool,
    version: Version,
    head_only: bool,
    write: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let zero_copy = resp.extensions_mut().remove::<ZeroCopy>();
    let fill = resp.extensions_mut().remove::<ZeroCopyFill>();
    let status = resp.status();
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = resp.body();
    let exact = body.size_hint().exact();
    let has_length = resp.headers().contains_key(header::CONTENT_LENGTH);
    // Without a length, HTTP/1.1 chunks; HTTP/1.0 delimits by closing.
    let chunked = !no_body && !has_length && exact.is_none() && version == Version::HTTP_11;
    let keep_alive = keep_alive && (no_body || has_length || exact.is_some() || chunked);

    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
    for (name, value) in resp.headers() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !has_length
        && !no_body
        && let Some(n) = exact
    {
        out.put_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    if chunked {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if !resp.headers().contains_key(header::DATE) {
        out.put_slice(b"date: ");
        out.put_slice(date().as_bytes());
        out.put_slice(b"\r\n");
    }
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");

    if no_body {
        return write_all(stream, write, &out).await;
    }
    if let Some(z) = zero_copy {
        write_all(stream, write, &out).await?;
        return send_span(stream, &z, write, sent).await;
    }
    // Bytes of the body already sent from a fill's temp file.
    let mut skip = None;
    // (Small blobs go out from the body, with the head in one write.)
    if let Some(f) = fill
        && !chunked
        && f.end + 1 - f.start > COALESCE as u64
    {
        write_all(stream, write, &out).await?;
        match send_filling(stream, f, write, sent).await? {
            None => return Ok(()),
            Some(n) => skip = Some(n),
        }
    }
    let mut body = resp.into_body();
    // Small whole bodies (manifests, JSON) go out with the head.
    if skip.is_none() && !chunked && exact.is_some_and(|n| n as usize <= COALESCE) {
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.put_slice(&data);
                n += data.len() as u64;
            }
        }
        write_all(stream, write, &out).await?;
        *sent += n;
        return Ok(());
    }
    let mut skip = match skip {
        Some(n) => n,
        None => {
            write_all(stream, write, &out).await?;
            0
        }
    };
    while let Some(frame) = body.frame().await {
        // A body error (a blob that failed verification, a source that
        // broke) cuts the response: the connection is dropped unfinished.
        let Ok(mut data) = frame?.into_data() else {
            continue;
        };
        if skip > 0 {
            let k = skip.min(data.len() as u64);
            skip -= k;
            data = data.slice(k as usize..);
        }
        if data.is_empty() {
            continue;
        }
        if chunked {
            write_all(stream, write, format!("{:x}\r\n", data.len()).as_bytes()).await?;
            write_all(stream, write, &data).await?;
            write_all(stream, write, b"\r\n").await?;
        } else {
            write_all(stream, write, &data).await?;
        }
        *sent += data.len() as u64;
    }
    if chunked {
        write_all(stream, write, b"0\r\n\r\n").await?;
    }
    Ok(())
}

async fn write_all(stream: &mut TcpStream, write: Duration, data: &[u8]) -> io::Result<()> {
    tokio::time::timeout(write, stream.write_all(data))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

/// Sends bytes `start..=end` of a verified span with `sendfile`, all but
/// the last byte, then checks the file, then the last byte.
async fn send_span(
    stream: &mut TcpStream,
    z: &ZeroCopy,
    write: Duration,
    sent: &mut u64,
) -> io::Result<()> {
    let from = z.span.offset + z.start;
    let len = z.end + 1 - z.start;
    advise(&z.span.file, from, len);
    let counted = Some(&METRICS.zero_copy_bytes);
    sendfile(stream, &z.span.file, from, len - 1, write, sent, counted).await?;
    z.span.check()?;
    sendfile(
        stream,
        &z.span.file,
        from + len - 1,
        1,
        write,
        sent,
        counted,
    )
    .await
}

/// Sends bytes `start..=end` of a blob being filled with `sendfile` from
/// its temp file, as far as the fill has written them (the response's last
/// byte, like the blob's, once the blob is verified). An error when the fill failed: the response is cut. Some(n)
/// when the cache stopped writing after `n` bytes were sent: the caller
/// goes on from the body, which re-reads the blob from its source.
async fn send_filling(
    stream: &mut TcpStream,
    mut z: ZeroCopyFill,
    write: Duration,
    sent: &mut u64,
) -> io::Result<Option<u64>> {
    let mut pos = z.start;
    while pos <= z.end {
        let upto = match z.span.sendable(pos, z.end).await? {
            Sendable::Upto(n) => n.min(z.end + 1),
            Sendable::CacheFailed => return Ok(Some(pos - z.start)),
        };
        if upto > pos {
            sendfile(stream, &z.span.file, pos, upto - pos, write, sent, None).await?;
            pos = upto;
        }
    }
    Ok(None)
}

/// Tells the kernel the range will be read soon (readahead for a cold
/// page cache; sendfile itself reads synchronously).
fn advise(file: &std::fs::File, from: u64, len: u64) {
    // SAFETY: a plain syscall on a file descriptor we own; the result is advisory.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_SEQUENTIAL,
        );
    }
}

async fn sendfile(
    stream: &mut TcpStream,
    file: &std::fs::File,
    mut from: u64,
    mut len: u64,
    write: Duration,
    total: &mut u64,
    counter: Option<&std::sync::atomic::AtomicU64>,
) -> io::Result<()> {
    let out = stream.as_raw_fd();
    let inp = file.as_raw_fd();
    while len > 0 {
        let want = len.min(1 << 30) as usize;
        let sent = tokio::time::timeout(
            write,
            stream.async_io(Interest::WRITABLE, || {
                let mut off = from as libc::off_t;
                // SAFETY: both descriptors are open for the duration of the
                // call (borrowed from live objects); `off` is a valid pointer.
                let n = unsafe { libc::sendfile(out, inp, &mut off, want) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as u64)
                }
            }),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))??;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than the blob",
            ));
        }
        if let Some(c) = counter {
            c.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        }
        from += sent;
        len -= sent;
        *total += sent;
        // Let other connections on this worker run between large sends.
        tokio::task::consume_budget().await;
    }
    Ok(())
}

/// The `Date` header value, formatted once per second.
fn date() -> String {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}
