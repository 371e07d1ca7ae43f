//! Loopback ports and readiness probes: free ports, TCP connects and a minimal HTTP GET.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{IoContext, Result};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A currently free TCP port on 127.0.0.1, or the error binding port 0 gave.
///
/// The port is free when this returns; another process may take it before the caller binds it,
/// so servers started on it retry with a new port when they find it taken.
pub fn try_free_port() -> Result<u16> {
    let listener = TcpListener::bind((LOOPBACK, 0)).context(|| "binding 127.0.0.1:0".into())?;
    let addr = listener
        .local_addr()
        .context(|| "reading the port of 127.0.0.1:0".into())?;
    Ok(addr.port())
}

/// A currently free TCP port on 127.0.0.1 (bind port 0, read it, drop the listener).
///
/// Binding port 0 on loopback fails only on a host without a usable loopback interface. Then
/// this returns a guess from the ephemeral range rather than panicking, and whatever binds it
/// next fails with an error of its own that names the real problem.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|_| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mixed = nanos ^ std::process::id().rotate_left(16);
        // 32768..=60999 is Linux's default ephemeral range.
        let offset = u16::try_from(mixed % 28_232).unwrap_or(0);
        32_768 + offset
    })
}

/// Whether `port` on 127.0.0.1 can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((LOOPBACK, port)).is_ok()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn tcp_accepts(port: u16) -> bool {
    tcp_accepts_at(LOOPBACK, port)
}

/// Whether something accepts TCP connections on `host`:`port`.
pub fn tcp_accepts_at(host: Ipv4Addr, port: u16) -> bool {
    let addr = SocketAddr::from((host, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
}

/// A connection that has sent `GET <path>` to `host`:`port` over
/// HTTP/1.0, so the server closes it after answering and no client library
/// is needed.
fn get(host: Ipv4Addr, port: u16, path: &str) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((host, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(250))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    // One write: some servers read a single segment and take a partial request as malformed.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    Ok(stream)
}

/// The status code of `GET <path>` on 127.0.0.1:`port`.
pub fn http_status(port: u16, path: &str) -> std::io::Result<u16> {
    http_status_at(LOOPBACK, port, path)
}

/// The status code of `GET <path>` on `host`:`port`.
pub fn http_status_at(host: Ipv4Addr, port: u16, path: &str) -> std::io::Result<u16> {
    let stream = get(host, port, path)?;
    // The status line is all we need; 64 bytes hold it whatever the reason phrase.
    let mut head = Vec::with_capacity(64);
    stream.take(64).read_to_end(&mut head)?;
    parse_status_line(&head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP response from {host}:{port}{path}: {:?}",
                String::from_utf8_lossy(&head)
            ),
        )
    })
}

/// The body of `GET <path>` on 127.0.0.1:`port` (whatever the status), at
/// most 1 MiB.
pub fn http_body(port: u16, path: &str) -> std::io::Result<String> {
    http_body_at(LOOPBACK, port, path)
}

/// The body of `GET <path>` on `host`:`port` (whatever the status), at most 1 MiB.
pub fn http_body_at(host: Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    let stream = get(host, port, path)?;
    let mut response = Vec::new();
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_owned()))
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_ascii_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        assert!(port_is_free(port));
    }

    #[test]
    fn port_is_taken_while_bound() {
        let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        assert!(tcp_accepts(port));
    }

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nX"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn reads_status_from_a_tiny_server() {
        let listener = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0_u8; 256];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                assert_ne!(n, 0, "request cut short: {request:?}");
                request.extend_from_slice(&buf[..n]);
            }
            assert!(request.starts_with(b"GET /readyz HTTP/1.0\r\n"));
            conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        });
        assert_eq!(http_status(port, "/readyz").unwrap(), 204);
        server.join().unwrap();
    }
}
