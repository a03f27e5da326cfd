//! `images.toml`: which images cartorio serves and from where. Parsed and
//! validated once, before the server starts; every error names the file,
//! the line and the problem.
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::image::{ImageConfig, RepoName, Tag};
use crate::source::{HttpOptions, S3Options, SourceOptions};
pub use crate::template::Template;

/// How long a checked version is trusted before the source is asked again,
/// by default (`revalidate`). Keeps a busy tag from costing a stat (a HEAD,
/// remotely) per request while a replaced archive is still noticed within
/// a second.
pub const DEFAULT_REVALIDATE: std::time::Duration = std::time::Duration::from_secs(1);

/// The address `proxy` and `serve` listen on unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// One served image: a repository name, the archive and which tags.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub name: RepoName,
    /// A path or URL, as written.
    pub source: String,
    /// Tags to serve; None = the tags the archive records.
    pub tags: Option<Vec<Tag>>,
    /// Which image of a multi-image archive (`name:tag` or a tag as the
    /// archive records it).
    pub select: Option<String>,
    /// With `tags: None`, serve only the archive's images recorded under
    /// this name (used by `serve PATH` without a name).
    pub only_name: Option<RepoName>,
    /// Where this archive's published index is (`index = "URL"`); None:
    /// the source's URL plus `.cartorio-index`.
    pub index: Option<String>,
    pub config: ImageConfig,
    pub options: SourceOptions,
    /// Where in the config it was defined, for errors at start-up.
    pub origin: String,
}

/// A templated route: every repository under `prefix` is an archive whose
/// URL is `template` with `{repo}` (the rest of the name) and `{tag}`
/// filled in.
#[derive(Clone, Debug)]
pub struct RouteSpec {
    /// `""` or a repository name followed by `/`.
    pub prefix: String,
    pub template: Template,
    /// For a template without `{tag}`: which image of each archive.
    pub select: Option<String>,
    pub config: ImageConfig,
    pub options: SourceOptions,
    pub origin: String,
}

/// `[cache]`: where blobs are kept and how much (sizes like "20GiB").
/// `dir = "none"` turns the disk tier off.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: Option<String>,
    pub disk: Option<String>,
    pub memory: Option<String>,
}

/// `[tls]`: serve HTTPS with this certificate chain and key (PEM; paths
/// relative to the config's folder).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[auth]`: an htpasswd file, what anonymous clients may pull, and
/// `[[auth.allow]]` rules (see `registry::auth`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub htpasswd: Option<PathBuf>,
    pub anonymous: Option<Vec<String>>,
    #[serde(default)]
    pub allow: Vec<AllowConfig>,
}

/// `[[auth.allow]] users = ["alice"] repos = ["team/*"]`; `users = ["*"]`
/// is every user of the htpasswd file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowConfig {
    pub users: Vec<String>,
    pub repos: Vec<String>,
}

/// `[catalog]`: whether `/v2/_catalog` answers, and to whom.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Default true.
    pub enabled: Option<bool>,
    /// Only authenticated users may list (default false).
    pub authenticated: Option<bool>,
}

