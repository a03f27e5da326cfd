//! The socket path: `serve` on a real port, spoken to in raw HTTP/1.1.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::fake::{
    BLOB, Fake, LIAR_GOOD, LIAR_SIZE, MANIFEST, SLOW, blob_digest, liar_digest, slow_digest,
};
use crate::registry::serve;

/// Status code, lower-cased headers and the body of one response read off
/// a keep-alive connection. The body is read up to Content-Length or until
/// the connection ends, whichever is first.
async fn read_response(
    reader: &mut BufReader<TcpStream>,
    head: bool,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut status_line = String::new();
    reader
        .read_line(&mut status_line)
        .await
        .expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut body = Vec::new();
    if !head {
        let mut limited = reader.take(len as u64);
        // A cut connection shows up as EOF or a reset; either way the
        // body is whatever arrived.
        let _ = limited.read_to_end(&mut body).await;
    }
    (status, headers, body)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn serves_http1_over_a_socket_and_cuts_bad_bodies() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Fake::default()),
        Arc::new(super::loaded()),
        async {
            let _ = stopped.await;
        },
    ));

    // Several requests on one keep-alive connection.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = BufReader::new(stream);
    let requests = format!(
        "HEAD /v2/library/app/manifests/latest HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /v2/library/app/blobs/{} HTTP/1.1\r\nHost: t\r\nRange: bytes=2-5\r\n\r\n\
         PUT /v2/library/app/manifests/latest HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        blob_digest()
    );
    conn.get_mut()
        .write_all(requests.as_bytes())
        .await
        .expect("write");

    let (status, headers, _) = read_response(&mut conn, true).await;
    assert_eq!(status, 200);
    let manifest_len = MANIFEST.len().to_string();
    assert_eq!(
        header(&headers, "content-length"),
        Some(manifest_len.as_str())
    );
    assert_eq!(
        header(&headers, "docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let (status, headers, body) = read_response(&mut conn, false).await;
    assert_eq!(status, 206);
    assert_eq!(header(&headers, "content-range"), Some("bytes 2-5/26"));
    assert_eq!(body, &BLOB[2..=5]);

    let (status, headers, body) = read_response(&mut conn, false).await;
    assert_eq!(status, 405);
    assert_eq!(header(&headers, "allow"), Some("GET, HEAD"));
    assert!(String::from_utf8_lossy(&body).contains("UNSUPPORTED"));

    // A blob whose stream fails: the promised length never arrives and
    // the connection is closed.
    let request = format!(
        "GET /v2/library/app/blobs/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        liar_digest()
    );
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("write");
    let (status, headers, body) =
        tokio::time::timeout(Duration::from_secs(10), read_response(&mut conn, false))
            .await
            .expect("the cut connection ends instead of hanging");
    assert_eq!(status, 200);
    let liar_len = LIAR_SIZE.to_string();
    assert_eq!(header(&headers, "content-length"), Some(liar_len.as_str()));
    assert!(body.len() < LIAR_SIZE, "got {} bytes", body.len());
    assert!(body.len() <= LIAR_GOOD);

    // Shutdown ends `serve` and stops accepting.
    drop(conn);
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .expect("serve task");
    assert!(result.is_ok());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Fake::default()),
        Arc::new(super::loaded()),
        async {
            let _ = stopped.await;
        },
    ));

    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = BufReader::new(stream);
    let request = format!(
        "GET /v2/library/app/blobs/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        slow_digest()
    );
    conn.get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("write");
    // Wait until the response has started, then ask the server to stop.
    conn.fill_buf().await.expect("response starts");
    let _ = stop.send(());

    let (status, _, body) = read_response(&mut conn, false).await;
    assert_eq!(status, 200);
    assert_eq!(body, SLOW, "the in-flight body completes");
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returns once the connection is done")
        .expect("serve task");
    assert!(result.is_ok());
}

#[tokio::test]
async fn speaks_h2c_with_prior_knowledge() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Fake::default()),
        Arc::new(super::loaded()),
        async {
            let _ = stopped.await;
        },
    ));
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The HTTP/2 connection preface, then an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stream.write_all(&hello).await.expect("write");
    // The server's first frame is its own SETTINGS: a 9-byte header whose
    // fourth byte is the frame type, 4.
    let mut frame_header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut frame_header))
        .await
        .expect("the server answers")
        .expect("a frame header");
    assert_eq!(frame_header[3], 4, "a SETTINGS frame");
    drop(stream);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}
