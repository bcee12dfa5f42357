//! gRPC plumbing shared by the PD client and the node clients: address
//! normalisation, lazily connected channels, and telling "never reached the
//! server" apart from "failed after sending".

use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::Duration;

use mnemo_proto::tikvpb::tikv_client::TikvClient;
use parking_lot::Mutex;

use crate::batch_commands::BatchConn;
use tonic::transport::{Channel, Endpoint};

/// Largest response the client decodes, bytes (256 MiB). A scan of 10,240
/// keys with large values easily passes tonic's 4 MiB default; refusing the
/// response would turn a successful read into a failure.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// Adds `http://` to a bare `host:port`; keeps an explicit scheme.
pub(crate) fn normalize_url(addr: &str) -> String {
    let addr = addr.trim();
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A channel to `addr` that connects on first use (and reconnects after a
/// failure), with `connect_timeout` on each connection attempt.
pub(crate) fn lazy_channel(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let url = normalize_url(addr);
    let endpoint = Endpoint::from_shared(url.clone()).map_err(|e| format!("bad address {url:?}: {e}"))?;
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        // Keep-alive pings find a peer that vanished (SIGKILL, partition)
        // instead of waiting for the kernel's TCP timeout.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect_lazy())
}

/// True if the RPC failed because no connection could be made, so the request
/// never left this process. Only this kind of transport failure lets a write
/// be retried safely.
///
/// tonic reports such failures as `UNAVAILABLE` with a [`tonic::ConnectError`]
/// in the error's source chain; a connection that breaks after the request
/// went out is also `UNAVAILABLE` but without it, so the code alone is not
/// enough.
pub(crate) fn is_connect_failure(status: &tonic::Status) -> bool {
    // tonic's generated clients report a failed readiness check, which
    // happens before the request is handed to the channel, this way.
    if status.code() == tonic::Code::Unknown && status.message().starts_with("Service was not ready") {
        return true;
    }
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn StdError + 'static)> = status.source();
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A node client (and, with batch commands on, its batch stream).
pub(crate) type NodeClient = (TikvClient<Channel>, Option<BatchConn>);

/// One node client per store address, created on first use and shared by
/// every request to that address (a tonic channel multiplexes them).
pub(crate) struct StoreClients {
    connect_timeout: Duration,
    /// Gets and puts go on one `BatchCommands` stream per node.
    batch_commands: bool,
    clients: Mutex<HashMap<String, NodeClient>>,
}

impl StoreClients {
    /// An empty cache whose channels use `connect_timeout`.
    pub(crate) fn new(connect_timeout: Duration, batch_commands: bool) -> Self {
        StoreClients { connect_timeout, batch_commands, clients: Mutex::new(HashMap::new()) }
    }

    /// The client for `addr`, creating its channel if needed (and its batch
    /// stream's task: call it inside a tokio runtime).
    pub(crate) fn get(&self, addr: &str) -> Result<NodeClient, String> {
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = lazy_channel(addr, self.connect_timeout)?;
        let client = TikvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        let batch = self.batch_commands.then(|| BatchConn::start(client.clone(), self.connect_timeout * 2));
        clients.insert(addr.to_string(), (client.clone(), batch.clone()));
        Ok((client, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_scheme_once() {
        assert_eq!(normalize_url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(normalize_url(" http://pd:2379 "), "http://pd:2379");
        assert_eq!(normalize_url("https://pd:2379"), "https://pd:2379");
    }

    #[test]
    fn connect_failures_are_told_apart() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(io))));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(is_connect_failure(&refused));

        // Same code, but the connection broke after sending: not provably unsent.
        assert!(!is_connect_failure(&tonic::Status::unavailable("connection reset")));
        assert!(!is_connect_failure(&tonic::Status::deadline_exceeded("slow")));
        assert!(is_connect_failure(&tonic::Status::unknown("Service was not ready: closed")));
        assert!(!is_connect_failure(&tonic::Status::unknown("handler panicked")));
    }
}
