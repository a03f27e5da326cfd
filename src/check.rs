//! `cartorio check`: what `nginx -t` is to nginx. Loads a config with the
//! same loader `proxy` uses, opens every source URL the way the catalog
//! would (without touching the network), and optionally (`--reach`) stats
//! each static source. Nothing is indexed and nothing is served, so it is
//! cheap enough for CI and for a pre-rollout hook.
use std::fmt::Write as _;
use std::path::Path;

use crate::catalog::Location;
use crate::config::{Config, RouteSpec};
use crate::image::Tag;
use crate::source::Sources;

/// Checks the config at `path`. On success, the report of what would be
/// served (one line per image or route); on failure, one message that
/// starts with `FILE:LINE:` where the problem has a line.
pub async fn check(path: &Path, reach: bool) -> Result<String, String> {
    let cfg = Config::load(path).map_err(|e| e.to_string())?;
    let settings = cfg
        .cache
        .settings(&cfg.base)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let sources = Sources::new();
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(
        out,
        "  listen {}, revalidate {:?}",
        cfg.listen, cfg.revalidate
    );
    let _ = writeln!(
        out,
        "  cache {}, disk {} MiB, memory {} MiB",
        settings
            .dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_else(|| "none (no disk tier)".into()),
        settings.disk >> 20,
        settings.memory >> 20
    );
    for spec in &cfg.images {
        let location = Location::open(&sources, &spec.source, &spec.options, Some(&cfg.base))
            .map_err(|e| format!("{}: {e}", spec.origin))?;
        let tags = match &spec.tags {
            Some(t) => t.iter().map(Tag::as_str).collect::<Vec<_>>().join(","),
            None => "(the archive's tags)".into(),
        };
        let mut line = format!(
            "  {}:{tags} <- {} ({})",
            spec.name,
            spec.source,
            kind(&spec.source)
        );
        if let Some(sel) = &spec.select {
            let _ = write!(line, " select {sel}");
        }
        if reach {
            let reached = match &location {
                Location::Tar(s) => s
                    .stat()
                    .await
                    .map(|st| format!("{} bytes, version {}", st.size, st.version)),
                Location::Dir(p) => Ok(format!("folder {}", p.display())),
            };
            let stat = reached.map_err(|e| format!("{}: cannot reach: {e}", spec.origin))?;
            let _ = write!(line, " [reached: {stat}]");
        }
        let _ = writeln!(out, "{line}");
    }
    for route in &cfg.routes {
        check_route(&sources, route, &cfg.base)?;
        let source = route.template.to_string();
        let _ = writeln!(
            out,
            "  {}{{repo}} <- {source} ({}, templated{})",
            route.prefix,
            kind(&source),
            if reach { ", not reached" } else { "" }
        );
    }
    Ok(out)
}

/// A route's URL with sample values filled in must open like a static
/// source: this catches an unsupported scheme or an s3:// URL without a
/// bucket before the first client does.
fn check_route(sources: &Sources, route: &RouteSpec, base: &Path) -> Result<(), String> {
    let tag: Tag = "latest"
        .parse()
        .map_err(|e| format!("{}: {e}", route.origin))?;
    let url = route.template.fill("sample/repo", Some(&tag));
    Location::open(sources, &url, &route.options, Some(base))
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", route.origin))
}

fn kind(source: &str) -> &'static str {
    if source.starts_with("s3://") {
        "s3"
    } else if source.starts_with("http://") || source.starts_with("https://") {
        "http"
    } else {
        "file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("images.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }

    const GOOD: &str = r#"listen = "0.0.0.0:5000"
[[image]]
name = "team/app"
source = "app.tar"
tags = ["v1", "latest"]

[[image]]
name = "remote/web"
source = "https://example.com/web.tar"

[[image]]
name = "bucket/base"
source = "s3://artifacts/base/image.tar"
[image.s3]
region = "us-east-1"

[[image]]
name = "builds/{repo}"
source = "s3://artifacts/builds/{repo}/{tag}/image.tar"
[image.s3]
region = "us-east-1"

[cache]
dir = "none"
memory = "128MiB"
"#;

    #[tokio::test]
    async fn reports_what_would_be_served_without_reaching() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // app.tar does not exist: without --reach nothing is stat'ed.
        let p = write(tmp.path(), GOOD);
        let out = check(&p, false).await.expect("a valid config");
        assert!(out.starts_with(&format!("{}: ok\n", p.display())), "{out}");
        for want in [
            "listen 0.0.0.0:5000",
            "cache none (no disk tier), disk 10240 MiB, memory 128 MiB",
            "team/app:v1,latest <- app.tar (file)",
            "remote/web:(the archive's tags) <- https://example.com/web.tar (http)",
            "bucket/base:(the archive's tags) <- s3://artifacts/base/image.tar (s3)",
            "builds/{repo} <- s3://artifacts/builds/{repo}/{tag}/image.tar (s3, templated)",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }

    #[tokio::test]
    async fn reach_stats_static_sources() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = write(
            tmp.path(),
            "[[image]]\nname = \"app\"\nsource = \"app.tar\"\n\n[[image]]\nname = \"gone\"\nsource = \"gone.tar\"\n",
        );
        std::fs::write(tmp.path().join("app.tar"), b"12345").expect("write");
        let e = check(&p, true).await.expect_err("gone.tar is missing");
        assert!(
            e.starts_with(&format!("{}:6: cannot reach:", p.display())),
            "{e}"
        );
        std::fs::write(tmp.path().join("gone.tar"), b"").expect("write");
        let out = check(&p, true).await.expect("both exist");
        assert!(
            out.contains("app:(the archive's tags) <- app.tar (file) [reached: 5 bytes"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn errors_name_file_line_and_problem() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cases = [
            // unsupported scheme on a static source
            (
                "[[image]]\nname = \"a\"\nsource = \"a.tar\"\n[[image]]\nname = \"b\"\nsource = \"ftp://h/b.tar\"\n",
                ":5: ftp://h/b.tar: unsupported source",
            ),
            // s3 without a bucket
            (
                "[[image]]\nname = \"a\"\nsource = \"s3:///key.tar\"\n",
                ":2: s3:///key.tar: an s3:// URL needs a bucket",
            ),
            // templated route with an unsupported scheme
            (
                "[[image]]\nname = \"b/{repo}\"\nsource = \"gopher://h/{repo}.tar\"\n",
                ":2: gopher://h/sample/repo.tar: unsupported source",
            ),
            // the loader's own errors come through unchanged
            (
                "[[image]]\nname = \"Bad\"\nsource = \"a.tar\"\n",
                ":2: invalid",
            ),
        ];
        for (text, want) in cases {
            let p = write(tmp.path(), text);
            let e = check(&p, false).await.expect_err(text);
            let want = format!("{}{want}", p.display());
            assert!(e.starts_with(&want), "got {e:?}, want {want:?}");
        }
        let p = write(
            tmp.path(),
            "[[image]]\nname = \"a\"\nsource = \"a.tar\"\n[cache]\ndisk = \"huge\"\n",
        );
        let e = check(&p, false).await.expect_err("bad size");
        assert!(e.contains("cache.disk = \"huge\""), "{e}");
    }
}
