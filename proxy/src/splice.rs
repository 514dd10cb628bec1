//! Copying bytes both ways between two streams, with buffers that exist only while bytes are in
//! flight. tokio's `copy_bidirectional` keeps two 8 KiB buffers for the whole life of every
//! connection; a mesh holds many idle connections, so here a 16 KiB buffer is borrowed from a
//! per-thread pool when a read returns data and handed back as soon as it has been written out.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// stream is passed on as a shutdown of the other side's write half.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::default(), Half::default());
    poll_fn(|cx| {
        let a_to_b = ab.poll(cx, a, b)?;
        let b_to_a = ba.poll(cx, b, a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
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
        let pump = tokio::spawn(async move { splice(&mut a, &mut b).await });
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
}
