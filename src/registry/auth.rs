//! Who may pull what: an htpasswd file of bcrypt hashes (what
//! `htpasswd -B` writes; Kubernetes `imagePullSecrets` send HTTP Basic),
//! rules from users to repository patterns, and what anonymous clients may
//! pull.
//!
//! Anonymous read of everything stays the default: [`Auth`] exists only
//! when the operator configures it. Then:
//! - a request with credentials that do not verify is 401, whatever it asks;
//! - an anonymous request for a repository the anonymous rule does not
//!   cover is 401 with `WWW-Authenticate: Basic` when there are users who
//!   might see it (that is how docker and containerd learn to send
//!   credentials), else it is hidden;
//! - an authenticated user asking for a repository no rule gives them gets
//!   `NAME_UNKNOWN`, the answer for a repository that does not exist.
//!
//! bcrypt costs tens of milliseconds by design, and every request of a
//! pull carries the credentials again. A successful verification is cached
//! for [`OK_TTL`] under an HMAC-SHA256 (random per-process key) of
//! `user:password`: the cache never holds a password or a hash an attacker
//! could test guesses against offline. Failures are cached too, apart
//! ([`BAD_TTL`]), so repeating a wrong password costs one bcrypt, and at
//! most [`BCRYPT_AT_ONCE`] verifications run at a time, on blocking
//! threads, so guessing cannot starve the server. An unknown user costs a
//! bcrypt as well (against a fixed hash) so timing does not tell which
//! users exist.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_lc_rs::hmac;
use base64::Engine as _;
use http::HeaderMap;
use moka::sync::Cache;
use tokio::sync::Semaphore;

/// How long a verified `user:password` is trusted without bcrypt.
pub const OK_TTL: Duration = Duration::from_secs(60);
/// How long a failed `user:password` is answered 401 without bcrypt.
pub const BAD_TTL: Duration = Duration::from_secs(10);
/// Credentials remembered (each way).
const CACHE_ENTRIES: u64 = 10_000;
/// bcrypt verifications running at once.
pub const BCRYPT_AT_ONCE: usize = 2;
/// How often, at most, the htpasswd file's metadata is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The cost of the hash checked for an unknown user when the file has no
/// user to copy it from (`htpasswd -B` uses 5).
const DUMMY_COST: u32 = 5;

/// A repository pattern: segments separated by `/`; `*` is exactly one
/// segment, `**` one or more; anything else is matched literally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segs: Vec<Seg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    One,
    Many,
}

impl std::str::FromStr for Pattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("an empty repository pattern".into());
        }
        let segs = s
            .split('/')
            .map(|seg| match seg {
                "*" => Ok(Seg::One),
                "**" => Ok(Seg::Many),
                "" => Err(format!("{s:?}: an empty segment")),
                _ if seg.contains('*') => Err(format!(
                    "{s:?}: `*` and `**` must be whole segments (team/*, builds/**)"
                )),
                _ if !seg.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                }) =>
                {
                    Err(format!(
                        "{s:?}: repository names are lowercase letters, digits and . _ -"
                    ))
                }
                _ => Ok(Seg::Lit(seg.to_string())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern {
            text: s.to_string(),
            segs,
        })
    }
}

impl Pattern {
    pub fn matches(&self, repo: &str) -> bool {
        let parts: Vec<&str> = repo.split('/').collect();
        match_segs(&self.segs, &parts)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn match_segs(pat: &[Seg], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((Seg::Lit(l), rest)) => parts
            .split_first()
            .is_some_and(|(p, tail)| p == l && match_segs(rest, tail)),
        Some((Seg::One, rest)) => parts
            .split_first()
            .is_some_and(|(_, tail)| match_segs(rest, tail)),
        // One or more parts: try every non-empty prefix.
        Some((Seg::Many, rest)) => {
            (1..=parts.len()).any(|n| parts.get(n..).is_some_and(|tail| match_segs(rest, tail)))
        }
    }
}

/// Which users a rule is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Users {
    /// `users = ["*"]`: anyone who logs in.
    Any,
    Named(Vec<String>),
}

