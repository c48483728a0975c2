//! The verdict: each treatment against the control, from the counts the
//! request path keeps (answers by status class, the latency histogram).
//!
//! - Error rate (5xx answers): the difference of proportions with an
//!   always-valid p-value and confidence sequence from the mixture
//!   sequential probability ratio test (mSPRT, Johari et al. 2017, a normal
//!   mixture of width `TAU_ERRORS` over the normal approximation): looking
//!   at it every minute keeps its error rate.
//! - Latency: Mann-Whitney from the two histograms (requests in one bucket
//!   are ties), as the probability that a treatment request is slower than
//!   a control one (plus half the ties), with the same mSPRT on that
//!   probability; the Hodges-Lehmann estimate of the shift (the median of
//!   treatment - control differences, each request at its bucket's
//!   midpoint); p50 and p99 interpolated in the buckets as Prometheus'
//!   `histogram_quantile` does. The fixed-sample Mann-Whitney p-value is
//!   given beside it (what scipy's `mannwhitneyu` says for the same data).
//!   A latency difference is called only when the Hodges-Lehmann shift is
//!   off zero: within one bucket is not a difference the histograms show.
//! - Holm's correction across treatments, per measure.
//! - A sample ratio mismatch check: the observed requests against the
//!   configured split, chi-square, flagged under p = 0.001.
//!
//! Pure: counts in, numbers and one line of words out. The formulas are
//! checked against scipy and statsmodels in the tests (tests/tests/e2e/verdict.rs).

use serde::{Deserialize, Serialize};

/// The mixture width of the error-rate test: differences of a few
/// percentage points are what it is tuned to find fastest.
pub const TAU_ERRORS: f64 = 0.02;
/// The mixture width of the latency test, on the probability scale.
pub const TAU_LATENCY: f64 = 0.05;
/// A split this unlikely under the configured shares is a mismatch.
pub const SRM_P: f64 = 0.001;

/// One version's counts.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    /// Its configured share of the split, in percent.
    pub share: u32,
    pub requests: u64,
    /// Of `requests`, those the weighted split routed (not pinned, no
    /// cohort key): the split check's counts.
    pub split: u64,
    /// Answers the version failed (5xx).
    pub errors: u64,
    /// Requests per latency bucket (not cumulative), the last one past the
    /// last bound.
    pub latency: Vec<u64>,
    /// What the module reported through the `metrics` import, by name.
    pub reported: Vec<(String, Moments)>,
}

/// A reported number's count, mean and sum of squared deviations from the
/// mean (M2), kept by Welford's update and merged by Chan's: a variance
/// taken as sum of squares less square of sum loses every digit to
/// rounding once the mean is large against the spread (values of 1e8 that
/// differ by 1, a latency in nanoseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredMoments", into = "StoredMoments")]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
}

/// Moments as stored: `{count, mean, m2}`, and `sum` and `sum_sq` too,
/// which earlier releases saved alone and still read (a downgrade keeps
/// the counts).
#[derive(Serialize, Deserialize)]
struct StoredMoments {
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    m2: Option<f64>,
    sum: Option<f64>,
    sum_sq: Option<f64>,
}

impl From<Moments> for StoredMoments {
    fn from(m: Moments) -> StoredMoments {
        let n = m.count as f64;
        StoredMoments {
            count: m.count,
            mean: Some(m.mean),
            m2: Some(m.m2),
            sum: Some(m.mean * n),
            sum_sq: Some(m.m2 + n * m.mean * m.mean),
        }
    }
}

impl From<StoredMoments> for Moments {
    fn from(s: StoredMoments) -> Moments {
        let n = s.count as f64;
        match (s.mean, s.m2) {
            (Some(mean), Some(m2)) => Moments { count: s.count, mean, m2 },
            _ if s.count == 0 => Moments::default(),
            _ => {
                let (sum, sum_sq) = (s.sum.unwrap_or(0.0), s.sum_sq.unwrap_or(0.0));
                Moments {
                    count: s.count,
                    mean: sum / n,
                    m2: (sum_sq - sum * sum / n).max(0.0),
                }
            }
        }
    }
}

