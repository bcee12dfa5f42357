//! `pd-ctl`: inspect and steer a Mnemosyne cluster through PD's HTTP API
//! (`/pd/api/v1`), with PD's `pd-ctl` commands.
//!
//! Output is the API's JSON (pretty-printed) by default, or tables for
//! people with `-o table` ([`render`]). `-i` reads commands line by line
//! with editing and a history file; `pd-ctl completion bash|zsh` prints a
//! completion script. Whatever goes wrong (PD unreachable, an error answer,
//! a bad argument) is one line on stderr and exit status 1; `help` and
//! `--version` print as usual.
//!
//! Every command is one HTTP call, except `store delete ID --wait`, which
//! then follows the store until it is drained (a progress bar on stderr),
//! and `tso TS`, which decodes locally.

pub mod keys;
pub mod progress;
pub mod render;

use std::time::{Duration, Instant};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::tso::Timestamp;

/// The command line (also each line of `-i`).
#[derive(Parser, Debug)]
#[command(
    name = "pd-ctl",
    version,
    about = "Inspect and steer a Mnemosyne cluster through PD",
    args_override_self = true
)]
pub struct Cli {
    /// PD address: any member (http://host:port or host:port).
    #[arg(short = 'u', long = "pd", default_value = "http://127.0.0.1:2379", global = true)]
    pub pd: String,
    /// Output: `json` (the API's answer) or `table` (for people).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Json, global = true)]
    pub output: Output,
    /// Interactive: read commands from the terminal, with history.
    #[arg(short = 'i', long = "interact")]
    pub interact: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// How answers are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The API's JSON, pretty-printed.
    Json,
    /// Aligned columns for people.
    Table,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Stores: list, show, drain, label, weigh, limit, check.
    Store(StoreArgs),
    /// Regions: list, show, find by key, scan, top lists, health checks.
    Region(RegionArgs),
    /// Operators in flight: show, add, remove.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Schedulers: show, add, remove, pause, resume.
    #[command(subcommand)]
    Scheduler(SchedulerCmd),
    /// Configuration: show, set.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// PD members and the leader.
    Member(MemberArgs),
    /// Health of every PD member.
    Health,
    /// Cluster id and replica count.
    Cluster,
    /// Decodes a timestamp into physical time and logical counter (no PD call).
    Tso {
        /// The timestamp (`physical_ms << 18 | logical`).
        ts: u64,
    },
    /// Checks that PD answers; prints the round trip.
    Ping,
    /// Prints a shell completion script: `source <(pd-ctl completion bash)`.
    Completion {
        /// The shell.
        shell: Shell,
    },
}

