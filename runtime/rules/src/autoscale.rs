//! The autoscaler's decision for one version, as Azure ML's azureml-fe makes
//! it: utilization = (busy instances + requests waiting) / (replicas ×
//! max_concurrent), averaged over `autoscale_refresh_seconds`; above the
//! target, add replicas at once; below it for the whole down delay, remove
//! them. The count it asks for is the seeds' sizing rule:
//! ceil(load / target / max_concurrent), where load (busy + waiting, by
//! Little's law rps × seconds per request) is measured instead of guessed.
//!
//! Pure: it is fed samples and the time, and says what to do. The monitor
//! (monitor.rs) samples the pools, applies the machine's capacity and acts.

use std::time::Instant;

use crate::config::Autoscale;

/// A change the autoscaler asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// One version's autoscaler state.
#[derive(Debug)]
pub struct Scaler {
    cfg: Autoscale,
    max_concurrent: usize,
    /// Samples since the last decision.
    sum: f64,
    count: u32,
    last_decision: Instant,
    /// When utilization first fell below the target, and the most replicas
    /// asked for since (what a scale-down goes to).
    below_since: Option<Instant>,
    hold: usize,
    /// The last decision's figures, for `service show`.
    pub desired: usize,
    pub utilization: Option<f64>,
    pub load: f64,
}

impl Scaler {
    pub fn new(cfg: Autoscale, max_concurrent: usize, now: Instant, replicas: usize) -> Self {
        Scaler {
            cfg,
            max_concurrent: max_concurrent.max(1),
            sum: 0.0,
            count: 0,
            last_decision: now,
            below_since: None,
            hold: 0,
            desired: replicas,
            utilization: None,
            load: 0.0,
        }
    }

    /// One sample: instances busy plus requests waiting, now.
    pub fn sample(&mut self, load: usize) {
        self.sum += load as f64;
        self.count += 1;
    }

    /// The seeds' sizing rule for a measured load, within min and max.
    pub fn size_for(&self, load: f64) -> usize {
        let raw = load / self.cfg.target / self.max_concurrent as f64;
        // A hair under an integer is that integer (float noise).
        let n = (raw - 1e-9).ceil().max(0.0) as usize;
        n.clamp(self.cfg.min, self.cfg.max)
    }

    /// Decides once per refresh period; None between decisions and when the
    /// count stays. `current` is the replica count the pool is moving to.
    /// `cpu_limit`, the replicas its calls can keep on the cores
    /// ([`cpu_bound_limit`]): a count above it comes down to it after the
    /// down delay, as a count above what utilization asks does, though the
    /// load that utilization sees stays (instances queued for a core look
    /// busy). A scale-up past it is the caller's to hold.
    pub fn decide(&mut self, now: Instant, current: usize, cpu_limit: Option<usize>) -> Option<Decision> {
        if now.duration_since(self.last_decision) < self.cfg.refresh || self.count == 0 {
            return None;
        }
        let load = self.sum / f64::from(self.count);
        let window = now.duration_since(self.last_decision);
        self.sum = 0.0;
        self.count = 0;
        self.last_decision = now;
        self.load = load;
        let capacity = (current * self.max_concurrent) as f64;
        self.utilization = (capacity > 0.0).then(|| load / capacity);
        let desired = self.size_for(load);
        self.desired = desired;
        let util = match self.utilization {
            Some(u) => format!("{:.0}%", u * 100.0),
            None => "(no replica)".into(),
        };
        let figures = format!(
            "utilization {util} vs target {:.0}% ({load:.2} busy+waiting over {:.1} s)",
            self.cfg.target * 100.0,
            window.as_secs_f64()
        );
        let within = cpu_limit.map_or(desired, |l| desired.min(l.max(self.cfg.min)));
        if within >= current {
            self.below_since = None;
            self.hold = 0;
            return (desired > current).then_some(Decision {
                from: current,
                to: desired,
                reason: figures,
            });
        }
        let since = *self.below_since.get_or_insert(now);
        self.hold = self.hold.max(within);
        // The first period below started one refresh before `since`; half a
        // period of slack absorbs the ticks' jitter.
        let below_for = now.duration_since(since) + self.cfg.refresh;
        if below_for + self.cfg.refresh / 2 <= self.cfg.down_delay {
            return None;
        }
        let to = self.hold;
        self.below_since = None;
        self.hold = 0;
        let why = if desired > to {
            "more replicas than its calls can keep on the CPU cores"
        } else {
            "below target"
        };
        Some(Decision {
            from: current,
            to,
            reason: format!("{figures}; {why} for {:.0} s", below_for.as_secs_f64()),
        })
    }
}

/// The CPU share from which a version's calls count as CPU-bound.
pub const CPU_BOUND: f64 = 0.1;

