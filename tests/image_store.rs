//! `--image-store dir:PATH` across replicas: two real `kiln serve` processes (demo models) share
//! one directory, as replicas behind a load balancer share an NFS/EFS volume. A link made by one
//! is served byte-identical by the other; unknown, malformed and planted ids are 404 with the
//! OpenAI envelope and never serve foreign bytes; the count cap and the TTL hold for the pair.
//!
//! File GETs go over a raw socket: an HTTP client library normalises `..` and `%2e%2e` away
//! before sending, and the point is what the server does with them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod process_common;
use process_common::{Server, start as serve};

/// One `kiln serve` on the demo models, sharing `store`, with `extra` flags.
fn start(store: &Path, extra: &[&str]) -> Server {
    let store = format!("dir:{}", store.display());
    serve(&[&["--image-store", store.as_str()], extra].concat())
}

/// Two replicas on one store directory.
fn pair(store: &Path, extra: &[&str]) -> (Server, Server) {
    (start(store, extra), start(store, extra))
}

/// Generates `n` 64x64 SD images as links on `s`; returns the links' ids.
fn make(s: &Server, n: u32) -> Vec<String> {
    let body = json!({"prompt": "a red cube", "size": "64x64", "num_inference_steps": 2,
                      "response_format": "url", "n": n});
    let text = ureq::post(&format!("{}/v1/images/generations", s.base))
        .timeout(Duration::from_secs(120))
        .set("content-type", "application/json")
        .send_string(&body.to_string())
        .expect("generation answers 200")
        .into_string()
        .expect("a body");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let data = v["data"].as_array().expect("data[]");
    assert_eq!(data.len(), n as usize, "{v}");
    data.iter()
        .map(|d| {
            let url = d["url"].as_str().expect("a url");
            // the link names the replica that made it: http://127.0.0.1:PORT/v1/images/files/ID
            let (origin, id) = url
                .split_once("/v1/images/files/")
                .expect("a /v1/images/files/ link");
            assert_eq!(origin, s.base, "link names its replica");
            assert!(d["b64_json"].is_null());
            id.to_string()
        })
        .collect()
}

/// A raw HTTP/1.0 GET of `path`, sent as is: (status, content-type, body).
fn get(s: &Server, path: &str) -> (u16, String, Vec<u8>) {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", s.port)) else {
        return (0, String::new(), Vec::new());
    };
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n", s.port);
    if c.write_all(req.as_bytes()).is_err() {
        return (0, String::new(), Vec::new());
    }
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new(), Vec::new());
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, raw[split + 4..].to_vec())
}

fn file(s: &Server, id: &str) -> (u16, String, Vec<u8>) {
    get(s, &format!("/v1/images/files/{id}"))
}

