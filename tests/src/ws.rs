//! Just enough WebSocket (RFC 6455) for the Granian #862 shape: the opening handshake, and
//! the client's masked close frame.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// SHA-1 (FIPS 180-4) of `data`; the handshake needs it for `Sec-WebSocket-Accept`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// Read an HTTP head (through the blank line) within `timeout`; at most 16 KiB.
fn read_head(mut s: &TcpStream, timeout: Duration) -> io::Result<String> {
    s.set_read_timeout(Some(timeout))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("HTTP head longer than 16 KiB"));
        }
        if s.read(&mut b)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during the HTTP head",
            ));
        }
        head.push(b[0]);
    }
    s.set_read_timeout(None)?;
    String::from_utf8(head).map_err(|_| io::Error::other("HTTP head is not UTF-8"))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Client side of the opening handshake: send the Upgrade request with `key` and require a
/// `101` answer with the right `Sec-WebSocket-Accept`.
pub fn client_handshake(mut s: &TcpStream, host: &str, key: &str) -> io::Result<()> {
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let head = read_head(s, Duration::from_secs(5))?;
    if !head.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!(
            "expected 101 Switching Protocols, got {head:?}"
        )));
    }
    match header(&head, "Sec-WebSocket-Accept") {
        Some(a) if a == accept_key(key) => Ok(()),
        other => Err(io::Error::other(format!(
            "bad Sec-WebSocket-Accept {other:?}"
        ))),
    }
}

/// Server side of the opening handshake: read an Upgrade request and answer `101`.
pub fn server_handshake(mut s: &TcpStream) -> io::Result<()> {
    let head = read_head(s, Duration::from_secs(5))?;
    let upgrade = header(&head, "Upgrade").map(|v| v.eq_ignore_ascii_case("websocket"));
    let key = header(&head, "Sec-WebSocket-Key");
    match (head.starts_with("GET "), upgrade, key) {
        (true, Some(true), Some(key)) => write!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key)
        ),
        _ => Err(io::Error::other(format!(
            "not a WebSocket upgrade request: {head:?}"
        ))),
    }
}

/// A client close frame: FIN + opcode 8, masked with `mask`, payload = `status` (big endian).
pub fn masked_close_frame(status: u16, mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x88, 0x80 | 2];
    f.extend_from_slice(&mask);
    for (i, b) in status.to_be_bytes().iter().enumerate() {
        f.push(b ^ mask[i % 4]);
    }
    f
}

/// Parse a single small client frame (payload < 126 bytes): (fin+opcode byte, unmasked
/// payload). None if `buf` does not hold one complete masked frame.
pub fn parse_client_frame(buf: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    if b1 & 0x80 == 0 || b1 & 0x7f >= 126 {
        return None;
    }
    let len = (b1 & 0x7f) as usize;
    let mask = buf.get(2..6)?;
    let payload = buf.get(6..6 + len)?;
    Some((
        b0,
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known_vectors() {
        let hex = |d: [u8; 20]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha1(b"")), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(
            hex(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex(sha1(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
    }

    #[test]
    fn base64_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn close_frame_round_trip() {
        let f = masked_close_frame(1000, [0x12, 0x34, 0x56, 0x78]);
        assert_eq!(f.len(), 8);
        assert_eq!(&f[..2], &[0x88, 0x82]);
        assert_eq!(parse_client_frame(&f), Some((0x88, vec![0x03, 0xe8])));
        assert_eq!(parse_client_frame(&f[..7]), None);
    }
}
