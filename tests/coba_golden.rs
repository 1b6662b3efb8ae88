//! CoBa against a transcription of MFTCoder's `CoBaStatus` with its quirks (`fixtures/generate.py --only coba`,
//! torch 2.15.0, float64), driven by synthetic validation histories: K = 3 (task 0 diverges after step 14,
//! task 1 converges fast, task 2 slowly), W = 5, H = 10, τ = 5, U = 1.
//!
//! Where no fix applies, weights, scores, DF and slopes equal MFTCoder's within 1e-6 (in practice ~1e-15: the
//! same f64 formulas; our OLS is the centred form, theirs a normal-equation solve). Where a fix applies the
//! test asserts the specific difference:
//! - `main`: DF > 1 at steps 17–20 → clamped to 1 (with the clamp off, every step matches).
//! - `warmup2` (W = 2): step 2 fits one point per task → MFTCoder NaN, ours uniform (zero-slope guard).
//! - `gap`: task 1 absent from the samples of steps 9 and 10 → MFTCoder's fit misaligns x and y while the gap
//!   sits inside the window (samples c − H .. c − 1), i.e. at steps 12–18 (at 10–11 the gap is at the window's
//!   end and at 19–20 at its start: a pure shift, harmless); those slopes stay in the ACS window (steps
//!   ≥ c − H + W) until step 23.
//! - `warmup_missed` (U = 2, W = 5): MFTCoder crashes at its first update; ours updates from step 6.

use mftcoder::loss::coba::{CobaConfig, CobaState, CobaUpdate, ols_slope};
use serde_json::Value;
use std::path::Path;

const TOL: f64 = 1e-6;

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/coba").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect() // null = NaN
}

fn samples(g: &Value) -> Vec<Vec<Option<f64>>> {
    // MFTCoder reports an absent task as loss 0
    g["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| floats(r).into_iter().map(|v| (v != 0.0).then_some(v)).collect())
        .collect()
}

/// Drive our CoBa through the golden's steps: weights per step and the updates.
fn replay(g: &Value, clamp: bool) -> (Vec<Vec<f64>>, Vec<CobaUpdate>) {
    let c = &g["config"];
    let n = |k: &str| c[k].as_u64().unwrap() as usize;
    let config = CobaConfig {
        warmup_steps: n("W"),
        history_length: n("H"),
        tau: c["tau"].as_f64().unwrap(),
        update_interval: n("U"),
        sample_valid_num: 1,
        clamp_divergence: clamp,
    };
    let mut state = CobaState::new(n("K"), config);
    state.set_initial_losses(&floats(&g["L0"]).into_iter().map(Some).collect::<Vec<_>>());
    let (mut weights, mut updates) = (Vec::new(), Vec::new());
    for (step, sample) in samples(g).iter().enumerate() {
        weights.push(state.weights(step));
        if state.is_update_step(step) {
            updates.push(state.last_update().unwrap().clone());
        }
        state.record_validation(step, sample);
    }
    (weights, updates)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.is_nan() || y.is_nan() { f64::INFINITY } else { (x - y).abs() })
        .fold(0.0, f64::max)
}

/// The worst difference between one of our updates and MFTCoder's over slopes, scores, DF and weights.
fn update_diff(ours: &CobaUpdate, theirs: &Value) -> f64 {
    assert_eq!(ours.step as u64, theirs["step"].as_u64().unwrap());
    [
        max_diff(&ours.slopes, &floats(&theirs["slopes"])),
        (ours.slope_max - theirs["slope_max"].as_f64().unwrap()).abs(),
        max_diff(&ours.rcs, &floats(&theirs["rcs"])),
        max_diff(&ours.acs, &floats(&theirs["acs"])),
        (ours.df - theirs["df"].as_f64().unwrap_or(f64::NAN)).abs(),
        max_diff(&ours.weights, &floats(&theirs["weights"])),
    ]
    .into_iter()
    .map(|d| if d.is_nan() { f64::INFINITY } else { d })
    .fold(0.0, f64::max)
}

fn softmax_k(v: &[f64]) -> Vec<f64> {
    let k = v.len() as f64;
    let e: Vec<f64> = v.iter().map(|x| (k * x).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|x| x / z).collect()
}

