//! Manifests and configs cartorio generates. Deterministic by construction:
//! `serde_json::Value` objects keep keys sorted, there are no timestamps,
//! and every input is a digest or a value from the archive or the config.
use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Digest, media};

/// Compression of a layer blob as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Tar,
    Gzip,
    Zstd,
}

impl LayerKind {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            LayerKind::Tar => media::OCI_LAYER_TAR,
            LayerKind::Gzip => media::OCI_LAYER_GZIP,
            LayerKind::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Docker schema 2 has no zstd layer type.
    pub fn docker_media_type(self) -> Option<&'static str> {
        match self {
            LayerKind::Tar => Some(media::DOCKER_LAYER_TAR),
            LayerKind::Gzip => Some(media::DOCKER_LAYER_GZIP),
            LayerKind::Zstd => None,
        }
    }
}

/// A layer of a generated manifest.
#[derive(Clone, Copy, Debug)]
pub struct Layer {
    pub kind: LayerKind,
    pub digest: Digest,
    pub size: u64,
}

/// The image settings a user may set for images cartorio builds a config
/// for (rootfs and Concourse archives).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The PATH every Linux image expects when its config sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds an OCI image config for `diff_ids`. `base` fills what the user's
/// config leaves unset (a Concourse metadata.json's env and user).
pub fn config(
    user: &ImageConfig,
    base: &ImageConfig,
    diff_ids: &[Digest],
    created_by: &str,
) -> Bytes {
    let pick = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| a.clone().or_else(|| b.clone());
    let env = pick(&user.env, &base.env).unwrap_or_else(|| vec![DEFAULT_PATH.to_string()]);
    let mut cfg = serde_json::Map::new();
    cfg.insert("Env".into(), json!(env));
    if let Some(cmd) = pick(&user.cmd, &base.cmd) {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    if let Some(ep) = pick(&user.entrypoint, &base.entrypoint) {
        cfg.insert("Entrypoint".into(), json!(ep));
    }
    if let Some(u) = user.user.clone().or_else(|| base.user.clone()) {
        cfg.insert("User".into(), json!(u));
    }
    if let Some(w) = user.workdir.clone().or_else(|| base.workdir.clone()) {
        cfg.insert("WorkingDir".into(), json!(w));
    }
    let mut labels = base.labels.clone();
    labels.extend(user.labels.clone());
    if !labels.is_empty() {
        cfg.insert("Labels".into(), json!(labels));
    }
    let mut doc = json!({
        "architecture": user.architecture.clone().or_else(|| base.architecture.clone()).unwrap_or_else(|| "amd64".into()),
        "os": user.os.clone().or_else(|| base.os.clone()).unwrap_or_else(|| "linux".into()),
        "config": Value::Object(cfg),
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids.iter().map(|_| json!({ "created_by": created_by })).collect::<Vec<_>>(),
    });
    if let (Some(v), Some(doc)) = (
        user.variant.clone().or_else(|| base.variant.clone()),
        doc.as_object_mut(),
    ) {
        doc.insert("variant".into(), json!(v));
    }
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Builds the OCI manifest for a config and layers, and the Docker schema 2
/// one when every layer has a Docker media type. `docker_config` says
/// whether the config is a Docker image config (docker archives) — it is
/// byte-for-byte the same JSON either way; only the label differs.
pub fn manifests(config: (Digest, u64), layers: &[Layer]) -> (Bytes, Option<Bytes>) {
    let oci = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &config.0, config.1),
        "layers": layers.iter().map(|l| descriptor(l.kind.oci_media_type(), &l.digest, l.size)).collect::<Vec<_>>(),
    });
    let docker_layers: Option<Vec<Value>> = layers
        .iter()
        .map(|l| {
            l.kind
                .docker_media_type()
                .map(|m| descriptor(m, &l.digest, l.size))
        })
        .collect();
    let docker = docker_layers.map(|ls| {
        json!({
            "schemaVersion": 2,
            "mediaType": media::DOCKER_MANIFEST,
            "config": descriptor(media::DOCKER_CONFIG, &config.0, config.1),
            "layers": ls,
        })
    });
    let bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap_or_default());
    (bytes(&oci), docker.as_ref().map(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_documents_are_deterministic_and_well_formed() {
        let d = Digest::of(b"layer");
        let user = ImageConfig {
            env: Some(vec!["A=1".into()]),
            labels: [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let base = ImageConfig {
            user: Some("app".into()),
            env: Some(vec!["IGNORED=1".into()]),
            ..Default::default()
        };
        let c1 = config(&user, &base, &[d], "x");
        let c2 = config(&user, &base, &[d], "x");
        assert_eq!(c1, c2);
        let v: Value = serde_json::from_slice(&c1).unwrap();
        assert_eq!(v["config"]["Env"], json!(["A=1"]));
        assert_eq!(v["config"]["User"], json!("app"));
        assert_eq!(v["os"], json!("linux"));
        assert_eq!(v["architecture"], json!("amd64"));
        assert_eq!(v["rootfs"]["diff_ids"][0], json!(d.to_string()));
        assert!(v.get("created").is_none());

        let layers = [Layer {
            kind: LayerKind::Tar,
            digest: d,
            size: 5,
        }];
        let (oci, docker) = manifests((Digest::of(&c1), c1.len() as u64), &layers);
        let o: Value = serde_json::from_slice(&oci).unwrap();
        assert_eq!(o["mediaType"], json!(media::OCI_MANIFEST));
        assert_eq!(o["layers"][0]["mediaType"], json!(media::OCI_LAYER_TAR));
        let dk: Value = serde_json::from_slice(&docker.unwrap()).unwrap();
        assert_eq!(dk["layers"][0]["mediaType"], json!(media::DOCKER_LAYER_TAR));
        assert_eq!(dk["config"]["mediaType"], json!(media::DOCKER_CONFIG));
        assert_eq!(
            manifests((Digest::of(&c1), c1.len() as u64), &layers).0,
            oci
        );

        let zstd = [Layer {
            kind: LayerKind::Zstd,
            digest: d,
            size: 5,
        }];
        assert!(manifests((d, 1), &zstd).1.is_none());
    }
}