/// A 404 in the OpenAI envelope that carries none of `secret`.
fn assert_not_served(s: &Server, path: &str, secret: &[u8]) {
    let (status, ctype, body) = get(s, path);
    assert!(
        !body.windows(secret.len()).any(|w| w == secret),
        "{path}: served the planted file's bytes"
    );
    assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
    let v: Value = serde_json::from_slice(&body).expect("a JSON error body");
    let e = &v["error"];
    assert!(
        e["message"].is_string() && e["type"].is_string(),
        "{path}: {v}"
    );
    assert!(e["request_id"].is_string(), "{path}: {v}");
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

#[test]
fn links_resolve_on_every_replica_and_nothing_else_does() {
    let store = tempfile::tempdir().expect("tempdir");
    let (a, b) = pair(store.path(), &[]);
    // both directions: made on one, fetched from both, byte-identical
    for (maker, other) in [(&a, &b), (&b, &a)] {
        for id in make(maker, 2) {
            let (s1, t1, own) = file(maker, &id);
            let (s2, t2, theirs) = file(other, &id);
            assert_eq!((s1, s2), (200, 200), "{id}");
            assert_eq!((t1.as_str(), t2.as_str()), ("image/png", "image/png"));
            assert!(own.starts_with(PNG_MAGIC), "{id}: not a PNG");
            assert_eq!(own, theirs, "{id}: the replicas serve different bytes");
        }
    }

    // a made-up id that is well formed: 404, code not_found
    let made_up = "0123456789abcdef0123456789abcdef.png";
    assert_not_served(&a, &format!("/v1/images/files/{made_up}"), b"\x89PNG");
    let v: Value = serde_json::from_slice(&file(&b, made_up).2).expect("JSON");
    assert_eq!(v["error"]["code"], "not_found", "{v}");

    // a real id with its hex upper-cased names no image (ids are lowercase only)
    let real = make(&a, 1).remove(0);
    let (hex, ext) = real.split_once('.').expect("id.ext");
    let upper = format!("{}.{ext}", hex.to_uppercase());
    assert_ne!(upper, real, "the id has letters to upper-case");
    assert_not_served(&b, &format!("/v1/images/files/{upper}"), b"\x89PNG");
    assert_eq!(file(&b, &real).0, 200, "the real one still resolves");

    // a file outside the store, and a symlink in the store named like a valid id pointing at it
    let outside = tempfile::tempdir().expect("tempdir");
    let secret: &[u8] = b"kiln-image-store-secret-bytes";
    let target = outside.path().join("passwd");
    std::fs::write(&target, secret).expect("write the foreign file");
    let planted = "fedcba9876543210fedcba9876543210.png";
    std::os::unix::fs::symlink(&target, store.path().join(planted)).expect("plant a symlink");
    // the store and `outside` are siblings (both in the temp dir): `..` from one reaches the other
    let rel = outside
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a utf-8 name");
    let absolute = target
        .to_str()
        .expect("a utf-8 path")
        .trim_start_matches('/');
    let hops = "..%2f".repeat(store.path().components().count() + 2);
    let attempts = [
        format!("/v1/images/files/{planted}"),
        "/v1/images/files/..%2f..%2fetc%2fpasswd".to_string(),
        "/v1/images/files/..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("/v1/images/files/{hops}{}", absolute.replace('/', "%2f")),
        format!("/v1/images/files/%2f{}", absolute.replace('/', "%2f")),
        format!("/v1/images/files/..%2f{rel}%2fpasswd"),
        "/v1/images/files/../../../../etc/passwd".to_string(),
        "/v1/images/files/%2e%2e".to_string(),
        "/v1/images/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_string(),
        format!("/v1/images/files/%2e%2e%2f{rel}%2fpasswd"),
        "/v1/images/files/....%2f%2f....%2f%2fetc%2fpasswd".to_string(),
        format!("/v1/images/files/{planted}%00"),
        format!("/v1/images/files/{hex}.png%2f..%2f{planted}"),
    ];
    for path in &attempts {
        for s in [&a, &b] {
            assert_not_served(s, path, secret);
        }
    }
    // the planted link is neither followed nor removed as if it were an image by a sweep
    make(&b, 1);
    assert!(
        std::fs::symlink_metadata(store.path().join(planted)).is_ok(),
        "a sweep removed a foreign file"
    );
    assert_eq!(std::fs::read(&target).expect("still there"), secret);
}

#[test]
fn count_cap_holds_across_replicas() {
    let store = tempfile::tempdir().expect("tempdir");
    let (a, b) = pair(store.path(), &["--url-store-max", "3"]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let s = if i % 2 == 0 { &a } else { &b };
        ids.extend(make(s, 1));
        // eviction is by mtime (ties by name): keep the five writes' mtimes apart even on a
        // filesystem with coarse timestamps (ext4 ticks at ~4 ms)
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, id) in ids.iter().enumerate() {
        let want = if i >= 2 { 200 } else { 404 };
        for s in [&a, &b] {
            assert_eq!(file(s, id).0, want, "image {i} of 5 ({id}) from {}", s.base);
        }
    }
    let files = std::fs::read_dir(store.path())
        .expect("list the store")
        .filter_map(|e| e.ok())
        // images only: not writers' `.tmp-` files, nor the async jobs' `jobs/` folder
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .count();
    assert_eq!(files, 3, "images left in the shared directory");
}

#[test]
fn links_expire_on_every_replica() {
    let store = tempfile::tempdir().expect("tempdir");
    let (a, b) = pair(store.path(), &["--url-ttl-secs", "1"]);
    let id = make(&a, 1).remove(0);
    let made = Instant::now();
    // at once: the write was milliseconds ago, well inside the 1 s TTL
    assert_eq!(
        file(&b, &id).0,
        200,
        "a fresh link resolves on the other replica"
    );
    assert_eq!(file(&a, &id).0, 200, "a fresh link resolves on its replica");
    let wait = Duration::from_millis(2500).saturating_sub(made.elapsed());
    std::thread::sleep(wait);
    for s in [&b, &a] {
        assert_not_served(s, &format!("/v1/images/files/{id}"), PNG_MAGIC);
    }
    // a reader removes what it finds expired
    assert!(
        !store.path().join(&id).exists(),
        "the expired image is still in the store"
    );
}