impl Moments {
    /// The moments of `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Moments {
        let mut m = Moments::default();
        for x in values {
            m.push(x);
        }
        m
    }

    /// Adds a value. False, and nothing changed, when the moments would
    /// not stay finite (a value near f64's largest).
    pub fn push(&mut self, x: f64) -> bool {
        let n = self.count + 1;
        let delta = x - self.mean;
        let mean = self.mean + delta / n as f64;
        let m2 = self.m2 + delta * (x - mean);
        if !(mean.is_finite() && m2.is_finite()) {
            return false;
        }
        *self = Moments { count: n, mean, m2 };
        true
    }

    /// Adds another's values. False, and nothing changed, when the moments
    /// would not stay finite.
    pub fn merge(&mut self, other: &Moments) -> bool {
        if other.count == 0 {
            return true;
        }
        if self.count == 0 {
            *self = *other;
            return true;
        }
        let (a, b) = (self.count as f64, other.count as f64);
        let n = a + b;
        let delta = other.mean - self.mean;
        let mean = self.mean + delta * (b / n);
        let m2 = self.m2 + other.m2 + delta * delta * (a * b / n);
        if !(mean.is_finite() && m2.is_finite()) {
            return false;
        }
        *self = Moments {
            count: self.count + other.count,
            mean,
            m2,
        };
        true
    }

    fn mean(&self) -> f64 {
        self.mean
    }

    /// The sample variance.
    fn variance(&self) -> f64 {
        if self.count < 2 {
            return 0.0;
        }
        (self.m2 / (self.count - 1) as f64).max(0.0)
    }
}

/// The mixture width of a reported number's test, in its pooled standard
/// deviations: tuned to differences of a tenth of one.
pub const TAU_REPORTED_SD: f64 = 0.1;

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub control: f64,
    pub treatment: f64,
    pub difference: f64,
    /// The confidence sequence at 1 - alpha.
    pub ci: (f64, f64),
    /// Always valid (mSPRT).
    pub p_value: f64,
    /// After Holm's correction across treatments.
    pub p_adjusted: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// p50 and p99 in milliseconds, control then treatment.
    pub p50_ms: (f64, f64),
    pub p99_ms: (f64, f64),
    /// The Hodges-Lehmann shift, treatment - control, in milliseconds.
    pub hodges_lehmann_ms: f64,
    /// P(a treatment request is slower) + half the ties, with its CI,
    /// always-valid p-value and Holm-adjusted p-value (0.5: no difference).
    pub slower: Estimate,
    /// Mann-Whitney's U for the treatment and its fixed-sample p-value.
    pub mann_whitney_u: f64,
    pub mann_whitney_p: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub treatment: String,
    pub requests: (u64, u64),
    pub error_rate: Estimate,
    pub latency: Latency,
    /// Each number both versions reported: the means' difference.
    pub reported: Vec<(String, Estimate)>,
    pub line: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Srm {
    pub observed: Vec<(String, u64)>,
    pub expected: Vec<(String, f64)>,
    pub chi2: f64,
    pub p_value: f64,
    pub mismatch: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub control: String,
    pub alpha: f64,
    pub comparisons: Vec<Comparison>,
    pub srm: Option<Srm>,
    pub lines: Vec<String>,
}

/// Compares each treatment with the control. BOUNDS are the latency
/// buckets' upper bounds in seconds (the last bucket has none).
pub fn compare(control: &Arm, treatments: &[Arm], bounds: &[f64], alpha: f64) -> Verdict {
    let mut comparisons: Vec<Comparison> = treatments
        .iter()
        .map(|t| Comparison {
            treatment: t.name.clone(),
            requests: (control.requests, t.requests),
            error_rate: error_rate(control, t, alpha),
            latency: latency(control, t, bounds, alpha),
            reported: reported(control, t, alpha),
            line: String::new(),
        })
        .collect();
    let holm_errors = holm(&comparisons.iter().map(|c| c.error_rate.p_value).collect::<Vec<_>>());
    let holm_latency = holm(&comparisons.iter().map(|c| c.latency.slower.p_value).collect::<Vec<_>>());
    for (i, c) in comparisons.iter_mut().enumerate() {
        c.error_rate.p_adjusted = holm_errors[i];
        c.latency.slower.p_adjusted = holm_latency[i];
    }
    // Holm per reported name, across the treatments that have it.
    let names: Vec<String> = control.reported.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        let at: Vec<(usize, usize)> = comparisons
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.reported.iter().position(|(n, _)| *n == name).map(|j| (i, j)))
            .collect();
        let adjusted = holm(&at.iter().map(|(i, j)| comparisons[*i].reported[*j].1.p_value).collect::<Vec<_>>());
        for ((i, j), p) in at.into_iter().zip(adjusted) {
            comparisons[i].reported[j].1.p_adjusted = p;
        }
    }
    for c in comparisons.iter_mut() {
        c.line = line(c, alpha);
    }
    let srm = srm(std::iter::once(control).chain(treatments));
    let mut lines: Vec<String> = comparisons.iter().map(|c| c.line.clone()).collect();
    if let Some(s) = srm.as_ref().filter(|s| s.mismatch) {
        lines.push(format!(
            "sample ratio mismatch: the observed split {} is unlikely under the configured one (chi-square {:.1}, p = {}); check failing versions, and changes of the split since the counts began, before trusting the rest",
            s.observed.iter().map(|(n, c)| format!("{n} {c}")).collect::<Vec<_>>().join(", "),
            s.chi2,
            fmt_p(s.p_value)
        ));
    }
    Verdict {
        control: control.name.clone(),
        alpha,
        comparisons,
        srm,
        lines,
    }
}

