//! Accepting connections within limits, on every listener: at most `max` connections open at once
//! (one more is accepted and closed at once, so a flood on one port, the metrics port bound on all
//! interfaces say, can neither exhaust the process's file descriptors nor stall the other
//! listeners), `TCP_NODELAY` and TCP keep-alive on each (the kernel's probes close connections to
//! peers that are gone; HTTP/2 pings would do the same at a measured cost per frame), and accept
//! errors (such as running out of descriptors) waited out instead of spun on. HTTP/1 connections
//! (REST, metrics) are served by hyper with a header read timeout, which is also how long an idle
//! kept-alive connection stays open; gRPC connections go to tonic.
//!
//! gRPC and REST can listen on a Unix domain socket instead of TCP (`unix:/path`): for a colocated
//! predictor, filesystem permissions instead of an open port, and no TCP stack per request. The
//! socket is created under a temporary name, given its permission bits, and renamed into place, so no
//! client can connect before the bits apply; a stale socket of an earlier run is replaced (nobody
//! accepts on it), anything else at the path is refused, and the file is removed when the listener is.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::authority::Rewrite;

/// How long accepting pauses after an error (no descriptors left, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TCP keep-alive: the first probe after this much silence, then one every `KEEPALIVE_INTERVAL`;
/// the kernel closes the connection after a few unanswered ones.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The send buffer asked for on accepted Unix-socket connections.
const UNIX_SEND_BUFFER: usize = 4 << 20;

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// HTTP/1: time to receive a request's headers, from when the connection is ready for it.
    pub header_timeout: Duration,
}

/// A bound listener: TCP, or a Unix domain socket (whose file goes with it).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// A Unix socket's path, removed when the listener is dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// What the listener is bound to, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.0.display()),
        }
    }

    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => {
                let (tcp, _) = l.accept().await?;
                let _ = tcp.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_IDLE)
                    .with_interval(KEEPALIVE_INTERVAL);
                let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
                Ok(Conn::Tcp(tcp))
            }
            Listener::Unix(l, _) => {
                let (unix, _) = l.accept().await?;
                // Large answers in fewer wake-ups: the default send buffer of a Unix socket (about
                // 200 KiB) is a fraction of what TCP's autotuning gives a loopback connection. The
                // kernel caps it at net.core.wmem_max.
                let _ = socket2::SockRef::from(&unix).set_send_buffer_size(UNIX_SEND_BUFFER);
                Ok(Conn::Unix(unix))
            }
        }
    }
}

/// Binds a Unix domain socket at `path` with permission bits `mode`.
pub(super) fn bind_unix(path: &Path, mode: u32) -> io::Result<Listener> {
    let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server is listening on unix:{}", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(|e| context(e, "cannot remove the stale socket"))?;
            tracing::info!(path = %path.display(), "replaced a stale socket file");
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e, "cannot inspect")),
    }
    let mut staging = path.as_os_str().to_owned();
    staging.push(format!(".{}.tmp", std::process::id()));
    let staging = PathBuf::from(staging);
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging).map_err(|e| context(e, "cannot bind"))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(context(e, "cannot place the socket at"));
    }
    Ok(Listener::Unix(listener, SocketFile(path.to_path_buf())))
}

/// An accepted connection.
#[derive(Debug)]
pub(super) enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// gRPC on a Unix socket: the clients' `:authority` mended for h2 (`authority`).
    UnixGrpc(Box<Rewrite<UnixStream>>),
}

/// Accepts the next connection that fits the limit, with its permit.
async fn accept(listener: &Listener, permits: &Arc<Semaphore>, what: &str) -> (Conn, OwnedSemaphorePermit) {
    loop {
        match listener.accept().await {
            Ok(conn) => match permits.clone().try_acquire_owned() {
                Ok(permit) => return (conn, permit),
                Err(_) => {
                    // Over the limit: closed at once, so it costs neither a descriptor for long nor
                    // a place in the backlog.
                    metrics::counter!(crate::metrics::ACCEL_CONNECTIONS_REFUSED_TOTAL, crate::metrics::LABEL_LISTENER => what.to_string())
                        .increment(1);
                    tracing::debug!(
                        listener = what,
                        "connection refused: the listener is at its connection limit"
                    );
                    drop(conn);
                }
            },
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves HTTP/1 on `listener` with `router` until `shutdown`, then lets open connections finish
/// their requests (the caller bounds how long).
pub(super) async fn serve_http(
    listener: Listener,
    router: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    what: &'static str,
) -> Result<(), String> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let (conn, permit) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &permits, what) => accepted,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(conn), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(listener = what, error = %e, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The gRPC listener's connections, within the limit, for tonic's `serve_with_incoming`.
pub(super) fn grpc_incoming(
    listener: Listener,
    max_connections: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max_connections));
    futures_util::stream::unfold((listener, permits), |(listener, permits)| async move {
        let (conn, permit) = accept(&listener, &permits, "gRPC").await;
        let conn = match conn {
            Conn::Unix(unix) => Conn::UnixGrpc(Box::new(Rewrite::new(unix))),
            other => other,
        };
        Some((Ok(Limited { conn, _permit: permit }), (listener, permits)))
    })
}

/// A connection holding its place under the listener's limit until it closes.
#[derive(Debug)]
pub(super) struct Limited {
    conn: Conn,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match &self.conn {
            Conn::Tcp(tcp) => tcp.connect_info(),
            Conn::Unix(_) | Conn::UnixGrpc(_) => tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
        }
    }
}

/// Forwards a call to the stream inside, whichever it is.
macro_rules! each {
    ($conn:expr, $s:ident => $e:expr) => {
        match $conn {
            Conn::Tcp($s) => $e,
            Conn::Unix($s) => $e,
            Conn::UnixGrpc($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each!(self, s => s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.conn).poll_shutdown(cx)
    }
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime and most servers do), and
/// warns when the listeners' connection limits do not fit under it.
pub(super) fn raise_open_files(connections: usize) {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit read and write the struct passed by reference, nothing else.
    let (soft, hard) = unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: l.rlim_max,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l.rlim_cur = l.rlim_max;
            }
        }
        (l.rlim_cur, l.rlim_max)
    };
    // Model files, sockets of the runtime, logs: a margin for what is not a connection.
    let needed = connections as u64 + 256;
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            hard_limit = hard,
            connections,
            "the open-file limit is below the listeners' connection limits: lower --http-max-connections, \
             --grpc-max-connections or --metrics-max-connections, or raise the limit"
        );
    }
}
