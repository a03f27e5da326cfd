//! Connection limits on a real socket: idle connections, stalled readers
//! (HTTP/1 full socket, HTTP/2 zero window) and the connection cap.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fake::{Fake, big, big_digest};
use crate::registry::{Limits, Readiness, serve_with};

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: Limits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(
        listener,
        Arc::new(Fake::default()),
        Arc::new(Readiness::new(None)),
        Default::default(),
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    Running { addr, stop, server }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
    }
}

fn limits(idle_ms: u64, write_ms: u64, max_connections: usize) -> Limits {
    Limits {
        idle_timeout: Duration::from_millis(idle_ms),
        write_timeout: Duration::from_millis(write_ms),
        max_connections,
        drain_timeout: Duration::from_secs(5),
    }
}

/// Reads until the server closes the connection; the bytes read. Panics
/// if it is still open after `secs`.
async fn read_until_closed(stream: &mut TcpStream, secs: u64) -> usize {
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read_all)
        .await
        .expect("the server closes the connection");
    total
}

/// `GET /v2/` on a new connection answers 200.
async fn base_answers(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply))
        .await
        .expect("answered in time")
        .expect("read");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed() {
    let server = start(limits(500, 60_000, 100)).await;

    // Sends nothing at all.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // One request, then nothing: closed between requests.
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    // The HTTP/2 preface and SETTINGS, then silence.
    let mut h2 = TcpStream::connect(server.addr).await.expect("connect");
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(4, 0, 0, &[]));
    h2.write_all(&hello).await.expect("write");

    assert_eq!(read_until_closed(&mut silent, 10).await, 0);
    let answered = read_until_closed(&mut kept, 10).await;
    assert!(answered > 0, "the request was answered before the close");
    read_until_closed(&mut h2, 10).await;
    // Still serving.
    base_answers(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_a_blob_is_dropped() {
    let server = start(limits(60_000, 1000, 100)).await;
    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET /v2/library/app/blobs/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        big_digest()
    );
    stalled.write_all(request.as_bytes()).await.expect("write");
    // Read nothing for a while: the server's socket buffer fills and the
    // response makes no progress.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let got = read_until_closed(&mut stalled, 20).await;
    assert!(
        got < big().len(),
        "the response was dropped ({got} of {} bytes arrived)",
        big().len()
    );
    base_answers(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn an_h2_client_with_a_zero_window_is_dropped() {
    let server = start(limits(60_000, 1000, 100)).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut out = H2_PREFACE.to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no stream may send a data byte.
    out.extend(h2_frame(4, 0, 0, &[0, 4, 0, 0, 0, 0]));
    // HEADERS (END_STREAM | END_HEADERS) for GET of the big blob, HPACK:
    // indexed :method GET, :scheme http, literal :path and :authority.
    let path = format!("/v2/library/app/blobs/{}", big_digest());
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x41, 1, b't']);
    out.extend(h2_frame(1, 0x5, 1, &block));
    s.write_all(&out).await.expect("write");
    // Pings are not answered either, but those take 20 s to time out here.
    read_until_closed(&mut s, 15).await;
    base_answers(server.addr).await;
    server.stop().await;
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room() {
    let server = start(limits(60_000, 60_000, 4)).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Idle for more than a second: the first to go when room is needed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    base_answers(server.addr).await;
    server.stop().await;
}
