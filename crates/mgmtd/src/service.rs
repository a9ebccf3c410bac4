//! RPC front of mgmtd: decodes requests and calls `ClusterState`.

use std::sync::Arc;

use ember_net::{decode_body, Request, Response, Service, ServiceFuture};
use ember_proto::mgmtd::*;
use ember_proto::Method;
use ember_types::{Status, StatusCode};

use crate::ClusterState;

pub struct MgmtdService {
    state: Arc<ClusterState>,
}

impl MgmtdService {
    pub fn new(state: Arc<ClusterState>) -> Self {
        MgmtdService { state }
    }

    fn dispatch(&self, req: Request) -> Result<Response, Status> {
        let method = Method::from_u16(req.method);
        match method {
            Some(Method::MgmtdRegisterNode) => {
                let r: RegisterNodeReq = decode_body(&req.body)?;
                let (node_id, target_ids) = self.state.register(&r).map_err(|e| e.status())?;
                Ok(Response::msg(&RegisterNodeResp { node_id, target_ids }))
            }
            Some(Method::MgmtdHeartbeat) => {
                let r: HeartbeatReq = decode_body(&req.body)?;
                let routing_version = self.state.heartbeat(&r).map_err(|e| e.status())?;
                let lease_ms = self.state.lease().as_millis() as u64;
                Ok(Response::msg(&HeartbeatResp { routing_version, lease_ms }))
            }
            Some(Method::MgmtdGetRouting) => {
                let r: GetRoutingReq = decode_body(&req.body)?;
                let routing = self.state.routing(r.known_version);
                Ok(Response::msg(&GetRoutingResp { changed: routing.is_some(), routing }))
            }
            Some(Method::MgmtdExtendClientSession) => {
                let r: ExtendClientSessionReq = decode_body(&req.body)?;
                self.state.extend_session(r.client_id, r.description);
                let session_timeout_ms = self.state.session_timeout().as_millis() as u64;
                Ok(Response::msg(&ExtendClientSessionResp { session_timeout_ms }))
            }
            Some(Method::MgmtdListClientSessions) => {
                let (sessions, complete) = self.state.client_sessions();
                Ok(Response::msg(&ListClientSessionsResp { sessions, complete }))
            }
            Some(Method::MgmtdCreateChain) => {
                let r: CreateChainReq = decode_body(&req.body)?;
                let chain_id = self.state.create_chain(&r.targets).map_err(|e| e.status())?;
                Ok(Response::msg(&CreateChainResp { chain_id }))
            }
            Some(Method::MgmtdOfflineTarget) => {
                let r: OfflineTargetReq = decode_body(&req.body)?;
                self.state.offline_target(r.target_id, r.chain_version).map_err(|e| e.status())?;
                Ok(Response::msg(&OfflineTargetResp {}))
            }
            _ => Err(Status::new(StatusCode::UnknownMethod, format!("mgmtd has no method {:#06x}", req.method))),
        }
    }
}

impl Service for MgmtdService {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        // State changes commit to the KV synchronously; keep them off the async workers.
        Box::pin(async move {
            ember_net::blocking(move || self.dispatch(req))
                .await
                .map_err(|e| Status::internal(format!("mgmtd handler failed: {e}")))?
        })
    }
}
