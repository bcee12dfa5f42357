//! How answers are printed: the API's JSON, or tables (`-o table`).
//!
//! Stores, regions, operators, members and limits get columns chosen for
//! people (rates in B/s, sizes in MiB, peers as their stores); other lists
//! become one column per key; an object becomes `key  value` rows with
//! dotted paths; a sentence (PD's answer to a change) prints as it is.

use serde_json::Value;

use super::Output;

/// What an answer holds, so the table knows its columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `{"count","stores":[{"store","status"}]}`.
    Stores,
    /// One `{"store","status"}`.
    Store,
    /// `{"count","regions":[...]}`.
    Regions,
    /// One region.
    Region,
    /// Operators: a list of them, or one.
    Operators,
    /// `{"members":[...],"leader":...}`.
    Members,
    /// Store limits: `{"id": {"add-peer","remove-peer"}}`.
    Limits,
    /// A list of names or of flat objects.
    List,
    /// Anything else.
    Object,
}

/// `v` printed as `output` asks.
pub fn render(v: &Value, kind: Kind, output: Output) -> String {
    match output {
        Output::Json => serde_json::to_string_pretty(v).expect("a JSON value always prints"),
        Output::Table => table_of(v, kind),
    }
}

fn table_of(v: &Value, kind: Kind) -> String {
    if let Value::String(s) = v {
        return s.clone();
    }
    match kind {
        Kind::Stores => stores(v["stores"].as_array().map_or(&[][..], Vec::as_slice)),
        Kind::Store => stores(std::slice::from_ref(v)),
        Kind::Regions => regions(v["regions"].as_array().map_or(&[][..], Vec::as_slice)),
        Kind::Region => regions(std::slice::from_ref(v)),
        Kind::Operators => match v {
            Value::Array(ops) => operators(ops),
            other => operators(std::slice::from_ref(other)),
        },
        Kind::Members => members(v),
        Kind::Limits => limits(v),
        Kind::List => match v {
            Value::Array(items) if items.iter().all(|i| !i.is_object()) => {
                items.iter().map(scalar).collect::<Vec<_>>().join("\n")
            }
            Value::Array(items) => objects(items),
            other => object(other),
        },
        Kind::Object => object(v),
    }
}

/// Aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// A scalar as a cell: strings bare, `null` as `-`, others as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn rate(v: &Value) -> String {
    let r = v.as_f64().unwrap_or(0.0);
    if r >= 1024.0 * 1024.0 {
        format!("{:.1}Mi", r / (1024.0 * 1024.0))
    } else if r >= 1024.0 {
        format!("{:.1}Ki", r / 1024.0)
    } else {
        format!("{r:.0}")
    }
}

fn bytes(v: &Value) -> String {
    let b = v.as_u64().unwrap_or(0) as f64;
    const GIB: f64 = (1u64 << 30) as f64;
    if b >= GIB {
        format!("{:.1}GiB", b / GIB)
    } else {
        format!("{:.1}MiB", b / (1u64 << 20) as f64)
    }
}