/// Shells `completion` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct StoreArgs {
    /// Show this store (all stores when left out).
    pub id: Option<u64>,
    #[command(subcommand)]
    pub cmd: Option<StoreCmd>,
}

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Drains the store (Offline): its regions move away, then it becomes Tombstone.
    Delete {
        id: u64,
        /// Follow the drain with a progress bar until the store is Tombstone.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// Undoes `store delete` while the store is still Offline (back to Up).
    CancelDelete { id: u64 },
    /// Sets labels: `store label 4 zone=z1 host=h4` (`key=` removes a key).
    Label {
        id: u64,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Sets the store's leader and region weights (scores are divided by them).
    Weight { id: u64, leader: f64, region: f64 },
    /// Shows store limits (peers added / removed per minute), or sets one:
    /// `store limit 4 30`, `store limit all 20 add-peer`.
    Limit {
        /// A store id or `all`.
        which: Option<String>,
        /// Peers per minute.
        rate: Option<f64>,
        /// `add-peer` or `remove-peer` (both when left out).
        kind: Option<String>,
    },
    /// Stores in one state: up, disconnected, down, offline, tombstone.
    Check { state: String },
    /// Forgets every Tombstone store.
    RemoveTombstone,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RegionArgs {
    /// Show this region (all regions when left out).
    pub id: Option<u64>,
    #[command(subcommand)]
    pub cmd: Option<RegionCmd>,
}

/// How a key is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyFormat {
    /// The argument's bytes as they are.
    Raw,
    /// Hex digits (`6B31` is `k1`).
    Hex,
    /// Escaped bytes, as logs print them (`k\x001`, `\n`, `\\`).
    Escaped,
}

#[derive(Subcommand, Debug)]
pub enum RegionCmd {
    /// The region holding a key.
    Key {
        key: String,
        #[arg(long, value_enum, default_value_t = KeyFormat::Raw)]
        format: KeyFormat,
    },
    /// Regions meeting [START, END) in key order.
    Scan {
        /// First key (empty: from the start).
        #[arg(default_value = "")]
        start: String,
        /// End key, exclusive (empty: to the end).
        #[arg(default_value = "")]
        end: String,
        /// Most regions to list (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = KeyFormat::Raw)]
        format: KeyFormat,
    },
    /// Regions with a peer on a store.
    Store { id: u64 },
    /// Regions reading the most (bytes, or keys with `query`) per second.
    Topread {
        /// `byte` (default) or `query`, then how many (default 16).
        args: Vec<String>,
    },
    /// Regions writing the most (bytes, or keys with `query`) per second.
    Topwrite { args: Vec<String> },
    /// The largest regions.
    Topsize {
        #[arg(default_value_t = crate::server::DEFAULT_TOP)]
        limit: usize,
    },
    /// Regions in a state: miss-peer, extra-peer, down-peer, pending-peer,
    /// learner-peer, offline-peer, empty-region.
    Check { state: String },
    /// The regions just before and after a region.
    Sibling { id: u64 },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCmd {
    /// Operators in flight, all or of one kind (leader, region, replica,
    /// split, admin), or the operator of one region.
    Show { which: Option<String> },
    /// The operator of one region.
    Check { region: u64 },
    /// Creates an operator.
    #[command(subcommand)]
    Add(OperatorAdd),
    /// Cancels the operator of a region.
    Remove { region: u64 },
}

#[derive(Subcommand, Debug)]
pub enum OperatorAdd {
    /// Makes the region's peer on STORE its leader.
    TransferLeader { region: u64, store: u64 },
    /// Adds a voter on STORE.
    AddPeer { region: u64, store: u64 },
    /// Removes the region's peer on STORE.
    RemovePeer { region: u64, store: u64 },
    /// Moves the region's peer from one store to another.
    TransferPeer { region: u64, from: u64, to: u64 },
    /// Moves the region's replicas onto exactly these stores (one each).
    TransferRegion {
        region: u64,
        #[arg(required = true, num_args = 1..)]
        stores: Vec<u64>,
    },
    /// Moves the region's replicas and leader to stores PD picks to spread
    /// regions evenly.
    ScatterRegion { region: u64 },
    /// Scatters every region meeting [START, END); `--wait` draws a bar of
    /// the regions whose scatter finished.
    ScatterRegions {
        /// First key (empty: from the start).
        #[arg(default_value = "")]
        start: String,
        /// End key, exclusive (empty: to the end).
        #[arg(default_value = "")]
        end: String,
        #[arg(long, value_enum, default_value_t = KeyFormat::Raw)]
        format: KeyFormat,
        /// Follow the scatter until every operator ended.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, requires = "wait")]
        timeout: Option<u64>,
    },
    /// Splits the region at its middle, or at given keys.
    SplitRegion {
        region: u64,
        /// `approximate` (the node picks the middle) or `usekey`.
        #[arg(long)]
        policy: Option<String>,
        /// Split keys, hex, comma-separated.
        #[arg(long, value_delimiter = ',')]
        keys: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SchedulerCmd {
    /// Active schedulers (or, with `--status paused`, those paused now).
    Show {
        #[arg(long)]
        status: Option<String>,
    },
    /// Starts a scheduler; `evict-leader-scheduler STORE` drains a store's leaders.
    Add { name: String, store: Option<u64> },
    /// Stops a scheduler (`evict-leader-scheduler-4` for a store's eviction).
    Remove { name: String },
    /// Pauses a scheduler for SECONDS.
    Pause { name: String, seconds: u64 },
    /// Resumes a paused scheduler.
    Resume { name: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// The configuration: `schedule` and `replication` (default), `all`, or one section.
    Show { section: Option<String> },
    /// Changes a `schedule` or `replication` key at run time:
    /// `config set max-store-down-time 5s`.
    Set { key: String, value: String },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MemberArgs {
    #[command(subcommand)]
    pub cmd: Option<MemberCmd>,
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// The leader: show it, make it resign, or hand leadership to a member.
    Leader {
        #[command(subcommand)]
        cmd: LeaderCmd,
    },
    /// Adds a member (then start it with `--join`).
    Add { name: String, peer_url: String },
    /// Removes a member.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum LeaderCmd {
    Show,
    Resign,
    Transfer { name: String },
}

/// A failure, printed as one line.
pub type CtlResult<T> = Result<T, String>;

/// Runs `pd-ctl` with the process arguments; the exit status.
pub fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let ok = if cli.interact { interact(&cli) } else { run_reporting(&cli) };
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// A command line clap refused: help and version print as usual (exit 0);
/// anything else is one line on stderr and exit status 1.
fn usage_error(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            return std::process::ExitCode::SUCCESS;
        }
        // `pd-ctl store label` and the like: the usage is the answer.
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return std::process::ExitCode::FAILURE;
        }
        _ => {}
    }
    eprintln!("pd-ctl: {}", first_line(&e.to_string()));
    std::process::ExitCode::FAILURE
}

/// The first non-empty line of clap's message, without its `error: `.
fn first_line(msg: &str) -> String {
    let line = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid arguments");
    let line = line.strip_prefix("error: ").unwrap_or(line).trim();
    format!("{line} (see pd-ctl help)")
}

fn run_reporting(cli: &Cli) -> bool {
    match run(cli) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("pd-ctl: {e}");
            false
        }
    }
}

/// `-i`: one command per line (`pd-ctl` and the global flags are
/// optional), with line editing and history in `~/.pd-ctl_history`; `exit`,
/// `quit` or end of input ends it. Returns false if the last command failed.
fn interact(outer: &Cli) -> bool {
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".pd-ctl_history"));
    let mut lines = Lines::open(history.as_deref());
    let mut ok = true;
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if matches!(line, "exit" | "quit") {
            break;
        }
        lines.remember(line);
        let Some(words) = shlex::split(line) else {
            eprintln!("pd-ctl: unbalanced quotes");
            ok = false;
            continue;
        };
        let words = words.into_iter().skip_while(|w| w == "pd-ctl");
        let mut args: Vec<String> = vec!["pd-ctl".into(), "-u".into(), outer.pd.clone()];
        args.extend(["-o".into(), format!("{:?}", outer.output).to_lowercase()]);
        args.extend(words);
        ok = match Cli::try_parse_from(&args) {
            Ok(cli) if cli.interact => {
                eprintln!("pd-ctl: already interactive");
                false
            }
            Ok(cli) => run_reporting(&cli),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                let _ = e.print();
                true
            }
            Err(e) => {
                eprintln!("pd-ctl: {}", first_line(&e.to_string()));
                false
            }
        };
    }
    lines.save();
    ok
}

