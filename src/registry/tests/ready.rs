//! `/readyz` through the router: the config flag, the cache folder probe,
//! shutdown.
use std::os::unix::fs::PermissionsExt;

use http::{Method, StatusCode};

use super::fake::Fake;
use super::{Readiness, get, send_ready};

async fn readyz(ready: &Readiness) -> (StatusCode, String) {
    let r = send_ready(&Fake::default(), ready, Method::GET, "/readyz", &[]).await;
    assert_eq!(r.header("content-type"), Some("text/plain"));
    (r.status, String::from_utf8_lossy(r.body()).into_owned())
}

#[tokio::test]
async fn ready_once_loaded_without_a_disk_cache() {
    let ready = Readiness::new(None);
    let (status, body) = readyz(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: configuration not loaded\n");
    ready.set_loaded(true);
    assert_eq!(readyz(&ready).await, (StatusCode::OK, "ready\n".into()));
    // HEAD answers the same status, without a body.
    let r = send_ready(&Fake::default(), &ready, Method::HEAD, "/readyz", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body().is_empty());
}

#[tokio::test]
async fn cache_folder_must_exist_and_be_writable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cache");
    let ready = Readiness::new(Some(dir.clone()));
    ready.set_loaded(true);

    let (status, body) = readyz(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "missing folder");
    assert!(body.contains(&dir.display().to_string()), "{body}");

    std::fs::create_dir(&dir).expect("mkdir");
    assert_eq!(readyz(&ready).await.0, StatusCode::OK);
    assert_eq!(
        std::fs::read_dir(&dir).expect("read_dir").count(),
        0,
        "the probe leaves no file behind"
    );

    // Read-only folder (root ignores permissions, so only check when it bites).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let read_only = std::fs::File::create(dir.join("x")).is_err();
    if read_only {
        let (status, body) = readyz(&ready).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("not usable"), "{body}");
    }
    let _ = std::fs::remove_file(dir.join("x"));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A file where the folder should be.
    std::fs::remove_dir(&dir).expect("rmdir");
    std::fs::write(&dir, b"").expect("file");
    assert_eq!(readyz(&ready).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn stopping_fails_at_once_and_liveness_stays_up() {
    let ready = Readiness::new(None);
    ready.set_loaded(true);
    ready.set_stopping();
    let (status, body) = readyz(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: shutting down\n");
    let r = get(&Fake::default(), "/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
}
