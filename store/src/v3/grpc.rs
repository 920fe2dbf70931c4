//! The v3 gRPC services (KV, Watch, Lease, Cluster, Maintenance) over [`V3Api`].

use super::api::{GRPC_OVERHEAD_BYTES, V3Api, watch_range};
use super::error::V3Error;
use super::pb::etcdserverpb::{
    self as pb, cluster_server, kv_server, lease_server, maintenance_server, watch_create_request,
    watch_request, watch_server,
};
use super::watch::{Delivery, WatcherSpec, filter};
use std::collections::HashSet;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type GrpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Snapshot chunks sent per message.
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;

fn ok<T>(r: Result<T, V3Error>) -> GrpcResult<T> {
    r.map(Response::new).map_err(Status::from)
}

/// All v3 services as one axum router (the gRPC paths `/etcdserverpb.KV/Range`, …).
pub fn router(api: V3Api) -> axum::Router {
    let limit = api.opts.max_request_bytes + GRPC_OVERHEAD_BYTES;
    tonic::service::Routes::new(
        kv_server::KvServer::new(api.clone()).max_decoding_message_size(limit),
    )
    .add_service(watch_server::WatchServer::new(api.clone()).max_decoding_message_size(limit))
    .add_service(lease_server::LeaseServer::new(api.clone()).max_decoding_message_size(limit))
    .add_service(cluster_server::ClusterServer::new(api.clone()).max_decoding_message_size(limit))
    .add_service(maintenance_server::MaintenanceServer::new(api).max_decoding_message_size(limit))
    .into_axum_router()
}

#[tonic::async_trait]
impl kv_server::Kv for V3Api {
    async fn range(&self, r: Request<pb::RangeRequest>) -> GrpcResult<pb::RangeResponse> {
        ok(V3Api::range(self, r.get_ref()).await)
    }
    async fn put(&self, r: Request<pb::PutRequest>) -> GrpcResult<pb::PutResponse> {
        ok(V3Api::put(self, r.get_ref()).await)
    }
    async fn delete_range(
        &self,
        r: Request<pb::DeleteRangeRequest>,
    ) -> GrpcResult<pb::DeleteRangeResponse> {
        ok(V3Api::delete_range(self, r.get_ref()).await)
    }
    async fn txn(&self, r: Request<pb::TxnRequest>) -> GrpcResult<pb::TxnResponse> {
        ok(V3Api::txn(self, r.get_ref()).await)
    }
    async fn compact(
        &self,
        r: Request<pb::CompactionRequest>,
    ) -> GrpcResult<pb::CompactionResponse> {
        ok(V3Api::compact(self, r.get_ref()).await)
    }
}

