//! Scheduler host math against diffusers (`refs/schedulers.json`): alphas, timesteps, sigmas,
//! init noise sigma for several step counts, and every step of a 4-step loop (≤ 1e-5).

mod common;

use common::*;
use kiln::schedulers::{EulerDiscrete, SchedulerConfig, SchedulerKind};
use serde_json::Value;

fn refs() -> Value {
    let text =
        std::fs::read_to_string(sd_tiny().join("refs/schedulers.json")).expect("schedulers.json");
    serde_json::from_str(&text).expect("json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn kind(name: &str) -> SchedulerKind {
    name.parse().expect("known scheduler")
}

fn config() -> SchedulerConfig {
    SchedulerConfig::load(&sd_tiny().join("scheduler/scheduler_config.json")).expect("config")
}

#[test]
fn alphas_cumprod_match() {
    let want = floats(&refs()["alphas_cumprod"]["values"]);
    let got = config().alphas_cumprod();
    let d = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(d < 1e-7, "alphas_cumprod max diff {d}");
}

#[test]
fn timesteps_sigmas_and_init_sigma_match() {
    let cfg = config();
    for case in refs()["timesteps"].as_array().unwrap() {
        let name = case["scheduler"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let s = kind(name).build::<B>(&cfg, steps).unwrap();
        let want = floats(&case["timesteps"]);
        let got = s.timesteps();
        assert_eq!(
            got.len(),
            want.len(),
            "{name} {steps} steps: timestep count"
        );
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            d < 1e-4,
            "{name} {steps} steps: timesteps {got:?} vs {want:?}"
        );
        let sigma = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - sigma).abs() < 1e-5 * sigma.max(1.0),
            "{name} {steps}: init_noise_sigma"
        );
        if case.get("sigmas").is_some() {
            let e = EulerDiscrete::new(&cfg, steps);
            let d = e
                .sigmas()
                .iter()
                .zip(floats(&case["sigmas"]))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(d < 1e-5, "{name} {steps}: sigmas differ by {d}");
        }
    }
}

#[test]
fn every_step_matches() {
    let cfg = config();
    for case in refs()["steps"].as_array().unwrap() {
        let name = case["scheduler"].as_str().unwrap();
        let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
        let mut s = kind(name).build::<B>(&cfg, steps).unwrap();
        let shape = [1, 4, 2, 2];
        let to32 = |v: &Value| floats(v).into_iter().map(|x| x as f32).collect::<Vec<_>>();
        let mut sample = tensor::<4>(&shape, to32(&case["x"]));
        let eps = case["eps"].as_array().unwrap();
        let prev = case["prev_sample"].as_array().unwrap();
        assert_eq!(eps.len(), s.timesteps().len(), "{name}: loop length");
        for i in 0..eps.len() {
            if let Some(smi) = case.get("scale_model_input") {
                let got = values(s.scale_model_input(sample.clone(), i));
                assert_close(
                    &format!("{name} scale_model_input {i}"),
                    &got,
                    &to32(&smi[i]),
                    1e-5,
                );
            }
            sample = s.step(tensor::<4>(&shape, to32(&eps[i])), i, sample, &mut || {
                panic!("{name} is deterministic but asked for noise")
            });
            let want = to32(&prev[i]);
            let tol = 1e-5 * want.iter().fold(1f32, |m, x| m.max(x.abs()));
            assert_close(
                &format!("{name} step {i}"),
                &values(sample.clone()),
                &want,
                tol,
            );
        }
    }
}

#[test]
fn scheduler_names_people_use_are_accepted() {
    for (name, want) in [
        ("ddim", SchedulerKind::Ddim),
        ("DDIMScheduler", SchedulerKind::Ddim),
        ("PLMS", SchedulerKind::Pndm),
        ("pndm", SchedulerKind::Pndm),
        ("Euler", SchedulerKind::EulerDiscrete),
        ("EulerDiscreteScheduler", SchedulerKind::EulerDiscrete),
        ("euler", SchedulerKind::EulerDiscrete),
    ] {
        assert_eq!(name.parse::<SchedulerKind>().unwrap(), want, "{name}");
    }
    let err = "dpm_fast".parse::<SchedulerKind>().unwrap_err().to_string();
    assert!(
        err.contains("unknown scheduler `dpm_fast`") && err.contains("ddim"),
        "{err}"
    );
}
