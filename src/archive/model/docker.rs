//! `docker save`'s own documents: `manifest.json` (which images, their
//! config and layer files) and the fields of an image config the index
//! needs (the layers' diff_ids and the platform).
use serde::Deserialize;

use super::oci::PlatformFields;
use crate::archive::ArchiveError;
use crate::image::Digest;

/// One image of `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ManifestEntry {
    /// The member holding the config.
    pub config: String,
    /// `podman save` of an untagged image writes null.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// The members holding the layers, bottom first.
    pub layers: Vec<String>,
}

/// Parses `manifest.json`: a list of images, at least one.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<ManifestEntry>, ArchiveError> {
    let entries: Vec<ManifestEntry> = serde_json::from_slice(bytes)
        .map_err(|e| ArchiveError::Format(format!("manifest.json is not valid: {e}")))?;
    if entries.is_empty() {
        return Err(ArchiveError::Format("manifest.json lists no image".into()));
    }
    Ok(entries)
}

/// An image config as a docker archive needs it.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
    #[serde(flatten)]
    pub platform: PlatformFields,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<Digest>,
}

impl Config {
    pub fn parse(bytes: &[u8], name: &str) -> Result<Config, ArchiveError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ArchiveError::Format(format!("config {name} is not valid: {e}")))
    }
}
