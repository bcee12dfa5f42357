//! `pd-ctl`: inspect and steer PD through its HTTP API; prints pretty JSON.
//!
//! ```text
//! pd-ctl -u http://127.0.0.1:2379 store [ID] | store delete ID
//!        region [ID] | region key K [--format raw|hex]
//!        config show [schedule|replication] | config set KEY VALUE
//!        operator show [REGION] | operator remove REGION
//!        operator add transfer-leader REGION STORE | add-peer REGION STORE | remove-peer REGION STORE
//!                   | transfer-peer REGION FROM_STORE TO_STORE
//!                   | split-region REGION [--policy approximate|usekey] [--keys HEX,HEX...]
//!        scheduler show | scheduler add NAME | scheduler remove NAME
//!        member | member add NAME PEER_URL | member delete NAME
//!        member leader show | member leader resign | member leader transfer NAME
//!        health | cluster | tso TS
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mnemo_pd::tso::Timestamp;

#[derive(Parser)]
#[command(name = "pd-ctl", version, about = "Mnemosyne PD control")]
struct Cli {
    /// PD address (http://host:port or host:port).
    #[arg(short = 'u', long = "pd", default_value = "http://127.0.0.1:2379", global = true)]
    pd: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// `store` lists stores; `store ID` shows one; `store delete ID` drains it (Offline);
    /// `store limit` shows every store's limit (peers added / removed per
    /// minute); `store limit ID|all RATE [add-peer|remove-peer]` sets it.
    Store { args: Vec<String> },
    /// `region` lists regions; `region ID` shows one; `region key K` finds the region of K.
    Region {
        args: Vec<String>,
        /// How `region key K` reads K: `raw` bytes of the argument, or `hex`.
        #[arg(long, default_value = "raw")]
        format: String,
    },
    /// Health of the PD members.
    Health,
    /// `member`: PD members and the leader; `member add NAME PEER_URL` adds
    /// a member (start it with `--join`); `member delete NAME` removes one;
    /// `member leader show` the
    /// leader; `member leader resign` hands leadership to another member;
    /// `member leader transfer NAME` to that one.
    Member { args: Vec<String> },
    /// `config show [schedule|replication]`: the effective configuration;
    /// `config set KEY VALUE` changes a `schedule` or `replication` key at
    /// run time, e.g. `config set max-store-down-time 5s`.
    Config { args: Vec<String> },
    /// `operator show [REGION]`, `operator remove REGION`, `operator add
    /// NAME REGION ...` (see the usage above).
    Operator {
        args: Vec<String>,
        /// `split-region`: `approximate` (the node picks the middle) or `usekey`.
        #[arg(long)]
        policy: Option<String>,
        /// `split-region`: split keys, hex, comma-separated.
        #[arg(long, value_delimiter = ',')]
        keys: Vec<String>,
    },
    /// `scheduler show` lists the schedulers that run; `scheduler add NAME`
    /// starts one (e.g. `shuffle-leader-scheduler`, `shuffle-region-scheduler`),
    /// `scheduler remove NAME` stops it.
    Scheduler { args: Vec<String> },
    /// Cluster id and replica count.
    Cluster,
    /// Decodes a timestamp into physical time and logical counter (offline).
    Tso { ts: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pd-ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let base = format!("{}/pd/api/v1", normalize(&cli.pd));
    let path = match &cli.cmd {
        Cmd::Store { args } => {
            match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                [] => "/stores".to_owned(),
                ["limit"] => "/stores/limit".to_owned(),
                [id] => format!("/store/{}", number(id)?),
                ["delete", id] => return call("DELETE", &format!("{base}/store/{}", number(id)?)),
                ["limit", which, rate, kind @ ..] if kind.len() <= 1 => {
                    let rate: f64 =
                        rate.parse().map_err(|_| format!("{rate:?} is not a rate (peers per minute)"))?;
                    let mut body = serde_json::json!({ "rate": rate });
                    if let [kind] = kind {
                        body["type"] = serde_json::json!(kind);
                    }
                    let path = match *which {
                        "all" => "/stores/limit".to_owned(),
                        id => format!("/store/{}/limit", number(id)?),
                    };
                    return send("POST", &format!("{base}{path}"), body);
                }
                _ => return Err(
                    "usage: store [ID] | store delete ID | store limit [ID|all RATE [add-peer|remove-peer]]"
                        .into(),
                ),
            }
        }
        Cmd::Region { args, format } => {
            match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                [] => "/regions".to_owned(),
                ["key", key] => {
                    format!("/region/key/{}?format={}", percent_encode(key), percent_encode(format))
                }
                [id] => format!("/region/id/{}", number(id)?),
                _ => return Err("usage: region [ID] | region key K [--format raw|hex]".into()),
            }
        }
        Cmd::Health => "/health".to_owned(),
        Cmd::Member { args } => match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => "/members".to_owned(),
            ["leader", "show"] => "/leader".to_owned(),
            ["add", name, peer_url] => {
                let body = serde_json::json!({ "name": *name, "peer_urls": [*peer_url] });
                return send("POST", &format!("{base}/members"), body);
            }
            ["delete", name] => {
                return call("DELETE", &format!("{base}/members/name/{}", percent_encode(name)))
            }
            ["leader", "resign"] => return call("POST", &format!("{base}/leader/resign")),
            ["leader", "transfer", name] => {
                return call("POST", &format!("{base}/leader/transfer/{}", percent_encode(name)))
            }
            _ => {
                return Err("usage: member | member add NAME PEER_URL | member delete NAME | member leader \
                            show|resign | member leader transfer NAME"
                    .into())
            }
        },
        Cmd::Config { args } => match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["show"] | ["show", "all"] => "/config".to_owned(),
            ["show", "schedule"] => "/config/schedule".to_owned(),
            ["show", "replication" | "replicate"] => "/config/replicate".to_owned(),
            ["set", key, value] => {
                return send("POST", &format!("{base}/config"), serde_json::json!({ *key: *value }));
            }
            _ => return Err("usage: config show [schedule|replication] | config set KEY VALUE".into()),
        },
        Cmd::Operator { args, policy, keys } => {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            match a.as_slice() {
                ["show"] => "/operators".to_owned(),
                ["show", region] => format!("/operators/{}", number(region)?),
                ["remove", region] => {
                    return call("DELETE", &format!("{base}/operators/{}", number(region)?))
                }
                ["add", name, rest @ ..] => {
                    let body = operator_body(name, rest, policy.as_deref(), keys)?;
                    return send("POST", &format!("{base}/operators"), body);
                }
                _ => return Err(OPERATOR_USAGE.into()),
            }
        }
        Cmd::Scheduler { args } => match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["show"] => "/schedulers".to_owned(),
            ["add", name] => {
                return send("POST", &format!("{base}/schedulers"), serde_json::json!({ "name": *name }));
            }
            ["remove", name] => {
                return call("DELETE", &format!("{base}/schedulers/{}", percent_encode(name)))
            }
            _ => return Err("usage: scheduler show | scheduler add NAME | scheduler remove NAME".into()),
        },
        Cmd::Cluster => "/cluster".to_owned(),
        Cmd::Tso { ts } => {
            let t = Timestamp::decode(*ts);
            out(&format!("system:  {} ({} ms)\nlogic:   {}", t.physical_time(), t.physical_ms, t.logical));
            return Ok(());
        }
    };
    call("GET", &format!("{base}{path}"))
}

