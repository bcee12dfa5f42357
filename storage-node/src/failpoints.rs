//! The node's crash points. How they are armed (the `FAILPOINTS`
//! environment variable, the status server) and the panic policy (any panic
//! ends the process; a crash point's with exit code 86) are shared with PD
//! and documented in [`mnemo_raft_driver::failpoints`], re-exported here.

pub use mnemo_raft_driver::failpoints::{
    configure, configure_from_env, install_panic_hook, list, remove, CRASH_POINT_EXIT_CODE,
};

/// Every crash point of the node, and where it is.
pub const CRASH_POINTS: &[(&str, &str)] = &[
    ("raft_before_save", "a round's log entries and hard states staged, before the raft write"),
    ("raft_after_save", "after the round's raft write (fsynced), before advancing raft"),
    ("raft_between_kv_and_raft_write", "after the round's kv write (applied data), before its raft write"),
    ("snapshot_generate", "a leader building a snapshot of a region"),
    ("snapshot_send", "a leader streaming a snapshot to another store"),
    ("snapshot_apply_after_mark", "a follower applying a snapshot: marked Applying, data not yet replaced"),
    ("snapshot_apply_after_ingest", "a follower applying a snapshot: data replaced, state not yet final"),
    ("split_after_apply", "a split applied and written, before the new regions' peers exist"),
    ("conf_change_apply", "applying a membership change, before the new configuration is staged"),
    (
        "raft_log_gc_after_kv_sync",
        "the raft log GC worker synced the kv engine, before deleting compacted entries",
    ),
    (
        "apply_pool_after_write",
        "an apply worker wrote entries and their applied index, before the clients and the store loop hear of it",
    ),
    ("store_loop_round", "the top of every store-loop round (for panics with nothing pending)"),
];