fn stores(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let (m, st) = (&s["store"], &s["status"]);
            let labels: Vec<String> = m["labels"]
                .as_array()
                .map(|ls| {
                    ls.iter().map(|l| format!("{}={}", scalar(&l["key"]), scalar(&l["value"]))).collect()
                })
                .unwrap_or_default();
            vec![
                scalar(&m["id"]),
                scalar(&m["address"]),
                scalar(&m["state_name"]),
                if labels.is_empty() { "-".into() } else { labels.join(",") },
                scalar(&st["leader_count"]),
                scalar(&st["region_count"]),
                bytes(&st["capacity"]),
                bytes(&st["available"]),
                rate(&st["read_bytes_per_sec"]),
                rate(&st["written_bytes_per_sec"]),
                scalar(&st["last_heartbeat_ts"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ADDRESS",
            "STATE",
            "LABELS",
            "LEADERS",
            "REGIONS",
            "CAPACITY",
            "AVAILABLE",
            "READ_B/S",
            "WRITE_B/S",
            "LAST_HEARTBEAT",
        ],
        &rows,
    )
}

fn regions(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let stores: Vec<String> = r["peers"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let learner = if p["role_name"] == "Learner" { "(L)" } else { "" };
                            format!("{}{learner}", scalar(&p["store_id"]))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let key = |k: &Value| match k.as_str() {
                Some("") | None => "-".to_owned(),
                Some(s) => s.to_owned(),
            };
            vec![
                scalar(&r["id"]),
                key(&r["start_key"]),
                key(&r["end_key"]),
                scalar(&r["leader"]["store_id"]),
                stores.join(","),
                format!("{}/{}", scalar(&r["epoch"]["conf_ver"]), scalar(&r["epoch"]["version"])),
                scalar(&r["approximate_size"]),
                scalar(&r["approximate_keys"]),
                rate(&r["read_bytes_per_sec"]),
                rate(&r["written_bytes_per_sec"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "START_KEY",
            "END_KEY",
            "LEADER",
            "STORES",
            "CONF/VER",
            "SIZE_MIB",
            "KEYS",
            "READ_B/S",
            "WRITE_B/S",
        ],
        &rows,
    )
}

fn operators(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|op| {
            let step = op["current_step"].as_u64().unwrap_or(0) as usize;
            let steps = op["steps"].as_array().map_or(0, Vec::len);
            vec![
                scalar(&op["region_id"]),
                scalar(&op["kind"]),
                scalar(&op["desc"]),
                format!("{}/{steps}", (step + 1).min(steps)),
                op["steps"].get(step).map(scalar).unwrap_or_else(|| "-".into()),
                scalar(&op["status"]),
                scalar(&op["age"]),
            ]
        })
        .collect();
    table(&["REGION", "KIND", "DESC", "STEP", "CURRENT", "STATUS", "AGE"], &rows)
}

fn members(v: &Value) -> String {
    let leader = v["leader"]["member_id"].as_u64();
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|m| {
            let urls = |k: &str| {
                m[k].as_array()
                    .map(|u| u.iter().map(scalar).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            };
            vec![
                scalar(&m["name"]),
                scalar(&m["member_id"]),
                urls("client_urls"),
                urls("peer_urls"),
                if m["member_id"].as_u64() == leader && leader.is_some() {
                    "leader".into()
                } else {
                    "".into()
                },
            ]
        })
        .collect();
    table(&["NAME", "MEMBER_ID", "CLIENT_URLS", "PEER_URLS", "ROLE"], &rows)
}

fn limits(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(id, l)| vec![id.clone(), scalar(&l["add-peer"]), scalar(&l["remove-peer"])])
                .collect()
        })
        .unwrap_or_default();
    table(&["STORE", "ADD_PEER/MIN", "REMOVE_PEER/MIN"], &rows)
}

/// A list of objects: one column per key of the first.
fn objects(items: &[Value]) -> String {
    let Some(keys) = items.first().and_then(Value::as_object).map(|o| o.keys().cloned().collect::<Vec<_>>())
    else {
        return String::new();
    };
    let header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            keys.iter()
                .map(|k| match &i[k.as_str()] {
                    Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(","),
                    other => scalar(other),
                })
                .collect()
        })
        .collect();
    table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows)
}

/// An object as `key  value` rows, nested keys dotted.
fn object(v: &Value) -> String {
    let mut rows = Vec::new();
    flatten("", v, &mut rows);
    table(&["KEY", "VALUE"], &rows)
}

fn flatten(prefix: &str, v: &Value, rows: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, inner) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, inner, rows);
            }
        }
        Value::Array(a) if a.iter().all(|i| !i.is_object() && !i.is_array()) => {
            rows.push(vec![prefix.to_owned(), a.iter().map(scalar).collect::<Vec<_>>().join(",")]);
        }
        Value::Array(a) => {
            for (i, inner) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), inner, rows);
            }
        }
        other => {
            rows.push(vec![if prefix.is_empty() { "value".into() } else { prefix.to_owned() }, scalar(other)])
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_columns_and_flatten_objects() {
        let t = table(&["ID", "NAME"], &[vec!["1".into(), "pd1".into()], vec!["200".into(), "x".into()]]);
        assert_eq!(t, "ID   NAME\n1    pd1\n200  x");
        let o =
            render(&json!({"schedule": {"max-store-down-time": "30m"}, "n": 3}), Kind::Object, Output::Table);
        assert!(o.contains("schedule.max-store-down-time  30m"), "{o}");
        assert_eq!(
            render(&json!("The scheduler is created."), Kind::Object, Output::Table),
            "The scheduler is created."
        );
        let list = render(
            &json!(["balance-leader-scheduler", "evict-leader-scheduler-4"]),
            Kind::List,
            Output::Table,
        );
        assert_eq!(list, "balance-leader-scheduler\nevict-leader-scheduler-4");
    }

    #[test]
    fn a_region_row_names_its_stores_and_rates() {
        let r = json!({"count": 1, "regions": [{
            "id": 2, "start_key": "", "end_key": "6B", "epoch": {"conf_ver": 5, "version": 3},
            "peers": [{"id": 3, "store_id": 1, "role_name": "Voter"}, {"id": 4, "store_id": 2, "role_name": "Learner"}],
            "leader": {"id": 3, "store_id": 1, "role_name": "Voter"},
            "approximate_size": 1, "approximate_keys": 10,
            "read_bytes_per_sec": 2048.0, "written_bytes_per_sec": 10.0
        }]});
        let t = render(&r, Kind::Regions, Output::Table);
        let row = t.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["2", "-", "6B", "1", "1,2(L)", "5/3", "1", "10", "2.0Ki", "10"]);
    }
}
