//! Moving bytes between the two sockets of a connection.
//!
//! On Linux a direction starts by copying through a per-thread buffer: a
//! request or response costs a read and a write and no descriptor. The
//! first read that fills that buffer, or a write the peer cannot take whole,
//! marks a bulk flow, and from then on the bytes never enter user space:
//! they are spliced from the socket into a pipe and from the pipe into the
//! other socket, the two halves overlapping. The pipe grows from 64 KiB to
//! 1 MiB once the direction has carried 1 MiB. No connection holds a
//! user-space buffer while it waits. Elsewhere a plain buffered copy does
//! the job.
//!
//! A reset or error on either side ends both directions; the caller then
//! drops both sockets, so nothing outlives the connection. An end of stream
//! on one side half-closes the other, as TCP does.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpStream;
use tokio::time::Instant;

/// One side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Client,
    Upstream,
}

/// An I/O error of one side, so that what ended a connection is told
/// apart: the upstream failing feeds its ejection, the client leaving does not.
#[derive(Debug)]
struct Failed {
    peer: Peer,
    error: io::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.peer {
            Peer::Client => write!(f, "client: {}", self.error),
            Peer::Upstream => write!(f, "upstream: {}", self.error),
        }
    }
}

impl std::error::Error for Failed {}

/// Tags `error` as `peer`'s.
fn at(peer: Peer, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), Failed { peer, error })
}

/// Which side an error of [`carry`] or [`carry_streams`] came from
/// (`None`: the sidecar's own, such as no pipe).
pub fn failed_peer(e: &io::Error) -> Option<Peer> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Failed>()).map(|f| f.peer)
}

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

    pub fn touch(&self) {
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

/// What one direction reports to, and shares with, the other.
struct Side<'a> {
    /// Who the bytes come from, and who they go to.
    from: Peer,
    to: Peer,
    carried: &'a AtomicU64,
    activity: &'a Activity,
    /// Set by the first direction to end.
    one_ended: &'a AtomicBool,
}

impl Side<'_> {
    fn moved(&self, n: usize) {
        self.carried.fetch_add(n as u64, Ordering::Relaxed);
        self.activity.touch();
    }

    /// The direction read the end of its stream: the first to get here
    /// half-closes `to`, as TCP does. The second need not: the connection
    /// is dropped right after, and its close sends the FIN.
    fn end(&self, to: &TcpStream) {
        if !self.one_ended.swap(true, Ordering::Relaxed) {
            // The peer may be gone already; the other direction reports that.
            let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
    }
}

/// Carries bytes both ways until both sides ended, or either failed.
pub async fn carry(client: &TcpStream, upstream: &TcpStream, flow: &Flow<'_>) -> io::Result<()> {
    let one_ended = AtomicBool::new(false);
    let (sent, received) = (
        Side {
            from: Peer::Client,
            to: Peer::Upstream,
            carried: flow.sent,
            activity: flow.activity,
            one_ended: &one_ended,
        },
        Side {
            from: Peer::Upstream,
            to: Peer::Client,
            carried: flow.received,
            activity: flow.activity,
            one_ended: &one_ended,
        },
    );
    tokio::try_join!(one_way(client, upstream, &sent), one_way(upstream, client, &received))?;
    Ok(())
}

/// Carries bytes both ways between two streams of any kind (a TLS side
/// cannot be spliced: its bytes are decrypted in user space), counting and
/// touching activity as [`carry`] does.
pub async fn carry_streams<A, B>(a: A, b: B, flow: &Flow<'_>) -> io::Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(
        copy_counted(&mut a_read, &mut b_write, flow.sent, flow.activity, (Peer::Client, Peer::Upstream)),
        copy_counted(&mut b_read, &mut a_write, flow.received, flow.activity, (Peer::Upstream, Peer::Client)),
    )?;
    Ok(())
}

