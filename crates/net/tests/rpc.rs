//! End-to-end tests of the transport: a real server on loopback, real and hostile clients.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_net::{own_connections_on_this_thread, serve, serve_in_process, FrameHeader, FrameKind, FrameLimits, Request, Response, RpcClient, Service, ServiceFuture, HEADER_LEN};
use ember_proto::meta::{GetAttrReq, AttrResp, Attr};
use ember_proto::Method;
use ember_types::{Status, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Echoes the inode of a GetAttr back as the attr (with the caller's port as its size), the
/// payload back as the payload, sleeps for `inode` milliseconds when the inode is below 10,000
/// (to test deadlines), answers inode 99,999 with `NotFound` and panics on inode 66,666.
struct Echo;

impl Service for Echo {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        Box::pin(async move {
            if req.method != Method::MetaGetAttr as u16 {
                return Err(Status::new(StatusCode::UnknownMethod, "no such method"));
            }
            let r: GetAttrReq = ember_net::decode_body(&req.body)?;
            if r.inode < 10_000 {
                tokio::time::sleep(Duration::from_millis(r.inode)).await;
            }
            if r.inode == 99_999 {
                return Err(Status::new(StatusCode::NotFound, "no inode 99999"));
            }
            assert_ne!(r.inode, 66_666, "inode 66666 makes the handler panic");
            let attr = Attr { inode: r.inode, size: u64::from(req.peer.port()), ..Default::default() };
            Ok(Response::with_payload(&AttrResp { attr: Some(attr), parent: None }, req.payload))
        })
    }
}

async fn start() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Arc::new(Echo), FrameLimits::default()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_on_one_connection_get_their_own_replies() {
    let addr = start().await;
    let client = Arc::new(RpcClient::new(addr));
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let inode = 10_000 + i;
            let payload = Bytes::from(vec![i as u8; (i as usize) * 100]);
            let (resp, back) = c.call(&GetAttrReq { inode }, payload.clone()).await.unwrap();
            assert_eq!(resp.attr.unwrap().inode, inode);
            assert_eq!(back, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn deadline_expires_as_timeout() {
    let addr = start().await;
    let client = RpcClient::new(addr).with_timeout(Duration::from_millis(100));
    let err = client.unary(&GetAttrReq { inode: 2_000 }).await.unwrap_err();
    assert_eq!(err.code, StatusCode::Timeout);
    // The connection stays usable after a timed-out call.
    assert_eq!(client.unary(&GetAttrReq { inode: 10_001 }).await.unwrap().attr.unwrap().inode, 10_001);
}

#[tokio::test]
async fn unknown_method_is_an_error_status_not_a_dropped_connection() {
    let addr = start().await;
    let client = RpcClient::new(addr);
    let err = client
        .call_raw(0x7777, Bytes::new(), Bytes::new(), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err.code, StatusCode::UnknownMethod);
    assert!(client.unary(&GetAttrReq { inode: 10_002 }).await.is_ok());
}

async fn read_reply_or_close(s: &mut TcpStream) -> Option<FrameHeader> {
    let mut hb = [0u8; HEADER_LEN];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hb)).await {
        Ok(Ok(_)) => FrameHeader::decode(&hb).ok(),
        _ => None,
    }
}

#[tokio::test]
async fn hostile_clients_are_answered_or_dropped_and_others_keep_working() {
    let addr = start().await;
    let good = RpcClient::new(addr.clone());

    // Garbage bytes.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&[0xAB; 100]).await.unwrap();
    let reply = read_reply_or_close(&mut s).await;
    assert!(reply.is_none_or(|h| h.status == StatusCode::BadFrame as u16));

    // A frame announcing a 4 GiB payload.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut h = FrameHeader::for_data(FrameKind::Request, Method::MetaGetAttr as u16, 9, b"", b"");
    h.payload_len = u32::MAX;
    s.write_all(&h.encode()).await.unwrap();
    let reply = read_reply_or_close(&mut s).await.expect("an error reply");
    assert_eq!(reply.status, StatusCode::FrameTooLarge as u16);
    assert_eq!(reply.request_id, 9);

    // A truncated frame, then the client goes away.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let h = FrameHeader::for_data(FrameKind::Request, Method::MetaGetAttr as u16, 1, b"abcdef", b"");
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    drop(s);

    // A corrupted payload gets a checksum error for that request only.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let mut h = FrameHeader::for_data(FrameKind::Request, Method::MetaGetAttr as u16, 5, b"", b"payload");
    h.payload_crc ^= 1;
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(b"payload").await.unwrap();
    let reply = read_reply_or_close(&mut s).await.expect("an error reply");
    assert_eq!(reply.status, StatusCode::ChecksumMismatch as u16);

    assert_eq!(good.unary(&GetAttrReq { inode: 10_003 }).await.unwrap().attr.unwrap().inode, 10_003);
}

#[tokio::test]
async fn client_reconnects_after_a_dropped_connection() {
    // First a listener that accepts and hangs up at once, then a real server on the same port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = RpcClient::new(addr.to_string()).with_timeout(Duration::from_secs(2));
    let rude = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        drop(s);
        listener
    });
    let err = client.unary(&GetAttrReq { inode: 10_005 }).await.unwrap_err();
    assert_eq!(err.code, StatusCode::ConnectionClosed);
    let listener = rude.await.unwrap();
    tokio::spawn(serve(listener, Arc::new(Echo), FrameLimits::default()));
    let resp = client.unary(&GetAttrReq { inode: 10_006 }).await.unwrap();
    assert_eq!(resp.attr.unwrap().inode, 10_006);
}

