//! The calls a storage node makes to PD: identity, bootstrap, registration,
//! heartbeats. They live with the client's PD calls so leader discovery,
//! headers and error mapping exist once.

use futures::Stream;
use mnemo_proto::pdpb::{self, RegionHeartbeatRequest, RegionHeartbeatResponse};
use mnemo_proto::types::StoreId;
use mnemo_proto::{metapb, pdpb::ErrorType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::PdClient;
use crate::error::{Error, Result};

impl PdClient {
    /// A new cluster-unique id (for stores, regions, peers).
    pub async fn alloc_id(&self) -> Result<u64> {
        let resp = self
            .call(|mut c, h| async move { c.alloc_id(pdpb::AllocIdRequest { header: Some(h) }).await })
            .await?;
        Ok(resp.id)
    }

    /// Whether some node already bootstrapped the cluster.
    pub async fn is_bootstrapped(&self) -> Result<bool> {
        let resp = self
            .call(|mut c, h| async move {
                c.is_bootstrapped(pdpb::IsBootstrappedRequest { header: Some(h) }).await
            })
            .await?;
        Ok(resp.bootstrapped)
    }

    /// Bootstraps the cluster with `store` and its first `region`. Returns
    /// `false` if another node bootstrapped it first.
    pub async fn bootstrap(&self, store: metapb::Store, region: metapb::Region) -> Result<bool> {
        let req = pdpb::BootstrapRequest { header: None, store: Some(store), region: Some(region) };
        let result = self
            .call_raw(move |mut c, h| {
                let mut r = req.clone();
                r.header = Some(h);
                async move { c.bootstrap(r).await }
            })
            .await?;
        match result.header.as_ref().and_then(|h| h.error.as_ref()) {
            None => Ok(true),
            Some(e) if e.r#type == ErrorType::AlreadyBootstrapped as i32 => Ok(false),
            Some(e) => Err(Error::Pd(format!("bootstrap refused: {}", e.message))),
        }
    }

    /// Registers or updates a store (address, labels, version).
    pub async fn put_store(&self, store: metapb::Store) -> Result<()> {
        self.call(move |mut c, h| {
            let req = pdpb::PutStoreRequest { header: Some(h), store: Some(store.clone()) };
            async move { c.put_store(req).await }
        })
        .await?;
        Ok(())
    }

    /// Reports a store's statistics.
    pub async fn store_heartbeat(&self, stats: pdpb::StoreStats) -> Result<()> {
        self.call(move |mut c, h| {
            let req = pdpb::StoreHeartbeatRequest { header: Some(h), stats: Some(stats) };
            async move { c.store_heartbeat(req).await }
        })
        .await?;
        Ok(())
    }

    /// Opens the region heartbeat stream: requests from `requests` go up,
    /// PD's operator answers come back on the returned stream.
    pub async fn region_heartbeat(
        &self,
        requests: mpsc::Receiver<RegionHeartbeatRequest>,
    ) -> Result<impl Stream<Item = std::result::Result<RegionHeartbeatResponse, tonic::Status>>> {
        let mut client = self.leader_client();
        let resp = client
            .region_heartbeat(ReceiverStream::new(requests))
            .await
            .map_err(|s| Error::Pd(format!("region heartbeat stream: {s}")))?;
        Ok(resp.into_inner())
    }

    /// Looks up a store's full record.
    pub async fn get_store_meta(&self, id: StoreId) -> Result<metapb::Store> {
        let resp = self
            .call(move |mut c, h| async move {
                c.get_store(pdpb::GetStoreRequest { header: Some(h), store_id: id.0 }).await
            })
            .await?;
        resp.store.ok_or_else(|| Error::Pd(format!("store {id} not found")))
    }

    /// New region and peer ids for splitting `region` into `count + 1` parts.
    pub async fn ask_batch_split(&self, region: metapb::Region, count: u32) -> Result<Vec<pdpb::SplitId>> {
        let resp = self
            .call(move |mut c, h| {
                let req = pdpb::AskBatchSplitRequest {
                    header: Some(h),
                    region: Some(region.clone()),
                    split_count: count,
                };
                async move { c.ask_batch_split(req).await }
            })
            .await?;
        Ok(resp.ids)
    }

    /// Reports the regions a split produced (the parent's new range first).
    pub async fn report_batch_split(&self, regions: Vec<metapb::Region>) -> Result<()> {
        self.call(move |mut c, h| {
            let req = pdpb::ReportBatchSplitRequest { header: Some(h), regions: regions.clone() };
            async move { c.report_batch_split(req).await }
        })
        .await?;
        Ok(())
    }
}
