//! Names, tags, digests and references against the distribution spec's
//! grammar, written down again here as an oracle: each parse must accept
//! exactly what the grammar accepts and print back what it parsed.
use cartorio::image::{Digest, Reference, RepoName, Tag, split_image_ref};

use crate::{Rng, pick, run, string_from};

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, by a different route than the
/// code's: strip alternating alnum and separator runs from the front.
fn spec_component(c: &str) -> bool {
    let alnum = |x: char| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut rest = c;
    loop {
        let n = rest.find(|x: char| !alnum(x)).unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        if rest.is_empty() {
            return true;
        }
        let sep = if rest.starts_with("__") {
            2
        } else if rest.starts_with('.') || rest.starts_with('_') {
            1
        } else if rest.starts_with('-') {
            rest.find(|x: char| x != '-').unwrap_or(rest.len())
        } else {
            return false;
        };
        rest = &rest[sep..];
    }
}

fn spec_name(s: &str) -> bool {
    s.len() <= 255 && s.split('/').all(spec_component)
}

fn spec_tag(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn spec_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// Strings near the grammar's edges: mostly its own characters, with
/// separators doubled, uppercase, escapes, unicode and lengths past limits.
fn candidate(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a", "z", "0", "9", "app", "library", ".", "..", "_", "__", "___", "-", "--", "/", "//",
        ":", "@", "sha256:", "A", "%2e", "%2F", "é", "\u{0}", " ", "\n", "+", "~", "v1", "latest",
    ];
    match rng.u8(..8) {
        // a near-valid name built from components
        0..=3 => {
            let mut s = String::new();
            for _ in 0..rng.usize(1..6) {
                s.push_str(pick(rng, PIECES));
            }
            s
        }
        // a random long run of grammar characters
        4 => {
            let len = rng.usize(0..300);
            string_from(rng, b"abc09._-/", len)
        }
        // a digest, sometimes off by one character or length
        5 => {
            let len = pick(rng, &[&64usize, &63, &65, &0]).to_owned();
            let hex = string_from(rng, b"0123456789abcdef", len);
            let alg = pick(rng, &["sha256", "sha512", "SHA256", "", "sha256+b64"]);
            let mut s = format!("{alg}:{hex}");
            if rng.u8(..4) == 0 && !s.is_empty() {
                let i = rng.usize(..s.len());
                s.replace_range(i..=i, pick(rng, &["G", "A", ":", "/", "0"]));
            }
            s
        }
        // a tag-like string
        6 => {
            let len = rng.usize(0..140);
            string_from(rng, b"aZ09_.-", len)
        }
        // random bytes as lossy UTF-8
        _ => {
            let len = rng.usize(0..40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

#[test]
fn names() {
    run("names", 10_000, |rng| {
        let s = candidate(rng);
        match (s.parse::<RepoName>(), spec_name(&s)) {
            (Ok(n), true) if n.as_str() == s => {}
            (Ok(n), true) => return Err(format!("name {s:?} printed as {n:?}")),
            (Ok(_), false) => return Err(format!("name {s:?} accepted, grammar refuses")),
            (Err(_), true) => return Err(format!("name {s:?} refused, grammar accepts")),
            (Err(_), false) => {}
        }
        match (s.parse::<Tag>(), spec_tag(&s)) {
            (Ok(t), true) if t.as_str() == s => {}
            (Ok(_), true) => return Err(format!("tag {s:?} printed differently")),
            (Ok(_), false) => return Err(format!("tag {s:?} accepted, grammar refuses")),
            (Err(_), true) => return Err(format!("tag {s:?} refused, grammar accepts")),
            (Err(_), false) => {}
        }
        match (s.parse::<Digest>(), spec_digest(&s)) {
            (Ok(d), true) if d.to_string() == s => {}
            (Ok(_), true) => return Err(format!("digest {s:?} printed differently")),
            (Ok(_), false) => return Err(format!("digest {s:?} accepted, grammar refuses")),
            (Err(_), true) => return Err(format!("digest {s:?} refused, grammar accepts")),
            (Err(_), false) => {}
        }
        let want_ref = if s.contains(':') {
            spec_digest(&s)
        } else {
            spec_tag(&s)
        };
        match s.parse::<Reference>() {
            Ok(r) if want_ref && r.to_string() == s => {}
            Ok(r) => return Err(format!("reference {s:?} parsed as {r}")),
            Err(_) if want_ref => return Err(format!("reference {s:?} refused")),
            Err(_) => {}
        }
        // What an archive records: whatever comes back is valid and is a
        // suffix of the input's path (a host is dropped, nothing invented).
        if let Some((name, tag)) = split_image_ref(&s) {
            if !spec_name(name.as_str()) {
                return Err(format!("split_image_ref({s:?}) gave name {name:?}"));
            }
            if !s.contains(name.as_str()) {
                return Err(format!("split_image_ref({s:?}) invented {name:?}"));
            }
            if let Some(t) = tag
                && !spec_tag(t.as_str())
            {
                return Err(format!("split_image_ref({s:?}) gave tag {t:?}"));
            }
        }
        Ok(())
    });
}
