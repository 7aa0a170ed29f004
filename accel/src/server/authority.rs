//! gRPC over a Unix domain socket for clients built on gRPC's C core (Python's grpcio, so
//! tritonclient; the C++ client, so perf_analyzer). They send the socket's path, percent-encoded, as
//! the HTTP/2 `:authority` (`unix:///run/accel/grpc.sock` becomes `run%2Faccel%2Fgrpc.sock`), and h2,
//! under tonic, refuses a `%` in a host: it resets every stream with PROTOCOL_ERROR
//! (hyperium/h2#487, open since 2020). No setting of h2's changes that, so on Unix-socket gRPC
//! connections the client's header blocks are decoded (HPACK, loona-hpack), an `:authority` that is
//! not a valid authority is replaced by `localhost` (what the client meant: the local server), and the
//! block is encoded again for h2. Every other frame passes through unchanged: frame headers and small
//! frames through a short read-ahead, the rest of a payload read straight into h2's buffer (no copy).
//!
//! Bounded: a header block (HEADERS and its CONTINUATIONs) over [`MAX_HEADER_BLOCK`] bytes, a
//! malformed frame or an HPACK error closes the connection, as h2 itself would.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest header block accepted (h2 bounds the decoded header list far below this).
pub(super) const MAX_HEADER_BLOCK: usize = 1 << 20;
/// The read-ahead buffer: a header block's payload is read into it, up to this much at a time.
const READ_AHEAD: usize = 64 << 10;
/// Bytes read at once when a frame header is due: the header and the small frames that follow it
/// (SETTINGS, WINDOW_UPDATE, PING) come in one read, and a payload's bytes beyond them are left in
/// the socket, to be read straight into h2's buffer (a copy here would cost more than the read).
const HEAD_READ: usize = 512;
/// The client connection preface, passed through as it is.
const PREFACE: usize = 24;
/// HEADERS frames sent to h2 carry at most this much (the protocol's default SETTINGS_MAX_FRAME_SIZE,
/// which h2 accepts whatever it advertises).
const MAX_FRAME: usize = 16_384;
/// The dynamic table h2 advertises (SETTINGS_HEADER_TABLE_SIZE, the protocol's default): the most a
/// client's table may grow to.
const TABLE_SIZE: usize = 4096;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Where the reader is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes go to h2 unchanged (the preface, or a frame's payload).
    Through(usize),
    /// Reading a frame's 9-byte header.
    Head,
    /// Reading a HEADERS or CONTINUATION frame's payload.
    Payload {
        kind: u8,
        flags: u8,
        stream: u32,
        len: usize,
    },
}

/// A header block begun by HEADERS and not yet ended.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The client half of a connection with its header blocks' `:authority` made acceptable to h2.
pub(super) struct Rewrite<S> {
    inner: S,
    state: State,
    head: [u8; 9],
    /// Read ahead from the socket: `input[pos..end]` is not consumed yet.
    input: Box<[u8]>,
    pos: usize,
    end: usize,
    payload: Vec<u8>,
    /// Bytes for h2 not yet handed over, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl<S> std::fmt::Debug for Rewrite<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrite")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl<S> Rewrite<S> {
    pub(super) fn new(inner: S) -> Rewrite<S> {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewrite {
            inner,
            state: State::Through(PREFACE),
            head: [0; 9],
            input: vec![0; READ_AHEAD].into_boxed_slice(),
            pos: 0,
            end: 0,
            payload: Vec::new(),
            out: Vec::new(),
            out_at: 0,
            block: None,
            decoder,
            encoder: Encoder::new(),
        }
    }

    /// A complete frame header: what comes next.
    fn on_head(&mut self) -> io::Result<()> {
        let h = self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if self.block.is_some() && kind != CONTINUATION {
            return Err(invalid("a header block was interrupted by another frame"));
        }
        if kind == HEADERS || kind == CONTINUATION {
            let so_far = self.block.as_ref().map_or(0, |b| b.fragment.len());
            if so_far + len > MAX_HEADER_BLOCK {
                return Err(invalid(format!("a header block over {MAX_HEADER_BLOCK} bytes")));
            }
            self.payload.clear();
            self.state = State::Payload {
                kind,
                flags,
                stream,
                len,
            };
        } else {
            self.out.extend_from_slice(&h);
            self.state = State::Through(len);
        }
        Ok(())
    }

