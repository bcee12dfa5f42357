//! Changing `[schedule]` and `[replication]` while PD runs.
//!
//! A change request (`POST /pd/api/v1/config`, `pd-ctl config set`) is a
//! JSON object whose keys are dotted (`"schedule.max-store-down-time"`),
//! nested (`{"schedule": {"max-store-down-time": "5s"}}`) or bare
//! (`"max-store-down-time"`, looked up in `schedule` then `replication`);
//! `_` may stand for `-`, and `replicate` for `replication` (PD's API name).
//! Values are written as in TOML (`"5s"`, `4`, `["zone", "host"]`); a string
//! is also accepted where a number or list is expected (`"4"`,
//! `"zone,host"`), as pd-ctl sends them.
//!
//! [`Config::with_changes`] applies changes and validates the result; the
//! canonical changes it returns (dotted key, value as the config serializes
//! it) are what PD persists and replays over the file's values at start.
//! The first leader of a cluster persists every run-time key from its own
//! file ([`runtime_values`]), as PD does: from then on these sections come
//! from the metadata, the same on every member, and change only at run
//! time; a key a newer version adds is persisted by the first leader that
//! knows it.

use serde_json::{Map, Value};

use super::{Config, ReplicationConfig, ScheduleConfig};
use crate::error::{Error, Result};

/// The sections that may change at run time.
pub const RUNTIME_SECTIONS: [&str; 2] = ["schedule", "replication"];

/// One change: a canonical dotted key (`section.key`) and its JSON value.
pub type Change = (String, Value);

/// Flattens a request body into changes with canonical keys. Unknown keys
/// and sections that cannot change at run time are refused here.
pub fn parse_changes(body: &Value) -> Result<Vec<Change>> {
    let Value::Object(map) = body else {
        return Err(invalid("the body must be a JSON object of config keys and values".into()));
    };
    if map.is_empty() {
        return Err(invalid("no config key given".into()));
    }
    let mut out = Vec::new();
    for (key, value) in map {
        let key = key.replace('_', "-");
        let key = key.strip_prefix("replicate.").map_or(key.clone(), |k| format!("replication.{k}"));
        let key = if key == "replicate" { "replication".to_owned() } else { key };
        match (key.split_once('.'), value) {
            (None, Value::Object(inner)) if RUNTIME_SECTIONS.contains(&key.as_str()) => {
                for (field, v) in inner {
                    out.push((canonical(&format!("{key}.{field}"))?, v.clone()));
                }
            }
            _ => out.push((canonical(&key)?, value.clone())),
        }
    }
    Ok(out)
}

