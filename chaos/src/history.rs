//! Operation histories: what every client asked, when, and what came back.
//!
//! A chaos run is judged only by its history, so the history must be exact
//! about three things: which operation a client *invoked* and when, whether it
//! completed `ok` (it happened), `fail` (it certainly did not happen) or
//! `info` (unknown: a timeout, a dropped connection), and when it completed.
//!
//! Invariants (enforced by the types of [`Recorder`], checked by
//! [`History::operations`] for histories read from files):
//! - a process has at most one outstanding invocation;
//! - after `info` the process id is retired: the outcome is unknown, so the
//!   operation may still take effect at any later time, and a new id lets the
//!   checkers treat it as concurrent with everything after it;
//! - timestamps are nanoseconds of a monotonic clock since the run started,
//!   taken under the recorder's lock, so file order is time order.
//!
//! Values are `u64` (register values, set elements, counter values): the
//! workloads encode them into the KV store's byte values and decode on read.
//! Keys are small integer ids ([`Key`]); the workload maps them to byte keys.
//!
//! On disk a history is JSONL, one event per line:
//! `{"process":3,"type":"ok","f":"cas","key":1,"value":[null,2],"time_ns":812}`.
//! `value` depends on `f`: `read` → the value read (`null`: absent) on `ok`,
//! `null` otherwise; `write` and `write_ttl` → the value; `delete` → `null`;
//! `batch_write` → `[[key, value], ...]` (no `key`); `cas` → `[from, to]`; `add` → the
//! element (no key); `read_all` → the sorted elements on `ok`; `increment` →
//! `[old, new]` observed by the successful CAS on `ok`; `read_counter` → the
//! counter on `ok`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A client identity in the history. Retired after an `info` outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub u64);

/// A workload key id (the workload maps it to the KV store's byte key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub u64);

/// What a client asked for (the invocation), for all three workloads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Register: read `key`; the output is [`Output::Read`].
    Read {
        /// Register key.
        key: Key,
    },
    /// Register: set `key` to `value`.
    Write {
        /// Register key.
        key: Key,
        /// Value written.
        value: u64,
    },
    /// Register: set `key` to `value` with a time to live: the value may
    /// vanish (expire) at any point after the write.
    WriteTtl {
        /// Register key.
        key: Key,
        /// Value written.
        value: u64,
    },
    /// Register: remove `key`.
    Delete {
        /// Register key.
        key: Key,
    },
    /// Register: set several keys in one request (each key's value in it;
    /// keys in different regions are not atomic together, so each key is
    /// checked on its own).
    BatchWrite {
        /// (key, value) pairs.
        writes: Vec<(Key, u64)>,
    },
    /// Register: set `key` to `to` iff its value is `from` (`None`: absent).
    /// A CAS that found another value completes `fail`.
    Cas {
        /// Register key.
        key: Key,
        /// Expected current value (`None`: the key must be absent).
        from: Option<u64>,
        /// New value.
        to: u64,
    },
    /// Set: insert `element` (unique per run).
    Add {
        /// The element inserted.
        element: u64,
    },
    /// Set: a read of every element (during the run, and a final one);
    /// output [`Output::ReadAll`].
    ReadAll,
    /// Counter: read v, CAS v → v+1 on `key`; output [`Output::Increment`].
    /// A lost CAS race completes `fail` (nothing happened).
    Increment {
        /// Counter key.
        key: Key,
    },
    /// Counter: read `key` (absent reads as 0); output [`Output::ReadCounter`].
    ReadCounter {
        /// Counter key.
        key: Key,
    },
}

/// The name of an operation kind (`f` in the JSONL), used for counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpName {
    /// [`Op::Read`].
    Read,
    /// [`Op::Write`].
    Write,
    /// [`Op::WriteTtl`].
    WriteTtl,
    /// [`Op::Delete`].
    Delete,
    /// [`Op::BatchWrite`].
    BatchWrite,
    /// [`Op::Cas`].
    Cas,
    /// [`Op::Add`].
    Add,
    /// [`Op::ReadAll`].
    ReadAll,
    /// [`Op::Increment`].
    Increment,
    /// [`Op::ReadCounter`].
    ReadCounter,
}

