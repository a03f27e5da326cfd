//! Micro-benchmarks of cartorio's hot paths (criterion; `cargo bench --bench hot_paths`).
//!
//! - `toc/*`: walking the headers of an in-memory tar of 1000 entries with the `tar`
//!   crate's `entries_with_seek` (what `src/archive/toc.rs` does per entry), and the real
//!   `Archive::open` on the same tar in a temp file through `FileSource` (range reads).
//! - `sha256/hasher_64MiB`: `cartorio::image::Hasher` over a 64 MiB buffer (throughput in
//!   bytes/s: criterion prints GiB/s).
//! - `blob_copy/*`: `FileSource::stream` of a 256 MiB temp file, drained (the blob copy
//!   loop), and the same with every chunk hashed, as the blob path does for an unverified blob.
//!
//! The whole-server comparisons live in `scripts/bench.sh`.
use std::hint::black_box;
use std::io::{Cursor, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use cartorio::archive::Archive;
use cartorio::image::Hasher;
use cartorio::source::{FileSource, Source};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;

const MIB: usize = 1024 * 1024;

/// A docker-archive-like tar: 990 small files in directories, a few JSON files at the top.
fn tar_of_1000_entries() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let body = vec![b'x'; 1536];
    for i in 0..1000 {
        let (name, data): (String, &[u8]) = if i < 10 {
            (format!("{i:02}.json"), br#"{"k":"v"}"#)
        } else {
            (
                format!("dir{:03}/file{i:04}.bin", i / 100),
                &body[..(i * 37) % 1536],
            )
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The per-entry work of `toc::walk` (name, size, offset, header size check, type,
/// metadata), minus the validation errors and the capture of small JSON files.
fn walk(tar_bytes: &[u8]) -> u64 {
    let mut ar = tar::Archive::new(Cursor::new(tar_bytes));
    let mut sum = 0u64;
    for entry in ar.entries_with_seek().unwrap() {
        let mut entry = entry.unwrap();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let size = entry.size();
        let offset = entry.raw_file_position();
        let header_size = entry.header().entry_size().unwrap();
        assert_eq!(header_size, size);
        let h = entry.header();
        let kind = h.entry_type().is_file() as u64;
        let meta = h.mode().unwrap_or(0) as u64 + h.uid().unwrap_or(0) + h.mtime().unwrap_or(0);
        if name.ends_with(".json") {
            let mut buf = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut buf).unwrap();
            sum += buf.len() as u64;
        }
        sum += name.len() as u64 + offset + kind + meta;
    }
    sum
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn temp_file(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> Arc<dyn Source> {
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .unwrap();
    Arc::new(FileSource::new(path.display().to_string(), path))
}

fn toc(c: &mut Criterion) {
    let tar_bytes = tar_of_1000_entries();
    let mut g = c.benchmark_group("toc");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("entries_with_seek_1000", |b| {
        b.iter(|| walk(black_box(&tar_bytes)))
    });
    let dir = tempfile::tempdir().unwrap();
    let src = temp_file(&dir, "toc.tar", &tar_bytes);
    let rt = runtime();
    g.bench_function("archive_open_1000_file", |b| {
        b.iter(|| {
            let ar = rt.block_on(Archive::open(src.clone())).unwrap();
            assert_eq!(ar.toc.entries().len(), 1000);
            ar.fetched
        })
    });
    g.finish();
}

fn sha256(c: &mut Criterion) {
    let buf: Vec<u8> = (0..64 * MIB).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("hasher_64MiB", |b| {
        b.iter(|| {
            let mut h = Hasher::new();
            h.update(black_box(&buf));
            h.finish()
        })
    });
    g.finish();
}

fn blob_copy(c: &mut Criterion) {
    let size = 256 * MIB;
    let data: Vec<u8> = (0..size).map(|i| (i ^ (i >> 13)) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let src = temp_file(&dir, "blob.bin", &data);
    drop(data);
    let rt = runtime();
    let mut g = c.benchmark_group("blob_copy");
    g.throughput(Throughput::Bytes(size as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));
    g.bench_function("filesource_stream_256MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = src.stream(0, None, None).await.unwrap();
                let mut n = 0usize;
                while let Some(chunk) = s.next().await {
                    n += black_box(chunk.unwrap()).len();
                }
                assert_eq!(n, size);
                n
            })
        })
    });
    g.bench_function("filesource_stream_and_hash_256MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut s = src.stream(0, Some(size as u64), None).await.unwrap();
                let mut h = Hasher::new();
                while let Some(chunk) = s.next().await {
                    h.update(&chunk.unwrap());
                }
                h.finish()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, toc, sha256, blob_copy);
criterion_main!(benches);
