//! What each client received: the bytes the emulator wrote to its connections (status lines,
//! headers, bodies and chunk framing, exactly as sent), totalled per authenticated identity.
//!
//! A benchmark can then say how much an operator downloads from the API server, which no
//! figure inside the operator process gives reliably (`/proc/<pid>/io`'s `rchar` counts
//! every read, files and other servers included). Every accepted connection is counted;
//! it is attributed to the identity of the first request it carries, which is every
//! request on it for the clients that matter here (kube and client-go keep one connection
//! pool per client, and a client has one identity).

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Bytes sent, per identity.
#[derive(Default)]
pub(crate) struct Traffic {
    by_identity: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Bytes written before a connection's first request was authenticated (only error
    /// answers to requests that never got that far).
    unattributed: Arc<AtomicU64>,
}

impl Traffic {
    fn counter(&self, identity: &str) -> Arc<AtomicU64> {
        super::lock(&self.by_identity)
            .entry(identity.to_string())
            .or_default()
            .clone()
    }

    pub(crate) fn sent_to(&self, identity: &str) -> u64 {
        super::lock(&self.by_identity)
            .get(identity)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// One connection's counter, known to the request handlers through `ConnectInfo`.
#[derive(Clone, Default)]
pub(crate) struct Connection {
    counter: Arc<OnceLock<Arc<AtomicU64>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("identified", &self.counter.get().is_some())
            .finish()
    }
}

impl Connection {
    /// Attributes this connection to `identity` (its first request's; later calls keep it).
    pub(crate) fn identify(&self, traffic: &Traffic, identity: &str) {
        self.counter.get_or_init(|| traffic.counter(identity));
    }
}

impl Connected<IncomingStream<'_, CountingListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, CountingListener>) -> Self {
        stream.remote_addr().1.clone()
    }
}

/// A TCP listener whose connections count the bytes written to them.
pub(crate) struct CountingListener {
    pub(crate) inner: TcpListener,
    pub(crate) traffic: Arc<Traffic>,
}

impl Listener for CountingListener {
    type Io = CountingStream;
    type Addr = (SocketAddr, Connection);

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        let connection = Connection::default();
        let io = CountingStream {
            inner: stream,
            connection: connection.clone(),
            unattributed: self.traffic.unattributed.clone(),
        };
        (io, (addr, connection))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok((self.inner.local_addr()?, Connection::default()))
    }
}

pub(crate) struct CountingStream {
    inner: TcpStream,
    connection: Connection,
    unattributed: Arc<AtomicU64>,
}

impl CountingStream {
    fn count(&self, written: usize) {
        let counter = self.connection.counter.get().unwrap_or(&self.unattributed);
        counter.fetch_add(written as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.count(*written);
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(written)) = &result {
            self.count(*written);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