/// `section.key` for a dotted or bare key, checked against the known keys.
fn canonical(key: &str) -> Result<String> {
    let key = key.replace('_', "-");
    let defaults = sections(&Config::default());
    if let Some((section, field)) = key.split_once('.') {
        return match defaults.get(section) {
            Some(Value::Object(fields)) if RUNTIME_SECTIONS.contains(&section) => {
                if fields.contains_key(field) {
                    Ok(key)
                } else {
                    Err(invalid(format!(
                        "unknown key {key:?}; {section} has {}",
                        fields.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
            _ => Err(invalid(format!(
                "{key:?} cannot be changed at run time (only {} keys can)",
                RUNTIME_SECTIONS.join(" and ")
            ))),
        };
    }
    RUNTIME_SECTIONS
        .iter()
        .find(|s| defaults.get(**s).and_then(Value::as_object).is_some_and(|f| f.contains_key(&key)))
        .map(|s| format!("{s}.{key}"))
        .ok_or_else(|| invalid(format!("unknown config key {key:?}")))
}

impl Config {
    /// This config with `changes` (canonical keys, see [`parse_changes`])
    /// applied and validated, and the changes in canonical form: each value
    /// as the new config serializes it (`"5s"`, `4`, `["zone", "host"]`).
    pub fn with_changes(&self, changes: &[Change]) -> Result<(Config, Vec<Change>)> {
        let mut root = sections(self);
        for (key, value) in changes {
            let (section, field) = key.split_once('.').ok_or_else(|| invalid(format!("bad key {key:?}")))?;
            let Some(Value::Object(fields)) = root.get_mut(section) else {
                return Err(invalid(format!("unknown section in {key:?}")));
            };
            set_field(fields, section, field, value).map_err(|why| invalid(format!("{key}: {why}")))?;
        }
        let config: Config = serde_json::from_value(Value::Object(root))
            .map_err(|e| invalid(format!("config does not parse: {e}")))?;
        config.validate()?;
        let after = sections(&config);
        let canonical = changes
            .iter()
            .map(|(key, _)| {
                let (section, field) = key.split_once('.').expect("checked above");
                (key.clone(), after[section][field].clone())
            })
            .collect();
        Ok((config, canonical))
    }
}

/// Sets `fields[field]` to `value`, or to the first reading of it that the
/// section accepts (see the module docs).
fn set_field(
    fields: &mut Map<String, Value>,
    section: &str,
    field: &str,
    value: &Value,
) -> std::result::Result<(), String> {
    if !fields.contains_key(field) {
        return Err("unknown key".into());
    }
    let mut readings = vec![value.clone()];
    if let Value::String(s) = value {
        if let Ok(parsed) = serde_json::from_str::<Value>(s) {
            readings.push(parsed);
        }
        let items = s.split(',').map(str::trim).filter(|t| !t.is_empty());
        readings.push(Value::Array(items.map(|t| Value::String(t.to_owned())).collect()));
    }
    let mut first_error = None;
    for reading in readings {
        fields.insert(field.to_owned(), reading);
        let parsed = match section {
            "schedule" => serde_json::from_value::<ScheduleConfig>(Value::Object(fields.clone())).map(drop),
            _ => serde_json::from_value::<ReplicationConfig>(Value::Object(fields.clone())).map(drop),
        };
        match parsed {
            Ok(()) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Every key that can change at run time, with its value in `config`
/// (canonical dotted key, value as JSON text): what PD persists at its
/// first start, so that every member schedules by the same values
/// whatever its own file says.
pub fn runtime_values(config: &Config) -> Vec<(String, String)> {
    let root = sections(config);
    RUNTIME_SECTIONS
        .iter()
        .filter_map(|s| Some((s, root.get(*s)?.as_object()?)))
        .flat_map(|(s, fields)| fields.iter().map(move |(k, v)| (format!("{s}.{k}"), v.to_string())))
        .collect()
}

fn sections(config: &Config) -> Map<String, Value> {
    match serde_json::to_value(config).expect("config always serializes") {
        Value::Object(map) => map,
        _ => unreachable!("a struct serializes as an object"),
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn apply(body: Value) -> Result<(Config, Vec<Change>)> {
        Config::default().with_changes(&parse_changes(&body)?)
    }

    #[test]
    fn dotted_nested_and_bare_keys_all_work() {
        let (c, changes) = apply(json!({"schedule.max-store-down-time": "5s"})).unwrap();
        assert_eq!(c.schedule.max_store_down_time.0, Duration::from_secs(5));
        assert_eq!(changes, vec![("schedule.max-store-down-time".to_owned(), json!("5s"))]);

        let (c, _) = apply(json!({"schedule": {"leader-schedule-limit": 8}, "max-replicas": 5})).unwrap();
        assert_eq!((c.schedule.leader_schedule_limit, c.replication.max_replicas), (8, 5));

        let (c, _) = apply(json!({"replicate.location_labels": ["zone", "host"]})).unwrap();
        assert_eq!(c.replication.location_labels, vec!["zone", "host"]);
    }

    #[test]
    fn strings_are_read_the_way_pd_ctl_sends_them() {
        let (c, changes) =
            apply(json!({"region-schedule-limit": "16", "location-labels": "zone,host"})).unwrap();
        assert_eq!(c.schedule.region_schedule_limit, 16);
        assert_eq!(c.replication.location_labels, vec!["zone", "host"]);
        assert!(changes.contains(&("schedule.region-schedule-limit".to_owned(), json!(16))));
    }

    #[test]
    fn bad_changes_are_refused_with_the_reason() {
        let err = |body| apply(body).unwrap_err().to_string();
        assert!(err(json!({"schedule.max-store-down-tme": "5s"})).contains("unknown key"));
        assert!(err(json!({"data-dir": "/tmp"})).contains("unknown config key"));
        assert!(err(json!({"log.level": "debug"})).contains("cannot be changed at run time"));
        assert!(err(json!({"max-store-down-time": "5 fortnights"})).contains("max-store-down-time"));
        assert!(err(json!({"max-replicas": 0})).contains("1..=9"));
        assert!(err(json!([1])).contains("JSON object"));
    }
}
