//! Checkpoint readers under corrupted input: truncated and bit-flipped copies of the fixtures
//! (safetensors, flax msgpack, PyTorch pickles) and a few hand-made hostile headers, with a fixed
//! seed. Each read ends in a value or an error, never a panic.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use common::fixture;
use kiln::models::dalle_mini::flax_file::flax_vqgan_file;
use kiln::models::dalle_mini::msgpack::MsgpackFile;
use kiln::models::sd15::textual_inversion::Embedding;
use kiln::weights::TensorFile;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Case `i` of `bytes`: even cases truncate, odd ones flip 1 to 8 bits, half of them within
/// the first 512 bytes, where the headers are.
fn corrupt(bytes: &[u8], rng: &mut Rng, i: usize) -> Vec<u8> {
    if i % 2 == 0 {
        return bytes[..rng.below(bytes.len())].to_vec();
    }
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(8) {
        let span = if rng.below(2) == 0 {
            512.min(out.len())
        } else {
            out.len()
        };
        let at = rng.below(span);
        out[at] ^= 1 << rng.below(8);
    }
    out
}

/// Runs `read` on `cases` corrupted copies of `source`; returns the cases that panicked.
fn fuzz(source: &Path, cases: usize, seed: u64, read: &dyn Fn(&Path)) -> Vec<String> {
    let bytes = std::fs::read(source).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(source.file_name().unwrap());
    let mut rng = Rng(seed);
    let mut panics = Vec::new();
    for i in 0..cases {
        std::fs::write(&file, corrupt(&bytes, &mut rng, i)).unwrap();
        if catch_unwind(AssertUnwindSafe(|| read(&file))).is_err() {
            panics.push(format!("{} case {i}", source.display()));
        }
    }
    panics
}

/// Opens a tensor file and reads every tensor, as a load would.
fn read_all(file: &Path) {
    if let Ok(f) = TensorFile::open(file) {
        for key in f.keys() {
            let _ = f.read_f32(key);
        }
    }
}

fn quiet_panics() {
    std::panic::set_hook(Box::new(|_| {}));
}

#[test]
fn safetensors_and_pickles_never_panic() {
    quiet_panics();
    let mut panics = Vec::new();
    let emb = fixture("embeddings-tiny");
    for (file, cases) in [
        (emb.join("kittyemb.safetensors"), 200),
        (fixture("sd15-tiny/refs/clip_skip.safetensors"), 100),
        (emb.join("twopt.pt"), 200),
        (fixture("embeddings-tiny-old/oldmodule.pt"), 100),
    ] {
        panics.extend(fuzz(&file, cases, 0x5eed, &read_all));
        panics.extend(fuzz(&file, cases / 2, 0xfeed, &|p| {
            let _ = Embedding::read(p);
        }));
    }
    let _ = std::panic::take_hook();
    assert!(panics.is_empty(), "panicked:\n{}", panics.join("\n"));
}

#[test]
fn flax_msgpack_never_panics() {
    quiet_panics();
    let vqgan = fixture("dalle-tiny/flax/vqgan/flax_model.msgpack");
    let mut panics = fuzz(&vqgan, 200, 0x5eed, &|p| {
        let _ = MsgpackFile::open(p);
    });
    panics.extend(fuzz(&vqgan, 40, 0xfeed, &read_all_flax));
    let _ = std::panic::take_hook();
    assert!(panics.is_empty(), "panicked:\n{}", panics.join("\n"));
}

fn read_all_flax(p: &Path) {
    if let Ok(f) = flax_vqgan_file(p) {
        for s in f.tensors.values() {
            let _ = s.to_data();
        }
    }
}

/// Hand-made msgpack a bit flip rarely reaches: deep nesting, a huge rank, a shape whose byte
/// count overflows, an ext payload that ends past the file.
#[test]
fn hostile_msgpack_headers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flax_model.msgpack");
    let array = |header: &[u8]| {
        // {"k": ext8(len 40, type 1) [ ...header ]}
        let mut v = vec![0x81, 0xa1, b'k', 0xc7, 40, 1];
        v.extend_from_slice(header);
        v
    };
    let mut deep = Vec::new();
    for _ in 0..100_000 {
        deep.extend_from_slice(&[0x81, 0xa1, b'a']);
    }
    let cases: [(&str, Vec<u8>); 4] = [
        ("deep nesting", deep),
        ("rank 2^32-1", array(&[0x93, 0xdd, 0xff, 0xff, 0xff, 0xff])),
        (
            "byte count overflow",
            array(&[
                0x93, 0x92, 0xcf, 0x40, 0, 0, 0, 0, 0, 0, 0, 0xcf, 0x40, 0, 0, 0, 0, 0, 0, 0, 0xa7,
                b'f', b'l', b'o', b'a', b't', b'3', b'2', 0xc4, 0,
            ]),
        ),
        (
            "ext past the end",
            vec![0x81, 0xa1, b'k', 0xc9, 0xff, 0xff, 0xff, 0xff, 1],
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(&file, bytes).unwrap();
        let got = catch_unwind(|| MsgpackFile::open(&file).map(|_| ()));
        match got {
            Ok(Err(e)) => assert!(e.to_string().contains("flax_model.msgpack"), "{what}: {e}"),
            Ok(Ok(())) => panic!("{what}: accepted"),
            Err(_) => panic!("{what}: panicked"),
        }
    }
}

/// An embedding of 0-d vectors used to divide by zero when listed; one of 70 000-d vectors is
/// past what any text encoder has.
#[test]
fn embedding_shapes_are_checked_before_use() {
    let dir = tempfile::tempdir().unwrap();
    for (name, shape) in [("zero", [2, 0]), ("wide", [1, 70_000])] {
        let file = dir.path().join(format!("{name}.safetensors"));
        let values = vec![0.5f32; shape[0] * shape[1]];
        kiln::weights::write_f32(&file, "emb_params", &shape, &values).unwrap();
        let err = Embedding::read(&file).expect_err(name).to_string();
        assert!(
            err.contains(&format!("{name}.safetensors")) && err.contains("emb_params"),
            "{err}"
        );
    }
}
