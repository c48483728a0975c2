//! Triton's logging extension: the process's log settings, read and
//! changed while it serves (tritonclient's `get_log_settings` and
//! `update_log_settings`: `GET|POST /v2/logging`, gRPC LogSettings), under
//! the admin token in `up` and on a router (wasmscore_server), and on a
//! node's internal port (node.rs), which carries no credentials.
//!
//! wasmscore logs by level (tracing, to stderr), so Triton's switches are
//! read as the least severe level logged: `log_warning` off with
//! `log_info` on is refused, not half done. `log_verbose_level` 1 adds
//! wasmscore's debug events (a module's `debug` logs among them), 2 and
//! more its trace events; other crates stay at the level.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

/// A change refused: the HTTP status (400: what was asked cannot be; 500:
/// the filter could not be changed) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

impl Refused {
    fn bad(message: impl Into<String>) -> Refused {
        Refused {
            status: 400,
            message: message.into(),
        }
    }
}

/// A setting's value, as gRPC's `SettingValue` carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    Bool(bool),
    Uint(u32),
    Text(String),
}

/// Triton's switches, and what they mean here.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Levels {
    error: bool,
    warning: bool,
    info: bool,
    verbose: u32,
}

impl Levels {
    /// From the least severe level the process logs now.
    fn from_max(level: Option<tracing::level_filters::LevelFilter>) -> Levels {
        use tracing::level_filters::LevelFilter as L;
        let level = level.unwrap_or(L::TRACE);
        Levels {
            error: level >= L::ERROR,
            warning: level >= L::WARN,
            info: level >= L::INFO,
            verbose: if level >= L::TRACE { 2 } else { u32::from(level >= L::DEBUG) },
        }
    }

    /// The filter directive they make (tracing_subscriber's EnvFilter).
    fn directive(self) -> Result<String, Refused> {
        let refused = |what: &str| {
            Err(Refused::bad(format!(
                "wasmscore logs by level, from errors to the least severe asked for: {what}"
            )))
        };
        if self.info && !self.warning {
            return refused("log_info on needs log_warning on");
        }
        if self.warning && !self.error {
            return refused("log_warning on needs log_error on");
        }
        let base = match (self.error, self.warning, self.info) {
            (_, _, true) => "info",
            (_, true, false) => "warn",
            (true, false, false) => "error",
            (false, _, _) => "off",
        };
        Ok(match self.verbose {
            0 => base.to_string(),
            1 => format!("{base},wasmscore=debug"),
            _ => format!("{base},wasmscore=trace"),
        })
    }
}

type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The process's log settings, and how to change its filter.
pub struct Logging {
    now: Mutex<Levels>,
    apply: Apply,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging").field("now", &self.now).finish()
    }
}

impl Logging {
    /// `max`: the least severe level the filter the process started with
    /// passes (its `max_level_hint`); `apply` replaces the filter with one
    /// made from a directive.
    pub fn new(max: Option<tracing::level_filters::LevelFilter>, apply: Apply) -> Logging {
        Logging {
            now: Mutex::new(Levels::from_max(max)),
            apply,
        }
    }

