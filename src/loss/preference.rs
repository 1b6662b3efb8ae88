//! Preference losses: DPO (Rafailov et al., 2023), its RPO variant (DPO plus the chosen answers' language-model
//! loss) and ORPO (Hong et al., 2024), as MFTCoder's `xxpo` module runs them through TRL.
//!
//! A batch holds B pairs (prompt x, chosen answer y_w, rejected answer y_l). Every loss here is a function of
//! each answer's log-probability under the policy, ℓ = Σ_{t ∈ answer} log p(y_t | y_<t, x), so its gradient
//! reaches the model through one number per answer, ∂L/∂ℓ, and one more per chosen token for the NLL terms.
//!
//! * DPO, against a frozen reference model with log-probabilities r:
//!   h = (ℓ_w − ℓ_l) − (r_w − r_l),  L = mean over pairs of −log σ(β·h).
//! * RPO: DPO + α·NLL, with NLL the mean of −log p over every chosen-answer token of the batch (pooled).
//! * ORPO, no reference: with per-token averages a = ℓ/n,
//!   log-odds = (a_w − a_l) − (log(1 − e^{a_w}) − log(1 − e^{a_l})),  L = NLL − β·mean log σ(log-odds).
//!   TRL's ORPO (0.11 and 1.16 alike) takes this NLL over every next-token prediction of the chosen
//!   sequences, prompt included; RPO's covers the chosen answers only.

/// The sequence log-probabilities (summed over answer tokens) of one pair's two answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairLogps {
    pub chosen: f64,
    pub rejected: f64,
}

/// What to optimise (MFTCoder's `xxpo` with `beta` and `rpo_alpha`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// DPO, plus α·NLL of the chosen answers when `rpo_alpha` is set (RPO).
    Dpo { beta: f64, rpo_alpha: Option<f64> },
    /// ORPO.
    Orpo { beta: f64 },
}

impl Objective {
    /// The weight of the pooled chosen-answer NLL in the loss (α for RPO, 1 for ORPO, 0 for DPO).
    pub fn nll_weight(&self) -> f64 {
        match *self {
            Objective::Dpo { rpo_alpha, .. } => rpo_alpha.unwrap_or(0.0),
            Objective::Orpo { .. } => 1.0,
        }
    }

    /// Whether the NLL term also scores the prompt's tokens (ORPO) or only the chosen answer's (RPO).
    pub fn nll_includes_prompt(&self) -> bool {
        matches!(self, Objective::Orpo { .. })
    }

    /// Whether the objective compares against a reference model.
    pub fn needs_reference(&self) -> bool {
        matches!(self, Objective::Dpo { .. })
    }
}

/// One pair's preference term (before the 1/B of the batch mean) and its derivatives with respect to the
/// policy's two sequence log-probabilities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairTerm {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    /// DPO: β·(ℓ − r) of each answer (what TRL logs as rewards); ORPO: β·a.
    pub chosen_reward: f64,
    pub rejected_reward: f64,
}

/// log σ(x), computed without overflow for large |x|.
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

// ANCHOR: dpo_pair
/// DPO's term of one pair: −log σ(β·h), h = (ℓ_w − ℓ_l) − (r_w − r_l).
/// ∂/∂ℓ_w = −β·σ(−β·h) = −∂/∂ℓ_l: the gradient raises the chosen answer and lowers the rejected one, strongly
/// while the policy does not yet prefer the chosen one more than the reference does, and less as it does.
pub fn dpo_pair(policy: PairLogps, reference: PairLogps, beta: f64) -> PairTerm {
    let h = (policy.chosen - policy.rejected) - (reference.chosen - reference.rejected);
    let slope = beta * sigmoid(-beta * h);
    PairTerm {
        loss: -log_sigmoid(beta * h),
        d_chosen: -slope,
        d_rejected: slope,
        chosen_reward: beta * (policy.chosen - reference.chosen),
        rejected_reward: beta * (policy.rejected - reference.rejected),
    }
}
// ANCHOR_END: dpo_pair

