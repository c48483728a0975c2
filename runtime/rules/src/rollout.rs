//! The controlled-rollout rules (Azure ML's AksEndpoint semantics, plus a
//! mirror): pure functions over an endpoint's versions, so every rule is
//! tested without a server. Each refusal names the rule it breaks.

use serde::{Deserialize, Serialize};

use crate::RuleError;

/// At most this many versions per endpoint (Azure ML's limit).
pub const MAX_VERSIONS: usize = 6;
/// A mirror copies at most half the live traffic: it doubles the work of the
/// requests it copies, and more than half is a second deployment, not a mirror.
pub const MAX_MIRROR_PERCENT: u32 = 50;

/// The rollout part of a version: what the rules look at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub name: String,
    /// Percentage of live traffic (0..=100).
    pub traffic: u32,
    pub is_default: bool,
    pub is_control: bool,
    /// Percentage of live traffic copied to this version (0 = not a mirror).
    pub mirror: u32,
}

impl Rollout {
    /// Its part in the rollout, for metrics and the verdict: the control,
    /// a mirror, the default, or a treatment (any other version).
    pub fn role(&self) -> &'static str {
        if self.is_control {
            "control"
        } else if self.mirror > 0 {
            "mirror"
        } else if self.is_default {
            "default"
        } else {
            "treatment"
        }
    }
}

/// Flags a create or update may set; `None` leaves the value as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RolloutChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<u32>,
}

fn refuse<T>(msg: String) -> Result<T, RuleError> {
    Err(RuleError::Refused(msg))
}

/// Creates version `name` on an endpoint whose versions are `current`.
pub fn create(current: &[Rollout], name: &str, change: &RolloutChange) -> Result<Vec<Rollout>, RuleError> {
    if current.iter().any(|v| v.name == name) {
        return Err(RuleError::Conflict(format!("version {name:?} already exists; update it instead")));
    }
    if current.len() >= MAX_VERSIONS {
        return refuse(format!(
            "an endpoint has at most {MAX_VERSIONS} versions; delete one before creating {name:?}"
        ));
    }
    let mut next = current.to_vec();
    next.push(Rollout {
        name: name.to_string(),
        traffic: 0,
        is_default: false,
        is_control: false,
        mirror: 0,
    });
    apply(&mut next, name, change)?;
    // The first version that takes traffic is the default.
    if !next.iter().any(|v| v.is_default) {
        let new = next.last_mut().expect("just pushed");
        if new.mirror == 0 {
            new.is_default = true;
        }
    }
    check(&next)?;
    Ok(next)
}

/// Updates version `name`.
pub fn update(current: &[Rollout], name: &str, change: &RolloutChange) -> Result<Vec<Rollout>, RuleError> {
    if !current.iter().any(|v| v.name == name) {
        return Err(RuleError::NotFound(format!("no version {name:?}")));
    }
    let was_default = current.iter().any(|v| v.name == name && v.is_default);
    if was_default && change.default == Some(false) {
        return refuse(format!(
            "{name:?} is the default version; an endpoint always has one, so make another version the default instead"
        ));
    }
    let mut next = current.to_vec();
    apply(&mut next, name, change)?;
    check(&next)?;
    Ok(next)
}

/// Deletes version `name`, moving the default to `new_default` if given.
pub fn delete(current: &[Rollout], name: &str, new_default: Option<&str>) -> Result<Vec<Rollout>, RuleError> {
    let Some(victim) = current.iter().find(|v| v.name == name) else {
        return Err(RuleError::NotFound(format!("no version {name:?}")));
    };
    let mut next: Vec<Rollout> = current.iter().filter(|v| v.name != name).cloned().collect();
    match new_default {
        Some(d) if d == name => return refuse(format!("cannot make {name:?} the default while deleting it")),
        Some(d) => {
            if !next.iter().any(|v| v.name == d) {
                return Err(RuleError::NotFound(format!("no version {d:?} to make the default")));
            }
            apply(
                &mut next,
                d,
                &RolloutChange {
                    default: Some(true),
                    ..Default::default()
                },
            )?;
        }
        None if victim.is_default && next.iter().any(|v| v.mirror == 0) => {
            return refuse(format!(
                "{name:?} is the default version; name another version to become the default (--new-default) or delete the others first"
            ));
        }
        None => {}
    }
    check(&next)?;
    Ok(next)
}

