//! This PD member's identity as `GetMembers` and `/health` report it.

use crate::config::{Config, HttpUrl};
use crate::error::Result;

/// One PD member.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// `--name`.
    pub name: String,
    /// Stable nonzero id derived from the name and peer URL (so a restart
    /// keeps it, as etcd's member ids do).
    pub member_id: u64,
    /// Advertised client URL, `http://host:port`; never a wildcard address.
    pub client_url: String,
    /// Advertised peer URL.
    pub peer_url: String,
}

impl Member {
    /// The member described by `config`, advertising `client_url` (the
    /// configured one, with the port the listener actually got).
    pub fn new(config: &Config, client_url: &HttpUrl) -> Result<Member> {
        let peer_url = config.advertise_peer_url()?.to_string();
        Ok(Member {
            name: config.name.clone(),
            member_id: member_id(&config.name, &peer_url),
            client_url: client_url.to_string(),
            peer_url,
        })
    }
}

/// FNV-1a over `name`, a separator and `peer_url`; never 0.
pub fn member_id(name: &str, peer_url: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0u8]).chain(peer_url.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_are_stable_and_distinct() {
        assert_eq!(member_id("pd1", "http://a:2380"), member_id("pd1", "http://a:2380"));
        assert_ne!(member_id("pd1", "http://a:2380"), member_id("pd2", "http://a:2380"));
        assert_ne!(member_id("pd1", "http://a:2380"), 0);
    }
}
