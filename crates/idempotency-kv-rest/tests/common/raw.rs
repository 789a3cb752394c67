//! The server side of a raw HTTP/1.1 exchange, for tests that script a reply's exact bytes.

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Read one request from `socket`: its head and its `Content-Length` body (bytes past them are
/// dropped). `false`: the peer closed, or the read failed, before a whole request arrived.
pub async fn read_request(socket: &mut TcpStream) -> bool {
    read_request_body(socket).await.is_some()
}

/// [`read_request`], returning the request's body (lossy UTF-8); `None` where that answers
/// `false`.
pub async fn read_request_body(socket: &mut TcpStream) -> Option<String> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut read = 0;
    loop {
        let n = socket.read(&mut buffer[read..]).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        read += n;
        let text = String::from_utf8_lossy(&buffer[..read]);
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if read >= head_end + 4 + length {
            let body = &buffer[head_end + 4..head_end + 4 + length];
            return Some(String::from_utf8_lossy(body).into_owned());
        }
    }
}