fn apply(versions: &mut [Rollout], name: &str, change: &RolloutChange) -> Result<(), RuleError> {
    if let Some(t) = change.traffic {
        if t > 100 {
            return refuse(format!("traffic is a percentage: 0 to 100, got {t}"));
        }
    }
    if let Some(m) = change.mirror {
        if m > MAX_MIRROR_PERCENT {
            return refuse(format!("a mirror copies at most {MAX_MIRROR_PERCENT}% of live traffic, got {m}%"));
        }
    }
    // Making one version the default or the control takes the flag from the others.
    if change.default == Some(true) {
        for v in versions.iter_mut() {
            v.is_default = false;
        }
    }
    if change.control == Some(true) {
        for v in versions.iter_mut() {
            v.is_control = false;
        }
    }
    let v = versions.iter_mut().find(|v| v.name == name).expect("version present");
    if let Some(t) = change.traffic {
        v.traffic = t;
    }
    if let Some(d) = change.default {
        v.is_default = d;
    }
    if let Some(c) = change.control {
        v.is_control = c;
    }
    if let Some(m) = change.mirror {
        v.mirror = m;
    }
    Ok(())
}

/// The rules every endpoint's versions hold after any change.
pub fn check(versions: &[Rollout]) -> Result<(), RuleError> {
    if versions.len() > MAX_VERSIONS {
        return refuse(format!("an endpoint has at most {MAX_VERSIONS} versions"));
    }
    let mirrors: Vec<&Rollout> = versions.iter().filter(|v| v.mirror > 0).collect();
    if mirrors.len() > 1 {
        return refuse(format!(
            "an endpoint has at most one mirror version ({} and {} both are)",
            mirrors[0].name, mirrors[1].name
        ));
    }
    if let Some(m) = mirrors.first() {
        if m.is_default || m.is_control || m.traffic > 0 {
            return refuse(format!(
                "the mirror version {:?} only gets copies of live traffic: it cannot be the default or the control, or take traffic of its own",
                m.name
            ));
        }
    }
    let total: u32 = versions.iter().map(|v| v.traffic).sum();
    if total > 100 {
        let parts: Vec<String> = versions.iter().map(|v| format!("{} {}%", v.name, v.traffic)).collect();
        return refuse(format!(
            "traffic percentages add up to {total}% ({}); they may add up to at most 100%",
            parts.join(", ")
        ));
    }
    if versions.iter().filter(|v| v.is_control).count() > 1 {
        return refuse("at most one version is the control".into());
    }
    let defaults = versions.iter().filter(|v| v.is_default).count();
    let serving = versions.iter().filter(|v| v.mirror == 0).count();
    if serving > 0 && defaults != 1 {
        return refuse("an endpoint with versions has exactly one default version".into());
    }
    Ok(())
}

/// The share of live traffic each version gets: its own percentage, plus
/// whatever no version claims for the default. Mirrors get none.
pub fn shares(versions: &[Rollout]) -> Vec<(String, u32)> {
    let claimed: u32 = versions.iter().map(|v| v.traffic).sum();
    versions
        .iter()
        .filter(|v| v.mirror == 0)
        .map(|v| {
            let extra = if v.is_default { 100u32.saturating_sub(claimed) } else { 0 };
            (v.name.clone(), v.traffic + extra)
        })
        .collect()
}