#[tonic::async_trait]
impl lease_server::Lease for V3Api {
    async fn lease_grant(
        &self,
        r: Request<pb::LeaseGrantRequest>,
    ) -> GrpcResult<pb::LeaseGrantResponse> {
        ok(V3Api::lease_grant(self, r.get_ref()).await)
    }
    async fn lease_revoke(
        &self,
        r: Request<pb::LeaseRevokeRequest>,
    ) -> GrpcResult<pb::LeaseRevokeResponse> {
        ok(V3Api::lease_revoke(self, r.get_ref()).await)
    }
    type LeaseKeepAliveStream = BoxStream<pb::LeaseKeepAliveResponse>;
    async fn lease_keep_alive(
        &self,
        r: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> GrpcResult<Self::LeaseKeepAliveStream> {
        let api = self.clone();
        let out = futures_util::StreamExt::then(r.into_inner(), move |req| {
            let api = api.clone();
            async move {
                let req = req?;
                let (header, ttl) = api.lease_keep_alive(req.id).await?;
                Ok(pb::LeaseKeepAliveResponse {
                    header,
                    id: req.id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(out)))
    }
    async fn lease_time_to_live(
        &self,
        r: Request<pb::LeaseTimeToLiveRequest>,
    ) -> GrpcResult<pb::LeaseTimeToLiveResponse> {
        Ok(Response::new(V3Api::lease_time_to_live(self, r.get_ref())))
    }
    async fn lease_leases(
        &self,
        _r: Request<pb::LeaseLeasesRequest>,
    ) -> GrpcResult<pb::LeaseLeasesResponse> {
        Ok(Response::new(V3Api::lease_leases(self)))
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for V3Api {
    async fn member_add(
        &self,
        r: Request<pb::MemberAddRequest>,
    ) -> GrpcResult<pb::MemberAddResponse> {
        let r = r.into_inner();
        let m = self
            .engine
            .add_member(r.peer_ur_ls, r.is_learner)
            .await
            .map_err(member_error)?;
        Ok(Response::new(pb::MemberAddResponse {
            header: self.member_header(),
            member: Some(super::api::member_pb(&m)),
            members: self.members(),
        }))
    }
    async fn member_remove(
        &self,
        r: Request<pb::MemberRemoveRequest>,
    ) -> GrpcResult<pb::MemberRemoveResponse> {
        self.engine
            .remove_member(r.get_ref().id)
            .await
            .map_err(member_error)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: self.member_header(),
            members: self.members(),
        }))
    }
    async fn member_update(
        &self,
        r: Request<pb::MemberUpdateRequest>,
    ) -> GrpcResult<pb::MemberUpdateResponse> {
        let r = r.into_inner();
        self.engine
            .update_member(r.id, r.peer_ur_ls)
            .await
            .map_err(member_error)?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: self.member_header(),
            members: self.members(),
        }))
    }
    async fn member_list(
        &self,
        r: Request<pb::MemberListRequest>,
    ) -> GrpcResult<pb::MemberListResponse> {
        if r.get_ref().linearizable {
            self.engine
                .read_index()
                .await
                .map_err(|e| Status::from(super::api::engine_error(e)))?;
        }
        Ok(Response::new(V3Api::member_list(self)))
    }
    async fn member_promote(
        &self,
        r: Request<pb::MemberPromoteRequest>,
    ) -> GrpcResult<pb::MemberPromoteResponse> {
        self.engine
            .promote_member(r.get_ref().id)
            .await
            .map_err(member_error)?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: self.member_header(),
            members: self.members(),
        }))
    }
}

/// etcd's gRPC errors for refused membership changes.
fn member_error(e: crate::engine::MemberError) -> Status {
    use crate::engine::MemberError;
    match e {
        MemberError::PeerUrlExists => V3Error::PeerUrlExists.into(),
        MemberError::NotFound(_) => V3Error::MemberNotFound.into(),
        MemberError::NotLearner => V3Error::NotLearner.into(),
        MemberError::Engine(e) => super::api::engine_error(e).into(),
    }
}

impl V3Api {
    /// Membership responses carry no revision, as etcd's.
    fn member_header(&self) -> Option<pb::ResponseHeader> {
        let mut h = self.header(0);
        if let Some(h) = &mut h {
            h.revision = 0;
        }
        h
    }
}

