//! `pd-ctl`: inspect and steer PD through its HTTP API; prints pretty JSON.
//!
//! ```text
//! pd-ctl -u http://127.0.0.1:2379 store [ID] | store delete ID
//!        region [ID] | region key K [--format raw|hex]
//!        health | member | config show | operator show | cluster | tso TS
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
    /// `store` lists stores; `store ID` shows one; `store delete ID` drains it (Offline).
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
    /// PD members and the leader.
    Member,
    /// `config show`: the effective configuration.
    Config { action: String },
    /// `operator show`: operators in flight.
    Operator { action: String },
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
        Cmd::Store { args } => match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            [] => "/stores".to_owned(),
            [id] => format!("/store/{}", number(id)?),
            ["delete", id] => return call("DELETE", &format!("{base}/store/{}", number(id)?)),
            _ => return Err("usage: store [ID] | store delete ID".into()),
        },
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
        Cmd::Member => "/members".to_owned(),
        Cmd::Config { action } if action == "show" => "/config".to_owned(),
        Cmd::Operator { action } if action == "show" => "/operators".to_owned(),
        Cmd::Config { .. } | Cmd::Operator { .. } => return Err("only `show` is supported".into()),
        Cmd::Cluster => "/cluster".to_owned(),
        Cmd::Tso { ts } => {
            let t = Timestamp::decode(*ts);
            println!("system:  {} ({} ms)", t.physical_time(), t.physical_ms);
            println!("logic:   {}", t.logical);
            return Ok(());
        }
    };
    call("GET", &format!("{base}{path}"))
}

fn call(method: &str, url: &str) -> Result<(), String> {
    let body: serde_json::Value = match ureq::request(method, url).call() {
        Ok(resp) => resp.into_json().map_err(|e| format!("{url}: bad JSON: {e}"))?,
        Err(ureq::Error::Status(code, resp)) => {
            let text = resp.into_string().unwrap_or_default();
            return Err(format!("{url}: HTTP {code}: {}", text.trim()));
        }
        Err(e) => return Err(format!("{url}: {e}")),
    };
    println!("{}", serde_json::to_string_pretty(&body).expect("a JSON value always prints"));
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
