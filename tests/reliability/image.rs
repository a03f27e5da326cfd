//! Docker archives made in memory: layers of incompressible bytes, a
//! config, `manifest.json`; with the byte ranges of the layers inside the
//! tarball (where a flipped byte must be caught by the blob's digest).
use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

pub struct Image {
    pub tar: Vec<u8>,
    /// digest ("sha256:...") -> bytes, for every layer and the config.
    pub blobs: BTreeMap<String, Vec<u8>>,
    /// (offset, len) of each layer's data in `tar`.
    pub layer_ranges: Vec<(u64, u64)>,
    pub layer_digests: Vec<String>,
}

pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Bytes no compressor shrinks, the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn append(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).expect("tar append");
}

/// A layer: a tar holding one file of `len` noise bytes.
fn layer(seed: u64, len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, "data/blob.bin", &noise(seed, len));
    b.into_inner().expect("tar")
}

/// A docker archive tagged `repo_tag` with one layer per size in `layers`.
pub fn docker_archive(seed: u64, repo_tag: &str, layers: &[usize]) -> Image {
    let layer_tars: Vec<Vec<u8>> = layers
        .iter()
        .enumerate()
        .map(|(i, &len)| layer(seed.wrapping_mul(1000).wrapping_add(i as u64), len))
        .collect();
    let layer_digests: Vec<String> = layer_tars.iter().map(|l| digest(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }))
    .expect("json");
    let config_digest = digest(&config);
    let mut b = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for (l, d) in layer_tars.iter().zip(&layer_digests) {
        let name = format!("{}.tar", &d["sha256:".len()..]);
        append(&mut b, &name, l);
        names.push(name);
    }
    let config_name = format!("{}.json", &config_digest["sha256:".len()..]);
    append(&mut b, &config_name, &config);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [repo_tag], "Layers": names}
    ]))
    .expect("json");
    append(&mut b, "manifest.json", &manifest);
    let tar = b.into_inner().expect("tar");

    // Where each layer's data sits, read back with the tar crate.
    let mut layer_ranges = Vec::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().expect("entries").flatten() {
        let path = e
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if names.contains(&path) {
            layer_ranges.push((e.raw_file_position(), e.size()));
        }
    }
    let mut blobs: BTreeMap<String, Vec<u8>> =
        layer_digests.iter().cloned().zip(layer_tars).collect();
    blobs.insert(config_digest, config);
    Image {
        tar,
        blobs,
        layer_ranges,
        layer_digests,
    }
}
