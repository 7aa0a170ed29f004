//! Accepting connections within limits, on every listener: at most `max` connections open at once
//! (one more is accepted and closed at once, so a flood on one port, the metrics port bound on all
//! interfaces say, can neither exhaust the process's file descriptors nor stall the other
//! listeners), `TCP_NODELAY` and TCP keep-alive on each (the kernel's probes close connections to
//! peers that are gone; HTTP/2 pings would do the same at a measured cost per frame), and accept
//! errors (such as running out of descriptors) waited out instead of spun on. HTTP/1 connections
//! (REST, metrics) are served by hyper with a header read timeout, which is also how long an idle
//! kept-alive connection stays open; gRPC connections go to tonic.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long accepting pauses after an error (no descriptors left, say) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// TCP keep-alive: the first probe after this much silence, then one every `KEEPALIVE_INTERVAL`;
/// the kernel closes the connection after a few unanswered ones.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// HTTP/1: time to receive a request's headers, from when the connection is ready for it.
    pub header_timeout: Duration,
}

/// Accepts the next connection that fits the limit, with its permit.
async fn accept(listener: &TcpListener, permits: &Arc<Semaphore>, what: &str) -> (TcpStream, OwnedSemaphorePermit) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = tcp.set_nodelay(true);
                    let keepalive = socket2::TcpKeepalive::new()
                        .with_time(KEEPALIVE_IDLE)
                        .with_interval(KEEPALIVE_INTERVAL);
                    let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
                    return (tcp, permit);
                }
                Err(_) => {
                    // Over the limit: closed at once, so it costs neither a descriptor for long nor
                    // a place in the backlog.
                    metrics::counter!(crate::metrics::ACCEL_CONNECTIONS_REFUSED_TOTAL, crate::metrics::LABEL_LISTENER => what.to_string())
                        .increment(1);
                    tracing::debug!(
                        listener = what,
                        "connection refused: the listener is at its connection limit"
                    );
                    drop(tcp);
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
    listener: TcpListener,
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
        let (tcp, permit) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, &permits, what) => accepted,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
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
    listener: TcpListener,
    max_connections: usize,
) -> impl Stream<Item = io::Result<Limited>> + Send + 'static {
    let permits = Arc::new(Semaphore::new(max_connections));
    futures_util::stream::unfold((listener, permits), |(listener, permits)| async move {
        let (tcp, permit) = accept(&listener, &permits, "gRPC").await;
        Some((Ok(Limited { tcp, _permit: permit }), (listener, permits)))
    })
}

/// A connection holding its place under the listener's limit until it closes.
#[derive(Debug)]
pub(super) struct Limited {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
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