/// Users who may pull repositories matching any of `repos`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub users: Users,
    pub repos: Vec<Pattern>,
}

/// What [`Auth`] is built from (config file or flags).
#[derive(Clone, Debug, Default)]
pub struct AuthSettings {
    pub htpasswd: Option<PathBuf>,
    /// None: nothing without an htpasswd file... see [`Auth::new`].
    pub anonymous: Option<Vec<Pattern>>,
    pub rules: Vec<Rule>,
}

/// Who a request is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    User(Arc<str>),
}

/// Credentials were sent and do not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the Authorization header is not HTTP Basic with base64 user:password")]
    Malformed,
    #[error("wrong user name or password")]
    Wrong,
}

/// The users of an htpasswd file: name → bcrypt hash.
#[derive(Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A bcrypt hash of a random string at the cost of the file's first
    /// user: checked for unknown users, so a miss costs what a hit costs.
    dummy: String,
}

impl Htpasswd {
    /// Parses `user:hash` lines. Blank lines and `#` comments are skipped;
    /// a line whose hash is not bcrypt (`$2y$`, `$2b$`, `$2a$`: MD5
    /// `$apr1$`, `{SHA}`, crypt) is logged and ignored: those hashes are
    /// too cheap to guard a registry.
    pub fn parse(text: &str, origin: &Path) -> Htpasswd {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                tracing::warn!(file = %origin.display(), line = i + 1, "htpasswd: not `user:hash`; line ignored");
                continue;
            };
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                tracing::warn!(
                    file = %origin.display(),
                    line = i + 1,
                    user,
                    "htpasswd: only bcrypt hashes are accepted (htpasswd -B); user ignored"
                );
                continue;
            }
            users.insert(user.to_string(), hash.to_string());
        }
        let cost = users
            .values()
            .next()
            .and_then(|h| h.get(4..6))
            .and_then(|c| c.parse().ok())
            .filter(|c| (4..=16).contains(c))
            .unwrap_or(DUMMY_COST);
        let dummy = bcrypt::hash(format!("{:p}", &users), cost).unwrap_or_default();
        Htpasswd { users, dummy }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

type Stamp = Option<(Option<SystemTime>, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len(), m.ino()))
}

struct FileState {
    users: Arc<Htpasswd>,
    stamp: Stamp,
    next_check: Instant,
}

