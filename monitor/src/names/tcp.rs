//! DNS over TCP: each stream's segments (from the server, in order) joined and cut into the
//! messages their two-byte length prefixes delimit. A stream is taken to start at a message
//! boundary when its first data is seen; a gap (a segment missed, or copied short by the
//! kernel) loses the stream: what it held and every later segment of it are counted with
//! their bytes, never parsed (after a gap, where the next message starts is not known).

use std::collections::HashMap;

use monitor_common::DnsHeader;

/// Streams followed at once; beyond, the least recently fed is dropped (counted).
const MAX_STREAMS: usize = 1024;
/// Bytes one stream may hold before its message is complete (a DNS message is at most 65535
/// bytes, with its prefix).
const MAX_HELD: usize = 65537;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StreamKey {
    cookie: u64,
    server: [u8; 16],
    server_port: u16,
    client_port: u16,
}

struct Stream {
    next_seq: u32,
    held: Vec<u8>,
    fed: u64,
    /// A gap lost the stream's framing: its segments are counted, not parsed.
    lost: bool,
}

/// Data a stream lost: its bytes are counted, never parsed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub segments: u64,
    pub bytes: u64,
}

#[derive(Default)]
pub struct Streams {
    streams: HashMap<StreamKey, Stream>,
    fed: u64,
    pub dropped: Dropped,
}

impl Streams {
    /// Adds one segment; returns the messages it completed. `complete` is false when the kernel
    /// copied less than the segment held (the stream cannot go on).
    pub fn segment(&mut self, h: &DnsHeader, data: &[u8], complete: bool) -> Vec<Vec<u8>> {
        let key = StreamKey { cookie: h.cookie, server: h.saddr, server_port: h.sport, client_port: h.dport };
        self.fed += 1;
        let len = h.payload_len;
        let fed = self.fed;
        if !self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS {
            self.drop_oldest();
        }
        let s = self.streams.entry(key).or_insert(Stream {
            next_seq: h.tcp_seq,
            held: Vec::new(),
            fed,
            lost: false,
        });
        s.fed = fed;
        if s.lost {
            self.dropped.segments += 1;
            self.dropped.bytes += u64::from(len);
            return Vec::new();
        }
        let ahead = h.tcp_seq.wrapping_sub(s.next_seq) as i32;
        if !complete || ahead > 0 {
            self.lose(&key, u64::from(len));
            return Vec::new();
        }
        // A retransmission: only what it carries beyond the data already taken is new.
        let old = ahead.unsigned_abs() as usize;
        let Some(new) = data.get(old..).filter(|d| !d.is_empty()) else { return Vec::new() };
        s.next_seq = h.tcp_seq.wrapping_add(len);
        s.held.extend_from_slice(new);
        let mut messages = Vec::new();
        while let Some(prefix) = s.held.get(..2) {
            let n = u16::from_be_bytes([prefix[0], prefix[1]]) as usize;
            if s.held.len() < 2 + n {
                break;
            }
            messages.push(s.held[2..2 + n].to_vec());
            s.held.drain(..2 + n);
        }
        if s.held.len() > MAX_HELD {
            self.lose(&key, 0);
        }
        messages
    }

    /// Marks a stream lost, counting what it held and `more` bytes that could not be added.
    fn lose(&mut self, key: &StreamKey, more: u64) {
        let held = self.streams.get_mut(key).map_or(0, |s| {
            s.lost = true;
            std::mem::take(&mut s.held).len() as u64
        });
        self.dropped.segments += 1;
        self.dropped.bytes += held + more;
    }

    fn drop_oldest(&mut self) {
        if let Some(key) = self.streams.iter().min_by_key(|(_, s)| s.fed).map(|(k, _)| *k) {
            let held = self.streams.remove(&key).map_or(0, |s| s.held.len() as u64);
            if held > 0 {
                self.dropped.segments += 1;
                self.dropped.bytes += held;
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(seq: u32, len: usize) -> DnsHeader {
        DnsHeader {
            ktime_ns: 0,
            cgroup_id: 1,
            cookie: 9,
            saddr: [10, 0, 0, 53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [0; 16],
            sport: 53,
            dport: 40000,
            family: 4,
            proto: 6,
            _pad: 0,
            tcp_seq: seq,
            payload_len: len as u32,
            captured: len as u32,
            _pad2: 0,
        }
    }

    #[test]
    fn joins_segments_and_splits_messages() {
        let mut s = Streams::default();
        let mut stream = vec![0, 3, b'a', b'b', b'c', 0, 2, b'x', b'y'];
        stream.extend([0, 4, 1, 2]);
        // Cut anywhere: the messages come out whole, in order.
        let (a, b) = stream.split_at(4);
        let (b, c) = b.split_at(4);
        assert!(s.segment(&header(1000, a.len()), a, true).is_empty());
        assert_eq!(s.segment(&header(1004, b.len()), b, true), vec![b"abc".to_vec()]);
        // A retransmission changes nothing.
        assert!(s.segment(&header(1004, b.len()), b, true).is_empty());
        assert_eq!(s.segment(&header(1008, c.len()), c, true), vec![b"xy".to_vec()]);
        assert_eq!(s.dropped, Dropped::default());
        assert_eq!(s.len(), 1, "two bytes of the third message are held");
    }

    #[test]
    fn a_gap_loses_the_stream_and_every_later_segment_is_counted() {
        let mut s = Streams::default();
        s.segment(&header(1, 3), &[0, 9, 1], true);
        assert!(s.segment(&header(10, 2), &[5, 5], true).is_empty());
        assert_eq!(s.dropped, Dropped { segments: 1, bytes: 3 + 2 });
        // The next segment would start mid-message: counted, not parsed.
        assert!(s.segment(&header(12, 4), &[0, 2, 7, 7], true).is_empty());
        assert_eq!(s.dropped, Dropped { segments: 2, bytes: 3 + 2 + 4 });
    }

    #[test]
    fn a_retransmission_with_new_data_gives_the_new_part() {
        let mut s = Streams::default();
        assert!(s.segment(&header(100, 3), &[0, 4, b'a'], true).is_empty());
        // Re-sent from 101 with two more bytes, then the rest.
        assert!(s.segment(&header(101, 4), &[4, b'a', b'b', b'c'], true).is_empty());
        assert_eq!(s.segment(&header(105, 1), b"d", true), vec![b"abcd".to_vec()]);
        assert_eq!(s.dropped, Dropped::default());
    }

    #[test]
    fn a_segment_ending_one_message_and_starting_the_next_is_not_too_much() {
        let mut s = Streams::default();
        let mut first = vec![0xff, 0xff];
        first.extend(vec![1u8; 65535 - 10]);
        assert!(s.segment(&header(0, first.len()), &first, true).is_empty());
        // The first message's last 10 bytes and the next one's first 20.
        let mut tail = vec![1u8; 10];
        tail.extend([0, 30]);
        tail.extend(vec![2u8; 18]);
        let out = s.segment(&header(first.len() as u32, tail.len()), &tail, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 65535);
        assert_eq!(s.dropped, Dropped::default());
    }
}