    /// A complete HEADERS or CONTINUATION payload.
    fn on_payload(&mut self, kind: u8, flags: u8, stream: u32) -> io::Result<()> {
        let payload = std::mem::take(&mut self.payload);
        if kind == HEADERS {
            let mut at = 0;
            let mut end = payload.len();
            if flags & PADDED != 0 {
                let pad = usize::from(
                    *payload
                        .first()
                        .ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?,
                );
                at = 1;
                end = end
                    .checked_sub(pad)
                    .filter(|&e| e >= at)
                    .ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
            }
            let priority = if flags & PRIORITY != 0 {
                let p: [u8; 5] = payload
                    .get(at..at + 5)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
                at += 5;
                Some(p)
            } else {
                None
            };
            let fragment = payload
                .get(at..end)
                .ok_or_else(|| invalid("a malformed HEADERS frame"))?
                .to_vec();
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment,
            });
        } else {
            let block = self
                .block
                .as_mut()
                .filter(|b| b.stream == stream)
                .ok_or_else(|| invalid("a CONTINUATION frame outside its header block"))?;
            block.fragment.extend_from_slice(&payload);
        }
        self.payload = payload;
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.emit(block)?;
        }
        Ok(())
    }

    /// Decodes a whole header block, mends its authority, and queues it for h2 as HEADERS (and
    /// CONTINUATION frames when it is longer than a frame).
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut headers = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                headers.push((name.into_owned(), value.into_owned()))
            })
            .map_err(|e| invalid(format!("HPACK: {e:?}")))?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && axum::http::uri::Authority::try_from(value.as_slice()).is_err() {
                *value = b"localhost".to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        let first_room = MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.frame(HEADERS, flags, block.stream, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, block.stream, &[chunk]);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        self.out.push(kind);
        self.out.push(flags);
        self.out.extend_from_slice(&stream.to_be_bytes());
        for p in parts {
            self.out.extend_from_slice(p);
        }
    }
}