/// Where `-i` reads commands: a line editor with history on a terminal;
/// plain lines, no prompt, from anything else (a pipe, a script), while
/// still keeping the history file.
enum Lines {
    Terminal { editor: Box<rustyline::DefaultEditor>, history: Option<std::path::PathBuf> },
    Piped { history: Option<std::path::PathBuf>, entries: Vec<String> },
}

impl Lines {
    fn open(history: Option<&std::path::Path>) -> Lines {
        use std::io::IsTerminal;
        let history = history.map(std::path::Path::to_path_buf);
        if std::io::stdin().is_terminal() {
            if let Ok(mut editor) = rustyline::DefaultEditor::new() {
                if let Some(h) = &history {
                    let _ = editor.load_history(h);
                }
                return Lines::Terminal { editor: Box::new(editor), history };
            }
        }
        Lines::Piped { history, entries: Vec::new() }
    }

    /// The next line; `None` at the end of input.
    fn next(&mut self) -> Option<String> {
        match self {
            Lines::Terminal { editor, .. } => loop {
                match editor.readline("» ") {
                    Ok(line) => return Some(line),
                    Err(rustyline::error::ReadlineError::Interrupted) => continue,
                    Err(_) => return None,
                }
            },
            Lines::Piped { .. } => {
                let mut line = String::new();
                match std::io::stdin().read_line(&mut line) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                }
            }
        }
    }

    fn remember(&mut self, line: &str) {
        match self {
            Lines::Terminal { editor, .. } => {
                let _ = editor.add_history_entry(line);
            }
            Lines::Piped { entries, .. } => entries.push(line.to_owned()),
        }
    }

    /// Writes the history file.
    fn save(&mut self) {
        match self {
            Lines::Terminal { editor, history: Some(h) } => {
                let _ = editor.save_history(h);
            }
            Lines::Piped { history: Some(h), entries } if !entries.is_empty() => {
                use std::io::Write as _;
                let file = std::fs::OpenOptions::new().create(true).append(true).open(h);
                if let Ok(mut f) = file {
                    for e in entries.iter() {
                        let _ = writeln!(f, "{e}");
                    }
                }
            }
            _ => {}
        }
    }
}