/// The most replicas of a version that can run at once on `cores` when its
/// calls keep a core busy `cpu_share` of their time (its instances' CPU
/// time over its calls' time): `cores / cpu_share` instances, in replicas
/// of `max_concurrent`, at least one. In one process the instances share
/// the machine's cores, so more of them than that only queue for a core,
/// with the client's latency (at 16 connections on iris: p99 26 ms with
/// the ten replicas utilization asks for, 1.3 ms with two). None: no call
/// ran, or the calls wait more than they compute (under 10% on a core:
/// sleeping, blocked in the host), where more instances do serve more.
/// A replica held to `replica_limit` cores (`cpu_cores_limit`) uses no more
/// than that however busy its calls, so `cores / replica_limit` of them
/// run at once.
pub fn cpu_bound_limit(cpu_share: Option<f64>, cores: f64, max_concurrent: usize, replica_limit: Option<f64>) -> Option<usize> {
    let share = cpu_share.filter(|s| *s >= CPU_BOUND)?.min(1.0);
    let max_concurrent = max_concurrent.max(1);
    if let Some(limit) = replica_limit.filter(|l| *l < share * max_concurrent as f64) {
        return Some((cores / limit - 1e-9).ceil().max(1.0) as usize);
    }
    let instances = (cores / share - 1e-9).ceil().max(1.0) as usize;
    Some(instances.div_ceil(max_concurrent))
}