/// The configured policy, with its credential caches.
pub struct Auth {
    file: Option<(PathBuf, Mutex<FileState>)>,
    anonymous: Vec<Pattern>,
    rules: Vec<Rule>,
    key: hmac::Key,
    ok: Cache<[u8; 32], Arc<str>>,
    bad: Cache<[u8; 32], ()>,
    bcrypt: Arc<Semaphore>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("anonymous", &self.anonymous)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Reads the htpasswd file (it must exist and be readable at start-up).
    /// Defaults: with an htpasswd file, anonymous clients pull nothing and,
    /// when there is no rule, every user pulls everything; without one,
    /// anonymous clients pull what `anonymous` lists (everything if unset).
    pub fn new(settings: AuthSettings) -> Result<Auth, String> {
        let has_users = settings.htpasswd.is_some();
        if !has_users && !settings.rules.is_empty() {
            return Err("auth rules name users, but no htpasswd file is set".into());
        }
        let file = match settings.htpasswd {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
                let users = Htpasswd::parse(&text, &path);
                tracing::info!(file = %path.display(), users = users.len(), "auth: htpasswd loaded");
                let st = FileState {
                    users: Arc::new(users),
                    stamp: stamp(&path),
                    next_check: Instant::now() + CHECK_EVERY,
                };
                Some((path, Mutex::new(st)))
            }
        };
        let all: Pattern = "**".parse()?;
        let anonymous = settings.anonymous.unwrap_or_else(|| {
            if has_users {
                Vec::new()
            } else {
                vec![all.clone()]
            }
        });
        let mut rules = settings.rules;
        if has_users && rules.is_empty() {
            rules.push(Rule {
                users: Users::Any,
                repos: vec![all],
            });
        }
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng)
            .map_err(|_| "cannot draw a random key".to_string())?;
        Ok(Auth {
            file,
            anonymous,
            rules,
            key,
            ok: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(OK_TTL)
                .build(),
            bad: Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(BAD_TTL)
                .build(),
            bcrypt: Arc::new(Semaphore::new(BCRYPT_AT_ONCE)),
        })
    }

    /// Whether logging in can change anything (there are users).
    pub fn has_users(&self) -> bool {
        self.file.is_some()
    }

    /// Whether anonymous clients may pull nothing at all (then `/v2/`
    /// answers them 401, which is how clients discover they must log in).
    pub fn anonymous_pulls_nothing(&self) -> bool {
        self.anonymous.is_empty()
    }

    /// Whether `who` may pull from repository `repo`.
    pub fn may_pull(&self, who: &Identity, repo: &str) -> bool {
        if self.anonymous.iter().any(|p| p.matches(repo)) {
            return true;
        }
        let Identity::User(user) = who else {
            return false;
        };
        self.rules.iter().any(|r| {
            let for_user = match &r.users {
                Users::Any => true,
                Users::Named(names) => names.iter().any(|n| n.as_str() == &**user),
            };
            for_user && r.repos.iter().any(|p| p.matches(repo))
        })
    }

    /// The users, re-read when the file changed (at most every
    /// [`CHECK_EVERY`]); an unreadable new version keeps the old users.
    fn users(&self) -> Option<Arc<Htpasswd>> {
        let (path, state) = self.file.as_ref()?;
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= st.next_check {
            st.next_check = now + CHECK_EVERY;
            let new = stamp(path);
            if new != st.stamp {
                st.stamp = new;
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        let users = Htpasswd::parse(&text, path);
                        tracing::info!(file = %path.display(), users = users.len(), "auth: htpasswd reloaded");
                        st.users = Arc::new(users);
                        // Removed users and changed passwords take effect now.
                        self.ok.invalidate_all();
                        self.bad.invalidate_all();
                    }
                    Err(e) => tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "auth: cannot re-read the htpasswd file; keeping the users loaded before"
                    ),
                }
            }
        }
        Some(Arc::clone(&st.users))
    }

    /// Who sent this request: anonymous without `Authorization`, the user
    /// when Basic credentials verify, else rejected.
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity, Rejected> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Ok(Identity::Anonymous);
        };
        // containers/image (skopeo, podman) without credentials answers a
        // challenge with `Basic Og==`: an empty user and password is anonymous.
        if is_empty_basic(value.as_bytes()) {
            return Ok(Identity::Anonymous);
        }
        let (user, password) = basic_credentials(value.as_bytes()).ok_or(Rejected::Malformed)?;
        let Some(users) = self.users() else {
            // No users: credentials cannot be right. (Clients send them only
            // after a 401, which this server then never gives.)
            return Err(Rejected::Wrong);
        };
        let mut material = Vec::with_capacity(user.len() + 1 + password.len());
        material.extend_from_slice(user.as_bytes());
        material.push(b':');
        material.extend_from_slice(&password);
        let tag = hmac::sign(&self.key, &material);
        // An HMAC-SHA256 tag (see `Auth::new`) is 32 bytes.
        let Ok(key) = <[u8; 32]>::try_from(tag.as_ref()) else {
            return Err(Rejected::Wrong);
        };
        if let Some(name) = self.ok.get(&key) {
            return Ok(Identity::User(name));
        }
        if self.bad.contains_key(&key) {
            return Err(Rejected::Wrong);
        }
        let (known, hash) = match users.users.get(&user) {
            Some(h) => (true, h.clone()),
            None => (false, users.dummy.clone()),
        };
        let Ok(_permit) = self.bcrypt.acquire().await else {
            return Err(Rejected::Wrong);
        };
        let verified =
            tokio::task::spawn_blocking(move || bcrypt::verify(&password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if known && verified {
            let name: Arc<str> = Arc::from(user.as_str());
            self.ok.insert(key, Arc::clone(&name));
            Ok(Identity::User(name))
        } else {
            self.bad.insert(key, ());
            Err(Rejected::Wrong)
        }
    }
}

