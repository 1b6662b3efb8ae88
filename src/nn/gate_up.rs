//! One projection holding an MLP's gate and up (ChatGLM's `dense_h_to_4h`): its output row is [gate | up],
//! each half I wide. Viewed as [2T, I], the rows alternate gate₀, up₀, gate₁, up₁, …, so the split is two
//! row gathers (an embedding lookup, no new backend op), and its backward stacks the two gradients and
//! gathers them back into that alternation.
//!
//!   ∂L/∂fused[t] = [∂L/∂gate[t] | ∂L/∂up[t]]

use crate::backend::Backend;

// ANCHOR: gate_up
/// fused: [T, 2I] → (gate [T, I], up [T, I])
pub fn split_gate_up<B: Backend>(b: &B, fused: &B::Tensor) -> (B::Tensor, B::Tensor) {
    let (t, width) = b.dims(fused);
    assert!(width % 2 == 0, "split_gate_up: width {width} is not [gate | up]");
    let rows = b.reshape(fused, 2 * t, width / 2);
    let pick = |half: u32| (0..t as u32).map(|r| 2 * r + half).collect::<Vec<u32>>();
    (b.embedding(&rows, &pick(0)), b.embedding(&rows, &pick(1)))
}

/// The backward of [`split_gate_up`]: (dgate, dup), both [T, I] → dfused [T, 2I].
pub fn join_gate_up<B: Backend>(b: &B, dgate: &B::Tensor, dup: &B::Tensor) -> B::Tensor {
    let (t, inner) = b.dims(dgate);
    assert_eq!(b.dims(dup), (t, inner), "join_gate_up: gate and up gradients differ in shape");
    let stacked = b.concat_rows(dgate, dup); // rows 0..T the gate's, T..2T the up's
    let alternate: Vec<u32> = (0..t as u32).flat_map(|r| [r, t as u32 + r]).collect();
    b.reshape(&b.embedding(&stacked, &alternate), t, 2 * inner)
}
// ANCHOR_END: gate_up

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Cpu;
    use crate::nn::grad_check::{check, random, weighted_sum};
    use crate::rng::Rng;
    use ndarray::{array, s};
    use proptest::prelude::*;

    #[test]
    fn splits_halves_and_joins_them_back() {
        let fused = array![[1.0f32, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]];
        let (gate, up) = split_gate_up(&Cpu, &fused);
        assert_eq!(gate, fused.slice(s![.., ..2]));
        assert_eq!(up, fused.slice(s![.., 2..]));
        assert_eq!(join_gate_up(&Cpu, &gate, &up), fused);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn backward_matches_finite_differences(t in 1usize..5, inner in 1usize..5, seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let fused = random(t, 2 * inner, &mut rng);
            let (rg, ru) = (random(t, inner, &mut rng), random(t, inner, &mut rng));
            let dfused = join_gate_up(&Cpu, &rg, &ru);
            check("dfused", &fused, &dfused, |x| {
                let (g, u) = split_gate_up(&Cpu, x);
                weighted_sum(&g, &rg) + weighted_sum(&u, &ru)
            })
            .map_err(TestCaseError::fail)?;
        }
    }
}
