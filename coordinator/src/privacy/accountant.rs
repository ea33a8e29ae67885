//! The privacy accountant of DP-FedAvg: what (ε, δ) a run has spent after T rounds of the
//! Gaussian mechanism on clipped client updates.
//!
//! Two bounds, both for a mechanism that adds Gaussian noise of standard deviation z·S to a
//! sum of updates each clipped to L2 norm S (McMahan et al. 2018, "Learning Differentially
//! Private Recurrent Language Models", DP-FedAvg), with noise multiplier z:
//!
//! * **zero-concentrated DP** (Bun & Steinke 2016, "Concentrated Differential Privacy:
//!   Simplifications, Extensions, and Lower Bounds"): one round is ρ = 1/(2z²)-zCDP
//!   (their Prop. 1.6), T rounds compose to ρ = T/(2z²) (Lemma 1.7), and ρ-zCDP implies
//!   (ρ + 2√(ρ ln(1/δ)), δ)-DP (Prop. 1.3). It ignores client sampling: the bound for full
//!   participation, and a valid (loose) one for partial participation.
//! * **Rényi DP of the sampled Gaussian mechanism** (Mironov, Talwar & Zhang 2019, "Rényi
//!   Differential Privacy of the Sampled Gaussian Mechanism", Sec. 3.3, integer orders):
//!   with each client sampled with probability q, one round has RDP at order α
//!   ε(α) = log(A_α)/(α − 1), A_α = Σ_{k=0}^{α} C(α,k) (1−q)^{α−k} q^k exp((k² − k)/(2z²));
//!   with q = 1 it is α/(2z²). T rounds compose to T·ε(α) (Mironov 2017, Prop. 1). The
//!   conversion to (ε, δ) is Balle et al. 2020 ("Hypothesis Testing Interpretations and
//!   Rényi Differential Privacy", Thm. 21): ε = T·ε(α) + log((α−1)/α) − (log δ + log α)/(α−1),
//!   minimised over the orders.
//!
//! The orders are the integers 2..=256 (and no fractional ones): the values equal Google's
//! `dp_accounting` RDP accountant restricted to the same orders, and are at most a little
//! above its default order set, which adds fractional orders (the tests quote both). The
//! sampling model is Poisson sampling of clients with rate q = participation fraction, as in
//! DP-FedAvg's analysis; fedssl samples a fixed number of clients per round, which this
//! treats with the same q (the standard approximation, stated in the README).

/// The RDP orders the accountant minimises over: the integers 2..=256.
pub const RDP_ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

/// Privacy spent after some rounds, as both bounds give it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PrivacySpent {
    /// Rounds composed.
    pub rounds: u64,
    /// δ the ε values are for.
    pub delta: f64,
    /// ε from zero-concentrated DP composition (ignores sampling).
    pub epsilon_zcdp: f64,
    /// ρ of zero-concentrated DP, T/(2z²).
    pub rho: f64,
    /// ε from the sampled-Gaussian Rényi bound (uses the sampling rate).
    pub epsilon_rdp: f64,
    /// The RDP order at which `epsilon_rdp` was reached.
    pub rdp_order: u32,
}

/// Accountant for T rounds of the (sampled) Gaussian mechanism with a fixed noise
/// multiplier z and sampling rate q.
#[derive(Debug, Clone, Copy)]
pub struct Accountant {
    noise_multiplier: f64,
    sampling_rate: f64,
}

/// Why an accountant cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum AccountantError {
    /// The noise multiplier is not finite or is negative.
    NoiseMultiplier(f64),
    /// The sampling rate is outside [0, 1].
    SamplingRate(f64),
    /// δ is outside (0, 1).
    Delta(f64),
}

impl std::fmt::Display for AccountantError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoiseMultiplier(z) => {
                write!(f, "noise_multiplier must be a finite number >= 0, got {z}")
            }
            Self::SamplingRate(q) => write!(f, "sampling rate must be in [0, 1], got {q}"),
            Self::Delta(d) => write!(f, "delta must be in (0, 1), got {d}"),
        }
    }
}

impl std::error::Error for AccountantError {}

