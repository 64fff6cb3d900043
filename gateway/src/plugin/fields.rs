//! The `fields` encoding of the WIT: name/value pairs in one flat byte list.
//!
//! Headers cross into a plugin as one list instead of one string per name and value, so a hook
//! call costs one allocation in the guest rather than dozens. Each entry is the name's length
//! (u32, little-endian), the name, the value's length, the value.

use http::HeaderMap;

/// Appends one entry.
pub fn push(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.reserve(8 + name.len() + value.len());
    block.extend_from_slice(&(name.len() as u32).to_le_bytes());
    block.extend_from_slice(name);
    block.extend_from_slice(&(value.len() as u32).to_le_bytes());
    block.extend_from_slice(value);
}

/// Removes every entry named `name`, moving the later entries down in place; a malformed tail
/// is dropped.
pub fn remove(block: &mut Vec<u8>, name: &[u8]) {
    let (mut kept, mut at) = (0, 0);
    loop {
        let Some(Ok((entry_name, value))) = entries(&block[at..]).next() else { break };
        let (len, matches) = (8 + entry_name.len() + value.len(), entry_name == name);
        if !matches {
            if kept != at {
                block.copy_within(at..at + len, kept);
            }
            kept += len;
        }
        at += len;
    }
    block.truncate(kept);
}

/// Encodes every header, repeated ones in order.
pub fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let size: usize = headers.iter().map(|(n, v)| 8 + n.as_str().len() + v.len()).sum();
    let mut block = Vec::with_capacity(size);
    append_headers(&mut block, headers);
    block
}

/// Appends every header to `block`, repeated ones in order.
pub fn append_headers(block: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        push(block, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Runs `f` with this thread's scratch buffer, emptied: hook arguments are encoded there instead
/// of in a new allocation per call.
pub fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            f(&mut buffer)
        }
        // Only a hook call inside a hook call could get here; give it a buffer of its own.
        Err(_) => f(&mut Vec::new()),
    })
}

/// The entries of a `fields` list, in order; a length running past the end is an error.
pub fn entries(mut buf: &[u8]) -> impl Iterator<Item = Result<(&[u8], &[u8]), String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let entry = chunk(&mut buf).and_then(|name| Some((name, chunk(&mut buf)?)));
        if entry.is_none() {
            buf = &[];
        }
        Some(entry.ok_or_else(|| "a `fields` list is cut off".to_string()))
    })
}

/// The kind of a `header-changes` entry, numbered as the WIT numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Replace every value (0).
    Set,
    /// Add a value (1).
    Append,
    /// Remove the header (2).
    Remove,
}

/// The changes of a `header-changes` list, in order: kind, name, value (empty for `Remove`). An
/// unknown kind or a cut-off entry is an error, and the last item.
pub fn header_changes(mut buf: &[u8]) -> impl Iterator<Item = Result<(Change, &[u8], &[u8]), String>> {
    std::iter::from_fn(move || {
        let (&kind, rest) = buf.split_first()?;
        buf = rest;
        let change = match kind {
            0 => Change::Set,
            1 => Change::Append,
            2 => Change::Remove,
            other => {
                buf = &[];
                return Some(Err(format!("unknown header change kind {other}")));
            }
        };
        let entry = chunk(&mut buf).and_then(|name| match change {
            Change::Remove => Some((change, name, &[][..])),
            _ => Some((change, name, chunk(&mut buf)?)),
        });
        if entry.is_none() {
            buf = &[];
        }
        Some(entry.ok_or_else(|| "a `header-changes` list is cut off".to_string()))
    })
}

/// Takes one length-prefixed chunk off the front of `buf`.
fn chunk<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = buf.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (chunk, rest) = rest.split_at(len);
    *buf = rest;
    Some(chunk)
}

/// What the `head` of a WIT request starts with, before the headers.
pub struct RequestLine<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`.
    pub path: &'a str,
    /// `:query`.
    pub query: &'a str,
    /// `:client-ip`.
    pub client_ip: &'a str,
    /// `:route`.
    pub route: &'a str,
}

impl RequestLine<'_> {
    /// The pseudo-header entries, in the order the WIT defines.
    fn entries(&self) -> [(&str, &str); 5] {
        [
            (":method", self.method),
            (":path", self.path),
            (":query", self.query),
            (":client-ip", self.client_ip),
            (":route", self.route),
        ]
    }
}

/// Encodes a request's `head` into `buffer`, replacing what it held: the pseudo-header entries,
/// then the headers.
pub fn encode_request(buffer: &mut Vec<u8>, line: &RequestLine<'_>, headers: &HeaderMap) {
    buffer.clear();
    for (name, value) in line.entries() {
        push(buffer, name.as_bytes(), value.as_bytes());
    }
    append_headers(buffer, headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_changes_and_entries_decode_and_refuse_what_is_cut_off() {
        let changes = [&b"\0\x01\0\0\0a\x01\0\0\x001"[..], b"\x02\x01\0\0\0b", b"\x01\x01\0\0\0c\0\0\0\0"].concat();
        let decoded: Vec<_> = header_changes(&changes).collect();
        assert_eq!(
            decoded,
            [Ok((Change::Set, &b"a"[..], &b"1"[..])), Ok((Change::Remove, b"b", b"")), Ok((Change::Append, b"c", b""))]
        );
        assert!(header_changes(&changes[..changes.len() - 1]).last().unwrap().is_err());
        assert_eq!(header_changes(b"\x09").collect::<Vec<_>>(), [Err("unknown header change kind 9".to_string())]);

        let mut block = Vec::new();
        push(&mut block, b"k", b"v");
        assert_eq!(entries(&block).collect::<Vec<_>>(), [Ok((&b"k"[..], &b"v"[..]))]);
        assert!(entries(&block[..block.len() - 1]).all(|e| e.is_err()));
    }

    #[test]
    fn encodes_repeated_headers_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("a", "1".parse().unwrap());
        headers.append("a", "22".parse().unwrap());
        let block = encode_headers(&headers);
        let expected: Vec<u8> =
            [&[1, 0, 0, 0][..], b"a", &[1, 0, 0, 0], b"1", &[1, 0, 0, 0], b"a", &[2, 0, 0, 0], b"22"].concat();
        assert_eq!(block, expected);

        let line = RequestLine { method: "GET", path: "/p", query: "", client_ip: "192.0.2.1", route: "r" };
        let mut buffer = b"stale".to_vec();
        encode_request(&mut buffer, &line, &headers);
        let mut pseudo = Vec::new();
        for (name, value) in
            [(":method", "GET"), (":path", "/p"), (":query", ""), (":client-ip", "192.0.2.1"), (":route", "r")]
        {
            push(&mut pseudo, name.as_bytes(), value.as_bytes());
        }
        assert_eq!(buffer, [pseudo, block].concat(), "the pseudo-headers, then the headers, and nothing before");
    }

    #[test]
    fn removes_every_entry_of_a_name_in_place() {
        let mut block = Vec::new();
        for (name, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
            push(&mut block, name.as_bytes(), value.as_bytes());
        }
        remove(&mut block, b"a");
        let left: Vec<_> = entries(&block).map(Result::unwrap).collect();
        assert_eq!(left, [(&b"b"[..], &b"2"[..]), (b"c", b"4")]);
        remove(&mut block, b"z");
        assert_eq!(entries(&block).count(), 2);
        block.push(7);
        remove(&mut block, b"b");
        assert_eq!(
            entries(&block).map(Result::unwrap).collect::<Vec<_>>(),
            [(&b"c"[..], &b"4"[..])],
            "the cut-off tail is dropped"
        );
    }
}
