//! Hands summary parts to the sampler owning their rollup: the cluster's
//! [`SummaryRouter`] for the settler, so each rolled-up series has one writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use otel_tail_shared::otlp::{self, Signal};
use otel_tail_shared::split::RouteKey;
use prost::Message;

use super::peer::Mark;
use super::plan::Topology;
use super::{Cluster, partition};
use crate::settle::{SummaryError, SummaryRouter};

/// Where summary parts belong on the current ring, and the peer calls that hand them
/// over (see [`crate::settle::SummaryRouter`]).
pub(super) struct RingSummaryRouter {
    pub(super) cluster: Arc<Cluster>,
    pub(super) runtime: tokio::runtime::Handle,
}

/// Longest wait for a peer to take summary data before it is rolled up here instead.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(2);

impl RingSummaryRouter {
    /// The forward address of the owner of `key`, unless that is this node.
    fn remote_owner(&self, topology: &Topology, key: RouteKey<'_>) -> Option<SocketAddr> {
        let owner = topology.owner_index(key)?;
        let node = &topology.ring.members()[owner];
        (node != &self.cluster.local)
            .then(|| topology.forward.get(node).copied())
            .flatten()
    }

    fn send(
        &self,
        owner: SocketAddr,
        signal: Signal,
        body: Bytes,
        items: usize,
    ) -> Result<(), SummaryError> {
        self.runtime
            .block_on(self.cluster.peers.send(
                owner,
                signal,
                body,
                items,
                Mark::Summary,
                SUMMARY_TIMEOUT,
            ))
            .map(|_| ())
            .map_err(|source| SummaryError::Forward { owner, source })
    }
}

impl SummaryRouter for RingSummaryRouter {
    fn owner_of_logs(&self, rl: &ResourceLogs) -> Option<SocketAddr> {
        let mut key = Vec::new();
        otel_tail_shared::split::resource_identity_key(rl.resource.as_ref(), &mut key);
        self.remote_owner(&self.cluster.topology(), RouteKey::Key(&key))
    }

    fn metrics_by_owner(&self, rm: ResourceMetrics) -> Vec<(Option<SocketAddr>, ResourceMetrics)> {
        let topology = self.cluster.topology();
        let Some(local) = topology.index_of(&self.cluster.local) else {
            return vec![(None, rm)];
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![rm],
        };
        partition::decoded_metrics_by_owner(request, |k| topology.owner_index(k).unwrap_or(local))
            .into_iter()
            .flat_map(|(owner, part)| {
                let node = &topology.ring.members()[owner];
                let addr = (owner != local)
                    .then(|| topology.forward.get(node).copied())
                    .flatten();
                part.resource_metrics.into_iter().map(move |rm| (addr, rm))
            })
            .collect()
    }

    fn send_logs(
        &self,
        owner: SocketAddr,
        request: ExportLogsServiceRequest,
    ) -> Result<(), SummaryError> {
        let items = otlp::log_count(&request);
        self.send(owner, Signal::Logs, request.encode_to_vec().into(), items)
    }

    fn send_metrics(
        &self,
        owner: SocketAddr,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), SummaryError> {
        let items = otlp::data_point_count(&request);
        self.send(
            owner,
            Signal::Metrics,
            request.encode_to_vec().into(),
            items,
        )
    }
}