/// `Basic base64(":")`: no user, no password.
fn is_empty_basic(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    value.split_at_checked(6).is_some_and(|(scheme, rest)| {
        scheme.eq_ignore_ascii_case(b"basic ")
            && base64::engine::general_purpose::STANDARD
                .decode(rest.trim_ascii())
                .is_ok_and(|d| d == b":")
    })
}

/// `Basic base64(user:password)` → (user, password). The scheme is
/// case-insensitive; the user must be UTF-8 and colon-free (the first colon
/// ends it); the password is any bytes. None for anything else.
pub fn basic_credentials(value: &[u8]) -> Option<(String, Vec<u8>)> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let mut halves = decoded.splitn(2, |&b| b == b':');
    let (user, password) = (halves.next()?, halves.next()?);
    let user = std::str::from_utf8(user).ok()?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_segments() {
        assert!(p("team/*").matches("team/app"));
        assert!(!p("team/*").matches("team/app/sub"));
        assert!(!p("team/*").matches("team"));
        assert!(!p("team/*").matches("teams/app"));
        assert!(p("builds/**").matches("builds/a"));
        assert!(p("builds/**").matches("builds/a/b/c"));
        assert!(!p("builds/**").matches("builds"));
        assert!(!p("builds/**").matches("other/builds/a"));
        assert!(p("**").matches("x"));
        assert!(p("**").matches("x/y/z"));
        assert!(p("*/app").matches("team/app"));
        assert!(!p("*/app").matches("a/b/app"));
        assert!(p("a/**/z").matches("a/b/c/z"));
        assert!(!p("a/**/z").matches("a/z"));
        assert!(p("public/hello").matches("public/hello"));
        assert!(!p("public/hello").matches("public/hello2"));
        for bad in ["", "team/", "/x", "te*m/a", "Team/a", "a//b", "a/***"] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad:?}");
        }
    }

    fn auth(anonymous: Option<&[&str]>, rules: &[(&[&str], &[&str])]) -> Auth {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, "").unwrap();
        Auth::new(AuthSettings {
            htpasswd: Some(file),
            anonymous: anonymous.map(|a| a.iter().map(|s| p(s)).collect()),
            rules: rules
                .iter()
                .map(|(u, r)| Rule {
                    users: if u == &["*"] {
                        Users::Any
                    } else {
                        Users::Named(u.iter().map(|s| s.to_string()).collect())
                    },
                    repos: r.iter().map(|s| p(s)).collect(),
                })
                .collect(),
        })
        .unwrap()
    }

    #[test]
    fn rules_map_users_to_repositories() {
        let alice = Identity::User("alice".into());
        let bob = Identity::User("bob".into());
        let a = auth(
            Some(&["public/**"]),
            &[(&["alice"], &["team/*"]), (&["*"], &["shared"])],
        );
        assert!(a.may_pull(&Identity::Anonymous, "public/x/y"));
        assert!(!a.may_pull(&Identity::Anonymous, "team/app"));
        assert!(a.may_pull(&alice, "team/app"));
        assert!(a.may_pull(&alice, "public/x"));
        assert!(a.may_pull(&bob, "shared"));
        assert!(!a.may_pull(&bob, "team/app"));
        assert!(!a.anonymous_pulls_nothing());

        // htpasswd without rules: users pull everything, anonymous nothing.
        let a = auth(None, &[]);
        assert!(a.may_pull(&bob, "any/thing"));
        assert!(!a.may_pull(&Identity::Anonymous, "any/thing"));
        assert!(a.anonymous_pulls_nothing());

        // No htpasswd: anonymous pulls what `anonymous` says (all by default).
        let open = Auth::new(AuthSettings::default()).unwrap();
        assert!(open.may_pull(&Identity::Anonymous, "x/y"));
        let rules_without_users = Auth::new(AuthSettings {
            rules: vec![Rule {
                users: Users::Any,
                repos: vec![p("**")],
            }],
            ..Default::default()
        });
        assert!(rules_without_users.is_err());
    }

    #[test]
    fn htpasswd_takes_bcrypt_only() {
        let text = "# comment\n\nalice:$2y$05$abcdefghijklmnopqrstuuJ0Nl4Go7M8M2bL1sNn7A9Xx9Qz0hYy6\n\
                    md5:$apr1$xyz$abc\nsha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nbob:$2b$10$x\nnocolon\n";
        let h = Htpasswd::parse(text, Path::new("htpasswd"));
        let mut names: Vec<_> = h.users.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn basic_header_parsing_never_panics() {
        let enc = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            basic_credentials(format!("Basic {}", enc(b"alice:pw:with:colons")).as_bytes()),
            Some(("alice".into(), b"pw:with:colons".to_vec()))
        );
        assert_eq!(
            basic_credentials(format!("bAsIc   {}", enc(b"a:")).as_bytes()),
            Some(("a".into(), b"".to_vec()))
        );
        for bad in [
            b"".to_vec(),
            b"Basic".to_vec(),
            b"Basic ".to_vec(),
            b"Bearer abc".to_vec(),
            b"Basic !!!notbase64".to_vec(),
            format!("Basic {}", enc(b"nocolon")).into_bytes(),
            format!("Basic {}", enc(b":pw")).into_bytes(),
            format!("Basic {}", enc(b"\xff\xfe:pw")).into_bytes(),
            b"Basic \xff\xfe\xfd".to_vec(),
            "Básic xyz".as_bytes().to_vec(),
        ] {
            assert_eq!(basic_credentials(&bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn verifies_and_caches_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("htpasswd");
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(&file, format!("alice:{hash}\n")).unwrap();
        let a = Auth::new(AuthSettings {
            htpasswd: Some(file),
            ..Default::default()
        })
        .unwrap();
        let hdr = |user: &str, pw: &str| {
            let mut h = HeaderMap::new();
            let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            h.insert(
                http::header::AUTHORIZATION,
                format!("Basic {v}").parse().unwrap(),
            );
            h
        };
        for _ in 0..2 {
            assert_eq!(
                a.identify(&hdr("alice", "s3cret")).await,
                Ok(Identity::User("alice".into()))
            );
        }
        assert_eq!(
            a.identify(&hdr("alice", "wrong")).await,
            Err(Rejected::Wrong)
        );
        assert_eq!(
            a.identify(&hdr("mallory", "s3cret")).await,
            Err(Rejected::Wrong)
        );
        assert_eq!(a.identify(&HeaderMap::new()).await, Ok(Identity::Anonymous));
        let mut empty = HeaderMap::new();
        empty.insert(http::header::AUTHORIZATION, "Basic Og==".parse().unwrap());
        assert_eq!(a.identify(&empty).await, Ok(Identity::Anonymous));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Basic \xff\xff").unwrap(),
        );
        assert_eq!(a.identify(&h).await, Err(Rejected::Malformed));
        // A wrong password is never remembered as a success.
        assert_eq!(
            a.identify(&hdr("alice", "wrong")).await,
            Err(Rejected::Wrong)
        );
    }
}
