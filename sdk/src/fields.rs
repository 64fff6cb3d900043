//! The `fields` codec: name/value pairs in one flat byte list, as the WIT file defines them.
//!
//! Each entry is `name length (u32 LE)`, `name`, `value length (u32 LE)`, `value`. The host sends
//! request headers, response headers and the request context this way, so they cross into the
//! plugin as one copy. [`Fields`] keeps that buffer as it came and reads it in place; a change
//! rewrites the buffer, so later reads in the same hook see it. Header lists are short, so a
//! linear scan beats building a map the hook may never use.
//!
//! A malformed buffer (a length running past the end) is read up to the last whole entry; the
//! codec never panics.

use std::fmt;

use crate::HeaderOp;

/// How names compare: header names ignore ASCII case, context keys do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Names {
    /// Header names: ASCII case-insensitive.
    CaseInsensitive,
    /// Context keys: exact.
    Exact,
}

impl Names {
    fn matches(self, stored: &[u8], wanted: &[u8]) -> bool {
        match self {
            Names::CaseInsensitive => stored.eq_ignore_ascii_case(wanted),
            Names::Exact => stored == wanted,
        }
    }
}

/// A list of name/value pairs in the flat `fields` encoding.
///
/// The entries are `buf[start..]`; the bytes before `start` belong to someone else (the request
/// line's pseudo-header entries, which [`Request`](crate::Request) reads in place) and are never
/// touched, so offsets into them stay valid whatever the entries go through.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fields {
    buf: Vec<u8>,
    start: usize,
    names: Names,
}

impl Fields {
    /// Wraps a buffer received from the host, without decoding it.
    pub(crate) fn from_bytes(buf: Vec<u8>, names: Names) -> Self {
        Fields::after(buf, 0, names)
    }

    /// Wraps a buffer whose entries start at `start` (at most `buf.len()`).
    pub(crate) fn after(buf: Vec<u8>, start: usize, names: Names) -> Self {
        Fields { start: start.min(buf.len()), buf, names }
    }

    /// The whole buffer, the bytes before `start` included.
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// An empty list.
    pub(crate) fn new(names: Names) -> Self {
        Fields::from_bytes(Vec::new(), names)
    }

    /// The encoded bytes.
    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The encoded bytes, for the host.
    #[cfg(test)]
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// Every entry of an encoded buffer, in order.
    pub(crate) fn entries(buf: &[u8]) -> Iter<'_> {
        Iter { rest: buf }
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.buf[self.start..] }
    }

    /// Every value stored under `name`, in order.
    pub(crate) fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let names = self.names;
        self.iter().filter(move |(n, _)| names.matches(n, name.as_bytes())).map(|(_, v)| v)
    }

    /// The first value stored under `name`.
    pub(crate) fn first(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// The first value stored under `name`, if it is UTF-8.
    pub(crate) fn first_str(&self, name: &str) -> Option<&str> {
        self.first(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Adds an entry at the end, keeping the existing ones.
    pub(crate) fn append(&mut self, name: &[u8], value: &[u8]) {
        push_entry(&mut self.buf, name, value);
    }

    /// Removes every entry stored under `name`, moving the later entries down in place.
    pub(crate) fn remove(&mut self, name: &[u8]) {
        let (mut kept, mut at) = (self.start, self.start);
        while let Some((n, v)) = Fields::entries(&self.buf[at..]).next() {
            let len = 8 + n.len() + v.len();
            if !self.names.matches(n, name) {
                // Nothing moves until the first removed entry.
                if kept != at {
                    self.buf.copy_within(at..at + len, kept);
                }
                kept += len;
            }
            at += len;
        }
        // Past `at` lies only a malformed tail, which is dropped.
        self.buf.truncate(kept);
    }

    /// Replaces every entry stored under `name` with one entry holding `value`.
    pub(crate) fn set(&mut self, name: &[u8], value: &[u8]) {
        self.remove(name);
        self.append(name, value);
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))))
            .finish()
    }
}

