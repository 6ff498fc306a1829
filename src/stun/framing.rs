//! Framing over a byte stream (RFC 8656 §7.2.2, §12.5; RFC 6062): TURN over TCP or TLS
//! carries STUN messages (20-byte header + the length in that header) and ChannelData
//! messages (4-byte header + length, padded to a multiple of 4) back to back.
//!
//! Owns: finding frame boundaries and holding the one partial frame a connection may have
//! between reads, bounded by a maximum frame size. Frames that sit whole in one receive
//! buffer are handed out as slices of that buffer (no copy); only a frame split across reads
//! is gathered in the connection's own buffer.
//! Must not: parse attributes, check integrity or know about sockets: a frame is bytes.

use bytes::BytesMut;

/// Largest frame the wire format allows: a STUN message with the largest length that is a
/// multiple of 4 (ChannelData is at most 4 + 65,535 padded to 65,536).
pub const MAX_FRAME: usize = crate::stun::HEADER_LEN + 65_532;

/// Bytes needed to know a frame's length.
const LENGTH_PREFIX: usize = 4;

/// Why a stream cannot be framed; the connection is closed (and counted) on any of these.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// First two bits 10 or 11: neither STUN nor ChannelData, so the stream is lost.
    #[error("neither a STUN message nor ChannelData")]
    NotTurn,
    /// A STUN length that is not a multiple of 4 (RFC 8489 §5).
    #[error("STUN message length is not a multiple of 4")]
    BadStunLength,
    /// The frame is longer than this connection accepts.
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
}

/// The length on the wire of the frame whose first bytes are `prefix`, padding included;
/// `Ok(None)` while fewer than 4 bytes are known.
pub fn frame_len(prefix: &[u8]) -> Result<Option<usize>, FramingError> {
    let [a, _, c, d, ..] = *prefix else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([c, d]));
    match a >> 6 {
        0 if len % 4 != 0 => Err(FramingError::BadStunLength),
        0 => Ok(Some(crate::stun::HEADER_LEN + len)),
        1 => Ok(Some(LENGTH_PREFIX + len.next_multiple_of(4))),
        _ => Err(FramingError::NotTurn),
    }
}

/// Splits one connection's byte stream into frames.
#[derive(Debug)]
pub struct Reassembler {
    /// The start of a frame whose end has not arrived yet; empty between frames.
    partial: BytesMut,
    max_frame: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(MAX_FRAME)
    }
}

impl Reassembler {
    /// A reassembler refusing frames longer than `max_frame` bytes (at least a STUN header).
    pub fn new(max_frame: usize) -> Self {
        Reassembler {
            partial: BytesMut::new(),
            max_frame: max_frame.max(crate::stun::HEADER_LEN),
        }
    }