/// The split as served: each version's share by the rules, with the shares
/// of versions that cannot serve (`serving` says which can) given to the
/// default. If the default cannot serve either, its share goes to the
/// serving version with the largest share, so an endpoint keeps serving
/// what it can. Versions that cannot serve are left out.
pub fn effective_shares(versions: &[Rollout], serving: impl Fn(&str) -> bool) -> Vec<(String, u32)> {
    let mut shares = shares(versions);
    let lost: u32 = shares.iter().filter(|(n, _)| !serving(n)).map(|(_, s)| s).sum();
    shares.retain(|(n, _)| serving(n));
    if lost > 0 && !shares.is_empty() {
        let default = versions.iter().find(|r| r.is_default).map(|r| r.name.as_str());
        let to = shares.iter().position(|(n, _)| Some(n.as_str()) == default).unwrap_or_else(|| {
            let max = shares.iter().map(|(_, s)| *s).max().unwrap_or(0);
            shares.iter().position(|(_, s)| *s == max).unwrap_or(0)
        });
        shares[to].1 += lost;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(traffic: Option<u32>, default: Option<bool>) -> RolloutChange {
        RolloutChange {
            traffic,
            default,
            ..Default::default()
        }
    }

    fn share(v: &[Rollout], name: &str) -> u32 {
        shares(v).into_iter().find(|(n, _)| n == name).map(|(_, s)| s).unwrap()
    }

    #[test]
    fn shares_of_versions_that_cannot_serve_go_to_the_default() {
        let v = create(&[], "A", &change(Some(20), None)).unwrap();
        let v = create(&v, "B", &change(Some(30), None)).unwrap();
        let v = create(&v, "C", &change(Some(10), None)).unwrap();
        let all = effective_shares(&v, |_| true);
        assert_eq!(all, vec![("A".into(), 60), ("B".into(), 30), ("C".into(), 10)]);
        // B cannot serve: its 30 go to A, the default.
        assert_eq!(effective_shares(&v, |n| n != "B"), vec![("A".into(), 90), ("C".into(), 10)]);
        // The default cannot serve: its share goes to the largest other.
        assert_eq!(effective_shares(&v, |n| n != "A"), vec![("B".into(), 90), ("C".into(), 10)]);
        assert!(effective_shares(&v, |_| false).is_empty());
    }

    #[test]
    fn the_seeds_three_steps() {
        // A at 20% is the first version, so the default: it gets everything.
        let v = create(&[], "A", &change(Some(20), None)).unwrap();
        assert!(v[0].is_default);
        assert_eq!(share(&v, "A"), 100);
        // Add B at 10%: A 90, B 10.
        let v = create(&v, "B", &change(Some(10), None)).unwrap();
        assert_eq!((share(&v, "A"), share(&v, "B")), (90, 10));
        // Update B to 40% and default: A 20, B 80.
        let v = update(&v, "B", &change(Some(40), Some(true))).unwrap();
        assert!(!v[0].is_default && v[1].is_default);
        assert_eq!((share(&v, "A"), share(&v, "B")), (20, 80));
    }

    #[test]
    fn each_refusal_names_its_rule() {
        let one = create(&[], "a", &change(Some(60), None)).unwrap();
        let err = |r: Result<Vec<Rollout>, RuleError>| r.unwrap_err().to_string();
        assert!(err(create(&one, "b", &change(Some(50), None))).contains("add up to 110%"));
        assert!(err(create(&one, "a", &change(None, None))).contains("already exists"));
        assert!(err(update(&one, "zz", &change(None, None))).contains("no version"));
        assert!(err(create(&one, "b", &change(Some(101), None))).contains("0 to 100"));
        assert!(err(update(&one, "a", &change(None, Some(false)))).contains("always has one"));
        let mut six = one.clone();
        for n in ["b", "c", "d", "e", "f"] {
            six = create(&six, n, &change(Some(1), None)).unwrap();
        }
        assert!(err(create(&six, "g", &change(None, None))).contains("at most 6 versions"));
        // Deleting the default is refused unless another is named.
        assert!(err(delete(&six, "a", None)).contains("default version"));
        let after = delete(&six, "a", Some("b")).unwrap();
        assert!(after.iter().find(|v| v.name == "b").unwrap().is_default);
        assert!(err(delete(&six, "nope", None)).contains("no version"));
        // Alone, the default may go.
        assert!(delete(&one, "a", None).unwrap().is_empty());
    }

    #[test]
    fn flags_move_and_there_is_one_control() {
        let v = create(&[], "a", &change(None, None)).unwrap();
        let mut c = change(None, None);
        c.control = Some(true);
        let v = create(&v, "b", &c).unwrap();
        let v = create(&v, "c", &c).unwrap();
        assert!(!v[1].is_control && v[2].is_control);
        let v = create(&v, "d", &change(None, Some(true))).unwrap();
        assert_eq!(v.iter().filter(|x| x.is_default).count(), 1);
        assert!(v[3].is_default);
    }

    #[test]
    fn one_mirror_at_most_half() {
        let v = create(&[], "a", &change(Some(100), None)).unwrap();
        let m = |p| RolloutChange {
            mirror: Some(p),
            ..Default::default()
        };
        let err = create(&v, "m", &m(51)).unwrap_err().to_string();
        assert!(err.contains("at most 50%"), "{err}");
        let v = create(&v, "m", &m(20)).unwrap();
        assert_eq!(shares(&v), vec![("a".to_string(), 100)]);
        let err = create(&v, "n", &m(10)).unwrap_err().to_string();
        assert!(err.contains("at most one mirror"), "{err}");
        let mut both = m(10);
        both.traffic = Some(5);
        let err = update(&v, "m", &both).unwrap_err().to_string();
        assert!(err.contains("cannot be the default"), "{err}");
    }
}
