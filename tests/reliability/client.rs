//! A registry client that checks what it accepts: every complete 200 or
//! 206 body is compared with the digest it was asked for (or, for a range,
//! with the known bytes). A response that fails (error status, cut body)
//! is a failed pull, which faults are allowed to cause; a complete response
//! with wrong bytes is what must never happen.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::image::digest;

#[derive(Debug, Default, Clone)]
pub struct Pull {
    pub ok: bool,
    /// Complete responses whose bytes were wrong, described.
    pub wrong: Vec<String>,
    /// Why the pull failed (first failure), when it did.
    pub failure: Option<String>,
    pub manifest_digest: Option<String>,
    pub requests: u64,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client")
}

/// GET `url`: Ok(Some((status, headers, body))) when the body arrived
/// complete, Ok(None)-like Err(reason) when it did not.
pub async fn get(
    c: &reqwest::Client,
    url: &str,
    range: Option<(u64, u64)>,
) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), String> {
    let mut rb = c.get(url).header(
        "accept",
        "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json",
    );
    if let Some((a, b)) = range {
        rb = rb.header("range", format!("bytes={a}-{b}"));
    }
    let r = rb.send().await.map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .bytes()
        .await
        .map_err(|e| format!("{url}: body cut: {e}"))?;
    Ok((status, headers, body))
}

/// Pulls `name:tag` from `base` (`http://127.0.0.1:PORT`): the manifest,
/// the config and every layer, plus one range of the first layer.
/// `known` holds the bytes every blob must have.
pub async fn pull(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    tag: &str,
    known: &BTreeMap<String, Vec<u8>>,
    with_range: bool,
) -> Pull {
    let mut p = Pull::default();
    let fail = |p: &mut Pull, why: String| {
        if p.failure.is_none() {
            p.failure = Some(why);
        }
    };
    let url = format!("{base}/v2/{name}/manifests/{tag}");
    p.requests += 1;
    let manifest = match get(c, &url, None).await {
        Ok((200, h, body)) => {
            let said = h
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if said != digest(&body) {
                p.wrong.push(format!(
                    "{url}: manifest body hashes to {}, header says {said}",
                    digest(&body)
                ));
                return p;
            }
            p.manifest_digest = Some(said);
            match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(v) => v,
                Err(e) => {
                    p.wrong.push(format!("{url}: manifest is not JSON: {e}"));
                    return p;
                }
            }
        }
        Ok((s, _, body)) => {
            fail(
                &mut p,
                format!("{url}: {s} {}", String::from_utf8_lossy(&body)),
            );
            return p;
        }
        Err(e) => {
            fail(&mut p, e);
            return p;
        }
    };
    let mut digests = vec![
        manifest["config"]["digest"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ];
    for l in manifest["layers"].as_array().into_iter().flatten() {
        digests.push(l["digest"].as_str().unwrap_or("").to_string());
    }
    for d in &digests {
        let Some(want) = known.get(d) else {
            p.wrong.push(format!(
                "manifest of {name}:{tag} names {d}, which the tarball does not hold"
            ));
            continue;
        };
        let url = format!("{base}/v2/{name}/blobs/{d}");
        p.requests += 1;
        match get(c, &url, None).await {
            Ok((200, _, body)) => {
                if digest(&body) != *d {
                    p.wrong.push(format!(
                        "{url}: complete 200 of {} bytes hashes to {}",
                        body.len(),
                        digest(&body)
                    ));
                } else if body[..] != want[..] {
                    p.wrong
                        .push(format!("{url}: bytes differ from the tarball's"));
                }
            }
            Ok((s, _, _)) => fail(&mut p, format!("{url}: {s}")),
            Err(e) => fail(&mut p, e),
        }
    }
    if with_range
        && let Some(d) = digests.get(1)
        && let Some(want) = known.get(d)
        && want.len() > 2
    {
        let (a, b) = (want.len() as u64 / 3, want.len() as u64 - 2);
        let url = format!("{base}/v2/{name}/blobs/{d}");
        p.requests += 1;
        match get(c, &url, Some((a, b))).await {
            Ok((206, _, body)) => {
                if body[..] != want[a as usize..=b as usize] {
                    p.wrong
                        .push(format!("{url}: complete 206 {a}-{b} with wrong bytes"));
                }
            }
            Ok((200, _, body)) => {
                if body[..] != want[..] {
                    p.wrong.push(format!(
                        "{url}: complete 200 (range ignored) with wrong bytes"
                    ));
                }
            }
            Ok((s, _, _)) => fail(&mut p, format!("{url} (range): {s}")),
            Err(e) => fail(&mut p, e),
        }
    }
    p.ok = p.failure.is_none() && p.wrong.is_empty();
    p
}

/// Pulls until a pull succeeds or `within` passes; returns the last pull
/// and every wrong byte seen on the way.
pub async fn pull_until_ok(
    c: &reqwest::Client,
    base: &str,
    name: &str,
    tag: &str,
    known: &BTreeMap<String, Vec<u8>>,
    within: Duration,
) -> (Pull, Vec<String>) {
    let deadline = Instant::now() + within;
    let mut wrong = Vec::new();
    loop {
        let p = pull(c, base, name, tag, known, true).await;
        wrong.extend(p.wrong.iter().cloned());
        if p.ok || Instant::now() > deadline {
            return (p, wrong);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
