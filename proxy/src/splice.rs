//! Copying bytes both ways between two streams, with buffers that exist only while bytes are in
//! flight. tokio's `copy_bidirectional` keeps two 8 KiB buffers for the whole life of every
//! connection; a mesh holds many idle connections, so here a 16 KiB buffer is borrowed from a
//! per-thread pool when a read returns data and handed back as soon as it has been written out.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

const BUF: usize = 16 * 1024;
/// Buffers kept per thread for reuse.
const POOL: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn borrow() -> Box<[u8]> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF].into_boxed_slice())
}

fn give_back(buf: Box<[u8]>) {
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < POOL {
            f.push(buf);
        }
    });
}

/// One direction: read from one stream, write to the other.
#[derive(Default)]
struct Half {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    eof: bool,
    done: bool,
    needs_flush: bool,
    /// Bytes moved since the owner last looked.
    moved: bool,
}

impl Half {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.end {
                let buf = self.buf.as_deref().unwrap_or_default();
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.needs_flush = true;
                self.moved = true;
                if self.pos == self.end {
                    // Everything written: the buffer goes back to the pool.
                    if let Some(buf) = self.buf.take() {
                        give_back(buf);
                    }
                }
                continue;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut buf = self.buf.take().unwrap_or_else(borrow);
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    give_back(buf);
                    // Going idle: push out what the writer still buffers (TLS records).
                    if self.needs_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give_back(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_back(buf);
                        self.eof = true;
                    } else {
                        (self.pos, self.end) = (0, n);
                        self.buf = Some(buf);
                    }
                }
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions reach end of stream; each end of
/// stream is passed on as a shutdown of the other side's write half. When no byte moves either
/// way for `idle`, the copy ends with a `TimedOut` error (both streams are then dropped).
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::default(), Half::default());
    let mut last_moved = Instant::now();
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    poll_fn(|cx| {
        let a_to_b = ab.poll(cx, a, b)?;
        let b_to_a = ba.poll(cx, b, a)?;
        if let (Poll::Ready(()), Poll::Ready(())) = (a_to_b, b_to_a) {
            return Poll::Ready(Ok(()));
        }
        if std::mem::take(&mut ab.moved) | std::mem::take(&mut ba.moved) {
            // Noted here, looked at when the timer fires: no timer reset per read.
            last_moved = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last_moved + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no byte either way for {}", signet_certs::format_duration(idle)),
                )));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_passes_on_end_of_stream() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let pump = tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(60)).await });
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        server.write_all(b"reply").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        pump.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_splice_ends_after_the_idle_timeout_and_not_before() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let start = Instant::now();
        let pump = tokio::spawn(async move { splice(&mut a, &mut b, Duration::from_secs(10)).await });
        // Bytes every 6 s keep it open past 10 s.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            server.read_exact(&mut one).await.unwrap();
        }
        assert!(!pump.is_finished(), "traffic keeps a tunnel open");
        let e = pump.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let closed_at = start.elapsed();
        assert!(
            closed_at >= Duration::from_secs(28) && closed_at <= Duration::from_secs(29),
            "closed 10 s after the last byte: {closed_at:?}"
        );
    }
}
