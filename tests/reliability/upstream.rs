//! An in-process HTTP/1.1 object server on 127.0.0.1 that serves archives
//! from memory (HEAD, GET, single `Range`, strong ETag, `If-Match` → 412)
//! and injects faults into the answers of archives marked faulty.
//!
//! Written on a bare tokio socket rather than hyper: the faults that
//! matter are framing lies (a Content-Length that is not the body, a body
//! cut by a reset, a close-delimited body that ends early), which hyper's
//! server refuses to produce.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The faults, by the name the figures use.
pub const FAULTS: &[&str] = &[
    "reset",
    "truncate",
    "5xx-burst",
    "drip",
    "wrong-length",
    "range-ignored",
    "etag-change",
    "wrong-byte",
];

pub struct Object {
    pub data: Bytes,
    etag: Mutex<String>,
    pub faulty: AtomicBool,
    /// Byte ranges where a flipped byte lands in blob data (checked by a
    /// digest downstream); a wrong byte is only injected there.
    pub blob_ranges: Vec<(u64, u64)>,
    burst: AtomicU32,
    /// Bytes/s cap for every answer (0: none), to make pulls last.
    pub rate: AtomicU64,
    /// Statuses for the next answers, in order (200: answer normally),
    /// whether or not the object is faulty.
    pub script: Mutex<std::collections::VecDeque<u16>>,
}

pub struct State {
    objects: Mutex<HashMap<String, Arc<Object>>>,
    rng: Mutex<fastrand::Rng>,
    /// Chance in percent that an answer for a faulty object gets a fault.
    pub fault_percent: AtomicU32,
    /// Seconds a drip lasts (1 byte/s) before the answer goes on normally.
    pub drip_secs: u64,
    injected: Mutex<BTreeMap<&'static str, u64>>,
    pub requests: AtomicU64,
}

pub struct Upstream {
    pub addr: String,
    pub state: Arc<State>,
}

impl Upstream {
    pub async fn start(seed: u64, drip_secs: u64) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(State {
            objects: Mutex::new(HashMap::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            fault_percent: AtomicU32::new(30),
            drip_secs,
            injected: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(st, sock).await;
                });
            }
        });
        Upstream { addr, state }
    }

    /// Serves `data` at `path` (e.g. `/r1/t.tar`).
    pub fn put(
        &self,
        path: &str,
        data: Vec<u8>,
        blob_ranges: Vec<(u64, u64)>,
        faulty: bool,
    ) -> Arc<Object> {
        let n = self.state.requests.load(Ordering::Relaxed);
        let obj = Arc::new(Object {
            data: Bytes::from(data),
            etag: Mutex::new(format!("\"v{n}-{}\"", path.len())),
            faulty: AtomicBool::new(faulty),
            blob_ranges,
            burst: AtomicU32::new(0),
            rate: AtomicU64::new(0),
            script: Mutex::new(Default::default()),
        });
        if let Ok(mut m) = self.state.objects.lock() {
            m.insert(path.to_string(), obj.clone());
        }
        obj
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.state
            .injected
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

struct Req {
    head: bool,
    path: String,
    range: Option<(u64, Option<u64>)>,
    if_match: Option<String>,
}

async fn read_request(sock: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?;
    let path = first.next()?.to_string();
    let mut range = None;
    let mut if_match = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "range" => {
                range = v.strip_prefix("bytes=").and_then(|r| {
                    let (a, b) = r.split_once('-')?;
                    Some((
                        a.parse().ok()?,
                        if b.is_empty() { None } else { b.parse().ok() },
                    ))
                })
            }
            "if-match" => if_match = Some(v.to_string()),
            _ => {}
        }
    }
    Some(Req {
        head: method == "HEAD",
        path,
        range,
        if_match,
    })
}

