//! Wake-ups: a datagram that tells the sidecar its mesh changed, so it checks
//! the table now instead of at its next poll.
//!
//! A wake-up is one UDP datagram, `loopmesh-wake 1 <mesh> <change key>`,
//! sent by the view-notify function (`functions/view-notify`). It
//! carries no data to trust: the sidecar only checks the table (the
//! authority) sooner, so a forged one costs one half-unit read, and checks
//! that wake-ups cause are at most two a second however many arrive. One for
//! another mesh, or malformed, is counted and ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use loopmesh_shared::view::{WAKE_MAGIC as MAGIC, WAKE_PORT as DEFAULT_PORT, wake_datagram as datagram};

/// The least time between two checks caused by wake-ups.
pub const MIN_GAP: Duration = Duration::from_millis(500);

/// Read units a mesh's partition may spend on the checks one wake-up causes,
/// per second: under DynamoDB's 3,000 per partition, with room for writes'
/// reads and the first reads of starting tasks.
pub const READ_BUDGET_PER_S: f64 = 2_500.0;

/// Read units one check after a change costs a sidecar (`docs/view.md`).
pub const CHECK_READ_UNITS: f64 = 2.0;

/// The window over which the sidecars of a mesh of `members` spread the
/// checks one wake-up causes (each at a random moment in it): 250 ms for a
/// small mesh, 0.8 s for 1,000 sidecars, 8 s for 10,000, so the partition
/// serves them within its limit.
pub fn spread(members: usize) -> Duration {
    Duration::from_secs_f64(members as f64 * CHECK_READ_UNITS / READ_BUDGET_PER_S).max(Duration::from_millis(250))
}

/// What wake-ups the sidecar saw, for `/metrics`, and the signal the
/// refresh loop waits on.
#[derive(Debug, Default)]
pub struct Wakes {
    pub notify: Notify,
    pub received: AtomicU64,
    pub ignored: AtomicU64,
    /// A wake-up arrived since the last time the poll found a change that
    /// none had announced: the sidecar may poll at its safety interval.
    trusted: std::sync::atomic::AtomicBool,
}

impl Wakes {
    /// Whether wake-ups are arriving: one came, and no change has been found
    /// since without one.
    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// The poll found a change no wake-up announced.
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::Relaxed);
    }

    /// Takes one datagram: `true` when it is a wake-up for `mesh`.
    pub fn accept(&self, data: &[u8], mesh: &str) -> bool {
        let text = std::str::from_utf8(data).unwrap_or_default();
        let mut words = text.split_ascii_whitespace();
        let ok = words.next() == Some(MAGIC) && words.next() == Some("1") && words.next() == Some(mesh);
        if ok {
            self.received.fetch_add(1, Ordering::Relaxed);
            self.trusted.store(true, Ordering::Relaxed);
            self.notify.notify_one();
        } else {
            self.ignored.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// Binds the wake-up socket; a sidecar that cannot (the port is taken)
/// polls at its normal interval instead, and says so.
pub async fn bind(address: SocketAddr) -> Option<UdpSocket> {
    match UdpSocket::bind(address).await {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::warn!(%address, error = %e, "cannot listen for wake-ups; polling at the refresh interval instead");
            None
        }
    }
}

/// Receives wake-ups until `stop`.
pub async fn listen(socket: UdpSocket, mesh: String, wakes: Arc<Wakes>, stop: CancellationToken) {
    let mut buf = [0u8; 512];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, from)) => {
                if !wakes.accept(&buf[..n], &mesh) {
                    tracing::debug!(%from, "ignored a datagram that is not a wake-up for this mesh");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "wake-up socket error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_keeps_a_woken_mesh_under_the_partition_limit() {
        assert_eq!(spread(10), Duration::from_millis(250));
        assert_eq!(spread(1_000), Duration::from_millis(800));
        assert_eq!(spread(10_000), Duration::from_secs(8));
        for members in [10usize, 1_000, 10_000, 50_000] {
            let per_second = members as f64 * CHECK_READ_UNITS / spread(members).as_secs_f64();
            assert!(per_second <= READ_BUDGET_PER_S, "{members}: {per_second} RU/s");
        }
    }

    #[test]
    fn only_a_wake_up_for_this_mesh_counts() {
        let w = Wakes::default();
        assert!(!w.trusted());
        assert!(w.accept(datagram("prod", "CHG#0000000000001#00").as_bytes(), "prod"));
        assert!(!w.accept(datagram("dev", "CHG#1").as_bytes(), "prod"));
        assert!(!w.accept(b"loopmesh-wake 2 prod x", "prod"));
        assert!(!w.accept(&[0xff, 0xfe], "prod"));
        assert_eq!((w.received.load(Ordering::Relaxed), w.ignored.load(Ordering::Relaxed)), (1, 3));
        assert!(w.trusted());
        w.distrust();
        assert!(!w.trusted());
    }
}
