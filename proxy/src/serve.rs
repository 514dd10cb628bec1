//! Written once: the accept loop and the graceful HTTP connection every listener uses (inbound,
//! outbound, admin, the authority and the built-in httpbin), and the lifecycle they share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long an accept loop pauses after a failed accept (EMFILE and friends): long enough not
/// to spin, short enough that the listener recovers as soon as descriptors are free.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a server's listeners and connections share: one cancellation for "stop accepting, finish
/// what is in flight", and one tracker of every task, to wait for them.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Lifecycle {
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Stops accepting, lets open connections finish, and gives up on the rest after `drain`.
    /// Returns how many tasks were still running then.
    pub async fn stop(&self, drain: Duration) -> usize {
        self.shutdown.cancel();
        self.tracker.close();
        match tokio::time::timeout(drain, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

/// Accepts connections on `listener` until shutdown, each handled by `handle` in its own
/// tracked task. A failed accept is logged and retried after a pause; it never ends the loop.
pub async fn accept_loop<H, F>(listener: TcpListener, name: String, life: Lifecycle, handle: H)
where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("{name}: accept failed: {e}; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        life.tracker.spawn(handle(stream, peer));
    }
}

/// Serves HTTP/1.1 on one connection; on shutdown the connection finishes its current request
/// and closes. Returns hyper's error, if the connection ended with one.
pub async fn serve_http1<I, S>(io: I, service: S, shutdown: &CancellationToken) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<crate::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service);
    until_done_or_drained(conn, shutdown).await
}

/// Serves HTTP/1.1 or h2 (by what the client speaks: ALPN or the h2 preface) on one connection,
/// with the same graceful shutdown as [`serve_http1`].
pub async fn serve_http_auto<I, S, B>(
    io: I,
    service: S,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), service);
    until_done_or_drained(conn, shutdown).await
}

/// Runs a connection to its end; on shutdown, lets it finish its current request, then ends it.
async fn until_done_or_drained<C: GracefulConnection>(conn: C, shutdown: &CancellationToken) -> Result<(), C::Error> {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}