/// The entries of a [`Fields`] buffer, read in place.
pub(crate) struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    fn chunk(&mut self) -> Option<&'a [u8]> {
        let (len, after) = self.rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
        if after.len() < len {
            return None;
        }
        let (chunk, rest) = after.split_at(len);
        self.rest = rest;
        Some(chunk)
    }
}

impl<'a> Iter<'a> {
    fn entry(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let name = self.chunk()?;
        let value = self.chunk()?;
        Some((name, value))
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entry();
        if entry.is_none() {
            // Malformed or finished: stop for good.
            self.rest = &[];
        }
        entry
    }
}

/// Makes room for `additional` more bytes: an empty buffer starts at 256 bytes and a full one at
/// least doubles, so a hook's few changes cost one allocation, not one per growing extend.
fn make_room(buf: &mut Vec<u8>, additional: usize) {
    if buf.capacity() - buf.len() < additional {
        buf.reserve(additional.max(buf.len()).max(256));
    }
}

/// Appends an entry to an encoded buffer.
pub(crate) fn push_entry(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let (Ok(name_len), Ok(value_len)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
        // Over 4 GiB: cannot be encoded, and cannot have come from the host either.
        return;
    };
    make_room(buf, 8 + name.len() + value.len());
    buf.extend_from_slice(&name_len.to_le_bytes());
    buf.extend_from_slice(name);
    buf.extend_from_slice(&value_len.to_le_bytes());
    buf.extend_from_slice(value);
}

/// The kind of a header change, numbered as the WIT's `header-changes` encoding numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Change {
    Set = 0,
    Append = 1,
    Remove = 2,
}

