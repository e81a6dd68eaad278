//! Moving bytes between the two sockets of a connection.
//!
//! On Linux the bytes never enter user space: each direction splices from
//! its socket into a pipe and from the pipe into the other socket. The pipe
//! is made on the first byte, so an idle connection holds no buffer at all,
//! and it grows from 64 KiB to 1 MiB once a direction has carried 1 MiB, so
//! bulk flows move in large steps while small request/response traffic stays
//! cheap. Elsewhere a plain `copy_bidirectional` does the job.
//!
//! A reset or error on either side ends both directions; the caller then
//! drops both sockets, so nothing outlives the connection. An end of stream
//! on one side half-closes the other, as TCP does.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Byte counters of a connection's two directions and its last activity.
#[derive(Debug)]
pub struct Flow<'a> {
    /// client -> upstream
    pub sent: &'a AtomicU64,
    /// upstream -> client
    pub received: &'a AtomicU64,
    pub activity: &'a Activity,
}

/// When a connection last moved a byte, for the idle timeout: milliseconds
/// after `start`, atomic because both directions touch it.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The moment the connection becomes idle-expired, as of now.
    pub fn idle_deadline(&self, idle: std::time::Duration) -> Instant {
        self.start + std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Carries bytes both ways until both sides ended, or either failed.
pub async fn carry(client: &TcpStream, upstream: &TcpStream, flow: &Flow<'_>) -> io::Result<()> {
    tokio::try_join!(
        one_way(client, upstream, flow.sent, flow.activity),
        one_way(upstream, client, flow.received, flow.activity)
    )?;
    Ok(())
}

fn half_close(to: &TcpStream) {
    // The peer may be gone already; the other direction reports that.
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
}

#[cfg(target_os = "linux")]
mod splice {
    use std::io;
    use std::os::fd::OwnedFd;

    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// The pipe grows once a direction has carried this much.
    const GROW_AFTER: u64 = 1 << 20;
    const LARGE_PIPE: i32 = 1 << 20;

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Self> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            Ok(Self { read, write, capacity: 64 * 1024 })
        }

        /// Best effort: the system's `pipe-max-size` may refuse.
        fn grow(&mut self) {
            if let Ok(size) = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(LARGE_PIPE)) {
                self.capacity = usize::try_from(size).unwrap_or(self.capacity);
            }
        }
    }

    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
    }

    pub(super) async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        counter: &std::sync::atomic::AtomicU64,
        activity: &super::Activity,
    ) -> io::Result<()> {
        let mut pipe: Option<Pipe> = None;
        let mut carried: u64 = 0;
        loop {
            from.readable().await?;
            let p = match &mut pipe {
                Some(p) => p,
                None => pipe.insert(Pipe::new()?),
            };
            let moved = from.try_io(Interest::READABLE, || {
                splice(from, None, &p.write, None, p.capacity, flags()).map_err(io::Error::from)
            });
            let mut pending = match moved {
                Ok(0) => {
                    super::half_close(to);
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            let n = pending as u64;
            while pending > 0 {
                match to.try_io(Interest::WRITABLE, || {
                    splice(&p.read, None, to, None, pending, flags()).map_err(io::Error::from)
                }) {
                    Ok(m) => pending -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                    Err(e) => return Err(e),
                }
            }
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            activity.touch();
            if carried < GROW_AFTER && carried + n >= GROW_AFTER {
                p.grow();
            }
            carried += n;
        }
    }
}

#[cfg(target_os = "linux")]
use splice::one_way;

/// Portable fallback: reads into a small buffer made on the first byte.
#[cfg(not(target_os = "linux"))]
async fn one_way(from: &TcpStream, to: &TcpStream, counter: &AtomicU64, activity: &Activity) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.is_empty() {
            buf.resize(16 * 1024, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                half_close(to);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut done = 0;
        while done < n {
            to.writable().await?;
            match to.try_write(&buf[done..n]) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn carries_both_ways_counts_bytes_and_half_closes() {
        let (mut app, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let (sent, received, activity) = (AtomicU64::new(0), AtomicU64::new(0), Activity::new());
        let proxy = tokio::spawn(async move {
            let flow = Flow { sent: &sent, received: &received, activity: &activity };
            carry(&client, &upstream, &flow).await.map(|()| (sent.into_inner(), received.into_inner()))
        });
        let big = vec![7u8; 3 << 20];
        let writer = tokio::spawn(async move {
            app.write_all(&big).await.unwrap();
            app.shutdown().await.unwrap();
            let mut back = Vec::new();
            app.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 3 << 20);
        server.write_all(b"ok").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"ok");
        assert_eq!(proxy.await.unwrap().unwrap(), (3 << 20, 2));
    }

    #[tokio::test]
    async fn a_reset_ends_both_sides() {
        let (app, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let (sent, received, activity) = (AtomicU64::new(0), AtomicU64::new(0), Activity::new());
        let proxy = tokio::spawn(async move {
            let flow = Flow { sent: &sent, received: &received, activity: &activity };
            let r = carry(&client, &upstream, &flow).await;
            drop((client, upstream));
            r
        });
        socket2::SockRef::from(&app).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(app); // RST
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        assert!(proxy.await.unwrap().is_err(), "the reset is reported");
    }
}