impl OpName {
    /// The snake_case name used in JSON (`"read_all"`).
    pub fn as_str(self) -> &'static str {
        match self {
            OpName::Read => "read",
            OpName::Write => "write",
            OpName::WriteTtl => "write_ttl",
            OpName::Delete => "delete",
            OpName::BatchWrite => "batch_write",
            OpName::Cas => "cas",
            OpName::Add => "add",
            OpName::ReadAll => "read_all",
            OpName::Increment => "increment",
            OpName::ReadCounter => "read_counter",
        }
    }
}

impl Op {
    /// This operation's kind.
    pub fn name(&self) -> OpName {
        match self {
            Op::Read { .. } => OpName::Read,
            Op::Write { .. } => OpName::Write,
            Op::WriteTtl { .. } => OpName::WriteTtl,
            Op::Delete { .. } => OpName::Delete,
            Op::BatchWrite { .. } => OpName::BatchWrite,
            Op::Cas { .. } => OpName::Cas,
            Op::Add { .. } => OpName::Add,
            Op::ReadAll => OpName::ReadAll,
            Op::Increment { .. } => OpName::Increment,
            Op::ReadCounter { .. } => OpName::ReadCounter,
        }
    }

    /// The key, for keyed operations (`None` for the set workload).
    pub fn key(&self) -> Option<Key> {
        match self {
            Op::Read { key } | Op::Write { key, .. } | Op::Cas { key, .. } => Some(*key),
            Op::WriteTtl { key, .. } | Op::Delete { key } => Some(*key),
            Op::Increment { key } | Op::ReadCounter { key } => Some(*key),
            Op::Add { .. } | Op::ReadAll | Op::BatchWrite { .. } => None,
        }
    }

    /// Whether `output` is the right shape for an `ok` of this operation.
    pub fn accepts(&self, output: &Output) -> bool {
        matches!(
            (self, output),
            (Op::Read { .. }, Output::Read(_))
                | (
                    Op::Write { .. }
                        | Op::WriteTtl { .. }
                        | Op::Delete { .. }
                        | Op::BatchWrite { .. }
                        | Op::Cas { .. }
                        | Op::Add { .. },
                    Output::Done
                )
                | (Op::ReadAll, Output::ReadAll(_))
                | (Op::Increment { .. }, Output::Increment { .. })
                | (Op::ReadCounter { .. }, Output::ReadCounter(_))
        )
    }
}

/// What an `ok` completion returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The operation took effect and returns nothing (write, cas, add).
    Done,
    /// The value read (`None`: absent).
    Read(Option<u64>),
    /// Every element read, in the order the scan returned them (the
    /// checker flags duplicates and disorder).
    ReadAll(Vec<u64>),
    /// The successful CAS of an increment: it saw `old` (absent = 0) and
    /// stored `new` (= old + 1).
    Increment {
        /// Value observed before the CAS.
        old: u64,
        /// Value stored by the CAS.
        new: u64,
    },
    /// The counter's value (absent = 0).
    ReadCounter(u64),
}

/// The `type` of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The client is about to send the request.
    Invoke,
    /// The operation happened.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// Unknown whether it happened (timeout, lost connection); the process
    /// id is retired.
    Info,
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Who.
    pub process: ProcessId,
    /// Invocation or which completion.
    pub kind: EventType,
    /// The operation (a completion repeats its invocation's op).
    pub op: Op,
    /// `Some` iff `kind` is [`EventType::Ok`].
    pub output: Option<Output>,
    /// Nanoseconds of the monotonic clock since the run started.
    pub time_ns: u64,
}

