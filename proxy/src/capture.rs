//! Transparent capture: connections the kernel redirected to the sidecar (iptables `REDIRECT`,
//! installed by `signet iptables`), as Istio's sidecars receive them on 15001 (outbound) and
//! 15006 (inbound). The destination the app dialled is read back with `SO_ORIGINAL_DST`; the
//! protocol is told from the first bytes, as Istio's protocol sniffing does.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::net::TcpStream;

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST` share the value 80.
const SO_ORIGINAL_DST: libc::c_int = 80;

/// Where the app meant to connect before the kernel redirected the connection here. A
/// connection that was not redirected reports its own local address (or fails with ENOENT).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_raw_fd();
    let local = stream.local_addr()?;
    // An IPv4 connection on a dual-stack ([::]) listener is IPv4 to netfilter: ask SOL_IP.
    let ipv4 = match local {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    match ipv4 {
        true => {
            // SAFETY: getsockopt writes at most `len` bytes into the sockaddr_in we own.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IP,
                    SO_ORIGINAL_DST,
                    (&mut addr as *mut libc::sockaddr_in).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
        }
        false => {
            // SAFETY: as above, with a sockaddr_in6.
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_IPV6,
                    SO_ORIGINAL_DST,
                    (&mut addr as *mut libc::sockaddr_in6).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(addr.sin6_port),
                addr.sin6_flowinfo,
                addr.sin6_scope_id,
            )))
        }
    }
}

/// An address with IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack listener reports for
/// an IPv4 peer) written as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// Whether `dst` (an original destination) is the listener's own address: the connection was
/// made to it directly, not redirected. Serving it would connect straight back.
pub fn aimed_at_itself(stream: &TcpStream, dst: SocketAddr) -> bool {
    stream
        .local_addr()
        .is_ok_and(|local| canonical(local) == canonical(dst))
}

/// What the app speaks, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1.x request line, or the HTTP/2 connection preface (prior knowledge).
    Http,
    /// Anything else, including a client that sends nothing first (server-first protocols).
    Opaque,
}

/// The methods an HTTP/1.x request line may start with (RFC 9110 and WebDAV's common ones).
const METHODS: [&[u8]; 14] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"COPY ",
    b"MOVE ",
];
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Classifies a prefix of the stream; `None` while more bytes could still change the answer.
pub fn classify(prefix: &[u8]) -> Option<Sniffed> {
    let could_be = |candidate: &[u8]| {
        let n = prefix.len().min(candidate.len());
        prefix[..n] == candidate[..n]
    };
    if METHODS.iter().any(|m| prefix.starts_with(m)) || prefix.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http);
    }
    if METHODS.iter().any(|m| could_be(m)) || could_be(H2_PREFACE) {
        return None;
    }
    Some(Sniffed::Opaque)
}

/// Peeks at the app's first bytes for up to `timeout`: a client that stays silent that long is
/// taken for a server-first protocol (opaque), as Istio's protocol detection timeout does.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Opaque,
            Ok(Ok(n)) => {
                if let Some(answer) = classify(&buf[..n]) {
                    return answer;
                }
                if n == buf.len() {
                    return Sniffed::Opaque;
                }
                // A partial method name: wait a little for the rest.
                if tokio::time::timeout_at(deadline, stream.readable()).await.is_err() {
                    return Sniffed::Opaque;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_its_first_bytes() {
        assert_eq!(classify(b"GET /html HTTP/1.1\r\n"), Some(Sniffed::Http));
        assert_eq!(classify(b"POST "), Some(Sniffed::Http));
        assert_eq!(classify(b"CONNECT httpbin.foo:443 HTTP/1.1"), Some(Sniffed::Http));
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::Http));
        assert_eq!(classify(b"GE"), None, "could still be GET");
        assert_eq!(classify(b"PRI * HTTP/2"), None, "could still be the h2 preface");
        assert_eq!(
            classify(b"\x16\x03\x01\x02\x00"),
            Some(Sniffed::Opaque),
            "a TLS ClientHello"
        );
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Sniffed::Opaque));
        assert_eq!(
            classify(b"get / HTTP/1.1"),
            Some(Sniffed::Opaque),
            "methods are case-sensitive"
        );
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.88.0.3]:15001".parse().unwrap();
        let v4: SocketAddr = "10.88.0.3:15001".parse().unwrap();
        let v6: SocketAddr = "[fd88::3]:15001".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        assert_eq!(canonical(v6), v6);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(sniff(&server, Duration::from_millis(50)).await, Sniffed::Opaque);
        // Not redirected: the original destination is the socket's own address (or unknown).
        match original_dst(&server) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[tokio::test]
    async fn a_request_split_across_packets_is_still_http() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PO").await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"ST / HTTP/1.1\r\n").await.unwrap();
            client
        });
        assert_eq!(sniff(&server, Duration::from_secs(2)).await, Sniffed::Http);
        drop(writer.await.unwrap());
    }
}