fn error_rate(c: &Arm, t: &Arm, alpha: f64) -> Estimate {
    let rate = |a: &Arm| {
        if a.requests == 0 {
            0.0
        } else {
            a.errors as f64 / a.requests as f64
        }
    };
    let (pc, pt) = (rate(c), rate(t));
    // Each arm's variance, kept off zero so that no errors at all still
    // carries the uncertainty of its sample size.
    let var = |p: f64, n: u64| {
        let n = n.max(1) as f64;
        (p * (1.0 - p)).max(0.25 / n) / n
    };
    let v = var(pc, c.requests) + var(pt, t.requests);
    let (p_value, radius) = msprt(pt - pc, v, TAU_ERRORS * TAU_ERRORS, alpha);
    Estimate {
        control: pc,
        treatment: pt,
        difference: pt - pc,
        ci: (pt - pc - radius, pt - pc + radius),
        p_value,
        p_adjusted: p_value,
    }
}

/// Each number reported by both versions: the difference of means (Welch's
/// variance), with the mSPRT at a tenth of the pooled standard deviation.
/// A version whose values all agree (a yes/no number that was always no,
/// in a small sample) has a sample variance of 0, which is no evidence
/// that it has none: its variance is then taken as the other's, and when
/// both agree, each as the two samples' together (above 0 when they agree
/// on different values: always 0 against always 1). Fewer than two values
/// on either side: no test.
fn reported(c: &Arm, t: &Arm, alpha: f64) -> Vec<(String, Estimate)> {
    let mut out = Vec::new();
    for (name, sc) in &c.reported {
        let Some((_, st)) = t.reported.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let (mc, mt) = (sc.mean(), st.mean());
        // "All agree" within rounding (moments an earlier release kept as
        // sums carry some).
        let agree = |s: &Moments| s.variance() <= 1e-14 * s.mean() * s.mean();
        let (vc, vt) = match (agree(sc), agree(st)) {
            (true, false) => (st.variance(), st.variance()),
            (false, true) => (sc.variance(), sc.variance()),
            (true, true) => {
                let mut both = *sc;
                both.merge(st);
                (both.variance(), both.variance())
            }
            (false, false) => (sc.variance(), st.variance()),
        };
        let v = vc / sc.count.max(1) as f64 + vt / st.count.max(1) as f64;
        let tau2 = TAU_REPORTED_SD * TAU_REPORTED_SD * (vc + vt) / 2.0;
        let (p_value, radius) = if tau2 > 0.0 && sc.count >= 2 && st.count >= 2 {
            msprt(mt - mc, v, tau2, alpha)
        } else {
            (1.0, f64::INFINITY)
        };
        out.push((
            name.clone(),
            Estimate {
                control: mc,
                treatment: mt,
                difference: mt - mc,
                ci: (mt - mc - radius, mt - mc + radius),
                p_value,
                p_adjusted: p_value,
            },
        ));
    }
    out
}

/// The normal-mixture SPRT for an estimate DELTA of variance V, mixing
/// variance TAU2: the always-valid p-value (1 / the likelihood ratio) and
/// the radius of the confidence sequence at ALPHA.
pub fn msprt(delta: f64, v: f64, tau2: f64, alpha: f64) -> (f64, f64) {
    if v <= 0.0 || !v.is_finite() {
        return (1.0, f64::INFINITY);
    }
    let log_lr = 0.5 * (v / (v + tau2)).ln() + tau2 * delta * delta / (2.0 * v * (v + tau2));
    let p = (-log_lr).exp().min(1.0);
    let radius = ((v * (v + tau2) / tau2) * (2.0 * (1.0 / alpha).ln() + ((v + tau2) / v).ln())).sqrt();
    (p, radius)
}