impl Accountant {
    /// An accountant for noise multiplier `z` (noise std / clip norm) and per-round client
    /// sampling rate `q`.
    ///
    /// # Errors
    /// [`AccountantError`] when z is negative or not finite, or q is outside [0, 1].
    pub fn new(noise_multiplier: f64, sampling_rate: f64) -> Result<Self, AccountantError> {
        if !noise_multiplier.is_finite() || noise_multiplier < 0.0 {
            return Err(AccountantError::NoiseMultiplier(noise_multiplier));
        }
        if !(0.0..=1.0).contains(&sampling_rate) {
            return Err(AccountantError::SamplingRate(sampling_rate));
        }
        Ok(Self {
            noise_multiplier,
            sampling_rate,
        })
    }

    /// RDP of one round at integer order `alpha` ≥ 2 (Mironov et al. 2019, Sec. 3.3):
    /// +∞ without noise, 0 without sampling.
    pub fn rdp_one_round(&self, alpha: u32) -> f64 {
        let (q, z) = (self.sampling_rate, self.noise_multiplier);
        if q == 0.0 {
            return 0.0;
        }
        if z == 0.0 {
            return f64::INFINITY;
        }
        let a = f64::from(alpha);
        if q == 1.0 {
            return a / (2.0 * z * z);
        }
        let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
        let mut log_a = f64::NEG_INFINITY;
        for k in 0..=alpha {
            let kf = f64::from(k);
            let term = log_binomial(alpha, k)
                + kf * log_q
                + (a - kf) * log_1mq
                + (kf * kf - kf) / (2.0 * z * z);
            log_a = log_add(log_a, term);
        }
        log_a / (a - 1.0)
    }

    /// The privacy spent after `rounds` rounds, for `delta`.
    ///
    /// # Errors
    /// [`AccountantError::Delta`] when δ is outside (0, 1).
    pub fn spent(&self, rounds: u64, delta: f64) -> Result<PrivacySpent, AccountantError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(AccountantError::Delta(delta));
        }
        let t = rounds as f64;
        let z = self.noise_multiplier;
        let rho = if rounds == 0 || self.sampling_rate == 0.0 {
            0.0
        } else if z == 0.0 {
            f64::INFINITY
        } else {
            t / (2.0 * z * z)
        };
        let epsilon_zcdp = rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt();
        let (epsilon_rdp, rdp_order) = self.rdp_epsilon(rounds, delta);
        Ok(PrivacySpent {
            rounds,
            delta,
            epsilon_zcdp,
            rho,
            epsilon_rdp,
            rdp_order,
        })
    }

    /// min over the orders of Balle et al.'s conversion of T·ε(α) to ε at δ (δ valid).
    fn rdp_epsilon(&self, rounds: u64, delta: f64) -> (f64, u32) {
        let t = rounds as f64;
        let mut best = (f64::INFINITY, *RDP_ORDERS.start());
        for alpha in RDP_ORDERS {
            let rdp = t * self.rdp_one_round(alpha);
            let eps = if rdp == 0.0 || delta * delta + (-rdp).exp_m1() > 0.0 {
                // δ ≤ √(1 − e^{−KL}) already holds: nothing is spent at this δ.
                0.0
            } else {
                let a = f64::from(alpha);
                rdp + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
            };
            if eps < best.0 {
                best = (eps, alpha);
            }
        }
        (best.0.max(0.0), best.1)
    }
}

/// What a run of scenario `sc` spent after `rounds` rounds under `federation.dp` (δ as
/// configured, default 1 / clients; q = sampled / clients); `None` without DP.
///
/// # Errors
/// When the DP settings cannot be accounted (they are validated when the scenario loads).
pub fn run_spent(
    sc: &fedssl_shared::config::Scenario,
    rounds: usize,
) -> anyhow::Result<Option<PrivacySpent>> {
    let Some(dp) = &sc.federation.dp else {
        return Ok(None);
    };
    let fed = &sc.federation;
    let q = fed.max_sampled() as f64 / fed.clients as f64;
    let delta = dp.delta_of(fed.clients);
    Ok(Some(
        Accountant::new(dp.noise_multiplier, q)?.spent(rounds as u64, delta)?,
    ))
}

/// log C(n, k), summed exactly in logs (n ≤ 256, so the sum of logs is accurate to ~1e-13).
fn log_binomial(n: u32, k: u32) -> f64 {
    let k = k.min(n - k);
    (0..k)
        .map(|i| (f64::from(n - i)).ln() - (f64::from(i + 1)).ln())
        .sum()
}

