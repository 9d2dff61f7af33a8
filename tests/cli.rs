//! The `kiln` binary end to end on the tiny model: PNG files, seeds, latents in and out, and
//! clear errors for bad arguments.

mod common;
mod safety_common;

use std::process::Command;

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("kiln runs")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn generate_writes_numbered_pngs_and_latents_that_replay() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::sd_tiny();
    let out = dir.path().join("out.png");
    let lat = dir.path().join("final.safetensors");
    let args = [
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--prompt",
        "a red cube",
        "--steps",
        "2",
        "--width",
        "48",
        "--height",
        "32",
        "--n",
        "2",
        "--seed",
        "5",
        "--scheduler",
        "Euler",
        "--output",
        out.to_str().unwrap(),
        "--save-latents",
        lat.to_str().unwrap(),
    ];
    let o = kiln(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("seed 5") && stdout.contains("seed 6"),
        "{stdout}"
    );
    for k in 0..2 {
        let path = dir.path().join(format!("out-{k}.png"));
        let img = image::open(&path).expect("png decodes");
        assert_eq!((img.width(), img.height()), (48, 32));
        let params = kiln::image_io::read_parameters(&std::fs::read(&path).unwrap())
            .unwrap()
            .expect("parameters chunk");
        assert_eq!(
            (
                params.prompt.as_str(),
                params.seed,
                params.steps,
                params.sampler.as_str()
            ),
            ("a red cube", 5 + k as u64, 2, "Euler")
        );
        assert_eq!((params.width, params.height), (48, 32));
    }
    let (shape, _) = kiln::weights::TensorFile::open(&lat)
        .unwrap()
        .read_f32("latents")
        .unwrap();
    assert_eq!(shape, vec![2, 4, 4, 6]);

    // The saved latents feed back in as starting latents of a 1-image run of matching shape.
    let init = dir.path().join("init.safetensors");
    kiln::weights::write_f32(&init, "latents", &[1, 4, 4, 6], &vec![0.5; 96]).unwrap();
    let single = dir.path().join("single.png");
    let o = kiln(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "1",
        "--width",
        "48",
        "--height",
        "32",
        "--init-latents",
        init.to_str().unwrap(),
        "--output",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(single.exists());

    // img2img + JPEG output + no metadata.
    let jpg = dir.path().join("edit.jpg");
    let o = kiln(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--image",
        common::sd_tiny()
            .join("refs/img2img_input.png")
            .to_str()
            .unwrap(),
        "--strength",
        "0.5",
        "--quality",
        "80",
        "--output",
        jpg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&jpg).expect("jpeg decodes");
    assert_eq!(
        (img.width(), img.height()),
        (96, 128),
        "defaults to the init image's size"
    );
}

#[test]
fn bad_arguments_fail_with_clear_messages() {
    let model = common::sd_tiny();
    let m = model.to_str().unwrap();
    for (extra, needle) in [
        (vec!["--height", "50"], "multiples of 8"),
        (vec!["--scheduler", "bogus"], "unknown scheduler `bogus`"),
        (vec!["--device", "tpu"], "unknown device"),
        (
            vec!["--init-latents", "/nonexistent.safetensors"],
            "/nonexistent.safetensors",
        ),
        (vec!["--quality", "50"], "JPEG only"),
        (vec!["--image", "/nonexistent.png"], "/nonexistent.png"),
    ] {
        let mut args = vec![
            "generate",
            "--model-path",
            m,
            "--prompt",
            "x",
            "--steps",
            "1",
            "--width",
            "64",
            "--output",
            "/tmp/kiln-never.png",
        ];
        args.extend(extra);
        let o = kiln(&args);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(err.contains(needle), "expected `{needle}` in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    #[cfg(not(feature = "cuda"))]
    {
        let o = kiln(&[
            "generate",
            "--model-path",
            m,
            "--prompt",
            "x",
            "--device",
            "cuda",
            "--output",
            "/tmp/x.png",
        ]);
        assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
    }
}

#[test]
fn dalle_generate_detects_the_family_and_saves_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("dalle-tiny/flax");
    let out = dir.path().join("cat.png");
    let tokens = dir.path().join("tokens.json");
    let o = kiln(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a cat sitting on a red chair",
        "--n",
        "2",
        "--top-k",
        "1",
        "--cond-scale",
        "16",
        "--tokenization",
        "min-dalle",
        "--seed",
        "3",
        "--output",
        out.to_str().unwrap(),
        "--save-tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saved: Vec<Vec<u32>> =
        serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    assert_eq!(saved.len(), 2);
    assert!(saved.iter().all(|t| t.len() == 256));
    assert_eq!(saved[0], saved[1], "greedy decoding ignores the seed");
    let f =
        kiln::weights::TensorFile::open(&common::fixture("dalle-tiny/refs.safetensors")).unwrap();
    let (_, want) = f.read_f32("greedy_tokens").unwrap();
    assert_eq!(
        saved[0].iter().map(|&t| t as f32).collect::<Vec<_>>(),
        want,
        "greedy tokens equal min-dalle's"
    );
    for k in 0..2 {
        assert!(image::open(dir.path().join(format!("cat-{k}.png"))).is_ok());
    }
    // Stable Diffusion options are refused for DALL·E, and the other way round.
    let o = kiln(&[
        "generate",
        "--model-path",
        model.to_str().unwrap(),
        "--prompt",
        "x",
        "--steps",
        "20",
        "--output",
        "/tmp/x.png",
    ]);
    assert!(
        stderr(&o).contains("--steps applies to Stable Diffusion"),
        "{}",
        stderr(&o)
    );
    let sd = common::sd_tiny();
    let o = kiln(&[
        "generate",
        "--model-path",
        sd.to_str().unwrap(),
        "--prompt",
        "x",
        "--top-k",
        "5",
        "--output",
        "/tmp/x.png",
    ]);
    assert!(
        stderr(&o).contains("--top-k applies to DALL·E"),
        "{}",
        stderr(&o)
    );
}

/// `--safety-checker` as `kiln serve` reads it: a checker that flags everything withholds every
/// image (an error, no file written); `on` without a checker refuses to run.
#[test]
fn generate_withholds_what_the_safety_checker_flags() {
    let dir = tempfile::tempdir().unwrap();
    let checker = dir.path().join("checker");
    safety_common::checker_with_threshold(&checker, -2.0);
    let model = common::sd_tiny();
    let out = dir.path().join("out.png");
    let run = |mode: &str, checker_dir: &std::path::Path| {
        kiln(&[
            "generate",
            "--model-path",
            model.to_str().unwrap(),
            "--prompt",
            "a red cube",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "--safety-checker",
            mode,
            "--safety-checker-dir",
            checker_dir.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let o = run("auto", &checker);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("safety"), "{}", stderr(&o));
    assert!(!out.exists(), "a flagged image was written");
    let o = run("on", dir.path());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no safety checker"), "{}", stderr(&o));
    let o = run("off", &checker);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
}
