//! Where a chunked message body ends (RFC 9112 §7.1), found while its bytes
//! are relayed unchanged. Strict: exactly CRLF line ends, hex sizes of at
//! most 16 digits, chunk extensions and trailer lines of printable bytes
//! only, bounded. Anything else is an error and the message is not relayed
//! further: a byte sequence two parsers could read as two different
//! message boundaries (request smuggling) never reaches the app.

/// Longest chunk-size line (extensions included) and all trailer lines.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex size (`digits` so far).
    Size {
        digits: u8,
    },
    /// In a chunk extension, after `;`.
    Ext,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data (`left` bytes to go).
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    LineStart,
    /// In a trailer line.
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The scanner of one chunked body.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
    /// It carried chunk extensions or trailer fields (a request with either
    /// goes to hyper, which drops extensions and checks trailers).
    pub extras: bool,
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk;

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
            extras: false,
        }
    }
}

impl Chunked {
    /// Reads on through `data`: `Some(n)` when the body ends after its
    /// first `n` bytes, `None` when all of it belongs to the body and more
    /// is to come.
    pub fn scan(&mut self, data: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            self.state = match self.state {
                State::Size { digits } => match hex(b) {
                    Some(v) if digits < 16 => {
                        self.size = self.size << 4 | u64::from(v);
                        self.line += 1;
                        State::Size { digits: digits + 1 }
                    }
                    None if digits > 0 && b == b';' => {
                        self.extras = true;
                        State::Ext
                    }
                    None if digits > 0 && b == b'\r' => State::SizeLf,
                    _ => return Err(BadChunk),
                },
                State::Ext => {
                    self.line += 1;
                    match b {
                        b'\r' => State::SizeLf,
                        _ if self.line > MAX_LINE => return Err(BadChunk),
                        b'\t' | 0x20..=0x7e => State::Ext,
                        _ => return Err(BadChunk),
                    }
                }
                State::SizeLf if b == b'\n' => {
                    self.line = 0;
                    match std::mem::take(&mut self.size) {
                        0 => State::LineStart,
                        left => State::Data { left },
                    }
                }
                State::Data { left } => {
                    let avail = (data.len() - i) as u64;
                    let take = avail.min(left);
                    // `take` <= what is left of `data`, a usize.
                    i += take as usize;
                    self.state = match left - take {
                        0 => State::DataCr,
                        left => State::Data { left },
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::LineStart if b == b'\r' => State::EndLf,
                State::LineStart | State::Trailer => {
                    self.extras = true;
                    self.trailers += 1;
                    match b {
                        b'\r' => State::TrailerLf,
                        _ if self.trailers > MAX_TRAILERS => return Err(BadChunk),
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => State::Trailer,
                        _ => return Err(BadChunk),
                    }
                }
                State::TrailerLf if b == b'\n' => State::LineStart,
                State::EndLf if b == b'\n' => {
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok((self.state == State::Done).then_some(0))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &[u8]) -> Result<Option<usize>, BadChunk> {
        Chunked::default().scan(body)
    }

    #[test]
    fn the_end_of_a_body_is_found_with_what_follows_left_alone() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(whole(body), Ok(Some(body.len() - 16)));
        let trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n";
        assert_eq!(whole(trailers), Ok(Some(trailers.len())));
        // Extensions and trailers are noted; a plain body has neither.
        for (body, extras) in [
            (&body[..], true),
            (&trailers[..], true),
            (&b"3\r\nabc\r\n0\r\n\r\n"[..], false),
        ] {
            let mut c = Chunked::default();
            assert!(c.scan(body).unwrap().is_some());
            assert_eq!(c.extras, extras, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_body_split_anywhere_ends_at_the_same_byte() {
        let body = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\nt: v\r\n\r\nNEXT";
        let end = body.len() - 4;
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let (a, b) = body.split_at(cut);
            let got = match c.scan(a).unwrap() {
                Some(n) => n,
                None => cut + c.scan(b).unwrap().expect("ends in the second part"),
            };
            assert_eq!(got, end, "cut at {cut}");
        }
        let mut c = Chunked::default();
        for (i, byte) in body.iter().enumerate() {
            if let Some(n) = c.scan(std::slice::from_ref(byte)).unwrap() {
                assert_eq!((i, n), (end - 1, 1));
                return;
            }
        }
        panic!("never ended");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],   // bare LF after the size
            b"5\r\nhello\n0\r\n\r\n",        // bare LF after the data
            b"5\r\nhelloXX0\r\n\r\n",        // data longer than its size
            b" 5\r\nhello\r\n0\r\n\r\n",     // space before the size
            b"5 \r\nhello\r\n0\r\n\r\n",     // space after it
            b"+5\r\nhello\r\n0\r\n\r\n",     // a sign
            b"0x5\r\nhello\r\n0\r\n\r\n",    // a prefix
            b"\r\n",                         // no size
            b"10000000000000000\r\n",        // 17 digits: past u64
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside an extension
            b"0\r\nx: 1\n\r\n",              // bare LF in a trailer
            b"0\r\n\n",                      // bare LF at the end
            b"0\r\nx\x00y: 1\r\n\r\n",       // a control byte in a trailer
        ] {
            assert_eq!(
                whole(bad),
                Err(BadChunk),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_ext = [&b"1;"[..], &[b'a'; MAX_LINE + 1], b"\r\nx\r\n0\r\n\r\n"].concat();
        assert_eq!(whole(&long_ext), Err(BadChunk));
        let many_trailers = [
            &b"0\r\n"[..],
            &b"x: y\r\n".repeat(MAX_TRAILERS / 4),
            b"\r\n",
        ]
        .concat();
        assert_eq!(whole(&many_trailers), Err(BadChunk));
    }

    #[test]
    fn sixteen_hex_digits_is_the_most() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"ffffffffffffffff\r\nabc"), Ok(None));
    }
}
