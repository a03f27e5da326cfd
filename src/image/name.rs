use std::fmt;
use std::str::FromStr;

use super::Digest;

/// Why a repository name, tag or reference is rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid repository name {0:?}")]
    Name(String),
    #[error("invalid tag {0:?}")]
    Tag(String),
    #[error("invalid digest: {0}")]
    Digest(#[from] super::DigestError),
}

/// Longest repository name accepted. The spec leaves it to registries;
/// 255 is what distribution enforces and keeps names safe to put in paths
/// and URLs.
const MAX_NAME_LEN: usize = 255;

/// A repository name that matches the distribution spec's grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
/// Holding one means the name is safe to route on and to put into a URL
/// template: no `..`, no empty components, no uppercase, no escapes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let alnum = |x: char| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !c.starts_with(alnum) || !c.ends_with(alnum) {
        return false;
    }
    // Between the alphanumeric runs, each separator run is ".", "_", "__"
    // or one or more "-" (anything else, non-ASCII included, is refused).
    c.split(alnum)
        .filter(|sep| !sep.is_empty())
        .all(|sep| sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-'))
}

impl FromStr for RepoName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_NAME_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::Name(s.to_string()));
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. Never contains `/`, never
/// starts with `.` or `-`, so it is safe in a path or URL template.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() <= 128
            && s.as_bytes().split_first().is_some_and(|(&first, rest)| {
                (first.is_ascii_alphanumeric() || first == b'_')
                    && rest
                        .iter()
                        .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
            });
        if !ok {
            return Err(NameError::Tag(s.to_string()));
        }
        Ok(Tag(s.to_string()))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// Splits an image reference as archives record it (`docker.io/library/app:1`,
/// `localhost/app:1`, `app:1`, `app`) into a repository name and tag, dropping
/// a registry host: cartorio is the registry now. Returns None when what is
/// left is not a valid name or tag.
pub fn split_image_ref(s: &str) -> Option<(RepoName, Option<Tag>)> {
    let s = s.split('@').next().unwrap_or(s);
    let (path, tag) = match s.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
        _ => (s, None),
    };
    let path = match path.split_once('/') {
        // Docker Hub's official images are `docker.io/library/NAME`; the
        // name people pull them by is `NAME`.
        Some(("docker.io" | "index.docker.io", rest)) => {
            rest.strip_prefix("library/").unwrap_or(rest)
        }
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => path,
    };
    let name = path.parse().ok()?;
    let tag = match tag {
        Some(t) => Some(t.parse().ok()?),
        None => None,
    };
    Some((name, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for ok in [
            "a",
            "library/busybox",
            "a.b_c__d---e/f0",
            "builds/app-1/x",
            "0",
        ] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "a//b", "/a", "a/", "..", "a/../b", "a/./b", "-a", "a-", "a___b", "a..b",
            "%2e%2e", "a b", "a:b", "ä",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", "a:b", "%2e", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!("sha256:xyz".parse::<Reference>().is_err());
        assert!("md5:00".parse::<Reference>().is_err());
    }

    #[test]
    fn image_refs_drop_the_registry_host() {
        let (n, t) = split_image_ref("docker.io/library/busybox:1.36").unwrap();
        assert_eq!((n.as_str(), t.unwrap().as_str()), ("busybox", "1.36"));
        let (n, _) = split_image_ref("docker.io/team/app:1").unwrap();
        assert_eq!(n.as_str(), "team/app");
        let (n, _) = split_image_ref("quay.io/library/x").unwrap();
        assert_eq!(n.as_str(), "library/x");
        let (n, t) = split_image_ref("localhost/app:v1").unwrap();
        assert_eq!((n.as_str(), t.unwrap().as_str()), ("app", "v1"));
        let (n, t) = split_image_ref("127.0.0.1:5000/a/b").unwrap();
        assert_eq!((n.as_str(), t), ("a/b", None));
        let (n, t) = split_image_ref("app").unwrap();
        assert_eq!((n.as_str(), t), ("app", None));
        assert!(split_image_ref("Bad/Name:x").is_none());
        // The tag is after the last ':', and only when no '/' follows it.
        let (n, t) = split_image_ref("registry.example.com:5000/team/app:1.0").unwrap();
        assert_eq!((n.as_str(), t.unwrap().as_str()), ("team/app", "1.0"));
        let (n, t) = split_image_ref("app:v2@sha256:abc").unwrap();
        assert_eq!((n.as_str(), t.unwrap().as_str()), ("app", "v2"));
        // Multi-byte text around the ':' is refused, not cut mid-character.
        assert!(split_image_ref("app:vé").is_none());
        assert!(split_image_ref("é:v1").is_none());
        assert!(split_image_ref("app:").is_none());
    }
}

macro_rules! serde_by_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_by_string!(RepoName);
serde_by_string!(Tag);