/// The share of a machine's `cores` one CPU-bound version may count on
/// when others run beside it: what the other CPU-bound versions keep busy
/// now (`others`, in cores) is taken away, but each of the `versions`
/// CPU-bound versions, this one among them, keeps at least an even share,
/// so that the first to scale does not hold the rest at one replica.
/// Without it two versions each held at the cores would together ask
/// twice as many instances as there are cores (a split endpoint's control
/// and treatment under load at once).
pub fn cores_left(cores: f64, others: f64, versions: usize) -> f64 {
    (cores - others).max(cores / versions.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(min: usize, max: usize) -> Autoscale {
        Autoscale {
            min,
            max,
            target: 0.7,
            refresh: Duration::from_secs(1),
            down_delay: Duration::from_secs(60),
        }
    }

    /// Feeds `load` for one refresh period and decides.
    fn period(s: &mut Scaler, t: &mut Instant, load: usize, current: usize) -> Option<Decision> {
        limited(s, t, load, current, None)
    }

    /// The same, with the cores' limit.
    fn limited(s: &mut Scaler, t: &mut Instant, load: usize, current: usize, limit: Option<usize>) -> Option<Decision> {
        for _ in 0..20 {
            s.sample(load);
        }
        *t += Duration::from_secs(1);
        s.decide(*t, current, limit)
    }

    #[test]
    fn the_seeds_sizing_rule() {
        let s = Scaler::new(cfg(1, 100), 1, Instant::now(), 1);
        // 20 rps x 10 s = 200 busy; / 0.7 = 285.7 -> 286, capped at 100.
        assert_eq!(s.size_for(200.0), 100);
        // 4 busy / 0.7 = 5.71 -> 6.
        assert_eq!(s.size_for(4.0), 6);
        // Exactly at target: 2.8 / 0.7 = 4, not 5.
        assert_eq!(s.size_for(2.8), 4);
        assert_eq!(s.size_for(0.0), 1, "never below min");
        let two = Scaler::new(cfg(0, 100), 2, Instant::now(), 1);
        assert_eq!(two.size_for(4.0), 3, "max_concurrent 2 halves it");
        assert_eq!(two.size_for(0.0), 0, "min 0 lets it reach zero");
    }

    #[test]
    fn up_at_once_down_only_after_the_delay() {
        let mut t = Instant::now();
        let mut s = Scaler::new(cfg(1, 10), 1, t, 1);
        // 8 waiting on 1 replica: 800% -> ceil(8 / 0.7) = 12, capped at 10.
        let d = period(&mut s, &mut t, 8, 1).expect("scales up in the first period");
        assert_eq!((d.from, d.to), (1, 10));
        assert!(d.reason.contains("utilization 800%"), "{}", d.reason);
        // Load falls to 2 busy: wants 3, but only after 60 s below target.
        for i in 0..58 {
            assert_eq!(period(&mut s, &mut t, 2, 10), None, "second {i}");
        }
        // A burst within the window raises what the scale-down goes to.
        assert_eq!(period(&mut s, &mut t, 4, 10), None);
        let d = period(&mut s, &mut t, 2, 10).expect("down after about a minute");
        assert_eq!((d.from, d.to), (10, 6));
        assert!(d.reason.contains("below target"), "{}", d.reason);
    }

    #[test]
    fn back_at_target_resets_the_down_window() {
        let mut t = Instant::now();
        let mut s = Scaler::new(cfg(1, 10), 1, t, 3);
        for _ in 0..30 {
            assert_eq!(period(&mut s, &mut t, 0, 3), None);
        }
        // 2 busy on 3 -> wants ceil(2.86) = 3: at target again.
        assert_eq!(period(&mut s, &mut t, 2, 3), None);
        for _ in 0..59 {
            assert_eq!(period(&mut s, &mut t, 0, 3), None);
        }
        assert_eq!(period(&mut s, &mut t, 0, 3).map(|d| d.to), Some(1));
    }

    #[test]
    fn idle_scales_to_zero_only_with_min_zero() {
        let mut t = Instant::now();
        let mut zero = Scaler::new(
            Autoscale {
                down_delay: Duration::from_secs(3),
                ..cfg(0, 4)
            },
            1,
            t,
            1,
        );
        assert_eq!(period(&mut zero, &mut t, 0, 1), None);
        assert_eq!(period(&mut zero, &mut t, 0, 1), None);
        let d = period(&mut zero, &mut t, 0, 1).expect("to zero after the delay");
        assert_eq!(d.to, 0);
        let mut one = Scaler::new(cfg(1, 4), 1, t, 1);
        for _ in 0..100 {
            assert_eq!(period(&mut one, &mut t, 0, 1), None);
        }
    }

    #[test]
    fn no_decision_between_refreshes() {
        let t = Instant::now();
        let mut s = Scaler::new(cfg(1, 10), 1, t, 1);
        s.sample(50);
        assert_eq!(s.decide(t + Duration::from_millis(500), 1, None), None);
        assert!(s.decide(t + Duration::from_millis(1000), 1, None).is_some());
    }

    #[test]
    fn cpu_bound_calls_get_no_more_instances_than_cores_they_can_use() {
        // Busy on a core all their time: one instance a core.
        assert_eq!(cpu_bound_limit(Some(1.0), 2.0, 1, None), Some(2));
        // The waits and spins of the instances counted as theirs: still one a core.
        assert_eq!(cpu_bound_limit(Some(1.7), 2.0, 1, None), Some(2));
        // Half their time on a core: two instances a core.
        assert_eq!(cpu_bound_limit(Some(0.5), 2.0, 1, None), Some(4));
        assert_eq!(cpu_bound_limit(Some(0.3), 2.0, 1, None), Some(7));
        // Replicas of two instances, and never none.
        assert_eq!(cpu_bound_limit(Some(1.0), 2.0, 2, None), Some(1));
        assert_eq!(cpu_bound_limit(Some(1.0), 0.4, 1, None), Some(1));
        // Sleeping or blocked calls, or none at all: no limit.
        assert_eq!(cpu_bound_limit(Some(0.05), 2.0, 1, None), None);
        assert_eq!(cpu_bound_limit(None, 2.0, 1, None), None);
        // Replicas held to a quarter of a core each: eight run on two cores.
        assert_eq!(cpu_bound_limit(Some(1.0), 2.0, 1, Some(0.25)), Some(8));
        assert_eq!(cpu_bound_limit(Some(1.0), 2.0, 2, Some(0.5)), Some(4));
        // A limit above what the calls use changes nothing.
        assert_eq!(cpu_bound_limit(Some(0.5), 2.0, 1, Some(1.0)), Some(4));
    }

    #[test]
    fn replicas_past_what_the_cores_run_come_down_after_the_delay() {
        let mut t = Instant::now();
        let mut s = Scaler::new(cfg(1, 10), 1, t, 8);
        // 8 busy on 8: utilization asks 12, the cores run 2.
        for i in 0..59 {
            assert_eq!(limited(&mut s, &mut t, 8, 8, Some(2)), None, "second {i}");
        }
        let d = limited(&mut s, &mut t, 8, 8, Some(2)).expect("down after the delay");
        assert_eq!((d.from, d.to), (8, 2));
        assert!(
            d.reason.contains("more replicas than its calls can keep on the CPU cores for 60 s"),
            "{}",
            d.reason
        );
        // A limit that goes away (the calls stopped being CPU-bound) resets
        // the window; the count is never under min.
        let mut s = Scaler::new(cfg(3, 10), 1, t, 8);
        for _ in 0..30 {
            assert_eq!(limited(&mut s, &mut t, 8, 8, Some(1)), None);
        }
        assert_eq!(limited(&mut s, &mut t, 8, 8, None).map(|d| d.to), Some(10), "up again");
        for _ in 0..59 {
            assert_eq!(limited(&mut s, &mut t, 8, 10, Some(1)), None);
        }
        assert_eq!(limited(&mut s, &mut t, 8, 10, Some(1)).map(|d| d.to), Some(3));
        // Under the limit, the limit changes nothing.
        let mut s = Scaler::new(cfg(1, 10), 1, t, 1);
        assert_eq!(
            limited(&mut s, &mut t, 8, 1, Some(4)).map(|d| d.to),
            Some(10),
            "the caller holds it"
        );
    }

    #[test]
    fn cpu_bound_versions_share_the_cores() {
        // Alone, a version has them all.
        assert_eq!(cores_left(2.0, 0.0, 1), 2.0);
        // Another keeps one busy: one left.
        assert_eq!(cores_left(2.0, 1.0, 2), 1.0);
        // Others that took them all first: still an even share.
        assert_eq!(cores_left(2.0, 2.0, 2), 1.0);
        assert_eq!(cores_left(4.0, 3.5, 3), 4.0 / 3.0);
        // Others keeping less than their share leave the rest.
        assert_eq!(cores_left(4.0, 0.5, 3), 3.5);
        assert_eq!(cpu_bound_limit(Some(1.0), cores_left(2.0, 2.0, 2), 1, None), Some(1));
    }
}