impl<S: AsyncRead + Unpin> Rewrite<S> {
    /// Reads at most `want` more bytes of what the socket has after the unconsumed input; `Ok(0)`
    /// at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.pos > 0 {
            self.input.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        let to = (self.end + want.max(1)).min(self.input.len());
        let mut part = ReadBuf::new(&mut self.input[self.end..to]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    fn buffered(&self) -> &[u8] {
        &self.input[self.pos..self.end]
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewrite<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Through(0) => this.state = State::Head,
                State::Through(left) => {
                    let have = this.buffered().len();
                    if have > 0 {
                        let n = left.min(have).min(buf.remaining());
                        buf.put_slice(&this.input[this.pos..this.pos + n]);
                        this.pos += n;
                        this.state = State::Through(left - n);
                        return Poll::Ready(Ok(()));
                    }
                    // The rest of the payload goes straight into the caller's buffer, uninitialised
                    // as h2 hands it over (zeroing it first would cost a pass over every byte).
                    let limit = left.min(buf.remaining());
                    let n = {
                        // SAFETY: the slice is the unfilled part of `buf`; the reader only writes
                        // bytes into it (AsyncRead's contract) and reports how many it filled.
                        #[allow(unsafe_code)]
                        let unfilled = unsafe { &mut buf.unfilled_mut()[..limit] };
                        let mut part = ReadBuf::uninit(unfilled);
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
                        part.filled().len()
                    };
                    // SAFETY: the reader initialised the first `n` bytes of the unfilled part.
                    #[allow(unsafe_code)]
                    unsafe {
                        buf.assume_init(n);
                    }
                    buf.advance(n);
                    this.state = State::Through(left - n);
                    return Poll::Ready(Ok(()));
                }
                State::Head => {
                    if this.buffered().len() >= this.head.len() {
                        this.head.copy_from_slice(&this.input[this.pos..this.pos + 9]);
                        this.pos += 9;
                        this.on_head()?;
                        continue;
                    }
                    if ready!(this.poll_fill(cx, HEAD_READ))? == 0 {
                        return Poll::Ready(if this.buffered().is_empty() && this.block.is_none() {
                            Ok(())
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        });
                    }
                }
                State::Payload {
                    kind,
                    flags,
                    stream,
                    len,
                } => {
                    let missing = len - this.payload.len();
                    let take = missing.min(this.buffered().len());
                    if take > 0 {
                        let from = this.pos;
                        this.payload.extend_from_slice(&this.input[from..from + take]);
                        this.pos += take;
                    }
                    if this.payload.len() == len {
                        this.state = State::Head;
                        this.on_payload(kind, flags, stream)?;
                        continue;
                    }
                    if ready!(this.poll_fill(cx, len - this.payload.len()))? == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewrite<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

/// Runs `input` (a client's bytes, preface included) through the rewriter and returns what h2 would
/// read, for the tests and the fuzz target: an in-memory reader is always ready.
pub(super) fn rewrite_all(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut r = Rewrite::new(input);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut r).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Ok(out),
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    /// Splits what h2 would read into frames: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE], &preface()[..]);
        bytes = &bytes[PREFACE..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap());
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn headers(block: &[u8], decoder: &mut Decoder<'_>) -> Vec<(String, String)> {
        decoder
            .decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_the_rest_passes_through() {
        let mut client = Encoder::new();
        let req = |authority: &str, client: &mut Encoder<'_>| {
            client.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/inference.GRPCInferenceService/ServerLive"),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
            ])
        };
        let mut input = preface();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
        let first = req("tmp%2Fgrpc.sock", &mut client);
        // Padded, with a priority, split over a CONTINUATION.
        let mut payload = vec![2u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(&first[..5]);
        payload.extend([0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &first[5..]));
        input.extend(frame(0x0, END_STREAM, 1, b"0123456789"));
        // The second request refers to the client's dynamic table: the table stays in step.
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &req("tmp%2Fgrpc.sock", &mut client),
        ));
        input.extend(frame(HEADERS, END_HEADERS, 5, &req("example.com:8001", &mut client)));

        let out = rewrite_all(&input).unwrap();
        let got = frames(&out);
        assert_eq!(got.len(), 5);
        assert_eq!((got[0].0, &got[0].3[..]), (0x4, &[0u8, 3, 0, 0, 0, 100][..]));
        let mut h2 = Decoder::new();
        let (kind, flags, stream, payload) = &got[1];
        assert_eq!((*kind, *stream), (HEADERS, 1));
        assert_eq!(flags & (PRIORITY | END_HEADERS | PADDED), PRIORITY | END_HEADERS);
        assert_eq!(&payload[..5], &[0, 0, 0, 0, 16]);
        let h = headers(&payload[5..], &mut h2);
        assert!(h.contains(&(":authority".into(), "localhost".into())), "{h:?}");
        assert!(h.contains(&(":path".into(), "/inference.GRPCInferenceService/ServerLive".into())));
        assert_eq!(
            (got[2].0, got[2].1, &got[2].3[..]),
            (0x0, END_STREAM, &b"0123456789"[..])
        );
        assert_eq!(got[3].1, END_HEADERS | END_STREAM);
        let h = headers(&got[3].3, &mut h2);
        assert!(h.contains(&(":authority".into(), "localhost".into())), "{h:?}");
        // A valid authority is left alone.
        let h = headers(&got[4].3, &mut h2);
        assert!(h.contains(&(":authority".into(), "example.com:8001".into())), "{h:?}");
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        let mut ok = preface();
        ok.extend(frame(HEADERS, END_HEADERS, 1, &[0x82]));
        assert!(rewrite_all(&ok).is_ok());
        let cases: Vec<Vec<u8>> = vec![
            frame(HEADERS, PADDED | END_HEADERS, 1, &[]),
            frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]),
            frame(HEADERS, PRIORITY | END_HEADERS, 1, &[0, 0]),
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            [frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")].concat(),
            [
                frame(HEADERS, 0, 1, &[0x82]),
                frame(CONTINUATION, END_HEADERS, 3, &[0x82]),
            ]
            .concat(),
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]),
            // A dynamic table size update past what h2 advertises.
            frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0xff, 0x03]),
            // Cut mid-frame.
            frame(HEADERS, END_HEADERS, 1, &[0x82])[..7].to_vec(),
        ];
        for (k, case) in cases.into_iter().enumerate() {
            let mut input = preface();
            input.extend(case);
            assert!(rewrite_all(&input).is_err(), "case {k}");
        }
        let mut huge = preface();
        for _ in 0..(MAX_HEADER_BLOCK / MAX_FRAME + 2) {
            huge.extend(frame(
                if huge.len() == PREFACE { HEADERS } else { CONTINUATION },
                0,
                1,
                &[0; MAX_FRAME],
            ));
        }
        let e = rewrite_all(&huge).unwrap_err();
        assert!(e.to_string().contains("header block over"), "{e}");
    }

    #[test]
    fn long_blocks_are_split_into_frames_h2_accepts() {
        let mut client = Encoder::new();
        let big = "v".repeat(40_000);
        let block = client.encode([(&b":authority"[..], &b"a%2Fb"[..]), (b"x-big", big.as_bytes())]);
        let mut input = preface();
        input.extend(frame(HEADERS, 0, 1, &block[..MAX_FRAME]));
        input.extend(frame(CONTINUATION, 0, 1, &block[MAX_FRAME..2 * MAX_FRAME]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[2 * MAX_FRAME..]));
        let got = frames(&rewrite_all(&input).unwrap());
        assert!(got.len() >= 3);
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(got.last().unwrap().1 & END_HEADERS, END_HEADERS);
        let joined: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        let h = headers(&joined, &mut Decoder::new());
        assert_eq!(h[0], (":authority".into(), "localhost".into()));
        assert_eq!(h[1].1.len(), 40_000);
    }
}
