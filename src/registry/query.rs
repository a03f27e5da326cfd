//! Query strings: the few parameters the API reads, percent-decoded.
//! Everything else is ignored, because clients add their own (containerd
//! as a pull-through mirror sends `?ns=docker.io`).

/// The value of the first `key` parameter in `query`, percent-decoded.
/// `None` when absent or when its escapes do not decode to UTF-8.
///
/// `+` is kept as `+` rather than read as a space: no value the API takes
/// can contain a space, but artifact types (`application/vnd.x+json`) do
/// contain `+`, and clients do not all escape it.
pub fn param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| percent_decode(k).as_deref() == Some(key))
        .and_then(|(_, v)| percent_decode(v))
}

/// Decodes `%XX` escapes; `None` on a broken escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_decodes() {
        let q = Some("ns=docker.io&n=2&last=v%31&artifactType=application%2Fx+json");
        assert_eq!(param(q, "n").as_deref(), Some("2"));
        assert_eq!(param(q, "last").as_deref(), Some("v1"));
        assert_eq!(
            param(q, "artifactType").as_deref(),
            Some("application/x+json")
        );
        assert_eq!(param(q, "missing"), None);
        assert_eq!(param(None, "n"), None);
        assert_eq!(param(Some("n"), "n").as_deref(), Some(""));
    }

    #[test]
    fn broken_escapes_are_absent() {
        assert_eq!(param(Some("last=%zz"), "last"), None);
        assert_eq!(param(Some("last=%e"), "last"), None);
        assert_eq!(param(Some("last=%ff"), "last"), None);
    }
}