#[tonic::async_trait]
impl maintenance_server::Maintenance for V3Api {
    async fn alarm(&self, r: Request<pb::AlarmRequest>) -> GrpcResult<pb::AlarmResponse> {
        ok(V3Api::alarm(self, r.get_ref()).await)
    }
    async fn status(&self, _r: Request<pb::StatusRequest>) -> GrpcResult<pb::StatusResponse> {
        Ok(Response::new(V3Api::status(self)))
    }
    async fn defragment(
        &self,
        _r: Request<pb::DefragmentRequest>,
    ) -> GrpcResult<pb::DefragmentResponse> {
        // The keyspace lives in memory and is compacted in place; nothing to defragment.
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }
    async fn hash(&self, _r: Request<pb::HashRequest>) -> GrpcResult<pb::HashResponse> {
        ok(V3Api::hash(self))
    }
    async fn hash_kv(&self, r: Request<pb::HashKvRequest>) -> GrpcResult<pb::HashKvResponse> {
        ok(V3Api::hash_kv(self, r.get_ref()))
    }
    type SnapshotStream = BoxStream<pb::SnapshotResponse>;
    async fn snapshot(&self, _r: Request<pb::SnapshotRequest>) -> GrpcResult<Self::SnapshotStream> {
        let engine = self.engine.clone();
        let blob = tokio::task::spawn_blocking(move || engine.backup())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let rev = self.engine.read().v3.mvcc.revision();
        let header = self.header(rev);
        let total = blob.len();
        let chunks: Vec<Result<pb::SnapshotResponse, Status>> = blob
            .chunks(SNAPSHOT_CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                let sent = (i * SNAPSHOT_CHUNK_BYTES + c.len()) as u64;
                Ok(pb::SnapshotResponse {
                    header,
                    remaining_bytes: total as u64 - sent,
                    blob: bytes::Bytes::copy_from_slice(c),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
    async fn move_leader(
        &self,
        r: Request<pb::MoveLeaderRequest>,
    ) -> GrpcResult<pb::MoveLeaderResponse> {
        let target = r.get_ref().target_id;
        let status = self.engine.status();
        let rev = self.engine.read().v3.mvcc.revision();
        if target == status.leader && status.leader == status.id {
            return Ok(Response::new(pb::MoveLeaderResponse {
                header: self.header(rev),
            }));
        }
        if status.leader != status.id {
            return Err(V3Error::NotLeader.into());
        }
        match self.engine.members().get(target) {
            Some(m) if !m.is_learner => {}
            _ => return Err(V3Error::BadLeaderTransferee.into()),
        }
        self.engine
            .transfer_leader(target)
            .map_err(|e| Status::from(super::api::engine_error(e)))?;
        // etcd waits until the transferee leads, within the request timeout.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.engine.status().leader != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(V3Error::Timeout.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(Response::new(pb::MoveLeaderResponse {
            header: self.header(rev),
        }))
    }
}

#[tonic::async_trait]
impl watch_server::Watch for V3Api {
    type WatchStream = BoxStream<pb::WatchResponse>;
    async fn watch(
        &self,
        r: Request<Streaming<pb::WatchRequest>>,
    ) -> GrpcResult<Self::WatchStream> {
        let (out, rx) = mpsc::unbounded_channel();
        let session = WatchSession::new(self.clone(), out);
        tokio::spawn(session.run(r.into_inner()));
        Ok(Response::new(Box::pin(UnboundedReceiverStream::new(rx))))
    }
}

async fn next_or_pending<S>(s: &mut Option<S>) -> Option<S::Item>
where
    S: Stream + Unpin,
{
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// One client watch stream: creates and cancels watchers, forwards their events.
pub(crate) struct WatchSession {
    api: V3Api,
    stream: u64,
    out: mpsc::UnboundedSender<Result<pb::WatchResponse, Status>>,
    deliveries_tx: mpsc::UnboundedSender<Delivery>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    active: HashSet<i64>,
    progress: HashSet<i64>,
    next_id: i64,
}

impl WatchSession {
    pub(crate) fn new(
        api: V3Api,
        out: mpsc::UnboundedSender<Result<pb::WatchResponse, Status>>,
    ) -> Self {
        let stream = api.engine.write().v3.watch.new_stream();
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        WatchSession {
            api,
            stream,
            out,
            deliveries_tx,
            deliveries,
            active: HashSet::new(),
            progress: HashSet::new(),
            next_id: 0,
        }
    }

    /// Serve the session until the client goes away. A client that half-closes its side
    /// keeps receiving events, as with etcd (only an error ends the session).
    pub(crate) async fn run<S>(mut self, inbound: S)
    where
        S: Stream<Item = Result<pb::WatchRequest, Status>> + Send + Unpin,
    {
        let mut tick = tokio::time::interval(self.api.opts.progress_notify_interval);
        tick.tick().await;
        let mut inbound = Some(inbound);
        loop {
            tokio::select! {
                msg = next_or_pending(&mut inbound) => match msg {
                    Some(Ok(req)) => self.handle(req),
                    Some(Err(_)) => break,
                    None => inbound = None,
                },
                Some(d) = self.deliveries.recv() => self.forward(d),
                _ = tick.tick() => self.progress_notify(),
                _ = self.out.closed() => break,
            }
        }
        self.api.engine.write().v3.watch.remove_stream(self.stream);
    }

    fn send(&self, resp: pb::WatchResponse) {
        let _ = self.out.send(Ok(resp));
    }

    fn forward(&self, d: Delivery) {
        let Delivery::Events {
            watch_id,
            revision,
            events,
        } = d;
        if self.active.contains(&watch_id) {
            self.send(pb::WatchResponse {
                header: self.api.header(revision),
                watch_id,
                events,
                ..Default::default()
            });
        }
    }

    fn progress_notify(&self) {
        let rev = self.api.engine.read().v3.mvcc.revision();
        for id in &self.progress {
            self.send(pb::WatchResponse {
                header: self.api.header(rev),
                watch_id: *id,
                ..Default::default()
            });
        }
    }

    fn handle(&mut self, req: pb::WatchRequest) {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c),
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                let found = self
                    .api
                    .engine
                    .write()
                    .v3
                    .watch
                    .cancel(self.stream, c.watch_id);
                self.active.remove(&c.watch_id);
                self.progress.remove(&c.watch_id);
                if found {
                    let rev = self.api.engine.read().v3.mvcc.revision();
                    self.send(pb::WatchResponse {
                        header: self.api.header(rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    });
                }
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let rev = self.api.engine.read().v3.mvcc.revision();
                self.send(pb::WatchResponse {
                    header: self.api.header(rev),
                    watch_id: -1,
                    ..Default::default()
                });
            }
            None => {}
        }
    }

