//! The log's format: a file's header, and entries that carry their length, CRC and
//! sequence number, so that reading stops at a torn entry or a stale one.

/// The first bytes of a log file.
const MAGIC: &[u8; 8] = b"AHWAL\x00\x00\x01";
/// Magic and the sequence number of the file's first entry.
pub(super) const HEADER: u64 = 16;

/// A file's header: [`MAGIC`] and the sequence number of its first entry.
pub(super) fn header(first: u64) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&first.to_le_bytes());
    h
}

/// One logged commit.
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) space: String,
    pub(super) writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// `len u32 | crc32 u32 | seq u64 | space u16+bytes | count u32 | (key u32+bytes | 0 or 1+value u32+bytes)*`
pub(super) fn encode<'a>(
    out: &mut Vec<u8>,
    seq: u64,
    space: &str,
    writes: impl ExactSizeIterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(space.len() as u16).to_le_bytes());
    out.extend_from_slice(space.as_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    let payload = start + 8;
    let len = (out.len() - payload) as u32;
    let crc = crc32fast::hash(&out[payload..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload].copy_from_slice(&crc.to_le_bytes());
}

/// A file's first sequence number and its entries, up to the first that is torn, stale or
/// out of sequence; `None` without a valid header.
pub(super) fn parse(bytes: &[u8]) -> Option<(u64, Vec<Entry>)> {
    let first = bytes.strip_prefix(MAGIC.as_slice())?.get(..8)?;
    let first = u64::from_le_bytes(first.try_into().ok()?);
    let mut r = Cursor(bytes.get(HEADER as usize..)?);
    let mut entries = Vec::new();
    while let Some(entry) = r.entry() {
        if entry.seq != first + entries.len() as u64 {
            break;
        }
        entries.push(entry);
    }
    Some((first, entries))
}

pub(super) struct Cursor<'a>(pub(super) &'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub(super) fn entry(&mut self) -> Option<Entry> {
        let len = self.u32()? as usize;
        let crc = self.u32()?;
        let payload = self.take(len)?;
        if len == 0 || crc32fast::hash(payload) != crc {
            return None;
        }
        let mut p = Cursor(payload);
        let seq = u64::from_le_bytes(p.take(8)?.try_into().ok()?);
        let space_len = u16::from_le_bytes(p.take(2)?.try_into().ok()?) as usize;
        let space = String::from_utf8(p.take(space_len)?.to_vec()).ok()?;
        let count = p.u32()?;
        let mut writes = Vec::new();
        for _ in 0..count {
            let key_len = p.u32()? as usize;
            let key = p.take(key_len)?.to_vec();
            let value = match p.take(1)?[0] {
                0 => None,
                _ => {
                    let value_len = p.u32()? as usize;
                    Some(p.take(value_len)?.to_vec())
                }
            };
            writes.push((key, value));
        }
        Some(Entry { seq, space, writes })
    }
}

#[cfg(test)]
pub(super) mod testing {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn writes(pairs: &[(&str, Option<&str>)]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    pub(crate) fn log(out: &mut Vec<u8>, seq: u64, space: &str, pairs: &[(&str, Option<&str>)]) {
        encode(out, seq, space, writes(pairs).iter());
    }
}

#[cfg(test)]
mod tests {
    use super::testing::log;
    use super::*;

    #[test]
    fn entries_round_trip_and_parsing_stops_at_a_torn_or_stale_entry() {
        let mut file = header(7).to_vec();
        log(&mut file, 7, "addon/a", &[("k", Some("v")), ("gone", None)]);
        log(&mut file, 8, "addon/b", &[("x", Some(""))]);
        let (first, entries) = parse(&file).expect("a valid file");
        assert_eq!((first, entries.len()), (7, 2));
        assert_eq!(entries[0].space, "addon/a");
        assert_eq!(entries[0].writes, vec![(b"gone".to_vec(), None), (b"k".to_vec(), Some(b"v".to_vec()))]);

        // A torn last entry: the first survives.
        let torn = &file[..file.len() - 3];
        assert_eq!(parse(torn).map(|(_, e)| e.len()), Some(1));
        // A flipped byte in the second entry's payload: its CRC fails.
        let mut flipped = file.clone();
        let at = flipped.len() - 2;
        flipped[at] ^= 1;
        assert_eq!(parse(&flipped).map(|(_, e)| e.len()), Some(1));
        // A stale entry from the file's previous turn (an older sequence number) ends it.
        let mut stale = file.clone();
        log(&mut stale, 3, "addon/a", &[("old", Some("1"))]);
        assert_eq!(parse(&stale).map(|(_, e)| e.len()), Some(2));
        // No header, no entries.
        assert!(parse(&file[HEADER as usize..]).is_none());
    }
}