async fn write_all(sock: &mut TcpStream, data: &[u8], rate: u64) -> std::io::Result<()> {
    if rate == 0 {
        return sock.write_all(data).await;
    }
    let step = (rate / 20).max(1) as usize;
    for c in data.chunks(step) {
        sock.write_all(c).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl State {
    fn count(&self, kind: &'static str) {
        if let Ok(mut m) = self.injected.lock() {
            *m.entry(kind).or_insert(0) += 1;
        }
    }
    fn roll(&self, percent: u32) -> bool {
        self.rng
            .lock()
            .map(|mut r| r.u32(..100) < percent)
            .unwrap_or(false)
    }
    fn below(&self, n: u64) -> u64 {
        self.rng.lock().map(|mut r| r.u64(..n.max(1))).unwrap_or(0)
    }
}

async fn serve(st: Arc<State>, mut sock: TcpStream) -> std::io::Result<()> {
    let Some(req) = read_request(&mut sock).await else {
        return Ok(());
    };
    st.requests.fetch_add(1, Ordering::Relaxed);
    let obj = st
        .objects
        .lock()
        .ok()
        .and_then(|m| m.get(&req.path).cloned());
    let Some(obj) = obj else {
        return sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    };
    let size = obj.data.len() as u64;

    let scripted = obj.script.lock().ok().and_then(|mut q| q.pop_front());
    if let Some(code) = scripted
        && code != 200
    {
        let h =
            format!("HTTP/1.1 {code} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return sock.write_all(h.as_bytes()).await;
    }

    // Choose this answer's fault.
    let mut fault: Option<&'static str> = None;
    if obj.faulty.load(Ordering::Relaxed) {
        if obj.burst.load(Ordering::Relaxed) > 0 {
            obj.burst.fetch_sub(1, Ordering::Relaxed);
            fault = Some("5xx-burst");
        } else if st.roll(st.fault_percent.load(Ordering::Relaxed)) {
            fault = Some(FAULTS[st.below(FAULTS.len() as u64) as usize]);
        }
    }
    if fault == Some("etag-change")
        && let Ok(mut e) = obj.etag.lock()
    {
        *e = format!("\"changed-{}\"", st.requests.load(Ordering::Relaxed));
    }
    let etag = obj.etag.lock().map(|e| e.clone()).unwrap_or_default();
    if let Some(f) = fault {
        st.count(f);
    }
    if fault == Some("5xx-burst") {
        if obj.burst.load(Ordering::Relaxed) == 0 && st.roll(50) {
            obj.burst.store(1 + st.below(4) as u32, Ordering::Relaxed);
        }
        let code = [
            "500 Internal Server Error",
            "502 Bad Gateway",
            "503 Service Unavailable",
        ][st.below(3) as usize];
        return sock
            .write_all(
                format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await;
    }
    if let Some(m) = &req.if_match
        && *m != etag
    {
        return sock
            .write_all(b"HTTP/1.1 412 Precondition Failed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    }

    // The range this answer covers.
    let honour = req.range.is_some() && fault != Some("range-ignored");
    let (start, end) = match (honour, req.range) {
        (true, Some((a, b))) => {
            if a >= size {
                let h = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{size}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                return sock.write_all(h.as_bytes()).await;
            }
            (a, b.map_or(size - 1, |b| b.min(size - 1)))
        }
        _ => (0, size.saturating_sub(1)),
    };
    let mut body = if size == 0 {
        Vec::new()
    } else {
        obj.data[start as usize..=end as usize].to_vec()
    };
    let mut length = body.len() as u64;
    if fault == Some("wrong-byte") {
        // Flip one byte inside blob data, where a digest must catch it;
        // elsewhere (tar headers, JSON) nothing downstream could.
        let spots: Vec<(u64, u64)> = obj
            .blob_ranges
            .iter()
            .filter_map(|&(o, l)| {
                let a = o.max(start);
                let b = (o + l).min(end + 1);
                (a < b).then_some((a, b))
            })
            .collect();
        if let Some(&(a, b)) = spots.get(st.below(spots.len() as u64) as usize) {
            let at = (a + st.below(b - a) - start) as usize;
            body[at] ^= 1 << st.below(8);
        } else {
            // nothing to flip here: this answer goes out clean
            if let Ok(mut m) = st.injected.lock()
                && let Some(n) = m.get_mut("wrong-byte")
            {
                *n -= 1;
            }
        }
    }
    if fault == Some("wrong-length") {
        // Say more than is sent (then close), or less than the range.
        if st.roll(50) || length == 0 {
            length += 1 + st.below(1000);
        } else {
            length -= 1 + st.below(length.min(1000));
        }
    }
    let status = if honour {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\netag: {etag}\r\naccept-ranges: bytes\r\nconnection: close\r\n"
    );
    if honour {
        head.push_str(&format!("content-range: bytes {start}-{end}/{size}\r\n"));
    }
    let close_delimited = fault == Some("truncate") && st.roll(50);
    if !close_delimited {
        head.push_str(&format!("content-length: {length}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    if req.head {
        return Ok(());
    }
    let rate = obj.rate.load(Ordering::Relaxed);
    match fault {
        Some("reset") => {
            let cut = st.below(body.len() as u64 + 1) as usize;
            write_all(&mut sock, &body[..cut], rate).await?;
            // A zero linger makes close send RST at once (it never blocks,
            // which is what the deprecation warns of).
            #[allow(deprecated)]
            sock.set_linger(Some(Duration::ZERO))?;
            drop(sock); // RST
            Ok(())
        }
        Some("truncate") => {
            let cut = st.below(body.len() as u64 + 1) as usize;
            write_all(&mut sock, &body[..cut], rate).await?;
            sock.shutdown().await // a clean FIN, short of the length
        }
        Some("drip") => {
            let n = (st.drip_secs as usize).min(body.len());
            for b in &body[..n] {
                sock.write_all(std::slice::from_ref(b)).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            write_all(&mut sock, &body[n..], rate).await?;
            sock.shutdown().await
        }
        Some("wrong-length") => {
            let n = (length as usize).min(body.len());
            write_all(&mut sock, &body[..n], rate).await?;
            sock.shutdown().await
        }
        _ => {
            write_all(&mut sock, &body, rate).await?;
            sock.shutdown().await
        }
    }
}