async fn copy_counted<R, W>(
    from: &mut R,
    to: &mut W,
    carried: &AtomicU64,
    activity: &Activity,
    (from_peer, to_peer): (Peer, Peer),
) -> io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TLS record holds at most 16 KiB of plain text.
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await.map_err(|e| at(from_peer, e))?;
        if n == 0 {
            // Half-close the other side, as TCP does (a TLS side sends close_notify).
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buffer[..n]).await.map_err(|e| at(to_peer, e))?;
        to.flush().await.map_err(|e| at(to_peer, e))?;
        carried.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use std::cell::RefCell;
    use std::io;
    use std::os::fd::OwnedFd;
    use std::task::Poll;

    use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::{Side, at};

    /// A read that fills the per-thread buffer marks a bulk flow. At most
    /// two pages, so what the peer did not take always fits a new pipe:
    /// the kernel gives a user past `pipe-user-pages-soft` pipes of two
    /// pages only.
    const SCRATCH: usize = 8 * 1024;
    /// The pipe grows once a direction has carried this much.
    const GROW_AFTER: u64 = 1 << 20;
    const LARGE_PIPE: i32 = 1 << 20;

    thread_local! {
        /// Shared by every connection a worker thread serves: it never holds
        /// bytes across an await.
        static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH]);
    }

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Self> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            // Usually 64 KiB, less once the user holds many pipe pages.
            let capacity = usize::try_from(fcntl(&write, FcntlArg::F_GETPIPE_SZ)?).unwrap_or(SCRATCH);
            Ok(Self { read, write, capacity })
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

    fn would_block(e: &io::Error) -> bool {
        e.kind() == io::ErrorKind::WouldBlock
    }

    /// What one copied read led to.
    enum Step {
        /// Nothing to read after all.
        Again,
        Ended,
        /// All of it was written on.
        Copied,
        /// A full read or a busy peer: the unwritten rest is in the pipe,
        /// and splice takes over.
        Bulk(Pipe, usize),
    }

    pub(super) async fn one_way(from: &TcpStream, to: &TcpStream, side: &Side<'_>) -> io::Result<()> {
        loop {
            from.readable().await.map_err(|e| at(side.from, e))?;
            match BUFFER.with_borrow_mut(|buf| copy(from, to, buf, side))? {
                Step::Again | Step::Copied => {}
                Step::Ended => {
                    side.end(to);
                    return Ok(());
                }
                Step::Bulk(pipe, held) => return spliced(from, to, pipe, held, side).await,
            }
        }
    }

    fn copy(from: &TcpStream, to: &TcpStream, buf: &mut [u8], side: &Side<'_>) -> io::Result<Step> {
        // A short read drained the socket. Saying "would block" then lets
        // tokio clear the readiness (unless a newer event came in), which
        // saves the read that would only find nothing; its `poll_read` does
        // the same.
        let mut short = 0;
        let n = match from.try_io(Interest::READABLE, || {
            let n = nix::unistd::read(from, buf)?;
            if n > 0 && n < buf.len() {
                short = n;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }) {
            Ok(0) => return Ok(Step::Ended),
            Ok(n) => n,
            Err(e) if would_block(&e) && short > 0 => short,
            Err(e) if would_block(&e) => return Ok(Step::Again),
            Err(e) => return Err(at(side.from, e)),
        };
        let written = match to.try_write(&buf[..n]) {
            Ok(w) => w,
            Err(e) if would_block(&e) => 0,
            Err(e) => return Err(at(side.to, e)),
        };
        side.moved(written);
        if written == n && n < buf.len() {
            return Ok(Step::Copied);
        }
        // The rest (at most SCRATCH) fits the new, empty pipe in one write.
        let pipe = Pipe::new()?;
        let rest = &buf[written..n];
        if !rest.is_empty() && nix::unistd::write(&pipe.write, rest)? != rest.len() {
            return Err(io::Error::other("a new pipe took part of a write smaller than its capacity"));
        }
        Ok(Step::Bulk(pipe, rest.len()))
    }

    /// Splices in while the pipe has room and the socket has bytes, and out
    /// while the pipe holds bytes and the other socket has room, so neither
    /// side waits for the other: a full send buffer never stops the reads
    /// that keep the sender going.
    ///
    /// A pipe holds a number of packets, not of bytes: from a real network
    /// (1,500 or 9,001 byte frames) it fills long before `capacity` bytes.
    /// A splice in that finds it full must not be taken for a drained
    /// socket, or the socket's readiness would be cleared while bytes wait
    /// in it and a sender stalled on a full window would never wake it
    /// again. So "would block" with bytes in the pipe only stops the reads
    /// until the next splice out makes room.
    async fn spliced(
        from: &TcpStream,
        to: &TcpStream,
        mut pipe: Pipe,
        mut held: usize,
        side: &Side<'_>,
    ) -> io::Result<()> {
        let mut grown = false;
        let mut ended = false;
        // False after the pipe refused bytes while holding some.
        let mut room = true;
        loop {
            let (want_in, want_out) = (!ended && room && held < pipe.capacity, held > 0);
            std::future::poll_fn(|cx| {
                let read = want_in && from.poll_read_ready(cx).is_ready();
                let write = want_out && to.poll_write_ready(cx).is_ready();
                if read || write { Poll::Ready(()) } else { Poll::Pending }
            })
            .await;
            if want_in {
                let spliced = from.try_io(Interest::READABLE, || {
                    match splice(from, None, &pipe.write, None, pipe.capacity - held, flags()) {
                        Ok(n) => Ok(Some(n)),
                        // Maybe the pipe is full: keep the socket's readiness.
                        Err(nix::errno::Errno::EAGAIN) if held > 0 => Ok(None),
                        // An empty pipe: the socket is drained, and tokio clears its readiness.
                        Err(e) => Err(io::Error::from(e)),
                    }
                });
                match spliced {
                    Ok(Some(0)) => ended = true,
                    Ok(Some(n)) => held += n,
                    Ok(None) => room = false,
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(at(side.from, e)),
                }
            }
            if held > 0 {
                match to.try_io(Interest::WRITABLE, || {
                    splice(&pipe.read, None, to, None, held, flags()).map_err(io::Error::from)
                }) {
                    Ok(m) => {
                        held -= m;
                        room |= m > 0;
                        side.moved(m);
                    }
                    Err(e) if would_block(&e) => {}
                    Err(e) => return Err(at(side.to, e)),
                }
            }
            if !grown && side.carried.load(std::sync::atomic::Ordering::Relaxed) >= GROW_AFTER {
                pipe.grow();
                grown = true;
            }
            if ended && held == 0 {
                side.end(to);
                return Ok(());
            }
        }
    }
}

