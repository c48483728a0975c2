//! Triton's trace extension: which requests' spans this process exports
//! over OTLP (`--otlp-endpoint`), read and changed while it serves
//! (tritonclient's `get_trace_settings` and `update_trace_settings`:
//! `GET|POST /v2[/models/{m}]/trace/setting`, gRPC TraceSetting), under the
//! admin token.
//!
//! wasmscore's traces are OpenTelemetry spans, so Triton's settings read as
//! a sampler's: `trace_level` TIMESTAMPS exports spans (they carry their
//! start and end) and OFF none; `trace_rate` N picks one in N of the
//! requests that start a trace here, while a caller's `traceparent` keeps
//! the caller's choice (OpenTelemetry's parent-based sampling);
//! `trace_count` is how many more spans to export (-1: no limit). A model
//! (an endpoint) may have settings of its own; the others follow the
//! global ones. Spans go to the exporter, so `trace_file` is "",
//! `log_frequency` "0" and `trace_mode` "opentelemetry", the one values.
//!
//! A span this hop does not export goes on unsampled (flags `00`) to the
//! nodes after it, unless tracing is OFF here: then the trace's flag passes
//! as it came.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;
use wasmscore_remote::trace::Span;

use crate::errors::ApiError;

/// One scope's settings (the process's, or a model's own).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Settings {
    on: bool,
    rate: u64,
    /// Spans left to export; -1: no limit.
    count: i64,
}

/// A model's own settings; None follows the global one.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Own {
    on: Option<bool>,
    rate: Option<u64>,
    count: Option<i64>,
}

#[derive(Debug, Default)]
struct Model {
    own: Own,
    /// Traces started since its own `trace_rate` was set.
    seen: u64,
}

#[derive(Debug)]
struct State {
    global: Settings,
    /// Traces started since the global `trace_rate` was set, by models that
    /// follow it.
    seen: u64,
    models: HashMap<String, Model>,
}

/// The process's trace settings.
#[derive(Debug)]
pub struct Traces {
    /// Whether spans go anywhere (`--otlp-endpoint`).
    exporting: bool,
    state: Mutex<State>,
}

/// A change asked for: a setting and its values, or None to clear a
/// model's own (it follows the global one again).
pub type Change = (String, Option<Vec<String>>);

fn bad(m: String) -> ApiError {
    ApiError::new(400, "bad_request", m)
}

impl Traces {
    /// With an exporter, every span is exported (TIMESTAMPS, rate 1, no
    /// limit), as before the settings existed; without one, OFF.
    pub fn new(exporting: bool) -> Traces {
        Traces {
            exporting,
            state: Mutex::new(State {
                global: Settings {
                    on: exporting,
                    rate: 1,
                    count: -1,
                },
                seen: 0,
                models: HashMap::new(),
            }),
        }
    }

    /// Decides whether this hop exports `span`, a request's to `endpoint`,
    /// and marks it so for the hops after it.
    pub fn decide(&self, span: &mut Span, endpoint: &str) {
        if !self.exporting {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State { global, seen, models } = &mut *state;
        let mut model = models.get_mut(endpoint);
        if !model.as_ref().and_then(|m| m.own.on).unwrap_or(global.on) {
            span.record = false;
            return;
        }
        let picked = if span.parent_id.is_some() {
            span.sampled()
        } else {
            let (rate, seen) = match model.as_deref_mut() {
                Some(Model {
                    own: Own { rate: Some(r), .. },
                    seen,
                }) => (*r, seen),
                _ => (global.rate, seen),
            };
            let picked = *seen % rate == 0;
            *seen += 1;
            picked
        };
        let count = match model {
            Some(Model {
                own: Own { count: Some(c), .. },
                ..
            }) => c,
            _ => &mut global.count,
        };
        let record = picked && *count != 0;
        if record && *count > 0 {
            *count -= 1;
        }
        if span.sampled() != record {
            span.set_sampled(record);
        }
        span.record = record;
    }

    /// Every setting of a model (its own, else the global ones) or the
    /// global ones, by Triton's names.
    pub fn settings(&self, model: Option<&str>) -> BTreeMap<&'static str, Vec<String>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let own = model.and_then(|m| state.models.get(m)).map(|m| m.own).unwrap_or_default();
        let g = state.global;
        let on = own.on.unwrap_or(g.on);
        BTreeMap::from([
            ("trace_level", vec![if on { "TIMESTAMPS" } else { "OFF" }.to_string()]),
            ("trace_rate", vec![own.rate.unwrap_or(g.rate).to_string()]),
            ("trace_count", vec![own.count.unwrap_or(g.count).to_string()]),
            ("log_frequency", vec!["0".into()]),
            ("trace_file", vec![String::new()]),
            ("trace_mode", vec!["opentelemetry".into()]),
        ])
    }