impl AuthConfig {
    /// The settings these values give; patterns checked, the htpasswd path
    /// taken from `base`.
    pub fn settings(&self, base: &Path) -> Result<crate::registry::auth::AuthSettings, String> {
        use crate::registry::auth::{AuthSettings, Pattern, Rule, Users};
        let patterns = |v: &[String]| {
            v.iter()
                .map(|p| p.parse::<Pattern>())
                .collect::<Result<Vec<_>, _>>()
        };
        let rules = self
            .allow
            .iter()
            .map(|a| {
                Ok(Rule {
                    users: if a.users.iter().any(|u| u == "*") {
                        Users::Any
                    } else {
                        Users::Named(a.users.clone())
                    },
                    repos: patterns(&a.repos)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(AuthSettings {
            htpasswd: self.htpasswd.as_ref().map(|p| base.join(p)),
            anonymous: self.anonymous.as_deref().map(patterns).transpose()?,
            rules,
        })
    }

    pub fn is_set(&self) -> bool {
        self.htpasswd.is_some() || self.anonymous.is_some() || !self.allow.is_empty()
    }
}

/// A validated config.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    /// `[tls]`, paths resolved against `base`.
    pub tls: Option<TlsConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served instead of
    /// `listen`.
    pub admin_listen: Option<String>,
    /// `[auth]`, checked (patterns parse); the htpasswd path is relative
    /// to `base`.
    pub auth: AuthConfig,
    pub catalog: CatalogConfig,
    pub images: Vec<ImageSpec>,
    pub routes: Vec<RouteSpec>,
    pub cache: CacheConfig,
    /// Relative sources are resolved against this (the config's folder).
    pub base: PathBuf,
    /// How long an archive's version is trusted before the source is asked
    /// again.
    pub revalidate: std::time::Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    tls: Option<TlsConfig>,
    auth: Option<Spanned<AuthConfig>>,
    #[serde(default)]
    catalog: CatalogConfig,
    revalidate: Option<Spanned<String>>,
    #[serde(default)]
    image: Vec<RawImage>,
    #[serde(default)]
    cache: CacheConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    name: Spanned<String>,
    source: Spanned<String>,
    tags: Option<Vec<Spanned<String>>>,
    select: Option<String>,
    index: Option<Spanned<String>>,
    #[serde(default)]
    config: ImageConfig,
    #[serde(default)]
    http: HttpOptions,
    #[serde(default)]
    s3: S3Options,
}

/// Default bound of the disk cache.
pub const DEFAULT_CACHE_DISK: u64 = 10 << 30;
/// Default bound of the memory cache: small enough that a server's whole
/// footprint stays under ~100 MiB.
pub const DEFAULT_CACHE_MEMORY: u64 = 64 << 20;

/// The default cache folder: `$XDG_CACHE_HOME/cartorio`, else
/// `~/.cache/cartorio`, else `/var/cache/cartorio`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .map(|d| d.join("cartorio"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/cartorio"))
}

/// Parses a size: `1048576`, `512KiB`, `256MiB`, `20GiB`, `1TiB` (binary),
/// `500MB`, `2GB` (decimal), `64M`, `1G` (binary).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at_checked(split)?;
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl CacheConfig {
    /// The cache settings these values give, defaults filled in; relative
    /// folders are taken from `base`.
    pub fn settings(&self, base: &Path) -> Result<crate::cache::CacheSettings, String> {
        let size = |v: &Option<String>, what: &str, default: u64| match v {
            None => Ok(default),
            Some(s) => parse_size(s).ok_or_else(|| {
                format!("cache.{what} = {s:?}: expected a size such as \"256MiB\" or \"20GiB\"")
            }),
        };
        let dir = match self.dir.as_deref() {
            None => Some(default_cache_dir()),
            Some("") | Some("none") => None,
            Some(d) => Some(base.join(d)),
        };
        Ok(crate::cache::CacheSettings {
            dir,
            disk: size(&self.disk, "disk", DEFAULT_CACHE_DISK)?,
            memory: size(&self.memory, "memory", DEFAULT_CACHE_MEMORY)?,
        })
    }
}

/// Parses `500ms`, `1s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at_checked(split)?;
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

/// The 1-based line a parser's byte offset falls on. The offset is counted
/// in bytes, not sliced, so one past the end or inside a multi-byte
/// character still names a line.
fn line_of(text: &str, span: Range<usize>) -> usize {
    text.bytes()
        .take(span.start)
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, path, &base)
    }

    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_of(text, span),
                message: e.message().trim_end().to_string(),
            },
            None => ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string().trim_end().to_string(),
            },
        })?;
        let invalid = |span: Range<usize>, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, span),
            message,
        };
        let mut images = Vec::new();
        let mut routes = Vec::new();
        for img in raw.image {
            let origin = format!("{}:{}", path.display(), line_of(text, img.name.span()));
            let options = SourceOptions {
                http: img.http,
                s3: img.s3,
            };
            if img.name.get_ref().contains('{') {
                let Some(prefix) = img.name.get_ref().strip_suffix("{repo}") else {
                    return Err(invalid(
                        img.name.span(),
                        "a templated name is PREFIX/{repo} or {repo}".into(),
                    ));
                };
                if !prefix.is_empty()
                    && prefix
                        .strip_suffix('/')
                        .and_then(|p| p.parse::<RepoName>().ok())
                        .is_none()
                {
                    return Err(invalid(
                        img.name.span(),
                        format!("{prefix:?} is not a repository name followed by /"),
                    ));
                }
                let template = Template::parse(img.source.get_ref())
                    .map_err(|e| invalid(img.source.span(), e))?;
                if img.tags.is_some() {
                    return Err(invalid(
                        img.name.span(),
                        "a templated route takes its tags from {tag} or the archives; drop `tags`"
                            .into(),
                    ));
                }
                if let Some(index) = &img.index {
                    return Err(invalid(
                        index.span(),
                        "`index` names one archive's sidecar; a templated route looks for each archive's URL + .cartorio-index".into(),
                    ));
                }
                routes.push(RouteSpec {
                    prefix: prefix.to_string(),
                    template,
                    select: img.select,
                    config: img.config,
                    options,
                    origin,
                });
                continue;
            }
            let name: RepoName = img
                .name
                .get_ref()
                .parse()
                .map_err(|e| invalid(img.name.span(), format!("{e}: names are lowercase letters, digits and . _ - separators, components joined by /")))?;
            let tags = match img.tags {
                None => None,
                Some(ts) => Some(
                    ts.iter()
                        .map(|t| {
                            t.get_ref()
                                .parse::<Tag>()
                                .map_err(|e| invalid(t.span(), e.to_string()))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            if img.source.get_ref().trim().is_empty() {
                return Err(invalid(img.source.span(), "source is empty".into()));
            }
            let index = match img.index {
                Some(i) if i.get_ref().trim().is_empty() => {
                    return Err(invalid(i.span(), "index is empty".into()));
                }
                i => i.map(|i| i.into_inner()),
            };
            images.push(ImageSpec {
                name,
                source: img.source.get_ref().clone(),
                tags,
                select: img.select,
                only_name: None,
                index,
                config: img.config,
                options,
                origin,
            });
        }
        if images.is_empty() && routes.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line: 1,
                message: "no [[image]] is configured".into(),
            });
        }
        let revalidate = match &raw.revalidate {
            None => DEFAULT_REVALIDATE,
            Some(s) => parse_duration(s.get_ref()).ok_or_else(|| {
                invalid(s.span(), format!("revalidate = {:?}: expected a duration such as \"500ms\", \"1s\" or \"5m\"", s.get_ref()))
            })?,
        };
        let auth = match raw.auth {
            None => AuthConfig::default(),
            Some(a) => {
                let span = a.span();
                let a = a.into_inner();
                a.settings(base)
                    .map_err(|e| invalid(span.clone(), format!("[auth]: {e}")))?;
                if a.htpasswd.is_none() && !a.allow.is_empty() {
                    return Err(invalid(
                        span,
                        "[auth]: [[auth.allow]] rules need an htpasswd file".into(),
                    ));
                }
                a
            }
        };
        Ok(Config {
            auth,
            catalog: raw.catalog,
            revalidate,
            listen: raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            tls: raw.tls.map(|t| TlsConfig {
                cert: base.join(t.cert),
                key: base.join(t.key),
            }),
            admin_listen: raw.admin_listen,
            images,
            routes,
            cache: raw.cache,
            base: base.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("images.toml"), Path::new("/etc/cartorio"))
    }

    #[test]
    fn parses_a_full_config() {
        let c = parse(
            r#"
listen = "0.0.0.0:5000"
[[image]]
name = "team/app"
source = "app.tar"
tags = ["v1", "latest"]
select = "docker.io/app:v1"
[image.config]
env = ["A=1"]
labels = { k = "v" }
[cache]
dir = "/var/cache/cartorio"
"#,
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:5000");
        assert_eq!(c.images[0].name.as_str(), "team/app");
        assert_eq!(c.images[0].tags.as_ref().unwrap().len(), 2);
        assert_eq!(c.images[0].config.env, Some(vec!["A=1".to_string()]));
        assert_eq!(c.images[0].origin, "images.toml:4");
        assert_eq!(c.base, Path::new("/etc/cartorio"));
    }

    #[test]
    fn errors_name_the_line_and_problem() {
        let e =
            parse("[[image]]\nname = \"app\"\nsource = \"a.tar\"\ncolour = \"red\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("images.toml:4: ") && msg.contains("colour"),
            "{msg}"
        );

        let e = parse("[[image]]\nname = \"App\"\nsource = \"a.tar\"\n").unwrap_err();
        assert_eq!(
            e.to_string().split(": ").next(),
            Some("images.toml:2"),
            "{e}"
        );

        let e =
            parse("[[image]]\nname = \"app\"\nsource = \"a.tar\"\ntags = [\"ok\",\n \"../x\"]\n")
                .unwrap_err();
        assert!(
            e.to_string().starts_with("images.toml:5: invalid tag"),
            "{e}"
        );

        assert!(parse("").unwrap_err().to_string().contains("no [[image]]"));

        let e = parse("revalidate = \"soon\"\n[[image]]\nname = \"a\"\nsource = \"a.tar\"\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("images.toml:1: revalidate"),
            "{e}"
        );
    }

    #[test]
    fn auth_tls_and_catalog_sections() {
        let c = parse(
            "[[image]]\nname = \"a\"\nsource = \"a.tar\"\n[tls]\ncert = \"t.crt\"\nkey = \"t.key\"\n\
             [auth]\nhtpasswd = \"htpasswd\"\nanonymous = [\"public/**\"]\n\
             [[auth.allow]]\nusers = [\"alice\"]\nrepos = [\"team/*\"]\n[catalog]\nenabled = false\n",
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().cert, Path::new("/etc/cartorio/t.crt"));
        let s = c.auth.settings(&c.base).unwrap();
        assert_eq!(s.htpasswd, Some(PathBuf::from("/etc/cartorio/htpasswd")));
        assert_eq!(s.rules.len(), 1);
        assert_eq!(c.catalog.enabled, Some(false));
        let e = parse(
            "[[image]]\nname = \"a\"\nsource = \"a.tar\"\n[auth]\nhtpasswd = \"h\"\nanonymous = [\"Pub/*\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("images.toml:4: [auth]"), "{e}");
        let e = parse("[[image]]\nname = \"a\"\nsource = \"a.tar\"\n[auth]\n[[auth.allow]]\nusers = [\"x\"]\nrepos = [\"**\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("need an htpasswd"), "{e}");
    }

    #[test]
    fn error_offsets_past_the_end_or_inside_a_character_name_a_line() {
        let text = "a = 1\nb = \"é\"\n";
        assert_eq!(line_of(text, 0..1), 1);
        assert_eq!(line_of(text, 6..7), 2);
        // Inside the two bytes of 'é' (byte 11): still line 2.
        assert_eq!(text.find('é'), Some(11));
        assert_eq!(line_of(text, 12..13), 2);
        // At and past the end: the line after the last newline.
        assert_eq!(line_of(text, text.len()..text.len()), 3);
        assert_eq!(line_of(text, 1000..1001), 3);
        assert_eq!(line_of("", 5..5), 1);
        // A config cut off inside a string that ends in a multi-byte
        // character is an error naming its line.
        let e = parse("[[image]]\nname = \"ã").unwrap_err();
        assert!(e.to_string().starts_with("images.toml:2: "), "{e}");
    }

    #[test]
    fn sizes_and_cache_settings() {
        assert_eq!(parse_size("256MiB"), Some(256 << 20));
        assert_eq!(parse_size("20GiB"), Some(20 << 30));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999TiB"), None);
        // A unit that is not ASCII is no unit, not a panic at the cut.
        assert_eq!(parse_size("5é"), None);
        assert_eq!(parse_size("é"), None);
        assert_eq!(parse_size(""), None);
        let c = CacheConfig {
            dir: Some("cache".into()),
            disk: Some("1GiB".into()),
            memory: None,
        };
        let s = c.settings(Path::new("/etc/cartorio")).unwrap();
        assert_eq!(s.dir, Some(PathBuf::from("/etc/cartorio/cache")));
        assert_eq!((s.disk, s.memory), (1 << 30, DEFAULT_CACHE_MEMORY));
        let off = CacheConfig {
            dir: Some("none".into()),
            ..Default::default()
        };
        assert_eq!(off.settings(Path::new("/")).unwrap().dir, None);
        let bad = CacheConfig {
            disk: Some("big".into()),
            ..Default::default()
        };
        assert!(
            bad.settings(Path::new("/"))
                .unwrap_err()
                .contains("cache.disk")
        );
    }

    #[test]
    fn durations_and_routes() {
        assert_eq!(
            parse_duration("500ms"),
            Some(std::time::Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("2m"),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(parse_duration("1"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5µs"), None);
        assert_eq!(parse_duration("µ"), None);
        let c = parse("revalidate = \"30s\"\n[[image]]\nname = \"builds/{repo}\"\nsource = \"s3://b/{repo}/{tag}.tar\"\n").unwrap();
        assert_eq!(c.revalidate, std::time::Duration::from_secs(30));
        assert_eq!(c.routes[0].prefix, "builds/");
        assert!(c.routes[0].template.has_tag());
        for bad in [
            "name = \"builds/{repo}/x\"\nsource = \"/s/{repo}.tar\"",
            "name = \"Bad/{repo}\"\nsource = \"/s/{repo}.tar\"",
            "name = \"b/{repo}\"\nsource = \"/s/{tag}.tar\"",
            "name = \"b/{repo}\"\nsource = \"/s/{repo}.tar\"\ntags = [\"x\"]",
        ] {
            let e = parse(&format!("[[image]]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().starts_with("images.toml:"), "{e}");
        }
    }
}