    /// Every setting, by Triton's names.
    pub fn settings(&self) -> BTreeMap<&'static str, Setting> {
        let l = *self.now.lock().unwrap_or_else(|p| p.into_inner());
        BTreeMap::from([
            ("log_file", Setting::Text(String::new())),
            ("log_info", Setting::Bool(l.info)),
            ("log_warning", Setting::Bool(l.warning)),
            ("log_error", Setting::Bool(l.error)),
            ("log_verbose_level", Setting::Uint(l.verbose)),
            ("log_format", Setting::Text("default".into())),
        ])
    }

    /// The settings as REST's JSON gives them.
    pub fn json(&self) -> Value {
        let map = self
            .settings()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Setting::Bool(b) => json!(b),
                    Setting::Uint(n) => json!(n),
                    Setting::Text(s) => json!(s),
                };
                (k.to_string(), v)
            })
            .collect::<serde_json::Map<_, _>>();
        Value::Object(map)
    }

    /// Changes the settings named (the others stay), all or none.
    pub fn update(&self, changes: &[(String, Setting)]) -> Result<(), Refused> {
        let bad = Refused::bad;
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = *now;
        for (name, value) in changes {
            match (name.as_str(), value) {
                ("log_info", Setting::Bool(b)) => next.info = *b,
                ("log_warning", Setting::Bool(b)) => next.warning = *b,
                ("log_error", Setting::Bool(b)) => next.error = *b,
                ("log_verbose_level", Setting::Uint(n)) => next.verbose = *n,
                ("log_file", Setting::Text(f)) if f.is_empty() => {}
                ("log_file", Setting::Text(f)) => {
                    return Err(bad(format!(
                        "log_file {f:?}: wasmscore logs to stderr, which its supervisor (systemd, the kubelet) keeps; \"\" is the one value"
                    )))
                }
                ("log_format", Setting::Text(f)) if f == "default" => {}
                ("log_format", Setting::Text(f)) => return Err(bad(format!("log_format {f:?}: wasmscore has one format, \"default\""))),
                ("log_info" | "log_warning" | "log_error", v) => return Err(bad(format!("{name} is true or false, not {v:?}"))),
                ("log_verbose_level", v) => return Err(bad(format!("log_verbose_level is a count, not {v:?}"))),
                ("log_file" | "log_format", v) => return Err(bad(format!("{name} is a string, not {v:?}"))),
                (other, _) => {
                    return Err(bad(format!(
                        "no log setting {other:?} (log_file, log_info, log_warning, log_error, log_verbose_level, log_format)"
                    )))
                }
            }
        }
        let directive = next.directive()?;
        (self.apply)(&directive).map_err(|e| Refused {
            status: 500,
            message: format!("changing the log filter to {directive:?}: {e}"),
        })?;
        if next != *now {
            tracing::warn!(filter = %directive, "log settings changed");
        }
        *now = next;
        Ok(())
    }

    /// REST's body: a JSON object of the settings to change.
    pub fn update_json(&self, body: &[u8]) -> Result<(), Refused> {
        let asked: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
            Refused::bad(format!(
                "a log settings request is a JSON object such as {{\"log_verbose_level\": 1}}: {e}"
            ))
        })?;
        let changes = asked
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::Bool(b) => Setting::Bool(b),
                    Value::Number(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                        Some(n) => Setting::Uint(n),
                        None => {
                            return Err(Refused::bad(format!("{k}: {n} is not a count")));
                        }
                    },
                    Value::String(s) => Setting::Text(s),
                    other => return Err(Refused::bad(format!("{k}: {other} is no setting's value"))),
                };
                Ok((k, s))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.update(&changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing::level_filters::LevelFilter;

    fn logging() -> (Logging, Arc<Mutex<Vec<String>>>) {
        let applied = Arc::new(Mutex::new(Vec::new()));
        let a = applied.clone();
        let l = Logging::new(
            Some(LevelFilter::INFO),
            Box::new(move |d| {
                a.lock().unwrap().push(d.to_string());
                Ok(())
            }),
        );
        (l, applied)
    }

    #[test]
    fn settings_start_from_the_level_and_change_the_filter() {
        let (l, applied) = logging();
        assert_eq!(
            l.json(),
            json!({"log_file": "", "log_info": true, "log_warning": true, "log_error": true, "log_verbose_level": 0, "log_format": "default"})
        );
        l.update_json(br#"{"log_verbose_level": 1}"#).unwrap();
        l.update_json(br#"{"log_info": false, "log_verbose_level": 0}"#).unwrap();
        l.update_json(br#"{"log_warning": false, "log_error": false}"#).unwrap();
        l.update_json(br#"{"log_error": true, "log_verbose_level": 3, "log_file": ""}"#)
            .unwrap();
        assert_eq!(
            *applied.lock().unwrap(),
            ["info,wasmscore=debug", "warn", "off", "error,wasmscore=trace"]
        );
        assert_eq!(l.settings()["log_verbose_level"], Setting::Uint(3));
    }

    #[test]
    fn what_a_level_cannot_say_is_refused_and_nothing_changes() {
        let (l, applied) = logging();
        for (body, says) in [
            (r#"{"log_warning": false}"#, "log_info on needs log_warning on"),
            (r#"{"log_info": false, "log_error": false}"#, "log_warning on needs log_error on"),
            (r#"{"log_file": "/tmp/x.log"}"#, "logs to stderr"),
            (r#"{"log_format": "ISO8601"}"#, "one format"),
            (r#"{"log_info": 1}"#, "true or false"),
            (r#"{"log_verbose_level": -1}"#, "not a count"),
            (r#"{"log_verbose_level": true}"#, "is a count"),
            (r#"{"log_colour": true}"#, "no log setting"),
            (r#"[1]"#, "JSON object"),
        ] {
            let e = l.update_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
        assert!(applied.lock().unwrap().is_empty());
        assert_eq!(l.settings()["log_info"], Setting::Bool(true));
    }

    #[test]
    fn a_started_level_reads_as_the_switches() {
        let l = Logging::new(Some(LevelFilter::WARN), Box::new(|_| Ok(())));
        assert_eq!(l.settings()["log_info"], Setting::Bool(false));
        assert_eq!(l.settings()["log_warning"], Setting::Bool(true));
        let l = Logging::new(Some(LevelFilter::DEBUG), Box::new(|_| Ok(())));
        assert_eq!(l.settings()["log_verbose_level"], Setting::Uint(1));
    }
}