// ANCHOR: orpo_pair
/// ORPO's odds-ratio term of one pair, −β·log σ(log-odds), on per-token averages a = ℓ/n. With
/// odds(a) = e^a/(1 − e^a), log-odds = log odds(a_w) − log odds(a_l), and d log odds(a)/da = 1/(1 − e^a);
/// the chain rule through a = ℓ/n divides by n.
pub fn orpo_pair(policy: PairLogps, lengths: (usize, usize), beta: f64) -> PairTerm {
    let (n_w, n_l) = (lengths.0.max(1) as f64, lengths.1.max(1) as f64);
    let (a_w, a_l) = (policy.chosen / n_w, policy.rejected / n_l);
    // log(1 − e^a) for a < 0, accurate on both sides of −ln 2 (Mächler's log1mexp, as TRL 1.16 computes it)
    let log_one_minus_exp = |a: f64| if a > -std::f64::consts::LN_2 { (-a.exp_m1()).ln() } else { (-a.exp()).ln_1p() };
    let log_odds = (a_w - a_l) - (log_one_minus_exp(a_w) - log_one_minus_exp(a_l));
    let d_log_odds = -beta * sigmoid(-log_odds); // ∂(−β·log σ(z))/∂z
    PairTerm {
        loss: -beta * log_sigmoid(log_odds),
        d_chosen: d_log_odds / (1.0 - a_w.exp()) / n_w,
        d_rejected: -d_log_odds / (1.0 - a_l.exp()) / n_l,
        chosen_reward: beta * a_w,
        rejected_reward: beta * a_l,
    }
}
// ANCHOR_END: orpo_pair

/// The pair term of an objective (`reference` is ignored by ORPO).
pub fn pair_term(objective: &Objective, policy: PairLogps, reference: PairLogps, lengths: (usize, usize)) -> PairTerm {
    match *objective {
        Objective::Dpo { beta, .. } => dpo_pair(policy, reference, beta),
        Objective::Orpo { beta } => orpo_pair(policy, lengths, beta),
    }
}

// ANCHOR: token_coefficients
/// The coefficient of log p(y_t) in the batch loss for every row of one sequence, as a weight for
/// `Backend::cross_entropy` (which differentiates −log p: its weight is minus the coefficient):
///
///   L = (1/B)·Σ_pairs term + w_nll·(Σ_{NLL rows} −log p)/N
///   ⇒ ∂L/∂log p_t = [t answer]·d_answer/B − [t NLL row]·w_nll/N
///
/// `answer_rows`: the rows whose target is an answer token; `nll_rows`: the rows the NLL scores (empty for a
/// rejected answer); `nll_per_token` = w_nll/N. Every other row gets 0.
pub fn cross_entropy_weights(
    rows: usize,
    answer_rows: std::ops::Range<usize>,
    d_answer: f64,
    pairs_in_batch: usize,
    nll_rows: std::ops::Range<usize>,
    nll_per_token: f64,
) -> Vec<f32> {
    let mut coefficients = vec![0.0f64; rows];
    coefficients[answer_rows].iter_mut().for_each(|c| *c += d_answer / pairs_in_batch as f64);
    coefficients[nll_rows].iter_mut().for_each(|c| *c -= nll_per_token);
    coefficients.into_iter().map(|c| -c as f32).collect()
}
// ANCHOR_END: token_coefficients

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of the pair terms against their analytic derivatives.
    #[test]
    fn derivatives_match_finite_differences() {
        let policy = PairLogps { chosen: -12.5, rejected: -9.0 };
        let reference = PairLogps { chosen: -11.0, rejected: -10.5 };
        let eps = 1e-6;
        for beta in [0.1, 0.5, 2.0] {
            let terms: [&dyn Fn(PairLogps) -> PairTerm; 2] =
                [&|p| dpo_pair(p, reference, beta), &|p| orpo_pair(p, (7, 4), beta)];
            for term in terms {
                let t = term(policy);
                let fd_w = (term(PairLogps { chosen: policy.chosen + eps, ..policy }).loss
                    - term(PairLogps { chosen: policy.chosen - eps, ..policy }).loss)
                    / (2.0 * eps);
                let fd_l = (term(PairLogps { rejected: policy.rejected + eps, ..policy }).loss
                    - term(PairLogps { rejected: policy.rejected - eps, ..policy }).loss)
                    / (2.0 * eps);
                assert!((fd_w - t.d_chosen).abs() < 1e-7, "β {beta}: chosen {fd_w} vs {}", t.d_chosen);
                assert!((fd_l - t.d_rejected).abs() < 1e-7, "β {beta}: rejected {fd_l} vs {}", t.d_rejected);
            }
        }
    }

    #[test]
    fn dpo_starts_at_log_two_when_policy_equals_reference() {
        let p = PairLogps { chosen: -3.0, rejected: -4.0 };
        let t = dpo_pair(p, p, 0.1);
        assert!((t.loss - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((t.d_chosen + 0.05).abs() < 1e-15 && (t.d_rejected - 0.05).abs() < 1e-15);
    }

    #[test]
    fn log_sigmoid_is_stable() {
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
        assert!(log_sigmoid(800.0).abs() < 1e-300);
        assert!((log_sigmoid(0.0) + std::f64::consts::LN_2).abs() < 1e-15);
    }
}
