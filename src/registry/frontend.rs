//! How one listener presents the registry: which endpoints it answers and
//! whether it speaks TLS. The server and the router both take one, so a
//! second listener (`--admin-listen`) is the same code with other settings.
use std::sync::Arc;

use super::auth::Auth;
use super::tls::Tls;

/// The operations endpoints, outside the registry API.
pub const ADMIN_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Which endpoints a listener answers; the others are 404 there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Endpoints {
    /// The registry API and the operations endpoints (one port).
    #[default]
    All,
    /// The registry API only: the operations endpoints live on an admin
    /// listener.
    Registry,
    /// The operations endpoints only (the admin listener).
    Admin,
}

impl Endpoints {
    /// Whether a request for `path` is answered on this listener.
    pub fn serves(self, path: &str) -> bool {
        let admin = ADMIN_PATHS.contains(&path);
        match self {
            Endpoints::All => true,
            Endpoints::Registry => !admin,
            Endpoints::Admin => admin,
        }
    }
}

/// Who may list repositories at `/v2/_catalog` (each caller sees only the
/// repositories they may pull).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatalogAccess {
    #[default]
    Everyone,
    /// Anonymous callers get 401.
    Authenticated,
    /// 404 for everyone.
    Disabled,
}

/// One listener's settings. `Default`: everything on one plain-HTTP port,
/// anonymous pulls of everything.
#[derive(Clone, Debug, Default)]
pub struct Frontend {
    pub endpoints: Endpoints,
    /// None: plain HTTP (HTTP/1.1 or h2c).
    pub tls: Option<Tls>,
    /// None: anonymous clients pull everything.
    pub auth: Option<Arc<Auth>>,
    pub catalog: CatalogAccess,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_paths_move_to_the_admin_listener() {
        for p in ADMIN_PATHS {
            assert!(Endpoints::All.serves(p));
            assert!(Endpoints::Admin.serves(p));
            assert!(!Endpoints::Registry.serves(p));
        }
        for p in ["/v2/", "/v2/a/manifests/v1", "/metricsx", "/"] {
            assert!(Endpoints::All.serves(p));
            assert!(Endpoints::Registry.serves(p));
            assert!(!Endpoints::Admin.serves(p), "{p}");
        }
    }
}
