//! One accept loop per VIP listener. Each connection gets a task; its errors
//! are logged there and never stop the loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::balance::Balancer;

/// Connect attempts per connection, each on another endpoint.
pub const CONNECT_ATTEMPTS: usize = 3;

/// Counters of one outbound, read by `/metrics`.
#[derive(Debug, Default)]
pub struct OutboundStats {
    pub total: AtomicU64,
    pub active: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Connections closed at once because no endpoint was healthy.
    pub no_endpoint: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub struct ProxySettings {
    pub connect_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self { connect_timeout: Duration::from_secs(2) }
    }
}

/// Accepts on `listener` until `shutdown` resolves; connections already
/// accepted run to their end.
pub async fn serve(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    stats: Arc<OutboundStats>,
    settings: ProxySettings,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                // Out of descriptors or the like: say so and keep accepting.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.total.fetch_add(1, Ordering::Relaxed);
        let (balancer, stats) = (balancer.clone(), stats.clone());
        tokio::spawn(async move { carry(client, &balancer, &stats, settings).await });
    }
}

async fn carry(mut client: TcpStream, balancer: &Balancer, stats: &OutboundStats, settings: ProxySettings) {
    let _ = client.set_nodelay(true);
    // On the stack: no allocation per connection for the retry bookkeeping.
    let mut tried = [usize::MAX; CONNECT_ATTEMPTS];
    let mut attempts = 0;
    let (index, mut upstream) = loop {
        let next = if attempts < CONNECT_ATTEMPTS { balancer.pick(&tried[..attempts], Instant::now()) } else { None };
        let Some(i) = next else {
            stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            return; // dropping the client closes it at once
        };
        tried[attempts] = i;
        attempts += 1;
        let addr = balancer.endpoints()[i].address;
        match tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                balancer.connected(i);
                break (i, s);
            }
            _ => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                if balancer.failed(i, Instant::now()) {
                    tracing::warn!(endpoint = %addr, "endpoint ejected after consecutive connect failures");
                }
            }
        }
    };
    let _ = upstream.set_nodelay(true);
    let endpoint = &balancer.endpoints()[index];
    endpoint.active.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    // A reset on either side ends both: copy_bidirectional returns and the
    // streams drop, so nothing leaks.
    if let Ok((out, back)) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        stats.bytes_out.fetch_add(out, Ordering::Relaxed);
        stats.bytes_in.fetch_add(back, Ordering::Relaxed);
    }
    endpoint.active.fetch_sub(1, Ordering::Relaxed);
    stats.active.fetch_sub(1, Ordering::Relaxed);
}