fn latency(c: &Arm, t: &Arm, bounds: &[f64], alpha: f64) -> Latency {
    let (u, var, p_fixed) = mann_whitney(&t.latency, &c.latency);
    // In f64: two counts past 2^32 would wrap as a u64 product.
    let pairs = c.requests.max(1) as f64 * t.requests.max(1) as f64;
    let theta = if c.latency.iter().sum::<u64>() == 0 || t.latency.iter().sum::<u64>() == 0 {
        0.5
    } else {
        u / pairs
    };
    let v = var / (pairs * pairs);
    let (p_value, radius) = msprt(theta - 0.5, v, TAU_LATENCY * TAU_LATENCY, alpha);
    let ms = |x: f64| x * 1000.0;
    Latency {
        p50_ms: (ms(quantile(&c.latency, bounds, 0.5)), ms(quantile(&t.latency, bounds, 0.5))),
        p99_ms: (ms(quantile(&c.latency, bounds, 0.99)), ms(quantile(&t.latency, bounds, 0.99))),
        hodges_lehmann_ms: ms(hodges_lehmann(&c.latency, &t.latency, &midpoints(bounds))),
        slower: Estimate {
            control: 0.5,
            treatment: theta,
            difference: theta - 0.5,
            ci: ((theta - radius).max(0.0), (theta + radius).min(1.0)),
            p_value,
            p_adjusted: p_value,
        },
        mann_whitney_u: u,
        mann_whitney_p: p_fixed,
    }
}

/// Mann-Whitney U of X over Y from bucket counts (one value per bucket:
/// same-bucket requests are ties), its variance with the tie correction,
/// and the two-sided asymptotic p-value without continuity correction
/// (scipy's `mannwhitneyu(x, y, method="asymptotic", use_continuity=False)`).
pub fn mann_whitney(x: &[u64], y: &[u64]) -> (f64, f64, f64) {
    let (n1, n2) = (x.iter().sum::<u64>() as f64, y.iter().sum::<u64>() as f64);
    let n = n1 + n2;
    if n1 == 0.0 || n2 == 0.0 {
        return (0.0, 0.0, 1.0);
    }
    let mut below = 0.0;
    let mut u = 0.0;
    let mut ties = 0.0;
    for i in 0..x.len().max(y.len()) {
        let (xi, yi) = (*x.get(i).unwrap_or(&0) as f64, *y.get(i).unwrap_or(&0) as f64);
        u += xi * (below + yi / 2.0);
        below += yi;
        let t = xi + yi;
        ties += t * t * t - t;
    }
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let p = if var > 0.0 {
        (2.0 * normal_sf((u - n1 * n2 / 2.0).abs() / var.sqrt())).min(1.0)
    } else {
        1.0
    };
    (u, var, p)
}

/// Each bucket's representative value: the middle of (lower, upper]; the
/// bucket past the last bound, that bound.
pub fn midpoints(bounds: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(bounds.len() + 1);
    let mut lower = 0.0;
    for b in bounds {
        out.push((lower + b) / 2.0);
        lower = *b;
    }
    out.push(lower);
    out
}

/// The median of all treatment - control differences, each request at its
/// bucket's value (the two middle ones averaged when their count is even,
/// as numpy's median of the expanded differences).
pub fn hodges_lehmann(control: &[u64], treatment: &[u64], values: &[f64]) -> f64 {
    let mut diffs: Vec<(f64, u128)> = Vec::new();
    for (i, t) in treatment.iter().enumerate().filter(|(_, t)| **t > 0) {
        for (j, c) in control.iter().enumerate().filter(|(_, c)| **c > 0) {
            diffs.push((values[i] - values[j], u128::from(*t) * u128::from(*c)));
        }
    }
    if diffs.is_empty() {
        return 0.0;
    }
    diffs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: u128 = diffs.iter().map(|d| d.1).sum();
    // The k-th smallest difference (1-based).
    let kth = |k: u128| {
        let mut seen = 0;
        for (d, w) in &diffs {
            seen += w;
            if seen >= k {
                return *d;
            }
        }
        diffs.last().expect("not empty").0
    };
    if total % 2 == 1 {
        kth(total / 2 + 1)
    } else {
        (kth(total / 2) + kth(total / 2 + 1)) / 2.0
    }
}