    /// Changes the limit for frames whose header has not arrived yet (a partial frame
    /// already accepted stays).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.max(crate::stun::HEADER_LEN);
    }

    /// Bytes held of a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Memory this reassembler holds (its buffer's capacity).
    pub fn capacity(&self) -> usize {
        self.partial.capacity()
    }

    /// Gives back the buffer of a connection that has nothing pending, so an idle
    /// connection holds no memory for frames.
    pub fn shrink(&mut self) {
        if self.partial.is_empty() {
            self.partial = BytesMut::new();
        }
    }

    /// Takes the bytes of one read and calls `frame` with each frame they complete, in
    /// order. Frames lying whole in `data` are passed as slices of it. On an error the
    /// frames before the bad one have been delivered and the stream cannot go on.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(&[u8]),
    ) -> Result<(), FramingError> {
        if !self.partial.is_empty() {
            data = self.complete_partial(data, &mut frame)?;
        }
        loop {
            match self.checked_len(data)? {
                Some(n) if n <= data.len() => {
                    frame(&data[..n]);
                    data = &data[n..];
                }
                _ => break,
            }
        }
        if !data.is_empty() {
            // `data` is shorter than its frame, which is within max_frame. The buffer grows
            // with what arrives, not with what a header announces: a peer announcing 64 KiB
            // and sending 10 bytes costs 10 bytes.
            self.partial.extend_from_slice(data);
        }
        Ok(())
    }

    /// Moves bytes from `data` into the partial frame until it is whole (delivering it) or
    /// `data` runs out; returns what is left of `data`.
    fn complete_partial<'a>(
        &mut self,
        mut data: &'a [u8],
        frame: &mut impl FnMut(&[u8]),
    ) -> Result<&'a [u8], FramingError> {
        if self.partial.len() < LENGTH_PREFIX {
            let take = (LENGTH_PREFIX - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        let Some(n) = self.checked_len(&self.partial)? else {
            return Ok(data);
        };
        let take = (n - self.partial.len()).min(data.len());
        self.partial.extend_from_slice(&data[..take]);
        data = &data[take..];
        if self.partial.len() == n {
            frame(&self.partial);
            // Keeps the capacity for the next split frame; `shrink` gives it back.
            self.partial.clear();
        }
        Ok(data)
    }

    fn checked_len(&self, prefix: &[u8]) -> Result<Option<usize>, FramingError> {
        match frame_len(prefix)? {
            Some(n) if n > self.max_frame => Err(FramingError::TooLong(n)),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stun(len: u16, fill: u8) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&crate::stun::MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[fill; 12]);
        m.extend(std::iter::repeat_n(fill, usize::from(len)));
        m
    }

    fn channel_data(len: u16, fill: u8) -> Vec<u8> {
        let mut m = Vec::new();
        crate::stun::ChannelData::encode(0x4001, &vec![fill; usize::from(len)], true, &mut m);
        m
    }

    fn collect(r: &mut Reassembler, reads: &[&[u8]]) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut out = Vec::new();
        for read in reads {
            r.push(read, |f| out.push(f.to_vec()))?;
        }
        Ok(out)
    }

    #[test]
    fn frame_lengths_follow_the_header() {
        assert_eq!(frame_len(&[0, 1, 0]), Ok(None));
        assert_eq!(frame_len(&stun(8, 0)), Ok(Some(28)));
        assert_eq!(frame_len(&channel_data(5, 0)), Ok(Some(12)), "padded to 4");
        assert_eq!(frame_len(&[0x40, 0, 0, 4]), Ok(Some(8)));
        assert_eq!(frame_len(&[0, 1, 0, 5]), Err(FramingError::BadStunLength));
        assert_eq!(frame_len(&[0x80, 1, 0, 4]), Err(FramingError::NotTurn));
        assert_eq!(frame_len(&[0xC0, 1, 0, 4]), Err(FramingError::NotTurn));
    }

    #[test]
    fn whole_frames_in_one_read_are_not_copied() {
        let mut read = stun(4, 1);
        read.extend(channel_data(3, 2));
        let mut r = Reassembler::default();
        let mut seen = Vec::new();
        r.push(&read, |f| {
            seen.push((f.as_ptr() as usize - read.as_ptr() as usize, f.len()))
        })
        .unwrap();
        assert_eq!(seen, vec![(0, 24), (24, 8)]);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.capacity(), 0, "nothing was buffered");
    }

    #[test]
    fn a_frame_split_byte_by_byte_comes_out_once() {
        let frame = stun(12, 7);
        let reads: Vec<&[u8]> = frame.chunks(1).collect();
        let mut r = Reassembler::default();
        assert_eq!(collect(&mut r, &reads).unwrap(), vec![frame.clone()]);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn frames_over_the_limit_are_refused_before_they_are_buffered() {
        let mut r = Reassembler::new(100);
        let big = channel_data(200, 1);
        assert_eq!(r.push(&big[..10], |_| {}), Err(FramingError::TooLong(204)));
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(&big[..2], |_| {}), Ok(()));
        assert_eq!(r.push(&big[2..10], |_| {}), Err(FramingError::TooLong(204)));
        assert!(r.capacity() < 100);
    }

    #[test]
    fn the_limit_can_change_between_frames() {
        let mut r = Reassembler::new(100);
        let big = channel_data(200, 1);
        assert_eq!(r.push(&big, |_| {}), Err(FramingError::TooLong(204)));
        let mut r = Reassembler::new(100);
        r.set_max_frame(MAX_FRAME);
        let mut n = 0;
        r.push(&big, |_| n += 1).unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn an_announced_length_reserves_nothing() {
        let mut r = Reassembler::default();
        let header = stun(65_532, 0);
        r.push(&header[..10], |_| panic!("not whole")).unwrap();
        assert_eq!(r.pending(), 10);
        assert!(r.capacity() < 1024, "{} bytes held for 10", r.capacity());
    }

    #[test]
    fn good_frames_before_garbage_are_delivered() {
        let mut read = channel_data(4, 1);
        read.extend_from_slice(&[0xFF, 0, 0, 0]);
        let mut r = Reassembler::default();
        let mut n = 0;
        assert_eq!(r.push(&read, |_| n += 1), Err(FramingError::NotTurn));
        assert_eq!(n, 1);
    }

    #[test]
    fn shrink_frees_an_idle_buffer_only() {
        let mut r = Reassembler::default();
        let frame = stun(400, 3);
        r.push(&frame[..300], |_| {}).unwrap();
        r.shrink();
        assert_eq!(r.pending(), 300);
        let mut got = 0;
        r.push(&frame[300..], |f| got = f.len()).unwrap();
        assert_eq!(got, 420);
        assert!(r.capacity() > 0);
        r.shrink();
        assert_eq!(r.capacity(), 0);
    }

    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (0u16..200, any::<u8>()).prop_map(|(n, b)| stun(n * 4, b)),
            (0u16..800, any::<u8>()).prop_map(|(n, b)| channel_data(n, b)),
        ]
    }

    proptest! {
        /// Arbitrary split points give the same frames as one read of the whole stream.
        #[test]
        fn split_points_do_not_change_the_frames(
            frames in prop::collection::vec(any_frame(), 1..20),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let stream: Vec<u8> = frames.concat();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(0);
            cuts.push(stream.len());
            cuts.sort_unstable();
            let reads: Vec<&[u8]> = cuts.windows(2).map(|w| &stream[w[0]..w[1]]).collect();
            let mut r = Reassembler::default();
            prop_assert_eq!(collect(&mut r, &reads).unwrap(), frames);
            prop_assert_eq!(r.pending(), 0);
        }
    }
}