#[test]
fn main_trajectory_matches_mftcoder_and_the_clamp_changes_only_df_above_one() {
    let g = load("main");
    let theirs = g["updates"].as_array().unwrap();
    let golden_w: Vec<Vec<f64>> = g["weights"].as_array().unwrap().iter().map(floats).collect();

    // clamp off: MFTCoder everywhere
    let (w, updates) = replay(&g, false);
    assert_eq!(updates.len(), theirs.len());
    let worst_w = w.iter().zip(&golden_w).map(|(a, b)| max_diff(a, b)).fold(0.0, f64::max);
    let worst_u = updates.iter().zip(theirs).map(|(o, t)| update_diff(o, t)).fold(0.0, f64::max);
    assert!(worst_w < TOL && worst_u < TOL, "unclamped: weights {worst_w:.2e}, updates {worst_u:.2e}");
    eprintln!("coba main (unclamped): max |Δweight| {worst_w:.2e}, max |Δscore| {worst_u:.2e}");

    // clamp on (the default): identical where MFTCoder's DF ≤ 1; DF = 1 and w = softmax(K·RCS) where it exceeds 1
    let (w, updates) = replay(&g, true);
    let mut clamped = Vec::new();
    for (ours, t) in updates.iter().zip(theirs) {
        let df = t["df"].as_f64().unwrap();
        let step = ours.step;
        if df <= 1.0 {
            assert!(update_diff(ours, t) < TOL, "step {step}: no fix applies");
            assert!(max_diff(&w[step], &golden_w[step]) < TOL);
        } else {
            clamped.push(step);
            assert!((ours.df_raw - df).abs() < TOL && ours.df == 1.0, "step {step}: DF {df} clamped to 1");
            let expect = softmax_k(&ours.rcs); // (1 − DF)·ACS vanishes; these weights are all above 1/(10K)
            assert!(max_diff(&ours.weights, &expect) < 1e-12, "step {step}");
            assert!(max_diff(&ours.weights, &floats(&t["weights"])) > 1e-4, "step {step}: the clamp must show");
        }
    }
    assert_eq!(clamped, vec![17, 18, 19, 20], "the fixture's DF > 1 steps");
    // the story the fixture tells: the diverging task ends lowest, the slow one highest
    let last = w.last().unwrap();
    assert!(last[0] < last[1] && last[1] < last[2], "{last:?}");
}

#[test]
fn zero_slope_guard_replaces_mftcoder_nan_at_the_first_update() {
    let g = load("warmup2");
    let theirs = g["updates"].as_array().unwrap();
    let (w, updates) = replay(&g, false);
    assert!(floats(&theirs[0]["weights"]).iter().all(|v| v.is_nan()), "MFTCoder: NaN at step 2");
    assert_eq!(updates[0].step, 2);
    assert!(w[2].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-15) && updates[0].df == 1.0, "ours: uniform {:?}", w[2]);
    // the zero slopes enter the histories the same way on both sides: every later update matches
    let worst = updates[1..].iter().zip(&theirs[1..]).map(|(o, t)| update_diff(o, t)).fold(0.0, f64::max);
    assert!(worst < TOL, "steps 3..: {worst:.2e}");
}

#[test]
fn aligned_zero_filtering_differs_only_while_the_gap_is_inside_the_window() {
    let g = load("gap");
    let theirs = g["updates"].as_array().unwrap();
    let (_, updates) = replay(&g, false);
    let l0 = floats(&g["L0"]);
    let samples = samples(&g);
    for (ours, t) in updates.iter().zip(theirs) {
        let step = ours.step;
        if (12..=23).contains(&step) {
            continue;
        }
        assert!(update_diff(ours, t) < TOL, "step {step}: no fix applies ({:.2e})", update_diff(ours, t));
    }
    for ours in updates.iter().filter(|u| (12..=18).contains(&u.step)) {
        // task 1's slope is the least-squares line through its present samples at their own steps
        let window: Vec<usize> = (ours.step.saturating_sub(10).max(1)..ours.step).collect();
        let x: Vec<f64> = window.iter().map(|&s| s as f64).collect();
        let by_hand = ols_slope(&x, window.iter().map(|&s| samples[s][1].map(|v| v / l0[1])));
        let theirs = floats(&theirs[ours.step - 5]["slopes"])[1];
        assert!((ours.slopes[1] - by_hand).abs() < 1e-12, "step {}", ours.step);
        assert!((ours.slopes[1] - theirs).abs() > 1e-5, "step {}: MFTCoder's misaligned slope {theirs}", ours.step);
    }
}

#[test]
fn skipped_warm_up_step_does_not_crash() {
    let g = load("warmup_missed");
    assert!(g["crash"].as_str().unwrap().starts_with("step 6"), "MFTCoder crashes at its first update");
    let (w, updates) = replay(&g, true);
    assert_eq!(updates.first().unwrap().step, 6);
    assert_eq!(w[5], vec![1.0; 3]);
    assert!(w[6..].iter().flatten().all(|v| v.is_finite() && *v > 0.0));
    assert!(updates.iter().all(|u| (u.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12));
}
