//! A bounded, linear Server-Sent Events parser for Coder's watch streams.
//!
//! Every byte is looked at once (no re-scan of what is buffered), and a frame (the bytes
//! between two blank lines, the unfinished line included) may not grow beyond a limit: a peer
//! that never ends a line or a frame costs at most that much memory and linear time.
//! Line ends are LF, CRLF or CR, as the SSE specification allows; `event` and `data` fields
//! are kept, comments and other fields are skipped.

/// One complete frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    /// The `event:` field (empty when absent).
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: Vec<u8>,
}

/// The stream broke the frame size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a watch stream frame exceeded {limit} bytes")]
pub struct FrameTooLarge {
    /// The limit in bytes.
    pub limit: usize,
}

/// Incremental parser: feed chunks with [`SseParser::push`], get the frames they complete.
#[derive(Debug)]
pub struct SseParser {
    limit: usize,
    /// The unfinished line.
    line: Vec<u8>,
    /// The frame being built.
    frame: Frame,
    /// Bytes of the frame so far, finished lines and their ends included.
    frame_bytes: usize,
    /// The last chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
}

impl SseParser {
    /// A parser refusing frames larger than `limit` bytes.
    pub fn new(limit: usize) -> SseParser {
        SseParser {
            limit,
            line: Vec::new(),
            frame: Frame::default(),
            frame_bytes: 0,
            after_cr: false,
        }
    }

    /// Consumes `chunk` and returns the frames it completes, or an error once the frame being
    /// read exceeds the limit (the parser must then be dropped with its stream).
    pub fn push(&mut self, mut chunk: &[u8]) -> Result<Vec<Frame>, FrameTooLarge> {
        let mut frames = Vec::new();
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
                self.count(1)?;
            }
        }
        while let Some(end) = chunk.iter().position(|b| matches!(b, b'\n' | b'\r')) {
            self.count(end + 1)?;
            self.line.extend_from_slice(&chunk[..end]);
            let mut next = end + 1;
            if chunk[end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => {
                        next += 1;
                        self.count(1)?;
                    }
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            chunk = &chunk[next..];
            if let Some(frame) = self.end_line() {
                frames.push(frame);
            }
        }
        self.count(chunk.len())?;
        self.line.extend_from_slice(chunk);
        Ok(frames)
    }

    /// Adds `n` bytes to the frame's size, failing beyond the limit.
    fn count(&mut self, n: usize) -> Result<(), FrameTooLarge> {
        self.frame_bytes = self.frame_bytes.saturating_add(n);
        if self.frame_bytes > self.limit {
            return Err(FrameTooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// Interprets the finished line; a blank line completes the frame.
    fn end_line(&mut self) -> Option<Frame> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.frame_bytes = 0;
            let frame = std::mem::take(&mut self.frame);
            return (!frame.event.is_empty() || !frame.data.is_empty()).then_some(frame);
        }
        let (name, value) = match line.iter().position(|b| *b == b':') {
            Some(0) => return None, // comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (&line[..], &[][..]),
        };
        match name {
            b"event" => self.frame.event = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                if !self.frame.data.is_empty() {
                    self.frame.data.push(b'\n');
                }
                self.frame.data.extend_from_slice(value);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: &str, data: &str) -> Frame {
        Frame {
            event: event.into(),
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn frames_split_anywhere_parse_the_same() {
        let stream =
            b"event: ping\n\n: comment\nevent: data\ndata: {\"a\":\ndata: 1}\nid: 7\n\nevent: error\r\ndata: x\r\n\r\nevent: data\rdata:y\r\r";
        let want = vec![
            frame("ping", ""),
            frame("data", "{\"a\":\n1}"),
            frame("error", "x"),
            frame("data", "y"),
        ];
        for split in 0..stream.len() {
            let mut p = SseParser::new(1024);
            let (a, b) = stream.split_at(split);
            let mut got = p.push(a).expect("within limit");
            got.extend(p.push(b).expect("within limit"));
            assert_eq!(got, want, "split at {split}");
        }
        let mut p = SseParser::new(1024);
        let got: Vec<Frame> = stream
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)).expect("within limit"))
            .collect();
        assert_eq!(got, want, "byte by byte");
    }

    #[test]
    fn an_unterminated_frame_is_refused_at_the_limit() {
        let mut p = SseParser::new(100);
        assert_eq!(p.push(&[b'x'; 60]), Ok(vec![]));
        assert_eq!(p.push(&[b'x'; 60]), Err(FrameTooLarge { limit: 100 }));

        // Many short lines without a blank one count too.
        let mut p = SseParser::new(100);
        assert_eq!(
            p.push(&b"data: 1\n".repeat(13)),
            Err(FrameTooLarge { limit: 100 })
        );

        // Frames below the limit, however many, pass.
        let mut p = SseParser::new(100);
        let frames = p
            .push(&b"event: ping\n\n".repeat(1000))
            .expect("small frames");
        assert_eq!(frames.len(), 1000);
    }

    #[test]
    fn buffered_bytes_stay_below_the_limit() {
        let mut p = SseParser::new(1 << 20);
        for _ in 0..15 {
            p.push(&[b'y'; 65536]).expect("below the limit");
        }
        assert!(p.line.capacity() <= 2 << 20, "{}", p.line.capacity());
        assert!(p.push(&[b'y'; 65537]).is_err());
    }
}
