//! Crash points: named places in a process (node or PD) where a test can
//! make it die (or stall), to prove that a crash exactly there loses nothing
//! and that the process comes back. Each binary lists its own points
//! (`mnemo_node::failpoints::CRASH_POINTS`, PD's in `mnemo_pd`); arming them
//! and the panic policy are shared and live here.
//!
//! They are `fail` crate failpoints (the library TiKV uses), compiled in only
//! with the cargo feature `failpoints` — `make build` and `make test` enable
//! it for the binaries the tests and the chaos harness run; a plain
//! `cargo build` has none, and each `fail_point!` is then
//! nothing at all. Even compiled in, a point does nothing until armed:
//!
//! - at start, by the `FAILPOINTS` environment variable,
//!   `name=actions;name=actions` (e.g. `FAILPOINTS=raft_before_save=panic`),
//!   honoured only with `--enable-test-controls` (a node refuses to start
//!   with one and not the other; PD, which has no such flag, honours it);
//! - at run time, with `--enable-test-controls`, through the status server:
//!   `PUT /debug/fail/NAME` with the actions as body, `DELETE` to disarm,
//!   `GET /debug/fail` to list.
//!
//! Actions are the `fail` crate's: `panic`, `sleep(ms)`, `pause`, `off`,
//! with a count or chance in front (`1*panic`, `10%panic`), chained by `->`
//! (`3*off->panic`: the 4th pass crashes).
//!
//! A point armed with `panic` crashes the node: the panic hook installed by
//! [`install_panic_hook`] ends the process at once with exit code
//! [`CRASH_POINT_EXIT_CODE`], running no destructors and flushing nothing
//! (a crash, as `kill -9` is, not a shutdown). Any *other* panic on any
//! thread aborts the process too (SIGABRT): a thread that holds node state
//! (the store loop above all) must never die alone and leave a zombie that
//! answers gRPC and heartbeats PD with no store loop behind it.

/// Exit code of a process that died at an armed crash point (`panic` action).
pub const CRASH_POINT_EXIT_CODE: i32 = 86;

/// Arms `name` with `actions` (see the module doc). Errors if the actions
/// do not parse, or if this build has no failpoints.
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    if !cfg!(feature = "failpoints") {
        return Err("this build has no failpoints (cargo feature `failpoints`)".into());
    }
    fail::cfg(name, actions)
}

/// Disarms `name`.
pub fn remove(name: &str) {
    fail::remove(name);
}

/// The armed points and their actions.
pub fn list() -> Vec<(String, String)> {
    fail::list()
}

/// Arms the points named in `FAILPOINTS` (`name=actions;...`). Errors on a
/// malformed entry, so a mistyped crash-point test fails at once.
pub fn configure_from_env() -> Result<(), String> {
    let Ok(spec) = std::env::var("FAILPOINTS") else { return Ok(()) };
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, actions) =
            entry.split_once('=').ok_or_else(|| format!("FAILPOINTS entry {entry:?} is not name=actions"))?;
        configure(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS {name}: {e}"))?;
        tracing::warn!(name, actions, "crash point armed from FAILPOINTS");
    }
    Ok(())
}

/// Makes every panic end the process (see the module doc): a crash point's
/// panic exits with [`CRASH_POINT_EXIT_CODE`], any other panic aborts. The
/// panic is logged first.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        let crash_point = msg.starts_with("failpoint ") && msg.ends_with(" panic");
        // Straight to file descriptor 2, taking no lock: the panic may have
        // come from inside the logger or while stderr was locked, and the
        // process must end whatever state those are in.
        let line = if crash_point {
            format!("CRASH POINT: {msg} (thread {thread}); exiting with code {CRASH_POINT_EXIT_CODE}\n")
        } else {
            format!("PANIC in thread {thread} at {at}: {msg}; aborting the process\n")
        };
        // SAFETY: writes a valid buffer to fd 2; `_exit` ends the process at once.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            if crash_point {
                libc::_exit(CRASH_POINT_EXIT_CODE);
            }
        }
        std::process::abort();
    }));
}
