//! `mnemo-cli`: one raw key-value operation against a Mnemosyne cluster.
//!
//! ```text
//! mnemo-cli --pd 127.0.0.1:2379 get K
//! mnemo-cli --pd 127.0.0.1:2379 put K V [--ttl SECS]
//! mnemo-cli --pd 127.0.0.1:2379 delete K
//! mnemo-cli --pd 127.0.0.1:2379 scan START END [--limit N] [--reverse]
//! mnemo-cli --pd 127.0.0.1:2379 cas K NEW (--expect OLD | --expect-absent)
//! mnemo-cli --pd 127.0.0.1:2379 ttl K
//! ```
//!
//! Keys and values are taken as UTF-8 bytes and printed lossily. A missing key
//! prints `(not found)` and exits 0. Errors go to stderr with exit code 1; an
//! undetermined write says so ("write outcome undetermined: ...").

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mnemo_client::{Config, RawClient};

#[derive(Parser, Debug)]
#[command(name = "mnemo-cli", version, about = "Raw key-value operations against a Mnemosyne cluster")]
struct Cli {
    /// PD endpoints, comma separated (`host:port` or `http://host:port`).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pd: Vec<String>,

    /// Total time for the operation, retries included, in seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the value of a key.
    Get {
        /// The key.
        key: String,
    },
    /// Write a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expire the key after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        ttl: u64,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Print `key<TAB>value` lines for keys in [START, END); END "" means +infinity.
    Scan {
        /// Inclusive lower bound.
        start: String,
        /// Exclusive upper bound ("" for none).
        end: String,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Largest keys first.
        #[arg(long)]
        reverse: bool,
    },
    /// Compare-and-swap: set KEY to NEW if it currently holds OLD (or is absent).
    Cas {
        /// The key.
        key: String,
        /// The new value.
        new: String,
        #[command(flatten)]
        expect: Expect,
    },
    /// Print the remaining time to live of a key in seconds (0: no expiry).
    Ttl {
        /// The key.
        key: String,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Expect {
    /// The value the key must hold for the swap to happen.
    #[arg(long)]
    expect: Option<String>,
    /// The key must be absent for the swap to happen.
    #[arg(long)]
    expect_absent: bool,
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the command and returns the lines to print on stdout.
async fn run(cli: Cli) -> mnemo_client::Result<Vec<String>> {
    let config = Config { timeout: Duration::from_secs(cli.timeout.max(1)), ..Config::default() };
    let client = RawClient::with_config(cli.pd, config).await?;
    let out = match cli.command {
        Command::Get { key } => match client.get(key).await? {
            Some(v) => vec![show(&v)],
            None => vec!["(not found)".to_string()],
        },
        Command::Put { key, value, ttl } => {
            client.put_with_ttl(key, value, ttl).await?;
            vec!["OK".to_string()]
        }
        Command::Delete { key } => {
            client.delete(key).await?;
            vec!["OK".to_string()]
        }
        Command::Scan { start, end, limit, reverse } => {
            let pairs = if reverse {
                client.scan_reverse(start, end, limit).await?
            } else {
                client.scan(start, end, limit).await?
            };
            pairs.iter().map(|(k, v)| format!("{}\t{}", show(k), show(v))).collect()
        }
        Command::Cas { key, new, expect } => {
            let expected = if expect.expect_absent { None } else { expect.expect.map(String::into_bytes) };
            let (previous, swapped) = client.compare_and_swap(key, expected, new).await?;
            let previous = previous.map_or_else(|| "(not found)".to_string(), |v| show(&v));
            if swapped {
                vec![format!("swapped (previous: {previous})")]
            } else {
                vec![format!("not swapped (current: {previous})")]
            }
        }
        Command::Ttl { key } => match client.get_key_ttl(key).await? {
            Some(ttl) => vec![ttl.to_string()],
            None => vec!["(not found)".to_string()],
        },
    };
    Ok(out)
}

/// Writes `lines` to stdout. A closed pipe (`| head`) is not an error worth
/// reporting.
fn print(lines: &[String]) -> std::io::Result<()> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    stdout.flush()
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(lines) => match print(&lines) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                eprintln!("error: writing output: {e}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