    fn create(&mut self, c: pb::WatchCreateRequest) {
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.active.contains(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let mut state = self.api.engine.write();
        let rev = state.v3.mvcc.revision();
        let header = self.api.header_at(rev, state.term);
        if self.active.contains(&id) {
            drop(state);
            self.send(pb::WatchResponse {
                header,
                watch_id: id,
                created: true,
                canceled: true,
                cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                ..Default::default()
            });
            return;
        }
        let filters: Vec<i32> = c.filters.clone();
        let spec = WatcherSpec {
            stream: self.stream,
            watch_id: id,
            range: watch_range(&c.key, &c.range_end),
            no_put: filters.contains(&(watch_create_request::FilterType::Noput as i32)),
            no_delete: filters.contains(&(watch_create_request::FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
            start: rev + 1,
        };
        self.send(pb::WatchResponse {
            header,
            watch_id: id,
            created: true,
            ..Default::default()
        });
        let compacted = state.v3.mvcc.compact_revision();
        if c.start_revision > 0 && c.start_revision < compacted {
            drop(state);
            self.send(pb::WatchResponse {
                header: Some(pb::ResponseHeader::default()),
                watch_id: id,
                canceled: true,
                compact_revision: compacted,
                ..Default::default()
            });
            return;
        }
        if c.start_revision > 0 && c.start_revision <= rev {
            for changes in state.v3.mvcc.history(&spec.range, c.start_revision) {
                if let Some(events) = filter(&spec, &changes.events) {
                    let _ = self.deliveries_tx.send(Delivery::Events {
                        watch_id: id,
                        revision: changes.revision,
                        events,
                    });
                }
            }
        }
        let spec = WatcherSpec {
            start: c.start_revision.max(rev + 1),
            ..spec
        };
        state.v3.watch.register(spec, self.deliveries_tx.clone());
        drop(state);
        self.active.insert(id);
        if c.progress_notify {
            self.progress.insert(id);
        }
        self.next_id = self.next_id.max(id + 1);
    }
}
