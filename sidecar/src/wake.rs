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