/// Runs one command.
pub fn run(cli: &Cli) -> CtlResult<()> {
    let pd = Pd::new(&cli.pd);
    let out = |v: Value, kind: render::Kind| print(&render::render(&v, kind, cli.output));
    use render::Kind;
    let Some(cmd) = &cli.cmd else {
        return Err("no command given (try `pd-ctl help`)".into());
    };
    match cmd {
        Cmd::Store(a) => match (&a.cmd, a.id) {
            (None, None) => out(pd.get("/stores")?, Kind::Stores),
            (None, Some(id)) => out(pd.get(&format!("/store/{id}"))?, Kind::Store),
            (Some(c), _) => store(&pd, c, cli.output)?,
        },
        Cmd::Region(a) => match (&a.cmd, a.id) {
            (None, None) => out(pd.get("/regions")?, Kind::Regions),
            (None, Some(id)) => out(pd.get(&format!("/region/id/{id}"))?, Kind::Region),
            (Some(c), _) => region(&pd, c, cli.output)?,
        },
        Cmd::Operator(c) => operator(&pd, c, cli.output)?,
        Cmd::Scheduler(c) => scheduler(&pd, c, cli.output)?,
        Cmd::Config(ConfigCmd::Show { section }) => {
            let v = match section.as_deref() {
                None => {
                    let all = pd.get("/config")?;
                    json!({"replication": all["replication"], "schedule": all["schedule"]})
                }
                Some("all") => pd.get("/config")?,
                Some("schedule") => pd.get("/config/schedule")?,
                Some("replication" | "replicate") => pd.get("/config/replicate")?,
                Some(other) => {
                    return Err(format!("unknown config section {other:?} (all, schedule, replication)"))
                }
            };
            out(v, Kind::Object)
        }
        Cmd::Config(ConfigCmd::Set { key, value }) => {
            pd.send("POST", "/config", Some(json!({ key.as_str(): value })))?;
            print("Success!")
        }
        Cmd::Member(a) => match &a.cmd {
            None => out(pd.get("/members")?, Kind::Members),
            Some(MemberCmd::Leader { cmd: LeaderCmd::Show }) => out(pd.get("/leader")?, Kind::Object),
            Some(MemberCmd::Leader { cmd: LeaderCmd::Resign }) => {
                out(pd.send("POST", "/leader/resign", None)?, Kind::Object)
            }
            Some(MemberCmd::Leader { cmd: LeaderCmd::Transfer { name } }) => out(
                pd.send(
                    "POST",
                    &format!("/leader/transfer/{}", keys::percent_encode(name.as_bytes())),
                    None,
                )?,
                Kind::Object,
            ),
            Some(MemberCmd::Add { name, peer_url }) => out(
                pd.send("POST", "/members", Some(json!({"name": name, "peer_urls": [peer_url]})))?,
                Kind::Members,
            ),
            Some(MemberCmd::Delete { name }) => out(
                pd.send("DELETE", &format!("/members/name/{}", keys::percent_encode(name.as_bytes())), None)?,
                Kind::Object,
            ),
        },
        Cmd::Health => out(pd.get("/health")?, Kind::List),
        Cmd::Cluster => out(pd.get("/cluster")?, Kind::Object),
        Cmd::Tso { ts } => {
            let t = Timestamp::decode(*ts);
            let v = json!({"system": t.physical_time(), "physical_ms": t.physical_ms, "logic": t.logical});
            match cli.output {
                Output::Json => out(v, Kind::Object),
                Output::Table => print(&format!("system:  {}\nlogic:   {}", t.physical_time(), t.logical)),
            }
        }
        Cmd::Ping => {
            let started = Instant::now();
            pd.send("GET", "/ping", None)?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            match cli.output {
                Output::Json => out(json!({"ok": true, "time_ms": ms}), Kind::Object),
                Output::Table => print(&format!("time: {ms:.3}ms")),
            }
        }
        Cmd::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
            };
            clap_complete::generate(shell, &mut Cli::command(), "pd-ctl", &mut std::io::stdout());
        }
    }
    Ok(())
}