    /// The settings as REST's JSON gives them: `trace_level` a list, the
    /// others strings.
    pub fn json(&self, model: Option<&str>) -> Value {
        let map = self
            .settings(model)
            .into_iter()
            .map(|(k, mut v)| {
                let v = if k == "trace_level" {
                    Value::from(v)
                } else {
                    Value::from(v.remove(0))
                };
                (k.to_string(), v)
            })
            .collect::<serde_json::Map<_, _>>();
        Value::Object(map)
    }

    /// Changes the settings named, of a model or the global ones, all or
    /// none.
    pub fn update(&self, model: Option<&str>, changes: &[Change]) -> Result<(), ApiError> {
        let mut next = Own::default();
        let mut cleared = Vec::new();
        const NAMES: [&str; 6] = [
            "trace_level",
            "trace_rate",
            "trace_count",
            "log_frequency",
            "trace_file",
            "trace_mode",
        ];
        let unknown = |name: &str| bad(format!("no trace setting {name:?} ({})", NAMES.join(", ")));
        for (name, values) in changes {
            let Some(values) = values else {
                if !NAMES.contains(&name.as_str()) {
                    return Err(unknown(name));
                }
                if model.is_none() {
                    return Err(bad(format!(
                        "{name}: a global setting has no value to go back to; only a model's own settings are cleared"
                    )));
                }
                cleared.push(name.as_str());
                continue;
            };
            let one = || match values.as_slice() {
                [v] => Ok(v.as_str()),
                _ => Err(bad(format!("{name} takes one value, not {values:?}"))),
            };
            match name.as_str() {
                "trace_level" => next.on = Some(level(values)?),
                "trace_rate" => match one()?.parse::<u64>() {
                    Ok(n) if n >= 1 => next.rate = Some(n),
                    _ => return Err(bad(format!("trace_rate is a count of requests, 1 or more, not {values:?}"))),
                },
                "trace_count" => match one()?.parse::<i64>() {
                    Ok(n) if n >= -1 => next.count = Some(n),
                    _ => return Err(bad(format!("trace_count is a count of spans, or -1 for no limit, not {values:?}"))),
                },
                "log_frequency" if one()? == "0" => {}
                "log_frequency" => {
                    return Err(bad(format!(
                        "log_frequency {values:?}: spans go to the OTLP exporter as they end, not to files; \"0\" is the one value"
                    )))
                }
                "trace_file" if one()?.is_empty() => {}
                "trace_file" => {
                    return Err(bad(format!(
                        "trace_file {values:?}: spans go over OTLP to --otlp-endpoint, not to a file; \"\" is the one value"
                    )))
                }
                "trace_mode" if one()? == "opentelemetry" => {}
                "trace_mode" => {
                    return Err(bad(format!(
                        "trace_mode {values:?}: wasmscore's traces are OpenTelemetry spans; \"opentelemetry\" is the one value"
                    )))
                }
                other => return Err(unknown(other)),
            }
        }
        if next.on == Some(true) && !self.exporting {
            return Err(bad(
                "trace_level TIMESTAMPS: this process exports no spans; start it with --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT)"
                    .into(),
            ));
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match model {
            None => {
                let g = &mut state.global;
                g.on = next.on.unwrap_or(g.on);
                g.count = next.count.unwrap_or(g.count);
                if let Some(r) = next.rate {
                    g.rate = r;
                    state.seen = 0;
                }
            }
            Some(name) => {
                let m = state.models.entry(name.to_string()).or_default();
                for c in cleared {
                    match c {
                        "trace_level" => m.own.on = None,
                        "trace_rate" => m.own.rate = None,
                        "trace_count" => m.own.count = None,
                        _ => {}
                    }
                }
                m.own.on = next.on.or(m.own.on);
                m.own.count = next.count.or(m.own.count);
                if let Some(r) = next.rate {
                    m.own.rate = Some(r);
                    m.seen = 0;
                }
                if m.own == Own::default() {
                    state.models.remove(name);
                }
            }
        }
        drop(state);
        if !changes.is_empty() {
            tracing::warn!(model = model.unwrap_or("(all)"), settings = ?self.settings(model), "trace settings changed");
        }
        Ok(())
    }

    /// A model's own settings all cleared: it follows the global ones.
    pub fn clear(&self, model: &str) {
        if self.state.lock().unwrap_or_else(|p| p.into_inner()).models.remove(model).is_some() {
            tracing::warn!(model, "trace settings cleared: the model follows the global ones");
        }
    }

    /// REST's body: a JSON object of the settings to change, each a string,
    /// a list of strings, or null (a model's own cleared). A model's empty
    /// object clears all of its own, as in Triton.
    pub fn update_json(&self, model: Option<&str>, body: &[u8]) -> Result<(), ApiError> {
        let asked: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
            bad(format!(
                "a trace settings request is a JSON object such as {{\"trace_rate\": \"10\"}}: {e}"
            ))
        })?;
        if asked.is_empty() {
            if let Some(m) = model {
                self.clear(m);
            }
            return Ok(());
        }
        let text = |k: &str, v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(bad(format!("{k}: {other} is no setting's value (a string, or a list of strings)"))),
        };
        let changes = asked
            .iter()
            .map(|(k, v)| {
                let values = match v {
                    Value::Null => None,
                    Value::Array(vs) => Some(vs.iter().map(|v| text(k, v)).collect::<Result<Vec<_>, _>>()?),
                    v => Some(vec![text(k, v)?]),
                };
                Ok((k.clone(), values))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.update(model, &changes)
    }
}

