//! URL templates of templated routes: `s3://bucket/builds/{repo}/{tag}/image.tar`.
//! Values are substituted only after they parsed as a [`RepoName`] or a
//! [`Tag`], so nothing a client sends can add `..`, `%`-escapes or extra
//! path components beyond what the grammar allows.
use crate::image::{RepoName, Tag};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Repo,
    Tag,
}

/// A parsed source template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The template as written (`s3://b/{repo}/{tag}.tar`).
impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.parts {
            match p {
                Part::Lit(s) => f.write_str(s)?,
                Part::Repo => f.write_str("{repo}")?,
                Part::Tag => f.write_str("{tag}")?,
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses a template; `{repo}` must appear once, `{tag}` at most once,
    /// and no other `{...}`.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some((lit, after)) = rest.split_once('{') {
            if !lit.is_empty() {
                parts.push(Part::Lit(lit.to_string()));
            }
            let (name, tail) = after
                .split_once('}')
                .ok_or_else(|| format!("unclosed {{ in {s:?}"))?;
            match name {
                "repo" => parts.push(Part::Repo),
                "tag" => parts.push(Part::Tag),
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in {s:?} (use {{repo}} and {{tag}})"
                    ));
                }
            }
            rest = tail;
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let count = |p: Part| parts.iter().filter(|x| **x == p).count();
        if count(Part::Repo) != 1 || count(Part::Tag) > 1 {
            return Err(format!(
                "{s:?} must contain {{repo}} once and {{tag}} at most once"
            ));
        }
        if parts
            .iter()
            .zip(parts.iter().skip(1))
            .any(|(a, b)| !matches!(a, Part::Lit(_)) && !matches!(b, Part::Lit(_)))
        {
            return Err(format!(
                "{s:?}: {{repo}} and {{tag}} must be separated by text"
            ));
        }
        Ok(Template { parts })
    }

    pub fn has_tag(&self) -> bool {
        self.parts.contains(&Part::Tag)
    }

    /// The URL for a repository (the part a route's prefix matched) and tag.
    pub fn fill(&self, repo: &str, tag: Option<&Tag>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Repo => out.push_str(repo),
                Part::Tag => out.push_str(tag.map(Tag::as_str).unwrap_or("")),
            }
        }
        out
    }

    /// The literal text before the first placeholder: what to list for
    /// `_catalog`.
    pub fn list_prefix(&self) -> String {
        match self.parts.first() {
            Some(Part::Lit(s)) => s.clone(),
            _ => String::new(),
        }
    }

    /// The text before `{tag}` with `{repo}` filled: what to list for a
    /// repository's tags.
    pub fn tag_prefix(&self, repo: &str) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Repo => out.push_str(repo),
                Part::Tag => return Some(out),
            }
        }
        None
    }

    /// Recovers `(repo, tag)` from a listed URL, when it matches and both
    /// parse as a repository name and a tag.
    pub fn parse_url(&self, url: &str) -> Option<(String, Option<Tag>)> {
        let mut repo = None;
        let mut tag = None;
        if !matches(&self.parts, url, &mut repo, &mut tag) {
            return None;
        }
        let repo: String = repo?;
        repo.parse::<RepoName>().ok()?;
        let tag = match tag {
            Some(t) => Some(t.parse::<Tag>().ok()?),
            None => None,
        };
        Some((repo, tag))
    }
}

/// Backtracking match; `{tag}` never spans a `/`. Templates have at most
/// two placeholders, so this is cheap.
fn matches(parts: &[Part], s: &str, repo: &mut Option<String>, tag: &mut Option<String>) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return s.is_empty();
    };
    match first {
        Part::Lit(l) => s
            .strip_prefix(l.as_str())
            .is_some_and(|r| matches(rest, r, repo, tag)),
        Part::Repo | Part::Tag => {
            let is_tag = *first == Part::Tag;
            for (i, c) in s.char_indices().map(|(i, c)| (i + c.len_utf8(), c)) {
                if is_tag && c == '/' {
                    break;
                }
                let Some((value, after)) = s.split_at_checked(i) else {
                    continue;
                };
                if matches(rest, after, repo, tag) {
                    let v = Some(value.to_string());
                    if is_tag {
                        *tag = v;
                    } else {
                        *repo = v;
                    }
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_parses_back() {
        let t = Template::parse("s3://artifacts/builds/{repo}/{tag}/image.tar").unwrap();
        assert!(t.has_tag());
        let tag: Tag = "v1.2".parse().unwrap();
        let url = t.fill("team/app", Some(&tag));
        assert_eq!(url, "s3://artifacts/builds/team/app/v1.2/image.tar");
        assert_eq!(t.parse_url(&url), Some(("team/app".to_string(), Some(tag))));
        assert_eq!(t.list_prefix(), "s3://artifacts/builds/");
        assert_eq!(
            t.tag_prefix("team/app").unwrap(),
            "s3://artifacts/builds/team/app/"
        );
        // Keys that do not fit the template, or whose parts are not a
        // valid name and tag, are not images.
        assert_eq!(t.parse_url("s3://artifacts/builds/app/v1/other.tar"), None);
        assert_eq!(t.parse_url("s3://artifacts/builds/App/v1/image.tar"), None);
        assert_eq!(t.parse_url("s3://artifacts/builds/app/.v1/image.tar"), None);
        assert_eq!(t.parse_url("s3://artifacts/builds/image.tar"), None);
    }

    #[test]
    fn without_a_tag() {
        let t = Template::parse("/srv/{repo}.tar").unwrap();
        assert!(!t.has_tag());
        assert_eq!(t.fill("a/b", None), "/srv/a/b.tar");
        assert_eq!(t.parse_url("/srv/a/b.tar"), Some(("a/b".to_string(), None)));
        assert_eq!(t.tag_prefix("a"), None);
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "s3://b/{tag}",
            "s3://b/{repo}/{repo}",
            "s3://b/{repo}{tag}",
            "s3://b/{name}",
            "s3://b/{repo",
            "s3://b/{répo}",
            "s3://b/{repo}/{",
            "s3://b/{repo}/é{tãg",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Template::parse("s3://b/{ré}").unwrap_err(),
            "unknown placeholder {ré} in \"s3://b/{ré}\" (use {repo} and {tag})"
        );
    }

    #[test]
    fn multi_byte_literals_and_urls() {
        let t = Template::parse("/srv/ç/{repo}/é/{tag}.tär").unwrap();
        assert_eq!(t.to_string(), "/srv/ç/{repo}/é/{tag}.tär");
        let tag: Tag = "v1".parse().unwrap();
        let url = t.fill("a/b", Some(&tag));
        assert_eq!(url, "/srv/ç/a/b/é/v1.tär");
        assert_eq!(t.parse_url(&url), Some(("a/b".to_string(), Some(tag))));
        assert_eq!(t.tag_prefix("a/b").unwrap(), "/srv/ç/a/b/é/");
        // Multi-byte text where a name or tag goes is not an image.
        assert_eq!(t.parse_url("/srv/ç/ã/é/v1.tär"), None);
        assert_eq!(t.parse_url("/srv/ç/a/é/vé.tär"), None);
        assert_eq!(t.parse_url("/srv/ç/a/é/v1.tä"), None);
    }
}