fn store(pd: &Pd, c: &StoreCmd, o: Output) -> CtlResult<()> {
    use render::Kind;
    let out = |v: Value, kind: Kind| print(&render::render(&v, kind, o));
    match c {
        StoreCmd::Delete { id, wait, timeout } => {
            // The store's region count before the drain starts: the bar's total.
            let before = pd.get(&format!("/store/{id}"))?;
            let answer = pd.send("DELETE", &format!("/store/{id}"), None)?;
            if !wait {
                return {
                    out(answer, Kind::Object);
                    Ok(())
                };
            }
            let total = before["status"]["region_count"].as_u64().unwrap_or(0);
            let deadline = (*timeout > 0).then(|| Instant::now() + Duration::from_secs(*timeout));
            wait_drained(pd, *id, total, deadline)?;
        }
        StoreCmd::CancelDelete { id } => {
            out(pd.send("POST", &format!("/store/{id}/state?state=Up"), None)?, Kind::Object)
        }
        StoreCmd::Label { id, labels } => {
            let mut body = serde_json::Map::new();
            for l in labels {
                let (k, v) = l.split_once('=').ok_or_else(|| format!("label {l:?} is not key=value"))?;
                body.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            out(pd.send("POST", &format!("/store/{id}/label"), Some(Value::Object(body)))?, Kind::Object)
        }
        StoreCmd::Weight { id, leader, region } => {
            let body = json!({"leader": leader, "region": region});
            out(pd.send("POST", &format!("/store/{id}/weight"), Some(body))?, Kind::Object)
        }
        StoreCmd::Limit { which: None, .. } => out(pd.get("/stores/limit")?, Kind::Limits),
        StoreCmd::Limit { which: Some(which), rate: None, .. } => {
            let all = pd.get("/stores/limit")?;
            let one = all
                .get(which.as_str())
                .cloned()
                .ok_or_else(|| format!("store {which} has no limit (no such store)"))?;
            out(json!({ which.as_str(): one }), Kind::Limits)
        }
        StoreCmd::Limit { which: Some(which), rate: Some(rate), kind } => {
            let mut body = json!({ "rate": rate });
            if let Some(kind) = kind {
                body["type"] = json!(kind);
            }
            let path = match which.as_str() {
                "all" => "/stores/limit".to_owned(),
                id => format!("/store/{}/limit", number(id)?),
            };
            out(pd.send("POST", &path, Some(body))?, Kind::Object)
        }
        StoreCmd::Check { state } => out(
            pd.get(&format!("/stores/check?state={}", keys::percent_encode(state.as_bytes())))?,
            Kind::Stores,
        ),
        StoreCmd::RemoveTombstone => out(pd.send("DELETE", "/stores/remove-tombstone", None)?, Kind::Object),
    }
    Ok(())
}

/// Follows store `id` until it is Tombstone, drawing how many of its
/// `total` regions moved away.
fn wait_drained(pd: &Pd, id: u64, total: u64, deadline: Option<Instant>) -> CtlResult<()> {
    follow(pd, &format!("store {id} drain"), total, deadline, |pd| {
        let s = pd.get(&format!("/store/{id}"))?;
        let left = s["status"]["region_count"].as_u64().unwrap_or(0);
        Ok(Tick {
            done: total.saturating_sub(left),
            finished: (s["store"]["state_name"] == "Tombstone")
                .then(|| format!("store {id} is Tombstone: {total} regions moved away")),
            late: format!("store {id}: {left} regions left"),
            error: format!("store {id} not drained in time ({left} of {total} regions left)"),
        })
    })
}

/// Follows the operators of `regions` (a scatter's) until none is left,
/// drawing how many ended.
fn wait_scattered(pd: &Pd, regions: &[u64], deadline: Option<Instant>) -> CtlResult<()> {
    let total = regions.len() as u64;
    follow(pd, "scatter", total, deadline, |pd| {
        let ops = pd.get("/operators?kind=admin")?;
        let busy: std::collections::BTreeSet<u64> = ops
            .as_array()
            .into_iter()
            .flatten()
            .filter(|op| op["desc"] == "scatter-region")
            .filter_map(|op| op["region_id"].as_u64())
            .collect();
        let left = regions.iter().filter(|r| busy.contains(r)).count() as u64;
        Ok(Tick {
            done: total - left,
            finished: (left == 0).then(|| format!("{total} regions scattered")),
            late: format!("{left} regions still moving"),
            error: format!("scatter not finished in time ({left} of {total} regions still moving)"),
        })
    })
}

/// What one look at a long action found.
struct Tick {
    /// Units done, for the bar.
    done: u64,
    /// The bar's last line, once the action is over.
    finished: Option<String>,
    /// The bar's last line and the error, should the deadline pass now.
    late: String,
    error: String,
}

/// Draws a progress bar of `total` units labelled `label`, looking with
/// `poll` every half second until it says the action is over or the
/// deadline passes. A 5xx answer (PD changing leaders) is waited out until
/// the deadline: the action goes on meanwhile.
fn follow(
    pd: &Pd,
    label: &str,
    total: u64,
    deadline: Option<Instant>,
    mut poll: impl FnMut(&Pd) -> CtlResult<Tick>,
) -> CtlResult<()> {
    let mut bar = progress::Bar::new(label, total);
    loop {
        let tick = match poll(pd) {
            Ok(t) => t,
            Err(e) if deadline.is_none_or(|d| Instant::now() < d) && e.contains("PD answered 5") => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => {
                bar.finish("");
                return Err(e);
            }
        };
        bar.set(tick.done);
        if let Some(last) = tick.finished {
            bar.finish(&last);
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bar.finish(&tick.late);
            return Err(tick.error);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn region(pd: &Pd, c: &RegionCmd, o: Output) -> CtlResult<()> {
    use render::Kind;
    let out = |v: Value, kind: Kind| print(&render::render(&v, kind, o));
    match c {
        RegionCmd::Key { key, format } => {
            let hex = hex::encode(keys::parse(key, *format)?);
            out(pd.get(&format!("/region/key/{hex}?format=hex"))?, Kind::Region)
        }
        RegionCmd::Scan { start, end, limit, format } => {
            let (s, e) = (hex::encode(keys::parse(start, *format)?), hex::encode(keys::parse(end, *format)?));
            out(pd.get(&format!("/regions/key?key={s}&end_key={e}&limit={limit}&format=hex"))?, Kind::Regions)
        }
        RegionCmd::Store { id } => out(pd.get(&format!("/regions/store/{id}"))?, Kind::Regions),
        RegionCmd::Topread { args } | RegionCmd::Topwrite { args } => {
            let read = matches!(c, RegionCmd::Topread { .. });
            let (by_keys, limit) = top_args(args)?;
            let path = match (read, by_keys) {
                (true, false) => "readflow",
                (true, true) => "readquery",
                (false, false) => "writeflow",
                (false, true) => "writequery",
            };
            out(pd.get(&format!("/regions/{path}?limit={limit}"))?, Kind::Regions)
        }
        RegionCmd::Topsize { limit } => out(pd.get(&format!("/regions/size?limit={limit}"))?, Kind::Regions),
        RegionCmd::Check { state } => {
            out(pd.get(&format!("/regions/check/{}", keys::percent_encode(state.as_bytes())))?, Kind::Regions)
        }
        RegionCmd::Sibling { id } => out(pd.get(&format!("/regions/sibling/{id}"))?, Kind::Regions),
    }
    Ok(())
}

/// `[byte|query] [N]` of `topread` / `topwrite`: (by keys, limit).
fn top_args(args: &[String]) -> CtlResult<(bool, usize)> {
    let mut by_keys = false;
    let mut limit = crate::server::DEFAULT_TOP;
    let mut rest = args.iter().map(String::as_str);
    let mut next = rest.next();
    match next {
        Some("byte") => next = rest.next(),
        Some("query") => {
            by_keys = true;
            next = rest.next();
        }
        _ => {}
    }
    if let Some(n) = next {
        limit = n.parse().map_err(|_| format!("{n:?} is not a number of regions"))?;
    }
    if let Some(extra) = rest.next() {
        return Err(format!("unexpected {extra:?}: usage is [byte|query] [N]"));
    }
    Ok((by_keys, limit))
}

fn operator(pd: &Pd, c: &OperatorCmd, o: Output) -> CtlResult<()> {
    use render::Kind;
    let out = |v: Value, kind: Kind| print(&render::render(&v, kind, o));
    match c {
        OperatorCmd::Show { which: None } => out(pd.get("/operators")?, Kind::Operators),
        OperatorCmd::Show { which: Some(w) } if w.chars().all(|c| c.is_ascii_digit()) => {
            out(pd.get(&format!("/operators/{w}"))?, Kind::Operators)
        }
        OperatorCmd::Show { which: Some(kind) } => out(
            pd.get(&format!("/operators?kind={}", keys::percent_encode(kind.as_bytes())))?,
            Kind::Operators,
        ),
        OperatorCmd::Check { region } => out(pd.get(&format!("/operators/{region}"))?, Kind::Operators),
        OperatorCmd::Remove { region } => {
            out(pd.send("DELETE", &format!("/operators/{region}"), None)?, Kind::Object)
        }
        OperatorCmd::Add(OperatorAdd::ScatterRegions { start, end, format, wait, timeout }) => {
            let (s, e) = (hex::encode(keys::parse(start, *format)?), hex::encode(keys::parse(end, *format)?));
            let answer = pd.send("POST", "/regions/scatter", Some(json!({"start_key": s, "end_key": e})))?;
            if *wait {
                let regions: Vec<u64> =
                    answer["regions_id"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect();
                let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t));
                wait_scattered(pd, &regions, deadline)?;
            }
            out(answer, Kind::Object)
        }
        OperatorCmd::Add(add) => {
            let body = match add {
                OperatorAdd::TransferLeader { region, store } => {
                    json!({"name": "transfer-leader", "region_id": region, "to_store_id": store})
                }
                OperatorAdd::AddPeer { region, store } => {
                    json!({"name": "add-peer", "region_id": region, "store_id": store})
                }
                OperatorAdd::RemovePeer { region, store } => {
                    json!({"name": "remove-peer", "region_id": region, "store_id": store})
                }
                OperatorAdd::TransferPeer { region, from, to } => json!({
                    "name": "transfer-peer", "region_id": region, "from_store_id": from, "to_store_id": to
                }),
                OperatorAdd::TransferRegion { region, stores } => {
                    json!({"name": "transfer-region", "region_id": region, "to_store_ids": stores})
                }
                OperatorAdd::ScatterRegion { region } => {
                    json!({"name": "scatter-region", "region_id": region})
                }
                OperatorAdd::ScatterRegions { .. } => unreachable!("handled above"),
                OperatorAdd::SplitRegion { region, policy, keys } => {
                    let mut body = json!({"name": "split-region", "region_id": region, "keys": keys});
                    if let Some(p) = policy {
                        body["policy"] = json!(p);
                    }
                    body
                }
            };
            out(pd.send("POST", "/operators", Some(body))?, Kind::Operators)
        }
    }
    Ok(())
}

fn scheduler(pd: &Pd, c: &SchedulerCmd, o: Output) -> CtlResult<()> {
    use render::Kind;
    let out = |v: Value, kind: Kind| print(&render::render(&v, kind, o));
    let path = |name: &str| format!("/schedulers/{}", keys::percent_encode(name.as_bytes()));
    match c {
        SchedulerCmd::Show { status: None } => out(pd.get("/schedulers")?, Kind::List),
        SchedulerCmd::Show { status: Some(s) } => {
            out(pd.get(&format!("/schedulers?status={}", keys::percent_encode(s.as_bytes())))?, Kind::List)
        }
        SchedulerCmd::Add { name, store } => {
            let mut body = json!({ "name": name });
            if let Some(s) = store {
                body["store_id"] = json!(s);
            }
            out(pd.send("POST", "/schedulers", Some(body))?, Kind::Object)
        }
        SchedulerCmd::Remove { name } => out(pd.send("DELETE", &path(name), None)?, Kind::Object),
        SchedulerCmd::Pause { name, seconds } => {
            if *seconds == 0 {
                return Err("pause for at least 1 second (resume with `scheduler resume`)".into());
            }
            out(pd.send("POST", &path(name), Some(json!({ "delay": seconds })))?, Kind::Object)
        }
        SchedulerCmd::Resume { name } => {
            out(pd.send("POST", &path(name), Some(json!({ "delay": 0 })))?, Kind::Object)
        }
    }
    Ok(())
}

/// PD's HTTP API at one address.
struct Pd {
    base: String,
    agent: ureq::Agent,
}

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Pd {
    fn new(url: &str) -> Pd {
        let url = url.trim_end_matches('/');
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(CALL_TIMEOUT).build();
        Pd { base: format!("{url}/pd/api/v1"), agent }
    }

    fn get(&self, path: &str) -> CtlResult<Value> {
        self.send("GET", path, None)
    }

    /// One call; the answer's JSON (`null` for an empty body).
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> CtlResult<Value> {
        let url = format!("{}{path}", self.base);
        let req = self.agent.request(method, &url);
        let answer = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match answer {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| format!("{url}: cannot read the answer: {e}"))?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| format!("{url}: the answer is not JSON: {e}"))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                // PD's errors are a JSON string; show the sentence.
                let msg = serde_json::from_str::<String>(&text)
                    .unwrap_or_else(|_| text.split_whitespace().collect::<Vec<_>>().join(" "));
                Err(format!("PD answered {code} to {method} {path}: {msg}"))
            }
            Err(ureq::Error::Transport(t)) => Err(format!("cannot reach PD at {}: {t}", self.base)),
        }
    }
}

fn number(s: &str) -> CtlResult<u64> {
    s.parse().map_err(|_| format!("{s:?} is not a store id (or `all`)"))
}

/// Prints a line to stdout; a closed pipe (`pd-ctl region | head`) ends quietly.
fn print(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{text}").is_err() {
        std::process::exit(0);
    }
}