/// Errors reading or pairing a history.
#[derive(Debug)]
pub enum HistoryError {
    /// Reading or writing the file failed.
    Io(io::Error),
    /// Line `line` (1-based) is not a valid event.
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Event number `index` (0-based) breaks the invoke/complete protocol
    /// (two outstanding invocations, completion without invocation, reuse of
    /// a retired process, op mismatch, or `ok` output of the wrong shape).
    Protocol {
        /// 0-based event index.
        index: usize,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Io(e) => write!(f, "history i/o: {e}"),
            HistoryError::Parse { line, message } => write!(f, "history line {line}: {message}"),
            HistoryError::Protocol { index, message } => write!(f, "history event {index}: {message}"),
        }
    }
}

impl std::error::Error for HistoryError {}

impl From<io::Error> for HistoryError {
    fn from(e: io::Error) -> Self {
        HistoryError::Io(e)
    }
}

/// The on-disk shape of an event (see the module doc).
#[derive(Serialize, Deserialize)]
struct WireEvent {
    process: ProcessId,
    #[serde(rename = "type")]
    kind: EventType,
    f: OpName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Key>,
    #[serde(default)]
    value: Value,
    time_ns: u64,
}

impl Event {
    fn to_wire(&self) -> WireEvent {
        let value = match (&self.op, &self.output) {
            (Op::Write { value, .. } | Op::WriteTtl { value, .. }, _) => json!(value),
            (Op::BatchWrite { writes }, _) => json!(writes),
            (Op::Cas { from, to, .. }, _) => json!([from, to]),
            (Op::Add { element }, _) => json!(element),
            (_, Some(Output::Read(v))) => json!(v),
            (_, Some(Output::ReadAll(v))) => json!(v),
            (_, Some(Output::Increment { old, new })) => json!([old, new]),
            (_, Some(Output::ReadCounter(v))) => json!(v),
            _ => Value::Null,
        };
        WireEvent {
            process: self.process,
            kind: self.kind,
            f: self.op.name(),
            key: self.op.key(),
            value,
            time_ns: self.time_ns,
        }
    }

    fn from_wire(w: WireEvent) -> Result<Event, String> {
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
            serde_json::from_value(v.clone()).map_err(|e| format!("bad value {v}: {e}"))
        }
        let key = || w.key.ok_or_else(|| format!("{} needs a key", w.f.as_str()));
        let ok = w.kind == EventType::Ok;
        let (op, output) = match w.f {
            OpName::Read => (Op::Read { key: key()? }, ok.then(|| de(&w.value).map(Output::Read))),
            OpName::Write => {
                (Op::Write { key: key()?, value: de(&w.value)? }, ok.then_some(Ok(Output::Done)))
            }
            OpName::WriteTtl => {
                (Op::WriteTtl { key: key()?, value: de(&w.value)? }, ok.then_some(Ok(Output::Done)))
            }
            OpName::Delete => (Op::Delete { key: key()? }, ok.then_some(Ok(Output::Done))),
            OpName::BatchWrite => (Op::BatchWrite { writes: de(&w.value)? }, ok.then_some(Ok(Output::Done))),
            OpName::Cas => {
                let (from, to) = de(&w.value)?;
                (Op::Cas { key: key()?, from, to }, ok.then_some(Ok(Output::Done)))
            }
            OpName::Add => (Op::Add { element: de(&w.value)? }, ok.then_some(Ok(Output::Done))),
            OpName::ReadAll => (Op::ReadAll, ok.then(|| de(&w.value).map(Output::ReadAll))),
            OpName::Increment => (
                Op::Increment { key: key()? },
                ok.then(|| de(&w.value).map(|(old, new)| Output::Increment { old, new })),
            ),
            OpName::ReadCounter => {
                (Op::ReadCounter { key: key()? }, ok.then(|| de(&w.value).map(Output::ReadCounter)))
            }
        };
        Ok(Event { process: w.process, kind: w.kind, op, output: output.transpose()?, time_ns: w.time_ns })
    }
}