/// The Q quantile, interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does (from 0 in the first bucket; the bucket past
/// the last bound answers that bound).
pub fn quantile(counts: &[u64], bounds: &[f64], q: f64) -> f64 {
    let n: u64 = counts.iter().sum();
    if n == 0 {
        return 0.0;
    }
    let rank = q * n as f64;
    let mut below = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let c = *c as f64;
        if below + c >= rank && c > 0.0 {
            let Some(upper) = bounds.get(i) else {
                return *bounds.last().unwrap_or(&0.0);
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return lower + (upper - lower) * ((rank - below) / c);
        }
        below += c;
    }
    *bounds.last().unwrap_or(&0.0)
}

/// Holm's step-down adjustment (statsmodels' `multipletests(method="holm")`).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|a, b| p[*a].total_cmp(&p[*b]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, i) in order.into_iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

fn srm<'a>(arms: impl Iterator<Item = &'a Arm>) -> Option<Srm> {
    let arms: Vec<&Arm> = arms.filter(|a| a.share > 0).collect();
    let total: u64 = arms.iter().map(|a| a.split).sum();
    let shares: u32 = arms.iter().map(|a| a.share).sum();
    if arms.len() < 2 || total == 0 || shares == 0 {
        return None;
    }
    let expected: Vec<f64> = arms.iter().map(|a| total as f64 * f64::from(a.share) / f64::from(shares)).collect();
    let chi2: f64 = arms.iter().zip(&expected).map(|(a, e)| (a.split as f64 - e).powi(2) / e).sum();
    let p_value = chi2_sf(chi2, (arms.len() - 1) as f64);
    Some(Srm {
        observed: arms.iter().map(|a| (a.name.clone(), a.split)).collect(),
        expected: arms.iter().zip(&expected).map(|(a, e)| (a.name.clone(), *e)).collect(),
        chi2,
        p_value,
        mismatch: p_value < SRM_P,
    })
}

fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        "< 0.0001".into()
    } else {
        format!("{p:.4}")
    }
}

/// One line in words for a comparison.
fn line(c: &Comparison, alpha: f64) -> String {
    let t = &c.treatment;
    let e = &c.error_rate;
    let l = &c.latency;
    let mut said = Vec::new();
    if e.p_adjusted < alpha {
        said.push(format!(
            "{t} {} than control: error rate {:+.2} pp (CI {:+.2} to {:+.2} pp), p = {}",
            if e.difference > 0.0 { "fails more" } else { "fails less" },
            e.difference * 100.0,
            e.ci.0 * 100.0,
            e.ci.1 * 100.0,
            fmt_p(e.p_adjusted)
        ));
    }
    // A latency difference is reported when it is significant and the
    // histograms resolve it as a shift (a Hodges-Lehmann estimate off 0):
    // two copies of one module differ by microseconds inside one bucket,
    // which is no difference a rollout decides on.
    let resolved = l.hodges_lehmann_ms != 0.0;
    if l.slower.p_adjusted < alpha && resolved {
        said.push(format!(
            "{t} is {} than control: p50 {:+.3} ms, shift {:+.3} ms (Hodges-Lehmann), P(slower) {:.2} (CI {:.2} to {:.2}), p = {}",
            if l.slower.difference > 0.0 { "slower" } else { "faster" },
            l.p50_ms.1 - l.p50_ms.0,
            l.hodges_lehmann_ms,
            l.slower.treatment,
            l.slower.ci.0,
            l.slower.ci.1,
            fmt_p(l.slower.p_adjusted)
        ));
    }
    for (name, r) in &c.reported {
        if r.p_adjusted < alpha {
            said.push(format!(
                "{t} reports {name} {} than control: mean {:+.4} (CI {:+.4} to {:+.4}), p = {}",
                if r.difference > 0.0 { "higher" } else { "lower" },
                r.difference,
                r.ci.0,
                r.ci.1,
                fmt_p(r.p_adjusted)
            ));
        }
    }
    if !said.is_empty() {
        return said.join("; ");
    }
    if l.slower.p_adjusted < alpha {
        return format!(
            "no difference yet between {t} and control: latency differs by less than the histogram buckets resolve (P(slower) {:.2}, p = {}, Hodges-Lehmann shift 0)",
            l.slower.treatment,
            fmt_p(l.slower.p_adjusted)
        );
    }
    // How many more requests the clearer of the two signals needs, if what
    // is seen now holds: the interval shrinks as 1/sqrt(n).
    let need = |diff: f64, ci: (f64, f64)| -> Option<f64> {
        let radius = (ci.1 - ci.0) / 2.0;
        (diff.abs() > 1e-12 && radius.is_finite()).then(|| (radius / diff.abs()).powi(2))
    };
    let n = (c.requests.0 + c.requests.1) as f64;
    let factor = [need(e.difference, e.ci), need(l.slower.difference, l.slower.ci)]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    if factor <= 1.0 {
        // The interval (not adjusted) already leaves out no difference:
        // only Holm's correction across the treatments holds it back.
        return format!(
            "no difference yet between {t} and control: what is seen would be one for a single treatment, \
             not yet after Holm's correction across the treatments"
        );
    }
    if factor.is_finite() && factor < 1e6 {
        format!(
            "no difference yet between {t} and control: about {:.0} more requests needed if what is seen now holds",
            (n * (factor - 1.0)).max(1.0)
        )
    } else {
        format!("no difference yet between {t} and control: none seen in {n:.0} requests")
    }
}