/// Appends a header change to a `header-changes` buffer, lower-casing the name in place (no
/// allocation), and returns the name as written. `value` is ignored for [`Change::Remove`].
pub(crate) fn push_change<'b>(buf: &'b mut Vec<u8>, change: Change, name: &str, value: &str) -> &'b [u8] {
    let (Ok(name_len), Ok(value_len)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
        // Over 4 GiB: cannot be encoded; the gateway would refuse such a header anyway.
        return &[];
    };
    make_room(buf, 9 + name.len() + value.len());
    buf.push(change as u8);
    buf.extend_from_slice(&name_len.to_le_bytes());
    let name_at = buf.len();
    buf.extend_from_slice(name.as_bytes());
    buf[name_at..].make_ascii_lowercase();
    if change != Change::Remove {
        buf.extend_from_slice(&value_len.to_le_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    &buf[name_at..name_at + name.len()]
}

/// The changes of a `header-changes` buffer, for tests to read; stops at a malformed entry.
pub(crate) fn changes(mut buf: &[u8]) -> Vec<HeaderOp> {
    let mut out = Vec::new();
    let chunk = |buf: &mut &[u8]| -> Option<String> {
        let mut iter = Iter { rest: buf };
        let text = iter.chunk().map(|b| String::from_utf8_lossy(b).into_owned());
        *buf = iter.rest;
        text
    };
    while let Some((&kind, rest)) = buf.split_first() {
        buf = rest;
        let Some(name) = chunk(&mut buf) else { break };
        let op = match kind {
            k if k == Change::Remove as u8 => HeaderOp::Remove(name),
            k if k == Change::Set as u8 || k == Change::Append as u8 => {
                let Some(value) = chunk(&mut buf) else { break };
                if k == Change::Set as u8 { HeaderOp::Set(name, value) } else { HeaderOp::Append(name, value) }
            }
            _ => break,
        };
        out.push(op);
    }
    out
}

/// Encodes string pairs (used by the test builders).
pub(crate) fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, names: Names) -> Fields {
    let mut fields = Fields::new(names);
    for (n, v) in pairs {
        fields.append(n.as_bytes(), v.as_bytes());
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(f: &Fields) -> Vec<(String, String)> {
        f.iter()
            .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn encodes_little_endian_lengths_then_bytes() {
        let f = encode([("ab", "xyz")], Names::CaseInsensitive);
        assert_eq!(f.as_bytes(), b"\x02\0\0\0ab\x03\0\0\0xyz", "name length, name, value length, value");
    }

    #[test]
    fn round_trips_repeated_and_empty_entries() {
        let f = encode([("accept", "a"), ("x", ""), ("accept", "b")], Names::CaseInsensitive);
        let again = Fields::from_bytes(f.as_bytes().to_vec(), Names::CaseInsensitive);
        assert_eq!(pairs(&again), [("accept", "a"), ("x", ""), ("accept", "b")].map(|(n, v)| (n.into(), v.into())));
        let accepts: Vec<_> = again.values("ACCEPT").collect();
        assert_eq!(accepts, [b"a".as_slice(), b"b".as_slice()]);
    }

    #[test]
    fn header_names_ignore_case_but_context_keys_do_not() {
        let headers = encode([("x-key", "1")], Names::CaseInsensitive);
        assert_eq!(headers.first_str("X-Key"), Some("1"));
        let context = encode([("user", "1")], Names::Exact);
        assert_eq!(context.first_str("User"), None);
        assert_eq!(context.first_str("user"), Some("1"));
    }

    #[test]
    fn malformed_buffers_are_read_up_to_the_last_whole_entry() {
        let mut bytes = encode([("a", "1")], Names::Exact).as_bytes().to_vec();
        bytes.extend_from_slice(b"\x05\0\0\0ab"); // name length 5, only 2 bytes
        let f = Fields::from_bytes(bytes, Names::Exact);
        assert_eq!(pairs(&f), [("a".into(), "1".into())]);

        for broken in [&b"\x01"[..], b"\xff\xff\xff\xff", b"\x01\0\0\0a\x09\0\0\0v"] {
            assert_eq!(Fields::from_bytes(broken.to_vec(), Names::Exact).iter().count(), 0);
        }
    }

    #[test]
    fn set_replaces_every_value_and_keeps_the_order_of_others() {
        let mut f = encode([("a", "1"), ("b", "2"), ("A", "3"), ("c", "4")], Names::CaseInsensitive);
        f.set(b"a", b"9");
        assert_eq!(pairs(&f), [("b", "2"), ("c", "4"), ("a", "9")].map(|(n, v)| (n.into(), v.into())));
        f.remove(b"B");
        f.append(b"c", b"5");
        assert_eq!(pairs(&f), [("c", "4"), ("a", "9"), ("c", "5")].map(|(n, v)| (n.into(), v.into())));
        f.remove(b"absent");
        assert_eq!(f.iter().count(), 3);
    }

    #[test]
    fn header_changes_lower_case_names_and_decode_in_order() {
        let mut buf = Vec::new();
        assert_eq!(push_change(&mut buf, Change::Set, "X-A", "1"), b"x-a");
        push_change(&mut buf, Change::Remove, "B", "ignored");
        push_change(&mut buf, Change::Append, "c", "");
        assert_eq!(&buf[..13], b"\0\x03\0\0\0x-a\x01\0\0\0\x31", "kind, name length, name, value length, value");
        let expected = [
            HeaderOp::Set("x-a".into(), "1".into()),
            HeaderOp::Remove("b".into()),
            HeaderOp::Append("c".into(), "".into()),
        ];
        assert_eq!(changes(&buf), expected);
        buf.extend_from_slice(b"\x07\x01\0\0\0z");
        assert_eq!(changes(&buf), expected, "an unknown kind ends the list");
        assert_eq!(changes(&buf[..buf.len() - 9]).len(), 2, "so does a cut-off entry");
    }

    #[test]
    fn non_utf8_values_are_bytes_only() {
        let mut f = Fields::new(Names::CaseInsensitive);
        f.append(b"x", b"\xff");
        assert_eq!(f.first("x"), Some(&b"\xff"[..]));
        assert_eq!(f.first_str("x"), None);
    }
}