/// A complete (or in-progress snapshot of a) history, in time order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Events in the order recorded (non-decreasing `time_ns`).
    pub events: Vec<Event>,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It happened and returned this.
    Ok(Output),
    /// It certainly did not happen.
    Fail,
    /// Unknown (also for an invocation never completed in the history).
    Info,
}

/// One operation: an invocation paired with its completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Who ran it.
    pub process: ProcessId,
    /// What was asked.
    pub op: Op,
    /// Invocation time, ns since run start.
    pub call_ns: u64,
    /// Completion time, ns since run start; `None` is +infinity (an `info`
    /// operation may take effect at any later time).
    pub ret_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

impl History {
    /// Writes one JSON object per line.
    pub fn write_jsonl<W: Write>(&self, mut w: W) -> Result<(), HistoryError> {
        for e in &self.events {
            serde_json::to_writer(&mut w, &e.to_wire()).map_err(io::Error::from)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
        Ok(())
    }

    /// Reads JSONL written by [`History::write_jsonl`]; blank lines are skipped.
    pub fn read_jsonl<R: BufRead>(r: R) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        for (i, line) in r.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parse_err = |message: String| HistoryError::Parse { line: i + 1, message };
            let wire: WireEvent = serde_json::from_str(&line).map_err(|e| parse_err(e.to_string()))?;
            events.push(Event::from_wire(wire).map_err(parse_err)?);
        }
        Ok(History { events })
    }

    /// Writes the history to `path` as JSONL (truncating it).
    pub fn save(&self, path: &Path) -> Result<(), HistoryError> {
        self.write_jsonl(io::BufWriter::new(std::fs::File::create(path)?))
    }

    /// Reads a JSONL history from `path`.
    pub fn load(path: &Path) -> Result<History, HistoryError> {
        History::read_jsonl(io::BufReader::new(std::fs::File::open(path)?))
    }

    /// Pairs invocations with completions, in invocation order. An invocation
    /// without completion becomes [`Outcome::Info`] with `ret_ns = None`;
    /// protocol violations are errors, since a checker fed a malformed
    /// history could call it valid.
    pub fn operations(&self) -> Result<Vec<Operation>, HistoryError> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut outstanding: HashMap<ProcessId, usize> = HashMap::new();
        let mut retired: std::collections::HashSet<ProcessId> = Default::default();
        for (index, e) in self.events.iter().enumerate() {
            let err = |message: String| HistoryError::Protocol { index, message };
            if retired.contains(&e.process) {
                return Err(err(format!("process {} used after info", e.process.0)));
            }
            if e.kind == EventType::Invoke {
                if outstanding.insert(e.process, ops.len()).is_some() {
                    return Err(err(format!("process {} invoked twice", e.process.0)));
                }
                ops.push(Operation {
                    process: e.process,
                    op: e.op.clone(),
                    call_ns: e.time_ns,
                    ret_ns: None,
                    outcome: Outcome::Info,
                });
                continue;
            }
            let Some(i) = outstanding.remove(&e.process) else {
                return Err(err(format!("process {} completed without invocation", e.process.0)));
            };
            let o = &mut ops[i];
            if o.op != e.op {
                return Err(err(format!("completion {:?} does not match invocation {:?}", e.op, o.op)));
            }
            o.outcome = match (e.kind, &e.output) {
                (EventType::Ok, Some(out)) if e.op.accepts(out) => Outcome::Ok(out.clone()),
                (EventType::Ok, _) => {
                    return Err(err(format!("ok output {:?} wrong for {:?}", e.output, e.op)))
                }
                (EventType::Fail, _) => Outcome::Fail,
                _ => {
                    retired.insert(e.process);
                    Outcome::Info
                }
            };
            // An info operation may take effect at any later time: its return
            // is +infinity, not the time the client gave up.
            o.ret_ns = (e.kind != EventType::Info).then_some(e.time_ns);
        }
        Ok(ops)
    }
}