/// `trace_level`'s values: OFF, or TIMESTAMPS.
fn level(values: &[String]) -> Result<bool, ApiError> {
    let names: Vec<&str> = values.iter().map(String::as_str).collect();
    match names.as_slice() {
        ["OFF"] => Ok(false),
        ["TIMESTAMPS"] => Ok(true),
        n if n.contains(&"TENSORS") => Err(bad(
            "trace_level TENSORS: wasmscore's spans carry the request's timestamps, route and version, not its tensors".into(),
        )),
        n if n.contains(&"OFF") => Err(bad(format!("trace_level {n:?}: OFF goes alone"))),
        n => Err(bad(format!("trace_level {n:?}: [\"OFF\"] or [\"TIMESTAMPS\"]"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Span {
        Span::child_of(None)
    }

    fn child(flags: &str) -> Span {
        Span::child_of(Some(&format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}")))
    }

    /// Of `n` new traces to `model`, the ones exported.
    fn exported(t: &Traces, model: &str, n: usize) -> Vec<bool> {
        (0..n)
            .map(|_| {
                let mut s = root();
                t.decide(&mut s, model);
                s.record
            })
            .collect()
    }

    #[test]
    fn an_exporter_starts_with_every_span_and_the_rate_picks_new_traces() {
        let t = Traces::new(true);
        assert_eq!(
            t.json(None),
            serde_json::json!({"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "-1",
                "log_frequency": "0", "trace_file": "", "trace_mode": "opentelemetry"})
        );
        assert_eq!(exported(&t, "m", 3), [true, true, true]);
        t.update_json(None, br#"{"trace_rate": "3"}"#).unwrap();
        assert_eq!(exported(&t, "m", 6), [true, false, false, true, false, false]);
        // The answer's flag says what this hop did.
        let (mut a, mut b, mut c) = (root(), root(), root());
        for s in [&mut a, &mut b, &mut c] {
            t.decide(s, "m");
        }
        assert_eq!([a.sampled(), b.sampled(), c.sampled()], [true, false, false]);
        // A caller's choice is kept, whatever the rate.
        let (mut yes, mut no) = (child("01"), child("00"));
        t.decide(&mut yes, "m");
        t.decide(&mut no, "m");
        assert!(yes.record && !no.record && !no.sampled());
    }

    #[test]
    fn the_count_runs_out_and_off_passes_the_flag_on() {
        let t = Traces::new(true);
        t.update_json(None, br#"{"trace_count": 2}"#).unwrap();
        assert_eq!(exported(&t, "m", 3), [true, true, false]);
        assert_eq!(t.settings(None)["trace_count"], ["0"]);
        // Out of spans: a sampled caller's trace goes on unsampled.
        let mut s = child("01");
        t.decide(&mut s, "m");
        assert!(!s.record && !s.sampled());
        t.update_json(None, br#"{"trace_level": ["OFF"], "trace_count": "-1"}"#).unwrap();
        let (mut new, mut given) = (root(), child("01"));
        t.decide(&mut new, "m");
        t.decide(&mut given, "m");
        assert!(!new.record && new.sampled(), "OFF records nothing and leaves the flag");
        assert!(!given.record && given.sampled());
    }

    #[test]
    fn a_model_has_settings_of_its_own_until_cleared() {
        let t = Traces::new(true);
        t.update_json(Some("a"), br#"{"trace_level": ["OFF"]}"#).unwrap();
        t.update_json(Some("b"), br#"{"trace_rate": "2", "trace_count": "3"}"#).unwrap();
        assert_eq!(exported(&t, "a", 2), [false, false]);
        assert_eq!(exported(&t, "b", 8), [true, false, true, false, true, false, false, false]);
        assert_eq!(exported(&t, "c", 2), [true, true], "the global settings");
        assert_eq!(t.settings(Some("b"))["trace_count"], ["0"]);
        assert_eq!(t.settings(None)["trace_count"], ["-1"]);
        // A global change reaches what a model does not set itself.
        t.update_json(None, br#"{"trace_rate": "5"}"#).unwrap();
        assert_eq!(t.settings(Some("a"))["trace_rate"], ["5"]);
        assert_eq!(t.settings(Some("b"))["trace_rate"], ["2"]);
        // null clears one; an empty object clears them all.
        t.update_json(Some("b"), br#"{"trace_count": null}"#).unwrap();
        assert_eq!(t.settings(Some("b"))["trace_count"], ["-1"]);
        t.update_json(Some("a"), b"{}").unwrap();
        assert_eq!(t.settings(Some("a"))["trace_level"], ["TIMESTAMPS"]);
    }

    #[test]
    fn what_the_exporter_cannot_do_is_refused_and_nothing_changes() {
        let t = Traces::new(true);
        for (model, body, says) in [
            (None, r#"{"trace_level": ["TENSORS"]}"#, "not its tensors"),
            (None, r#"{"trace_level": ["OFF", "TIMESTAMPS"]}"#, "OFF goes alone"),
            (None, r#"{"trace_level": "LOUD"}"#, "[\"OFF\"] or [\"TIMESTAMPS\"]"),
            (None, r#"{"trace_rate": "0"}"#, "1 or more"),
            (None, r#"{"trace_rate": ["1", "2"]}"#, "one value"),
            (None, r#"{"trace_count": "-2"}"#, "-1 for no limit"),
            (None, r#"{"trace_file": "/tmp/t.json"}"#, "not to a file"),
            (None, r#"{"log_frequency": "10"}"#, "\"0\" is the one value"),
            (None, r#"{"trace_mode": "triton"}"#, "OpenTelemetry spans"),
            (None, r#"{"trace_rate": null}"#, "global setting"),
            (Some("m"), r#"{"trace_rate": "2", "trace_color": "red"}"#, "no trace setting"),
            (Some("m"), r#"{"trace_color": null}"#, "no trace setting"),
            (None, r#"{"trace_rate": true}"#, "no setting's value"),
            (None, "[1]", "JSON object"),
        ] {
            let e = t.update_json(model, body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert_eq!(t.json(Some("m")), t.json(None));
        assert_eq!(t.settings(None)["trace_rate"], ["1"]);
        // No exporter: OFF, and turning it on says why not.
        let none = Traces::new(false);
        assert_eq!(none.settings(None)["trace_level"], ["OFF"]);
        let e = none.update_json(None, br#"{"trace_level": ["TIMESTAMPS"]}"#).unwrap_err();
        assert!(e.message.contains("--otlp-endpoint"), "{}", e.message);
    }
}