/// P(Z > z) for a standard normal.
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error under 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// P(X > x) for chi-square with K degrees of freedom: the regularized
/// upper incomplete gamma Q(k/2, x/2).
pub fn chi2_sf(x: f64, k: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(k / 2.0, x / 2.0)
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos (g = 7, n = 9).
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Q(a, x), by the series (x < a + 1) or the continued fraction.
fn gamma_q(a: f64, x: f64) -> f64 {
    let ln_front = -x + a * x.ln() - ln_gamma(a);
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (1.0 - sum * ln_front.exp()).clamp(0.0, 1.0)
    } else {
        // Lentz's method.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (ln_front.exp() * h).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 4] = [0.001, 0.002, 0.005, 0.01];

    fn arm(name: &str, share: u32, requests: u64, errors: u64, latency: Vec<u64>) -> Arm {
        Arm {
            name: name.into(),
            share,
            requests,
            split: requests,
            errors,
            latency,
            reported: Vec::new(),
        }
    }

    #[test]
    fn a_clear_error_difference_is_found_and_identical_arms_are_not() {
        let c = arm("v1", 50, 4000, 40, vec![4000, 0, 0, 0, 0]);
        let worse = arm("v2", 50, 4000, 200, vec![4000, 0, 0, 0, 0]);
        let v = compare(&c, std::slice::from_ref(&worse), &BOUNDS, 0.05);
        let e = &v.comparisons[0].error_rate;
        assert!(e.p_adjusted < 0.001 && e.ci.0 > 0.0, "{e:?}");
        assert!(
            v.lines[0].starts_with("v2 fails more than control: error rate +4.00 pp"),
            "{}",
            v.lines[0]
        );
        let same = arm("v2", 50, 4000, 40, vec![4000, 0, 0, 0, 0]);
        let v = compare(&c, &[same], &BOUNDS, 0.05);
        assert!(v.lines[0].starts_with("no difference yet between v2 and control"), "{}", v.lines[0]);
        assert!(v.srm.as_ref().is_some_and(|s| !s.mismatch));
    }

    #[test]
    fn latency_shifts_show_in_every_measure() {
        let c = arm("v1", 50, 1000, 0, vec![600, 400, 0, 0, 0]);
        let slow = arm("v2", 50, 1000, 0, vec![100, 400, 500, 0, 0]);
        let l = compare(&c, &[slow], &BOUNDS, 0.05).comparisons[0].latency.clone();
        assert!(l.slower.treatment > 0.7 && l.slower.p_adjusted < 1e-6, "{l:?}");
        assert!(l.p50_ms.1 > l.p50_ms.0 && l.hodges_lehmann_ms > 0.0, "{l:?}");
        // Medians: control rank 500 in (0, 1 ms] at 500/600; treatment in
        // (1, 2] at (500 - 100) / 400.
        assert!((l.p50_ms.0 - 0.8333).abs() < 1e-3 && (l.p50_ms.1 - 2.0).abs() < 1e-9, "{l:?}");
    }

    #[test]
    fn a_skewed_split_is_a_sample_ratio_mismatch() {
        let c = arm("v1", 70, 5000, 0, vec![5000, 0, 0, 0, 0]);
        let t = arm("v2", 30, 5000, 0, vec![5000, 0, 0, 0, 0]);
        let v = compare(&c, &[t], &BOUNDS, 0.05);
        assert!(v.srm.as_ref().unwrap().mismatch, "{:?}", v.srm);
        assert!(v.lines.last().unwrap().starts_with("sample ratio mismatch"), "{:?}", v.lines);
    }

    /// Pinned and cohort requests are outside the split: a version that
    /// got many of them is not a mismatch when the split's own requests
    /// follow the shares.
    #[test]
    fn requests_outside_the_split_are_not_a_mismatch() {
        let mut c = arm("v1", 70, 7000, 0, vec![7000, 0, 0, 0, 0]);
        let mut t = arm("v2", 30, 9000, 0, vec![9000, 0, 0, 0, 0]);
        c.split = 7000;
        t.split = 3000;
        let v = compare(&c, &[t.clone()], &BOUNDS, 0.05);
        let s = v.srm.as_ref().unwrap();
        assert!(!s.mismatch && s.chi2 < 1e-9, "{s:?}");
        assert_eq!(s.observed, vec![("v1".to_string(), 7000), ("v2".to_string(), 3000)]);
        t.split = 6000;
        assert!(compare(&c, &[t], &BOUNDS, 0.05).srm.unwrap().mismatch);
    }

    #[test]
    fn a_reported_number_that_moves_is_found() {
        // Values mean - 1, mean, mean + 1 in equal parts.
        let sums = |n: u64, mean: f64| Moments::of((0..n).map(|i| mean + (i % 3) as f64 - 1.0));
        let mut c = arm("v1", 50, 3000, 0, vec![3000, 0, 0, 0, 0]);
        let mut t = arm("v2", 50, 3000, 0, vec![3000, 0, 0, 0, 0]);
        c.reported = vec![("clicks".into(), sums(3000, 1.0))];
        t.reported = vec![("clicks".into(), sums(3000, 1.2))];
        let v = compare(&c, &[t], &BOUNDS, 0.05);
        let (name, r) = &v.comparisons[0].reported[0];
        assert_eq!(name, "clicks");
        assert!((r.difference - 0.2).abs() < 1e-9 && r.ci.0 > 0.0 && r.p_adjusted < 1e-6, "{r:?}");
        assert!(
            v.lines[0].starts_with("v2 reports clicks higher than control: mean +0.2000"),
            "{}",
            v.lines[0]
        );
    }

    #[test]
    fn a_version_whose_few_values_all_agree_is_not_taken_as_certain() {
        // A yes/no number: the control's 10 values all 0, the treatment's
        // 10,000 with 500 ones. 0 in 10 is what a 5% rate gives 60% of the
        // time, so this is no difference yet.
        let yes_no = |n: u64, ones: u64| Moments::of((0..n).map(|i| if i < ones { 1.0 } else { 0.0 }));
        let mut c = arm("v1", 50, 10, 0, vec![10, 0, 0, 0, 0]);
        let mut t = arm("v2", 50, 10_000, 0, vec![10_000, 0, 0, 0, 0]);
        c.reported = vec![("clicked".into(), yes_no(10, 0))];
        t.reported = vec![("clicked".into(), yes_no(10_000, 500))];
        let r = &compare(&c, &[t.clone()], &BOUNDS, 0.05).comparisons[0].reported[0].1;
        assert!(r.p_value > 0.5 && r.ci.0 < 0.0, "{r:?}");
        // One value on a side: no test at all.
        c.reported = vec![("clicked".into(), yes_no(1, 0))];
        let r = &compare(&c, &[t.clone()], &BOUNDS, 0.05).comparisons[0].reported[0].1;
        assert_eq!(r.p_value, 1.0, "{r:?}");
        // Ten equal values that are not whole numbers, kept as sums by an
        // earlier release: a variance of rounding noise is no variance
        // either.
        let tenth = (0..10).fold((0.0, 0.0), |(s, q), _| (s + 0.1, q + 0.1 * 0.1));
        let stored = format!(r#"{{"count": 10, "sum": {}, "sum_sq": {}}}"#, tenth.0, tenth.1);
        c.reported = vec![("clicked".into(), serde_json::from_str(&stored).unwrap())];
        let r = &compare(&c, &[t], &BOUNDS, 0.05).comparisons[0].reported[0].1;
        assert!(r.p_value > 0.5, "{r:?}");
    }

    #[test]
    fn two_versions_that_each_always_report_one_value_differ_when_the_values_do() {
        // The control's fallback never taken, the treatment's always.
        let mut c = arm("v1", 50, 10_000, 0, vec![10_000, 0, 0, 0, 0]);
        let mut t = arm("v2", 50, 10_000, 0, vec![10_000, 0, 0, 0, 0]);
        c.reported = vec![("fallback".into(), Moments::of(std::iter::repeat_n(0.0, 10_000)))];
        t.reported = vec![("fallback".into(), Moments::of(std::iter::repeat_n(1.0, 10_000)))];
        let r = &compare(&c, &[t.clone()], &BOUNDS, 0.05).comparisons[0].reported[0].1;
        assert!(r.p_adjusted < 0.05 && r.ci.0 > 0.0, "{r:?}");
        // The same value on both sides is no difference.
        c.reported = t.reported.clone();
        let r = &compare(&c, &[t], &BOUNDS, 0.05).comparisons[0].reported[0].1;
        assert_eq!(r.p_value, 1.0, "{r:?}");
    }

    #[test]
    fn moments_keep_their_digits_when_the_mean_is_large_against_the_spread() {
        // 1e8 + {-1, 0, 1}: a variance of 2/3. As sums of squares (about
        // 3e19, a unit in the last place of 4096) it was noise.
        let m = Moments::of((0..3000).map(|i| 1e8 + (i % 3) as f64 - 1.0));
        assert!((m.variance() - 2.0 / 3.0).abs() < 1e-3 * 2.0 / 3.0, "{}", m.variance());
        let (mut a, b) = (
            Moments::of((0..1500).map(|i| 1e8 + (i % 3) as f64 - 1.0)),
            Moments::of((1500..3000).map(|i| 1e8 + (i % 3) as f64 - 1.0)),
        );
        assert!(a.merge(&b));
        assert!((a.variance() - m.variance()).abs() < 1e-9, "{a:?} {m:?}");
        // A value whose square is past f64's largest changes nothing.
        let mut big = Moments::of([1.0, 2.0]);
        assert!(!big.push(1e200));
        assert_eq!(big, Moments::of([1.0, 2.0]));
        // What an earlier release stored reads back.
        let old: Moments = serde_json::from_str(r#"{"count": 3, "sum": 6.0, "sum_sq": 14.0}"#).unwrap();
        assert_eq!((old.count, old.mean, old.m2), (3, 2.0, 2.0));
        let back: Moments = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        // And an earlier release reads what is stored now.
        let stored: serde_json::Value = serde_json::to_value(Moments::of([1.0, 3.0])).unwrap();
        assert_eq!(
            (stored["count"].as_u64(), stored["sum"].as_f64(), stored["sum_sq"].as_f64()),
            (Some(2), Some(4.0), Some(10.0))
        );
    }

    #[test]
    fn a_difference_held_back_only_by_holm_is_not_said_to_need_one_more_request() {
        let c = arm("v1", 50, 10_000, 100, vec![10_000, 0, 0, 0, 0]);
        let t = arm("v2", 50, 10_000, 100, vec![10_000, 0, 0, 0, 0]);
        let mut cmp = compare(&c, &[t], &BOUNDS, 0.05).comparisons.remove(0);
        // Significant alone, not after Holm across two treatments.
        cmp.error_rate = Estimate {
            control: 0.01,
            treatment: 0.015,
            difference: 0.005,
            ci: (0.001, 0.009),
            p_value: 0.03,
            p_adjusted: 0.06,
        };
        let said = line(&cmp, 0.05);
        assert!(
            said.contains("after Holm's correction") && !said.contains("more requests needed"),
            "{said}"
        );
    }

    #[test]
    fn counts_past_two_to_the_32nd_do_not_wrap() {
        let big = 5_000_000_000;
        let c = arm("v1", 50, big, 0, vec![big, 0, 0, 0, 0]);
        let t = arm("v2", 50, big, 0, vec![0, big, 0, 0, 0]);
        let l = &compare(&c, &[t], &BOUNDS, 0.05).comparisons[0].latency;
        // Every treatment request in a slower bucket than every control one.
        assert!((l.slower.treatment - 1.0).abs() < 1e-9, "{:?}", l.slower);
    }

    #[test]
    fn the_special_functions_hold_known_values() {
        assert!((normal_sf(1.959963984540054) - 0.025).abs() < 1e-8);
        assert!((chi2_sf(3.841458820694124, 1.0) - 0.05).abs() < 1e-9);
        assert!((chi2_sf(18.307038053275146, 10.0) - 0.05).abs() < 1e-9);
        assert_eq!(holm(&[0.01, 0.04, 0.03]), vec![0.03, 0.06, 0.06]);
    }
}