struct RecorderInner {
    events: Vec<Event>,
    next_process: u64,
}

/// Records a history from many concurrent tasks. Cheap to clone (shared).
///
/// Usage: `let p = rec.process(); let pending = rec.invoke(p, op);` then one
/// of `pending.ok(out)` / `pending.fail()` (both give the process back) or
/// `pending.info()` (gives a *fresh* process). A [`Process`] is not `Clone`,
/// so a process cannot have two outstanding invocations; dropping a
/// [`Pending`] (e.g. a cancelled task) records `info`.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
    start: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// The right to invoke one operation at a time under a process id.
#[derive(Debug)]
pub struct Process {
    id: ProcessId,
}

impl Process {
    /// This process's id.
    pub fn id(&self) -> ProcessId {
        self.id
    }
}

/// An invoked operation awaiting its completion.
#[must_use = "complete the operation with ok, fail or info"]
pub struct Pending {
    recorder: Recorder,
    process: ProcessId,
    op: Op,
    done: bool,
}

impl Recorder {
    /// A new, empty recorder; time 0 is now.
    pub fn new() -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(RecorderInner { events: Vec::new(), next_process: 0 })),
            start: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecorderInner> {
        // A panicking recorder user cannot leave the Vec half-written.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nanoseconds since time 0 of this recorder (for marking nemesis
    /// windows on the history's clock).
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A process with a never-used id.
    pub fn process(&self) -> Process {
        let mut inner = self.lock();
        inner.next_process += 1;
        Process { id: ProcessId(inner.next_process - 1) }
    }

    fn record(&self, process: ProcessId, kind: EventType, op: Op, output: Option<Output>) {
        let mut inner = self.lock();
        // Stamp under the lock so the event order is the time order.
        let time_ns = self.start.elapsed().as_nanos() as u64;
        inner.events.push(Event { process, kind, op, output, time_ns });
    }

    /// Records the invocation of `op` by `process` (call this right before
    /// sending the request).
    pub fn invoke(&self, process: Process, op: Op) -> Pending {
        self.record(process.id, EventType::Invoke, op.clone(), None);
        Pending { recorder: self.clone(), process: process.id, op, done: false }
    }

    /// A snapshot of the events recorded so far.
    pub fn history(&self) -> History {
        History { events: self.lock().events.clone() }
    }
}

impl Pending {
    /// The operation invoked.
    pub fn op(&self) -> &Op {
        &self.op
    }

    fn complete(mut self, kind: EventType, output: Option<Output>) {
        self.done = true;
        self.recorder.record(self.process, kind, self.op.clone(), output);
    }

    /// The operation happened and returned `output`.
    ///
    /// # Panics
    /// If `output` has the wrong shape for the op (e.g. `Output::Done` for a
    /// read): a workload bug that would make the history unreadable.
    pub fn ok(self, output: Output) -> Process {
        assert!(self.op.accepts(&output), "output {output:?} is wrong for {:?}", self.op);
        let id = self.process;
        self.complete(EventType::Ok, Some(output));
        Process { id }
    }

    /// The operation certainly did not happen (e.g. CAS found another value,
    /// or the server rejected it before doing anything).
    pub fn fail(self) -> Process {
        let id = self.process;
        self.complete(EventType::Fail, None);
        Process { id }
    }