#[cfg(target_os = "linux")]
use splice::one_way;

/// Portable fallback: reads into a small buffer made on the first byte.
#[cfg(not(target_os = "linux"))]
async fn one_way(from: &TcpStream, to: &TcpStream, side: &Side<'_>) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await.map_err(|e| at(side.from, e))?;
        if buf.is_empty() {
            buf.resize(16 * 1024, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                side.end(to);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(at(side.from, e)),
        };
        let mut done = 0;
        while done < n {
            to.writable().await.map_err(|e| at(side.to, e))?;
            match to.try_write(&buf[done..n]) {
                Ok(m) => done += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(at(side.to, e)),
            }
        }
        side.moved(n);
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

    /// `carry` between the two sockets on a task of its own; yields the
    /// bytes it counted each way.
    fn proxy(client: TcpStream, upstream: TcpStream) -> tokio::task::JoinHandle<io::Result<(u64, u64)>> {
        tokio::spawn(async move {
            let (sent, received, activity) = (AtomicU64::new(0), AtomicU64::new(0), Activity::new());
            let flow = Flow { sent: &sent, received: &received, activity: &activity };
            carry(&client, &upstream, &flow).await?;
            Ok((sent.into_inner(), received.into_inner()))
        })
    }

    /// Bytes whose value follows their position, so a lost, doubled or
    /// reordered piece shows.
    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn assert_patterned(got: &[u8], len: usize) {
        assert_eq!(got.len(), len);
        assert!(got == patterned(len), "bytes arrive intact and in order");
    }

    #[tokio::test]
    async fn carries_both_ways_counts_bytes_and_half_closes() {
        let (mut app, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let proxy = proxy(client, upstream);
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

    /// Small writes start in the copying mode; a receiver that does not
    /// read at first fills the buffers, until a read fills the copy buffer
    /// or a write is taken only in part and the flow moves to splicing.
    /// Every byte arrives, in order.
    #[tokio::test]
    async fn a_slow_receiver_moves_small_writes_to_splice_without_losing_a_byte() {
        let (mut app, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let proxy = proxy(client, upstream);
        const TOTAL: usize = 8 << 20;
        let writer = tokio::spawn(async move {
            for piece in patterned(TOTAL).chunks(100) {
                app.write_all(piece).await.unwrap();
            }
            app.shutdown().await.unwrap();
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let mut got = Vec::with_capacity(TOTAL);
        server.read_to_end(&mut got).await.unwrap();
        assert_patterned(&got, TOTAL);
        drop(server);
        writer.await.unwrap();
        assert_eq!(proxy.await.unwrap().unwrap().0, TOTAL as u64);
    }

    /// Segments of network size (MSS 1,000 rather than loopback's 64 KiB)
    /// and a receiver that reads late: the flow finishes, intact. (Loopback
    /// merges the segments' pages again, so this does not fill the pipe by
    /// packet count the way a real NIC can; `spliced` says how that case
    /// is handled.)
    #[tokio::test]
    async fn network_sized_segments_and_a_late_reader_finish_intact() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_tcp_mss(1000).unwrap();
        socket.connect(&listener.local_addr().unwrap().into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut app = TcpStream::from_std(socket.into()).unwrap();
        let (client, _) = listener.accept().await.unwrap();
        let (upstream, mut server) = pair().await;
        let proxy = proxy(client, upstream);
        const TOTAL: usize = 32 << 20;
        let writer = tokio::spawn(async move {
            app.write_all(&patterned(TOTAL)).await.unwrap();
            app.shutdown().await.unwrap();
            let mut rest = Vec::new();
            app.read_to_end(&mut rest).await.unwrap();
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut got = Vec::with_capacity(TOTAL);
        let read = tokio::time::timeout(std::time::Duration::from_secs(30), server.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "the flow stalled after {} of {TOTAL} bytes", got.len());
        assert_patterned(&got, TOTAL);
        drop(server);
        writer.await.unwrap();
        assert_eq!(proxy.await.unwrap().unwrap().0, TOTAL as u64);
    }

    #[tokio::test]
    async fn a_reset_ends_both_sides() {
        let (app, client) = pair().await;
        let (upstream, mut server) = pair().await;
        let proxy = proxy(client, upstream);
        socket2::SockRef::from(&app).set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(app); // RST
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        assert!(proxy.await.unwrap().is_err(), "the reset is reported");
    }
}