/// log(e^x + e^y) without overflow.
fn log_add(x: f64, y: f64) -> f64 {
    let (lo, hi) = if x < y { (x, y) } else { (y, x) };
    if lo == f64::NEG_INFINITY {
        return hi;
    }
    (lo - hi).exp().ln_1p() + hi
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Google's `dp_accounting` 0.6.0 (PyPI `dp-accounting`),
    /// `RdpAccountant(orders).compose(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T)
    /// .get_epsilon(delta)`, computed once and pasted here:
    /// (q, z, T, δ, ε with orders 2..=256, ε with the accountant's default orders).
    const REFERENCE: &[(f64, f64, u64, f64, f64, f64)] = &include!("accountant_reference.in");

    #[test]
    fn matches_dp_accounting_on_integer_orders() {
        for &(q, z, t, delta, eps_int, eps_default) in REFERENCE {
            let spent = Accountant::new(z, q).unwrap().spent(t, delta).unwrap();
            let rel = (spent.epsilon_rdp - eps_int).abs() / eps_int.max(1e-12);
            assert!(
                rel < 1e-9,
                "q={q} z={z} T={t} δ={delta}: ours {} reference {eps_int}",
                spent.epsilon_rdp
            );
            // Fractional orders can only lower ε, and only a little here.
            assert!(eps_default <= eps_int + 1e-12);
            assert!(spent.epsilon_rdp <= eps_default * 1.25 + 1e-9);
        }
    }

    #[test]
    fn zcdp_known_answer() {
        // z = 1, T = 8: ρ = 8/2 = 4; δ = e^{-4}: ε = 4 + 2·√(4·4) = 12.
        let spent = Accountant::new(1.0, 1.0)
            .unwrap()
            .spent(8, (-4.0f64).exp())
            .unwrap();
        assert!((spent.rho - 4.0).abs() < 1e-12);
        assert!((spent.epsilon_zcdp - 12.0).abs() < 1e-9);
    }

    #[test]
    fn full_participation_rdp_is_alpha_over_two_z_squared() {
        let acc = Accountant::new(2.0, 1.0).unwrap();
        assert_eq!(acc.rdp_one_round(10), 10.0 / 8.0);
        // q → 1 from below agrees with the closed form.
        let near = Accountant::new(2.0, 1.0 - 1e-12).unwrap().rdp_one_round(10);
        assert!((near - 10.0 / 8.0).abs() < 1e-6, "{near}");
    }

    #[test]
    fn sampling_and_noise_only_lower_epsilon() {
        let full = Accountant::new(1.0, 1.0).unwrap().spent(10, 1e-5).unwrap();
        let sampled = Accountant::new(1.0, 0.1).unwrap().spent(10, 1e-5).unwrap();
        let noisier = Accountant::new(2.0, 1.0).unwrap().spent(10, 1e-5).unwrap();
        assert!(sampled.epsilon_rdp < full.epsilon_rdp);
        assert!(noisier.epsilon_rdp < full.epsilon_rdp);
        // The RDP bound is never worse than zCDP's at full participation.
        assert!(full.epsilon_rdp <= full.epsilon_zcdp);
    }

    #[test]
    fn edges_and_errors() {
        let none = Accountant::new(0.0, 0.5).unwrap().spent(1, 1e-5).unwrap();
        assert!(none.epsilon_rdp.is_infinite() && none.epsilon_zcdp.is_infinite());
        let zero = Accountant::new(1.0, 0.5).unwrap().spent(0, 1e-5).unwrap();
        assert_eq!((zero.epsilon_rdp, zero.epsilon_zcdp), (0.0, 0.0));
        assert_eq!(
            Accountant::new(-1.0, 0.5).unwrap_err(),
            AccountantError::NoiseMultiplier(-1.0)
        );
        assert_eq!(
            Accountant::new(1.0, 1.5).unwrap_err(),
            AccountantError::SamplingRate(1.5)
        );
        let acc = Accountant::new(1.0, 0.5).unwrap();
        assert_eq!(acc.spent(1, 0.0).unwrap_err(), AccountantError::Delta(0.0));
        assert_eq!(acc.spent(1, 1.0).unwrap_err(), AccountantError::Delta(1.0));
    }

    #[test]
    fn log_binomial_known_answers() {
        assert!((log_binomial(10, 3) - 120f64.ln()).abs() < 1e-12);
        assert_eq!(log_binomial(7, 0), 0.0);
        assert!((log_binomial(7, 7)).abs() < 1e-12);
    }
}
