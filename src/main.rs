//! The `cartorio` command: `proxy`, `serve`, `inspect` and `check`.
// As in the library: no unwrap, unchecked indexing or string slicing outside
// tests.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::indexing_slicing, clippy::string_slice)
)]
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use cartorio::archive::{self, Archive, ArchiveRef, Container, Root};
use cartorio::cache::BlobCache;
use cartorio::catalog::{Catalog, DEFAULT_REVALIDATE, Location};
use cartorio::config::{CacheConfig, Config, DEFAULT_LISTEN, ImageSpec};
use cartorio::image::{ImageConfig, RepoName, Tag};
use cartorio::logging::LogFormat;
use cartorio::registry::tls::{Tls, TlsFiles};
use cartorio::registry::{Endpoints, Frontend, Readiness};
use cartorio::reload::{Reloadable, Swap};
use cartorio::source::Sources;

#[derive(Parser)]
#[command(
    name = "cartorio",
    version,
    about = "Serve container images straight out of tarballs over the OCI Distribution API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as one JSON object per line (stderr; filter
    /// with RUST_LOG, default info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the images listed in a config file.
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides the config's `listen`.
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        front: FrontArgs,
    },
    /// Serve archives given on the command line, without a config file.
    Serve {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
        /// Disk cache folder ("none" for no disk cache) [default: $XDG_CACHE_HOME/cartorio]
        #[arg(long)]
        cache_dir: Option<String>,
        /// Disk cache bound, e.g. 20GiB [default: 10GiB]
        #[arg(long)]
        cache_disk: Option<String>,
        /// Memory cache bound, e.g. 256MiB [default: 64MiB]
        #[arg(long)]
        cache_memory: Option<String>,
        /// `[NAME[:TAG]=]PATH`. Without NAME, the names and tags the archive
        /// records are used.
        #[arg(required = true, value_name = "[NAME[:TAG]=]PATH")]
        archives: Vec<String>,
        #[command(flatten)]
        limits: LimitFlags,
        #[command(flatten)]
        front: FrontArgs,
    },
    /// Check a config file (like `nginx -t`): parse it, validate every
    /// route and source URL, print what would be served.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also stat each static source (files, HTTP HEAD, S3 HEAD).
        #[arg(long)]
        reach: bool,
    },
    /// Index an archive once and write its sidecar (TOC, documents,
    /// digests, seek points), to publish next to it as
    /// `SOURCE.cartorio-index`: cartorio then reads that instead of
    /// walking (or decompressing) the archive.
    Index {
        source: String,
        /// Where to write [default: SOURCE.cartorio-index for a local path]
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Show what cartorio would serve from an archive.
    Inspect {
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// Work on a disk cache folder.
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Hash every stored blob and remove those that are not their digest
    /// (they are fetched again when next pulled). Exits non-zero when any
    /// was bad.
    Verify {
        /// The cache folder [default: $XDG_CACHE_HOME/cartorio]
        dir: Option<PathBuf>,
    },
}

/// What one client may hold, and how long shutdown waits.
#[derive(clap::Args)]
struct LimitFlags {
    /// Close a connection with no request in flight after this long
    #[arg(long, default_value = "30s", value_parser = duration)]
    idle_timeout: std::time::Duration,
    /// Drop a response whose client takes no bytes for this long
    #[arg(long, default_value = "30s", value_parser = duration)]
    write_timeout: std::time::Duration,
    /// Connections served at once; more wait in the listen backlog
    /// [default: half the open-file limit, at most 65536]
    #[arg(long)]
    max_connections: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests may finish
    #[arg(long, default_value = "30s", value_parser = duration)]
    drain_timeout: std::time::Duration,
}

impl LimitFlags {
    fn limits(&self) -> cartorio::registry::Limits {
        cartorio::registry::Limits {
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            max_connections: self
                .max_connections
                .unwrap_or_else(cartorio::registry::default_max_connections),
            drain_timeout: self.drain_timeout,
        }
    }
}

/// How `proxy` and `serve` face clients: TLS, the admin listener. On
/// `proxy` these override the config file's `[tls]` and `admin_listen`.
#[derive(clap::Args, Clone, Debug, Default)]
struct FrontArgs {
    /// PEM certificate chain: serve HTTPS (HTTP/2 by ALPN) with --tls-key.
    /// Re-read when the file changes (checked every few seconds).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (plain HTTP)
    /// instead of the main port, where they are then 404.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Users and bcrypt hashes (htpasswd -B). Then anonymous clients pull
    /// nothing unless --anonymous says, and users pull everything unless
    /// --allow rules say.
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// Repositories anonymous clients may pull (`public/**`); repeatable.
    #[arg(long, value_name = "PATTERN")]
    anonymous: Vec<String>,
    /// `USER[,USER]=PATTERN[,PATTERN]` (`alice,bob=team/*,builds/**`; `*`
    /// for every user); repeatable.
    #[arg(long, value_name = "USERS=PATTERNS")]
    allow: Vec<String>,
    /// Answer 404 at /v2/_catalog.
    #[arg(long)]
    no_catalog: bool,
    /// Only authenticated users may list /v2/_catalog.
    #[arg(long)]
    catalog_authenticated: bool,
}

impl FrontArgs {
    /// These flags over the config's settings.
    fn over(self, cfg: &Config) -> FrontArgs {
        let (tls_cert, tls_key) = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => (Some(c), Some(k)),
            _ => match &cfg.tls {
                Some(t) => (Some(t.cert.clone()), Some(t.key.clone())),
                None => (None, None),
            },
        };
        FrontArgs {
            tls_cert,
            tls_key,
            admin_listen: self.admin_listen.or_else(|| cfg.admin_listen.clone()),
            ..self
        }
    }

    /// The auth settings: the flags, each over its config key.
    fn auth(
        &self,
        cfg: Option<&Config>,
    ) -> Result<Option<Arc<cartorio::registry::auth::Auth>>, String> {
        use cartorio::registry::auth::{Auth, Pattern, Rule, Users};
        let (mut settings, set) = match cfg {
            Some(c) => (c.auth.settings(&c.base)?, c.auth.is_set()),
            None => (Default::default(), false),
        };
        let set =
            set || self.htpasswd.is_some() || !self.anonymous.is_empty() || !self.allow.is_empty();
        if !set {
            return Ok(None);
        }
        let patterns = |v: &str| {
            v.split(',')
                .map(|p| p.trim().parse::<Pattern>())
                .collect::<Result<Vec<_>, _>>()
        };
        if let Some(h) = &self.htpasswd {
            settings.htpasswd = Some(h.clone());
        }
        if !self.anonymous.is_empty() {
            settings.anonymous = Some(patterns(&self.anonymous.join(","))?);
        }
        if !self.allow.is_empty() {
            settings.rules = self
                .allow
                .iter()
                .map(|a| {
                    let (users, repos) = a
                        .split_once('=')
                        .ok_or_else(|| format!("--allow {a:?}: expected USERS=PATTERNS"))?;
                    let users: Vec<String> =
                        users.split(',').map(|u| u.trim().to_string()).collect();
                    Ok(Rule {
                        users: if users.iter().any(|u| u == "*") {
                            Users::Any
                        } else {
                            Users::Named(users)
                        },
                        repos: patterns(repos).map_err(|e| format!("--allow {a:?}: {e}"))?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
        }
        Auth::new(settings).map(|a| Some(Arc::new(a)))
    }

    fn catalog(&self, cfg: Option<&Config>) -> cartorio::registry::CatalogAccess {
        use cartorio::registry::CatalogAccess;
        let c = cfg.map(|c| c.catalog.clone()).unwrap_or_default();
        if self.no_catalog || c.enabled == Some(false) {
            CatalogAccess::Disabled
        } else if self.catalog_authenticated || c.authenticated == Some(true) {
            CatalogAccess::Authenticated
        } else {
            CatalogAccess::Everyone
        }
    }
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    match cartorio::config::parse_duration(s) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("{s:?} is not a duration like 500ms, 30s, 5m")),
    }
}

fn main() -> ExitCode {
    cartorio::malloc::tune();
    let cli = Cli::parse();
    cartorio::logging::init(cli.log_format);
    // One descriptor per connection: take what the hard limit allows.
    if let Some(n) = cartorio::rlimit::raise_nofile() {
        tracing::debug!(nofile = n, "open-file limit");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cartorio: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    cartorio::logging::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cartorio: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Proxy {
            config,
            listen,
            limits,
            front,
        } => {
            let cfg = Config::load(&config).map_err(|e| e.to_string())?;
            let access = (front.auth(Some(&cfg))?, front.catalog(Some(&cfg)));
            let reload = Reload::Config {
                path: config.clone(),
                flags: front.clone(),
                first: Box::new(cfg.clone()),
            };
            let front = front.over(&cfg);
            let (cache, ready) = open_cache(&cfg.cache, &cfg.base)
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let catalog = Catalog::new(
                cfg.images,
                cfg.routes,
                Sources::new(),
                Some(&cfg.base),
                cfg.revalidate,
                cache,
            )
            .await?;
            ready.set_loaded(true);
            serve(
                catalog,
                ready,
                &listen.unwrap_or(cfg.listen),
                limits.limits(),
                front,
                access,
                reload,
            )
            .await
        }
        Command::Serve {
            listen,
            archives,
            cache_dir,
            cache_disk,
            cache_memory,
            limits,
            front,
        } => {
            let cache = CacheConfig {
                dir: cache_dir,
                disk: cache_disk,
                memory: cache_memory,
            };
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            let access = (front.auth(None)?, front.catalog(None));
            let reload = Reload::Args {
                archives: archives.clone(),
                flags: front.clone(),
            };
            let (cache, ready) = open_cache(&cache, &cwd)?;
            let mut specs = Vec::new();
            for a in &archives {
                specs.extend(serve_specs(a).await?);
            }
            let catalog = Catalog::new(
                specs,
                Vec::new(),
                Sources::new(),
                None,
                DEFAULT_REVALIDATE,
                cache,
            )
            .await?;
            ready.set_loaded(true);
            serve(
                catalog,
                ready,
                &listen,
                limits.limits(),
                front,
                access,
                reload,
            )
            .await
        }
        Command::Inspect { path, json } => inspect(&path, json).await,
        Command::Index { source, output } => index_sidecar(&source, output).await,
        Command::Check { config, reach } => {
            print!("{}", cartorio::check::check(&config, reach).await?);
            Ok(())
        }
        Command::Cache {
            action: CacheCommand::Verify { dir },
        } => {
            let dir = dir.unwrap_or_else(cartorio::config::default_cache_dir);
            let shown = dir.display().to_string();
            let r = tokio::task::spawn_blocking(move || cartorio::cache::scrub(&dir))
                .await
                .map_err(|e| format!("cache verify failed (a bug): {e}"))?
                .map_err(|e| format!("{shown}: {e}"))?;
            println!("{shown}: {} good, {} bad (removed)", r.good, r.bad);
            if r.bad > 0 {
                return Err(format!("{} cached blobs did not match their digest", r.bad));
            }
            Ok(())
        }
    }
}

/// Opens the blob cache and says where it is and how big it may grow; the
/// readiness handle probes the same folder.
fn open_cache(
    c: &CacheConfig,
    base: &std::path::Path,
) -> Result<(Arc<BlobCache>, Arc<Readiness>), String> {
    let settings = c.settings(base)?;
    let dir = settings
        .dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "none".into());
    tracing::info!(
        dir,
        disk = settings.disk,
        memory = settings.memory,
        "cache: disk bound {} MiB, memory bound {} MiB",
        settings.disk >> 20,
        settings.memory >> 20
    );
    let ready = Arc::new(Readiness::new(settings.dir.clone()));
    Ok((Arc::new(BlobCache::new(&settings)), ready))
}

/// What a reload (SIGHUP, or the config file changing) reads again.
enum Reload {
    /// `proxy`: the config file, under the same command-line flags.
    Config {
        path: PathBuf,
        flags: FrontArgs,
        /// The config at start-up, to tell which changes need a restart.
        first: Box<Config>,
    },
    /// `serve`: the same archive arguments (their sources looked at again).
    Args {
        archives: Vec<String>,
        flags: FrontArgs,
    },
}

impl Reload {
    fn file(&self) -> Option<PathBuf> {
        match self {
            Reload::Config { path, .. } => Some(path.clone()),
            Reload::Args { .. } => None,
        }
    }

    /// Builds and validates everything the new config says, then swaps it
    /// in; on error nothing changes. What it did, for the log.
    async fn run(&self, images: &Reloadable, front: &Swap<Frontend>) -> Result<String, String> {
        let (specs, routes, base, revalidate, auth, catalog_access) = match self {
            Reload::Config { path, flags, first } => {
                let cfg = Config::load(path).map_err(|e| e.to_string())?;
                let auth = flags
                    .auth(Some(&cfg))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if restart_needed(first, &cfg) {
                    tracing::warn!(
                        file = %path.display(),
                        "listen, admin_listen, [tls] and [cache] changes take effect at the next restart"
                    );
                }
                let access = flags.catalog(Some(&cfg));
                let base = Some(cfg.base);
                (cfg.images, cfg.routes, base, cfg.revalidate, auth, access)
            }
            Reload::Args { archives, flags } => {
                let mut specs = Vec::new();
                for a in archives {
                    specs.extend(serve_specs(a).await?);
                }
                let auth = flags.auth(None)?;
                let access = flags.catalog(None);
                (specs, Vec::new(), None, DEFAULT_REVALIDATE, auth, access)
            }
        };
        let old = images.catalog();
        let new = old
            .reloaded(specs, routes, base.as_deref(), revalidate)
            .await?;
        let (kept, total) = new.reused_from(&old);
        images.replace(new);
        let current = front.load();
        front.store(Arc::new(Frontend {
            auth,
            catalog: catalog_access,
            ..(*current).clone()
        }));
        Ok(format!(
            "{total} image entries, {kept} of them unchanged (their indexes kept)"
        ))
    }
}

/// Whether settings only read at start-up differ.
fn restart_needed(a: &Config, b: &Config) -> bool {
    let tls = |c: &Config| c.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let cache = |c: &Config| {
        (
            c.cache.dir.clone(),
            c.cache.disk.clone(),
            c.cache.memory.clone(),
        )
    };
    a.listen != b.listen
        || a.admin_listen != b.admin_listen
        || tls(a) != tls(b)
        || cache(a) != cache(b)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    catalog: Catalog,
    ready: Arc<Readiness>,
    listen: &str,
    limits: cartorio::registry::Limits,
    front: FrontArgs,
    (auth, catalog_access): (
        Option<Arc<cartorio::registry::auth::Auth>>,
        cartorio::registry::CatalogAccess,
    ),
    reload: Reload,
) -> Result<(), String> {
    let tls = match (front.tls_cert, front.tls_key) {
        (Some(cert), Some(key)) => {
            Some(Tls::new(TlsFiles { cert, key }).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let served = Arc::new(Reloadable::new(catalog));
    let images: Arc<dyn cartorio::catalog::Images> = served.clone();
    // Both listeners stop on the same signal.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut admin = None;
    if let Some(admin_listen) = &front.admin_listen {
        let listener = tokio::net::TcpListener::bind(admin_listen)
            .await
            .map_err(|e| format!("cannot listen on {admin_listen} (--admin-listen): {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("admin listening on {addr}");
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let front = Frontend {
            endpoints: Endpoints::Admin,
            ..Frontend::default()
        };
        admin = Some(tokio::spawn(cartorio::registry::serve_with(
            listener,
            Arc::clone(&images),
            Arc::clone(&ready),
            Arc::new(front),
            limits.clone(),
            stopped(),
        )));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts wait for this line to learn the port.
    println!("listening on {addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(
        %addr,
        idle_timeout = ?limits.idle_timeout,
        write_timeout = ?limits.write_timeout,
        max_connections = limits.max_connections,
        tls = tls.is_some(),
        "serving"
    );
    let front = Frontend {
        endpoints: if admin.is_some() {
            Endpoints::Registry
        } else {
            Endpoints::All
        },
        tls,
        auth,
        catalog: catalog_access,
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let front = Arc::new(Swap::new(Arc::new(front)));
    {
        let front = front.clone();
        let reload = Arc::new(reload);
        tokio::spawn(cartorio::reload::watch(reload.file(), move |cause| {
            let (reload, served, front) = (reload.clone(), served.clone(), front.clone());
            async move {
                tracing::info!("reloading ({cause})");
                match reload.run(&served, &front).await {
                    Ok(what) => tracing::info!("reloaded ({cause}): {what}"),
                    Err(e) => tracing::error!(
                        "not reloaded ({cause}): {e}; still serving the previous configuration"
                    ),
                }
            }
        }));
    }
    let result =
        cartorio::registry::serve_reloadable(listener, images, ready, front, limits, stopped())
            .await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    result.map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// Turns `[NAME[:TAG]=]PATH` into image specs.
async fn serve_specs(arg: &str) -> Result<Vec<ImageSpec>, String> {
    let named = arg.split_once('=').and_then(|(n, p)| {
        let (name, tag) = match n.split_once(':') {
            Some((n, t)) => (n, Some(t)),
            None => (n, None),
        };
        let name: RepoName = name.parse().ok()?;
        let tag: Option<Tag> = match tag {
            Some(t) => Some(t.parse().ok()?),
            None => None,
        };
        Some((name, tag, p))
    });
    let spec =
        |name: RepoName, tags: Option<Vec<Tag>>, only: Option<RepoName>, source: &str| ImageSpec {
            name,
            source: source.to_string(),
            tags,
            select: None,
            only_name: only,
            index: None,
            config: ImageConfig::default(),
            options: Default::default(),
            origin: format!("argument {:?}", cartorio::source::Redacted(arg)),
        };
    if let Some((name, tag, path)) = named {
        return Ok(vec![spec(name, tag.map(|t| vec![t]), None, path)]);
    }
    // No name given: serve every name the archive records.
    let location = Location::open(&Sources::new(), arg, &Default::default(), None)
        .map_err(|e| e.to_string())?;
    let ar = location
        .open_archive()
        .await
        .map_err(|e| format!("{}: {e}", cartorio::source::Redacted(arg)))?;
    let ix = archive::index(&ar, &ImageConfig::default())
        .await
        .map_err(|e| format!("{}: {e}", cartorio::source::Redacted(arg)))?;
    let mut names: Vec<RepoName> = ix
        .images
        .iter()
        .flat_map(|i| i.refs.iter())
        .filter_map(|r| r.name.clone())
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(format!(
            "{}: the archive records no image name; give one as NAME=PATH",
            cartorio::source::Redacted(arg)
        ));
    }
    Ok(names
        .into_iter()
        .map(|n| spec(n.clone(), None, Some(n), arg))
        .collect())
}

async fn index_sidecar(path: &str, output: Option<String>) -> Result<(), String> {
    use cartorio::catalog::sidecar;
    let out = match output {
        Some(o) => o,
        None if !path.contains("://") => sidecar::default_url(path),
        None => {
            return Err(format!(
                "{path} is not a local path: say where to write with -o FILE"
            ));
        }
    };
    let source = Sources::new()
        .open(path, &Default::default(), None)
        .map_err(|e| e.to_string())?;
    let mut ar = Archive::open(source.clone())
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let config = ImageConfig::default();
    let ix = {
        let shared = std::sync::Arc::new(ar);
        let ix = archive::index(&shared, &config)
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        ar = std::sync::Arc::try_unwrap(shared)
            .map_err(|_| "the archive is still shared".to_string())?;
        ix
    };
    ar.toc.retain(&ix.members());
    let settings = serde_json::to_string(&config).map_err(|e| e.to_string())?;
    let bytes = sidecar::write(&ar, &ix, &settings, &source)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    std::fs::write(&out, &bytes).map_err(|e| format!("{out}: {e}"))?;
    println!(
        "{out}: {} bytes ({} seek points, {} images) for {} bytes of archive",
        bytes.len(),
        ar.seek.points.as_ref().map_or(0, |p| p.points().len()),
        ix.images.len(),
        ar.stat.size
    );
    Ok(())
}

async fn inspect(path: &str, json: bool) -> Result<(), String> {
    let location = Location::open(&Sources::new(), path, &Default::default(), None)
        .map_err(|e| e.to_string())?;
    let ar = location
        .open_archive()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let ix = archive::index(&ar, &ImageConfig::default())
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    let container = match &ar.container {
        Container::Tar(_) => "tar",
        Container::Streamed {
            compression: None, ..
        } => "tar, streamed (no range support)",
        Container::Streamed {
            compression: Some(archive::Compression::Gzip),
            ..
        } => "tar+gzip",
        Container::Streamed {
            compression: Some(archive::Compression::Zstd),
            ..
        } => "tar+zstd",
        Container::Dir(_) => "directory",
    };
    let images: Vec<serde_json::Value> = ix
        .images
        .iter()
        .map(|i| {
            let (manifest, docker) = match &i.root {
                Root::Stored(d) => (*d, None),
                Root::Generated { oci, docker } => (*oci, *docker),
            };
            let media_type = ix.docs.get(&manifest).map(|d| d.media_type.clone());
            serde_json::json!({
                "refs": i.refs.iter().map(ArchiveRef::to_string).collect::<Vec<_>>(),
                "manifest": manifest,
                "media_type": media_type,
                "docker_manifest": docker,
                "platforms": i.platforms,
                "layers": i.layers.iter().map(|(d, s)| serde_json::json!({"digest": d, "size": s})).collect::<Vec<_>>(),
            })
        })
        .collect();
    if json {
        let v = serde_json::json!({
            "source": path,
            "container": container,
            "format": ix.format,
            "bytes_read": ar.fetched,
            "images": images,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let fmt = serde_json::to_value(ix.format)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "{path}: {fmt} ({container}), {} image(s), {} bytes read to index",
        images.len(),
        ar.fetched
    );
    for i in &ix.images {
        let refs: Vec<String> = i.refs.iter().map(ArchiveRef::to_string).collect();
        println!();
        println!(
            "  names:     {}",
            if refs.is_empty() {
                "(none)".into()
            } else {
                refs.join(" ")
            }
        );
        match &i.root {
            Root::Stored(d) => println!(
                "  manifest:  {d} ({})",
                ix.docs.get(d).map(|x| x.media_type.as_str()).unwrap_or("?")
            ),
            Root::Generated { oci, docker } => {
                println!("  manifest:  {oci} (OCI, generated)");
                if let Some(d) = docker {
                    println!("             {d} (Docker schema 2, generated)");
                }
            }
        }
        println!("  platforms: {}", i.platforms.join(" "));
        for (d, s) in &i.layers {
            println!("  layer:     {d} {s:>12} bytes");
        }
    }
    Ok(())
}