const OPERATOR_USAGE: &str = "usage: operator show [REGION] | operator remove REGION | operator add \
    transfer-leader REGION STORE | add-peer REGION STORE | remove-peer REGION STORE | \
    transfer-peer REGION FROM TO | split-region REGION [--policy approximate|usekey] [--keys HEX,...]";

/// The `POST /operators` body of `operator add NAME ARGS...`.
fn operator_body(
    name: &str,
    args: &[&str],
    policy: Option<&str>,
    keys: &[String],
) -> Result<serde_json::Value, String> {
    use serde_json::json;
    Ok(match (name, args) {
        ("transfer-leader", [r, s]) => {
            json!({"name": name, "region_id": number(r)?, "to_store_id": number(s)?})
        }
        ("add-peer" | "remove-peer", [r, s]) => {
            json!({"name": name, "region_id": number(r)?, "store_id": number(s)?})
        }
        ("transfer-peer", [r, from, to]) => json!({
            "name": name, "region_id": number(r)?, "from_store_id": number(from)?, "to_store_id": number(to)?
        }),
        ("split-region", [r]) => {
            let mut body = json!({"name": name, "region_id": number(r)?, "keys": keys});
            if let Some(p) = policy {
                body["policy"] = json!(p);
            }
            body
        }
        _ => return Err(OPERATOR_USAGE.into()),
    })
}

fn call(method: &str, url: &str) -> Result<(), String> {
    print_answer(url, ureq::request(method, url).call())
}

fn send(method: &str, url: &str, body: serde_json::Value) -> Result<(), String> {
    print_answer(url, ureq::request(method, url).send_json(body))
}

fn print_answer(url: &str, answer: Result<ureq::Response, ureq::Error>) -> Result<(), String> {
    let body: serde_json::Value = match answer {
        Ok(resp) => resp.into_json().map_err(|e| format!("{url}: bad JSON: {e}"))?,
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            return Err(format!("{url}: HTTP {code}: {}", text.trim()));
        }
        Err(e) => return Err(format!("{url}: {e}")),
    };
    out(&serde_json::to_string_pretty(&body).expect("a JSON value always prints"));
    Ok(())
}

fn normalize(pd: &str) -> String {
    let pd = pd.trim_end_matches('/');
    if pd.starts_with("http://") || pd.starts_with("https://") {
        pd.to_owned()
    } else {
        format!("http://{pd}")
    }
}

fn number(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("{s:?} is not a number"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints a line to stdout; a closed pipe (`pd-ctl region | head`) ends quietly.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}").is_err() {
        std::process::exit(0);
    }
}
