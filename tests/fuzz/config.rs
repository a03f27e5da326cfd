//! The config loader (`Config::parse`) on generated `images.toml` files:
//! plausible documents built from the real keys with hostile values, then
//! sometimes mutated byte-wise. It must never panic; every error names the
//! file; an accepted config holds only valid names and tags, and its cache
//! settings resolve or fail with a message.
use std::path::Path;

use cartorio::config::Config;

use crate::{Rng, pick, run, string_from};

fn value(rng: &mut Rng) -> String {
    match rng.u8(..12) {
        0 => format!(
            "{:?}",
            pick(
                rng,
                &[
                    "team/app", "a", "UPPER", "a//b", "{repo}", "x/{repo}", "{repo}/y", "../x", ""
                ]
            )
        ),
        1 => format!(
            "{:?}",
            pick(
                rng,
                &[
                    "image.tar",
                    "file:///nope.tar",
                    "http://127.0.0.1:1/{repo}/{tag}.tar",
                    "s3://b/{repo}/{tag}",
                    "s3://",
                    "ftp://x",
                    "{tag}",
                    "http://h/{nope}"
                ]
            )
        ),
        2 => format!(
            "{:?}",
            pick(
                rng,
                &[
                    "1s",
                    "0s",
                    "100ms",
                    "-1s",
                    "1e99s",
                    "18446744073709551616s",
                    "1h",
                    "s",
                    ""
                ]
            )
        ),
        3 => format!(
            "{:?}",
            pick(
                rng,
                &[
                    "20GiB",
                    "0",
                    "1KiB",
                    "99999999999999999999GiB",
                    "18446744073709551615",
                    "GiB",
                    "-1MiB",
                    "1.5GiB"
                ]
            )
        ),
        4 => format!(
            "[{}]",
            (0..rng.usize(0..4))
                .map(|_| format!("{:?}", pick(rng, &["v1", "latest", "", "-x", "a/b", "é"])))
                .collect::<Vec<_>>()
                .join(",")
        ),
        5 => rng.i64(..).to_string(),
        6 => pick(
            rng,
            &[
                "true",
                "false",
                "nan",
                "inf",
                "1979-05-27T07:32:00Z",
                "{}",
                "[]",
            ],
        )
        .into(),
        7 => format!(
            "{{ {} = {} }}",
            pick(rng, &["Authorization", "a", "\"\""]),
            format_args!("{:?}", "x")
        ),
        8 => {
            let len = rng.usize(0..40);
            format!("{:?}", string_from(rng, b"ab:/{}.\\\"\n", len))
        }
        9 => format!("\"{}\"", "a".repeat(rng.usize(0..400))),
        10 => format!(
            "{:?}",
            pick(rng, &["127.0.0.1:0", "[::1]:5000", "nope", ":99999"])
        ),
        _ => format!("'''{}'''", pick(rng, &["x", "\n", "'"])),
    }
}

fn document(rng: &mut Rng) -> String {
    const TOP: &[&str] = &["listen", "revalidate", "nope"];
    const IMAGE: &[&str] = &["name", "source", "tags", "select", "nope"];
    const CACHE: &[&str] = &["dir", "disk", "memory", "nope"];
    const IMGCFG: &[&str] = &[
        "os",
        "architecture",
        "variant",
        "env",
        "cmd",
        "entrypoint",
        "user",
        "workdir",
        "labels",
        "nope",
    ];
    const HTTP: &[&str] = &[
        "headers",
        "ca_file",
        "connect_timeout_secs",
        "read_timeout_secs",
        "attempts",
        "retry_backoff_ms",
        "nope",
    ];
    const S3: &[&str] = &[
        "endpoint",
        "region",
        "addressing",
        "allow_http",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "nope",
    ];
    let mut doc = String::new();
    for _ in 0..rng.usize(0..3) {
        doc.push_str(&format!("{} = {}\n", pick(rng, TOP), value(rng)));
    }
    for _ in 0..rng.usize(0..4) {
        doc.push_str("[[image]]\n");
        // mostly a name and a source, so validation past parsing runs
        if rng.u8(..5) != 0 {
            doc.push_str(&format!("name = {}\n", value(rng)));
            doc.push_str(&format!("source = {}\n", value(rng)));
        }
        for _ in 0..rng.usize(0..3) {
            doc.push_str(&format!("{} = {}\n", pick(rng, IMAGE), value(rng)));
        }
        for (table, keys) in [("config", IMGCFG), ("http", HTTP), ("s3", S3)] {
            if rng.u8(..4) == 0 {
                doc.push_str(&format!("[image.{table}]\n"));
                for _ in 0..rng.usize(0..3) {
                    doc.push_str(&format!("{} = {}\n", pick(rng, keys), value(rng)));
                }
            }
        }
    }
    if rng.bool() {
        doc.push_str("[cache]\n");
        for _ in 0..rng.usize(0..3) {
            doc.push_str(&format!("{} = {}\n", pick(rng, CACHE), value(rng)));
        }
    }
    if rng.u8(..4) == 0 && !doc.is_empty() {
        let mut bytes = doc.into_bytes();
        for _ in 0..rng.usize(1..4) {
            let i = rng.usize(..bytes.len());
            match rng.u8(..3) {
                0 => bytes[i] = rng.u8(..),
                1 => bytes.truncate(i),
                _ => bytes.insert(
                    i,
                    pick(rng, &[&b'"', &b'[', &b'\n', &b'=', &b'{', &b'\\']).to_owned(),
                ),
            }
            if bytes.is_empty() {
                break;
            }
        }
        doc = String::from_utf8_lossy(&bytes).into_owned();
    }
    doc
}

#[test]
fn config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("image.tar"), b"").expect("write");
    let path = dir.path().join("images.toml");
    run("config", 1_000, |rng| {
        let doc = document(rng);
        check(&doc, &path, dir.path())
    });
}

fn check(doc: &str, path: &Path, base: &Path) -> Result<(), String> {
    match Config::parse(doc, path, base) {
        Err(e) => {
            let msg = e.to_string();
            if !msg.starts_with(&path.display().to_string()) {
                return Err(format!("error does not name the file: {msg:?}\n{doc}"));
            }
        }
        Ok(c) => {
            for img in &c.images {
                if img
                    .name
                    .as_str()
                    .parse::<cartorio::image::RepoName>()
                    .is_err()
                {
                    return Err(format!("accepted name {:?}\n{doc}", img.name));
                }
                for t in img.tags.iter().flatten() {
                    if t.as_str().parse::<cartorio::image::Tag>().is_err() {
                        return Err(format!("accepted tag {t:?}\n{doc}"));
                    }
                }
            }
            let _ = c.cache.settings(base);
        }
    }
    Ok(())
}