    /// Unknown whether it happened; returns a process with a fresh id.
    pub fn info(self) -> Process {
        let recorder = self.recorder.clone();
        self.complete(EventType::Info, None);
        recorder.process()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.recorder.record(self.process, EventType::Info, self.op.clone(), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> History {
        let rec = Recorder::new();
        let p = rec.process();
        let p = rec.invoke(p, Op::Write { key: Key(1), value: 3 }).ok(Output::Done);
        let p = rec.invoke(p, Op::Read { key: Key(1) }).ok(Output::Read(Some(3)));
        let p = rec.invoke(p, Op::Read { key: Key(2) }).ok(Output::Read(None));
        let p = rec.invoke(p, Op::Cas { key: Key(1), from: None, to: 2 }).fail();
        let p = rec.invoke(p, Op::Cas { key: Key(1), from: Some(3), to: 4 }).info();
        let p = rec.invoke(p, Op::Add { element: 7 }).ok(Output::Done);
        let p = rec.invoke(p, Op::ReadAll).ok(Output::ReadAll(vec![7]));
        let p = rec.invoke(p, Op::Increment { key: Key(5) }).ok(Output::Increment { old: 0, new: 1 });
        let p = rec.invoke(p, Op::ReadCounter { key: Key(5) }).ok(Output::ReadCounter(1));
        let _dropped = rec.invoke(p, Op::Increment { key: Key(5) });
        drop(_dropped);
        rec.history()
    }

    #[test]
    fn jsonl_round_trip() {
        let h = sample();
        let mut buf = Vec::new();
        h.write_jsonl(&mut buf).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), h.events.len());
        assert!(text.lines().nth(6).unwrap().contains(r#""f":"cas","key":1,"value":[null,2]"#));
        let back = History::read_jsonl(&buf[..]).unwrap();
        assert_eq!(back, h);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        h.save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), h);
    }

    #[test]
    fn pairing_and_process_retirement() {
        let h = sample();
        let ops = h.operations().unwrap();
        assert_eq!(ops.len(), 10);
        assert!(ops.windows(2).all(|w| w[0].call_ns <= w[1].call_ns));
        assert_eq!(ops[3].outcome, Outcome::Fail);
        assert!(ops[3].ret_ns.is_some());
        // The info CAS: return at +infinity, and its process id is retired.
        assert_eq!((ops[4].outcome.clone(), ops[4].ret_ns), (Outcome::Info, None));
        assert_ne!(ops[5].process, ops[4].process);
        // The dropped Pending was recorded as info.
        assert_eq!((ops[9].outcome.clone(), ops[9].ret_ns), (Outcome::Info, None));
    }

    #[test]
    fn malformed_histories_are_rejected() {
        let ev = |p, kind, t| Event {
            process: ProcessId(p),
            kind,
            op: Op::Read { key: Key(0) },
            output: (kind == EventType::Ok).then_some(Output::Read(None)),
            time_ns: t,
        };
        let twice = History { events: vec![ev(0, EventType::Invoke, 1), ev(0, EventType::Invoke, 2)] };
        assert!(matches!(twice.operations(), Err(HistoryError::Protocol { index: 1, .. })));
        let orphan = History { events: vec![ev(0, EventType::Ok, 1)] };
        assert!(orphan.operations().is_err());
        let reused = History {
            events: vec![ev(0, EventType::Invoke, 1), ev(0, EventType::Info, 2), ev(0, EventType::Invoke, 3)],
        };
        assert!(matches!(reused.operations(), Err(HistoryError::Protocol { index: 2, .. })));
        let bad = r#"{"process":0,"type":"ok","f":"read","key":1,"value":"x","time_ns":1}"#;
        assert!(matches!(History::read_jsonl(bad.as_bytes()), Err(HistoryError::Parse { line: 1, .. })));
    }

    #[tokio::test]
    async fn concurrent_tasks_record_a_well_formed_history() {
        let rec = Recorder::new();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                let mut p = rec.process();
                for i in 0..50u64 {
                    let pending = rec.invoke(p, Op::Write { key: Key(t % 2), value: i });
                    tokio::task::yield_now().await;
                    p = if i % 7 == 0 { pending.info() } else { pending.ok(Output::Done) };
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let h = rec.history();
        assert_eq!(h.events.len(), 8 * 50 * 2);
        assert!(h.events.windows(2).all(|w| w[0].time_ns <= w[1].time_ns));
        assert_eq!(h.operations().unwrap().len(), 400);
    }
}
