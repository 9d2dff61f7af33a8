use std::time::Duration;

use super::*;

fn limits(ttl_ms: u64, max_images: usize, max_bytes: Option<u64>) -> StoreLimits {
    StoreLimits {
        ttl: Duration::from_millis(ttl_ms),
        max_images,
        max_bytes,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn ids_are_strict() {
    let id = ImageId::random(ImageFormat::Png);
    assert_eq!(id.as_str().len(), 32 + ".png".len());
    assert_eq!(ImageId::parse(id.as_str()), Some(id.clone()));
    assert_ne!(
        ImageId::random(ImageFormat::Png),
        id,
        "128 random bits each"
    );
    for bad in [
        "../etc/passwd",
        "/etc/passwd",
        "%2e%2e%2fx.png",
        "0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef.gif",
        "0123456789ABCDEF0123456789ABCDEF.png",
        "0123456789abcdef0123456789abcde.png",
        "0123456789abcdef0123456789abcdef0.png",
        "0123456789abcdef0123456789abcdef.png/..",
        ".tmp-0123456789abcdef0123456789abcdef",
        "",
    ] {
        assert_eq!(ImageId::parse(bad), None, "{bad:?}");
    }
    assert_eq!(
        ImageId::parse("0123456789abcdef0123456789abcdef.webp").map(|i| i.format()),
        Some(ImageFormat::Webp)
    );
}

#[test]
fn store_kinds_parse() {
    assert_eq!("memory".parse::<StoreKind>(), Ok(StoreKind::Memory));
    assert_eq!(
        "dir:/srv/img".parse::<StoreKind>(),
        Ok(StoreKind::Dir("/srv/img".into()))
    );
    assert!("dir:".parse::<StoreKind>().is_err());
    assert!("s3:bucket".parse::<StoreKind>().is_err());
    assert!("".parse::<StoreKind>().is_err());
}

/// Both stores keep the count cap, the byte cap and the TTL, oldest first.
#[test]
fn both_stores_keep_their_caps_and_ttl() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for kind in [StoreKind::Memory, StoreKind::Dir(tmp.path().join("imgs"))] {
        rt().block_on(async {
            let store = ImageStore::open(&kind, limits(60_000, 2, Some(25))).expect("open");
            let a = store
                .put(vec![1; 10], ImageFormat::Png)
                .await
                .expect("put a");
            // Distinct modification times for the directory's oldest-first order.
            std::thread::sleep(Duration::from_millis(20));
            let b = store
                .put(vec![2; 10], ImageFormat::Jpeg)
                .await
                .expect("put b");
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(store.len(), 2, "{kind:?}");
            // A third image: over the count cap, so the oldest goes.
            let c = store
                .put(vec![3; 10], ImageFormat::Webp)
                .await
                .expect("put c");
            assert!(
                store.get(a.as_str()).await.expect("get").is_none(),
                "{kind:?}"
            );
            let (bytes, format) = store.get(b.as_str()).await.expect("get").expect("b kept");
            assert_eq!((bytes, format), (vec![2; 10], ImageFormat::Jpeg));
            assert!(store.get(c.as_str()).await.expect("get").is_some());
            std::thread::sleep(Duration::from_millis(20));
            // 20 bytes: over the 25-byte cap with both others, so only it stays.
            let d = store
                .put(vec![4; 20], ImageFormat::Png)
                .await
                .expect("put d");
            assert!(
                store.get(b.as_str()).await.expect("get").is_none(),
                "{kind:?}"
            );
            assert!(
                store.get(c.as_str()).await.expect("get").is_none(),
                "{kind:?}"
            );
            assert!(store.get(d.as_str()).await.expect("get").is_some());
            assert!(store.get("../d.png").await.expect("get").is_none());
        });
    }
    for kind in [StoreKind::Memory, StoreKind::Dir(tmp.path().join("ttl"))] {
        rt().block_on(async {
            let store = ImageStore::open(&kind, limits(150, 8, None)).expect("open");
            let a = store.put(vec![1; 4], ImageFormat::Png).await.expect("put");
            assert!(store.get(a.as_str()).await.expect("get").is_some());
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                store.get(a.as_str()).await.expect("get").is_none(),
                "{kind:?} expired"
            );
        });
    }
}

/// Two stores over one directory (two replicas sharing a volume): each serves the other's
/// links, and the caps hold over both.
#[test]
fn a_shared_directory_serves_every_replica() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let kind = StoreKind::Dir(tmp.path().to_path_buf());
    rt().block_on(async {
        let one = ImageStore::open(&kind, limits(60_000, 3, None)).expect("open one");
        let two = ImageStore::open(&kind, limits(60_000, 3, None)).expect("open two");
        let mut ids = Vec::new();
        for i in 0..4u8 {
            let store = if i % 2 == 0 { &one } else { &two };
            ids.push(store.put(vec![i; 8], ImageFormat::Png).await.expect("put"));
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            one.get(ids[0].as_str()).await.expect("get").is_none(),
            "evicted over both"
        );
        for id in &ids[1..] {
            assert!(one.get(id.as_str()).await.expect("get").is_some());
            assert!(two.get(id.as_str()).await.expect("get").is_some());
        }
        assert_eq!(two.len(), 3);
    });
}

/// Nothing but a regular file named by a valid id is served or counted: not a symlink planted
/// under an id's name, nor a writer's temporary file, nor a foreign file (which is also left
/// alone).
#[cfg(unix)]
#[test]
fn the_directory_store_serves_only_its_own_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("imgs");
    std::fs::create_dir(&dir).expect("mkdir");
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"secret").expect("write");
    let planted = "0123456789abcdef0123456789abcdef.png";
    std::os::unix::fs::symlink(&secret, dir.join(planted)).expect("symlink");
    std::fs::write(dir.join("notes.txt"), b"keep me").expect("write");
    std::fs::write(dir.join(".tmp-half-written"), b"x").expect("write");
    rt().block_on(async {
        let store =
            ImageStore::open(&StoreKind::Dir(dir.clone()), limits(60_000, 4, None)).expect("open");
        assert_eq!(store.len(), 0);
        assert!(store.get(planted).await.expect("get").is_none());
    });
    assert!(
        dir.join("notes.txt").exists(),
        "foreign files are not touched"
    );
    assert_eq!(std::fs::read(&secret).expect("read"), b"secret");
}

#[test]
fn an_unwritable_directory_fails_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"").expect("write");
    let err = ImageStore::open(&StoreKind::Dir(file.join("sub")), limits(1000, 1, None))
        .err()
        .expect("a path under a file cannot be a directory");
    assert!(err.to_string().contains("a-file"), "{err}");
}
