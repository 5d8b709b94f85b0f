//! The server's connections: how many it holds in all and per peer address, and
//! which it closes to make room. A peer over its share has its own longest-idle
//! connection closed (or, when all of them are busy, a 503); when every slot is
//! taken, the connection idle longest is closed once it has been idle a moment,
//! instead of at the header timeout. So one client reopening idle connections as
//! fast as they are dropped cannot keep the others from being served.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::server::ServeLimits;

/// How often a connection waiting for a slot looks again for one to close.
const PRESSURE_TICK: Duration = Duration::from_millis(25);

/// One open connection, as the accept loop sees it.
struct Tracked {
    peer: IpAddr,
    /// Requests whose answers are not yet wholly sent.
    busy: AtomicUsize,
    /// Since when it has had no request in flight (milliseconds after the
    /// server's start): when it opened or last finished an answer.
    idle_since_ms: AtomicU64,
    /// Asked to close: no longer counted against its peer's share.
    closing: AtomicBool,
    close: Notify,
}

/// The open connections.
struct Registry {
    started: Instant,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Registry {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn add(&self, peer: IpAddr) -> (u64, Arc<Tracked>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            peer,
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            closing: AtomicBool::new(false),
            close: Notify::new(),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, tracked.clone());
        }
        (id, tracked)
    }

    fn remove(&self, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    /// Connections `peer` holds that are not closing.
    fn held_by(&self, peer: IpAddr) -> usize {
        self.open.lock().map_or(0, |open| {
            open.values()
                .filter(|c| c.peer == peer && !c.closing.load(Ordering::Relaxed))
                .count()
        })
    }

    /// Closes the connection (of `peer`, if given) that has been idle longest, if
    /// one has been idle at least `min_idle`. Whether one was asked to close.
    fn close_idlest(&self, peer: Option<IpAddr>, min_idle: Duration) -> bool {
        let now = self.now_ms();
        let min_idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let idlest = open
            .values()
            .filter(|c| {
                peer.is_none_or(|p| c.peer == p)
                    && !c.closing.load(Ordering::Relaxed)
                    && c.busy.load(Ordering::Acquire) == 0
            })
            .map(|c| (c.idle_since_ms.load(Ordering::Relaxed), c))
            .filter(|(since, _)| now.saturating_sub(*since) >= min_idle)
            .min_by_key(|(since, _)| *since);
        match idlest {
            Some((_, c)) => {
                c.closing.store(true, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// A request in flight on a connection: counted busy from its head's arrival
/// until its answer's body is dropped (sent whole, or the connection gone).
struct Busy {
    conn: Arc<Tracked>,
    registry: Arc<Registry>,
}

impl Busy {
    fn start(conn: &Arc<Tracked>, registry: &Arc<Registry>) -> Self {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Self {
            conn: conn.clone(),
            registry: registry.clone(),
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.registry.now_ms(), Ordering::Relaxed);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its request counted busy until it is dropped: a
/// long answer (the console's live stream) is not an idle connection.
struct Guarded {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The same address for a peer whether it came as IPv4 or IPv4-mapped IPv6.
fn peer_of(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

/// Answers a connection over its peer's share with 503 `too_many_connections`
/// and closes it, without reading its request.
async fn refuse(mut stream: TcpStream, per_peer: usize) {
    let body = serde_json::json!({
        "error": "too_many_connections",
        "message": format!(
            "this address holds {per_peer} connections, all of them busy; reuse one or retry"
        ),
        "request_id": uuid::Uuid::new_v4().to_string(),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A peer that does not read its answer is not waited for.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves; then
/// stops accepting, lets requests in flight finish, and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let per_peer = limits.max_connections_per_peer.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry {
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        open: Mutex::new(HashMap::new()),
    });
    let (stopping, stop) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not stop serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer = peer_of(addr);
        // Over its share: the peer's own idlest connection makes room, else 503.
        if registry.held_by(peer) >= per_peer && !registry.close_idlest(Some(peer), Duration::ZERO)
        {
            tokio::spawn(refuse(stream, per_peer));
            continue;
        }
        let Some(slot) = slot(&slots, &registry, limits.idle_under_pressure, &mut shutdown).await
        else {
            break;
        };
        let _ = stream.set_nodelay(true);
        let (id, conn) = registry.add(peer);
        let service = {
            let (router, conn, registry) = (router.clone(), conn.clone(), registry.clone());
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let busy = Busy::start(&conn, &registry);
                let mut router = router.clone();
                async move {
                    // The router is always ready (axum's `Router::poll_ready`).
                    let response =
                        tower::Service::<hyper::Request<Incoming>>::call(&mut router, request)
                            .await?;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Body::new(Guarded { inner, _busy: busy })),
                    )
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let (registry, mut stop) = (registry.clone(), stop.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // A client that goes away or times out ends its connection; nothing to report.
            tokio::select! {
                _ = connection.as_mut() => {}
                () = conn.close.notified() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                () = async {
                    // The value's guard is dropped here, not held across the select.
                    let _ = stop.wait_for(|stopping| *stopping).await;
                } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            registry.remove(id);
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection holds a slot until it ends: all slots back, all ended.
    let _ = slots
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
    Ok(())
}

/// A free slot for a new connection. When every slot is taken, the connection
/// idle longest is closed as soon as it has been idle `idle_under_pressure`.
/// `None` when `shutdown` resolves first.
async fn slot(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    idle_under_pressure: Duration,
    shutdown: &mut Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(slot);
    }
    let mut asked = false;
    loop {
        if !asked {
            asked = registry.close_idlest(None, idle_under_pressure);
        }
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            () = tokio::time::sleep(PRESSURE_TICK), if !asked => {}
            // One closing connection frees one slot: ask again only if it has not.
            () = tokio::time::sleep(PRESSURE_TICK * 8), if asked => asked = false,
            () = shutdown.as_mut() => return None,
        }
    }
}