/// Runs `f` on a plain thread that asked for its own connections, as a FUSE worker does; `f`
/// gets a call of `unary_here` that returns the caller's port as the server saw it.
fn on_own_thread<T: Send + 'static>(
    client: Arc<RpcClient>,
    f: impl FnOnce(&dyn Fn(u64) -> Result<u64, StatusCode>) -> T + Send + 'static,
) -> T {
    let rt = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        own_connections_on_this_thread();
        let call = |inode| {
            let resp = rt.block_on(client.unary_here(&GetAttrReq { inode })).map_err(|e| e.code)?;
            let attr = resp.attr.unwrap();
            assert_eq!(attr.inode, inode);
            Ok(attr.size)
        };
        f(&call)
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_with_its_own_connection_keeps_it_and_redials_after_a_timeout() {
    let addr = start().await;
    let client = Arc::new(RpcClient::new(addr).with_timeout(Duration::from_millis(300)));
    let shared = client.unary_here(&GetAttrReq { inode: 10_000 }).await.unwrap().attr.unwrap().size;
    on_own_thread(client, move |call| {
        let own = call(10_001).unwrap();
        assert_ne!(own, shared, "a runtime task uses the shared connection");
        assert_eq!(call(10_002), Ok(own), "the thread keeps its connection");
        assert_eq!(call(99_999), Err(StatusCode::NotFound), "an error reply is the server's status");
        assert_eq!(call(10_003), Ok(own), "an error reply keeps the connection");
        assert_eq!(call(2_000), Err(StatusCode::Timeout));
        // The server answers the call that timed out now; a reused connection would hand that
        // late reply to the next call.
        std::thread::sleep(Duration::from_millis(2_200));
        assert!(call(10_004).is_ok());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_whose_server_is_gone_gets_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let client = Arc::new(RpcClient::new(addr));
    assert_eq!(on_own_thread(client, |call| call(10_001)), Err(StatusCode::Unavailable));
}

/// Answers one GetAttr per connection, then closes it, as a server that restarts between two
/// calls does.
async fn start_one_reply_per_connection() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut hb = [0u8; HEADER_LEN];
            s.read_exact(&mut hb).await.unwrap();
            let h = FrameHeader::decode(&hb).unwrap();
            let mut body = vec![0u8; h.body_len as usize];
            s.read_exact(&mut body).await.unwrap();
            let req: GetAttrReq = ember_net::decode_body(&body).unwrap();
            let resp = prost::Message::encode_to_vec(&AttrResp { attr: Some(Attr { inode: req.inode, ..Default::default() }), parent: None });
            let header = FrameHeader::for_data(FrameKind::Response, h.method, h.request_id, &resp, &[]);
            s.write_all(&header.encode()).await.unwrap();
            s.write_all(&resp).await.unwrap();
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_while_idle_is_redialed_before_sending() {
    let client = Arc::new(RpcClient::new(start_one_reply_per_connection().await));
    let calls = on_own_thread(client, |call| {
        let first = call(10_001);
        // Idle long enough for the server's close to arrive.
        std::thread::sleep(Duration::from_millis(100));
        (first, call(10_002))
    });
    assert!(calls.0.is_ok() && calls.1.is_ok(), "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal_and_the_server_keeps_serving() {
    let addr = start().await;
    let client = RpcClient::new(addr);
    assert_eq!(client.unary(&GetAttrReq { inode: 66_666 }).await.unwrap_err().code, StatusCode::Internal);
    assert_eq!(client.unary(&GetAttrReq { inode: 10_001 }).await.unwrap().attr.unwrap().inode, 10_001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_this_process_is_called_without_a_socket_while_registered() {
    let addr = start().await;
    // Echo answers with the caller's port: the server saw a real connection unless it is 0.
    let client = Arc::new(RpcClient::new(addr.clone()).with_timeout(Duration::from_millis(300)));
    let over_tcp = client.unary(&GetAttrReq { inode: 10_000 }).await.unwrap().attr.unwrap().size;
    assert_ne!(over_tcp, 0);

    let local = serve_in_process(&addr, Arc::new(Echo));
    let payload = Bytes::from_static(b"payload, as on the wire");
    let (resp, back) = client.call(&GetAttrReq { inode: 10_001 }, payload.clone()).await.unwrap();
    assert_eq!((resp.attr.unwrap().size, back), (0, payload));
    let err = |inode| {
        let client = client.clone();
        async move { client.unary(&GetAttrReq { inode }).await.unwrap_err().code }
    };
    assert_eq!(err(99_999).await, StatusCode::NotFound, "an error is the service's status");
    assert_eq!(err(2_000).await, StatusCode::Timeout, "the caller's deadline applies");
    assert_eq!(err(66_666).await, StatusCode::Internal, "a panic is an error, not the caller's");
    let other = Arc::new(RpcClient::new("127.0.0.1:1"));
    assert_eq!(other.unary(&GetAttrReq { inode: 10_002 }).await.unwrap_err().code, StatusCode::Unavailable, "other addresses still dial");
    let own = on_own_thread(client.clone(), |call| call(10_003));
    assert_eq!(own, Ok(0), "a thread with its own connections calls in process too");

    drop(local);
    assert_ne!(client.unary(&GetAttrReq { inode: 10_004 }).await.unwrap().attr.unwrap().size, 0);
}

/// Answers whether `blocking_brief` ran its work on the thread that polled the request (as
/// the attr's size, 1 or 0); inode 1 first sleeps 300 ms, holding its connection's slot.
struct WhereBrief;

impl Service for WhereBrief {
    fn call(self: Arc<Self>, req: Request) -> ServiceFuture {
        Box::pin(async move {
            let r: GetAttrReq = ember_net::decode_body(&req.body)?;
            if r.inode == 1 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let polled_on = std::thread::current().id();
            let ran_on = ember_net::blocking_brief(|| std::thread::current().id()).await.unwrap();
            let attr = Attr { inode: r.inode, size: u64::from(ran_on == polled_on), ..Default::default() };
            Ok(Response::msg(&AttrResp { attr: Some(attr), parent: None }))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brief_blocking_work_runs_in_place_only_for_a_request_alone_on_its_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(serve(listener, Arc::new(WhereBrief), FrameLimits::default()));
    let client = Arc::new(RpcClient::new(addr));
    let in_place = |resp: AttrResp| resp.attr.unwrap().size == 1;
    assert!(in_place(client.unary(&GetAttrReq { inode: 2 }).await.unwrap()), "a request alone ran its work elsewhere");
    let slow = {
        let c = client.clone();
        tokio::spawn(async move { c.unary(&GetAttrReq { inode: 1 }).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!in_place(client.unary(&GetAttrReq { inode: 3 }).await.unwrap()), "a request beside another blocked its connection");
    // The slow one's work came after its wait, no longer in the poll that found it alone.
    assert!(!in_place(slow.await.unwrap()));
    assert!(in_place(client.unary(&GetAttrReq { inode: 4 }).await.unwrap()));
}
