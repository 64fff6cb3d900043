//! The `fields` codec: name/value pairs in one flat byte list, as the WIT file defines them.
//!
//! Each entry is `name length (u32 LE)`, `name`, `value length (u32 LE)`, `value`. The host sends
//! request headers, response headers and the request context this way, so they cross into the
//! plugin as one copy. [`Fields`] keeps that buffer as it came and reads it in place. A change is
//! only recorded, already in the encoding the host takes back; reads see the received entries
//! through the recorded changes, so the received buffer is never rewritten or grown, whatever a
//! hook changes. Header lists are short, so a linear scan beats building a map the hook may never
//! use.
//!
//! A malformed buffer (a length running past the end) is read up to the last whole entry; the
//! codec never panics.

use std::fmt;

use crate::HeaderOp;

/// What a list holds, which decides how its names compare and how its changes are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Headers: names ignore ASCII case; changes are a WIT `header-changes` list.
    Headers,
    /// The request context: keys are exact; changes are a `fields` list in which an empty value
    /// removes the key.
    Context,
}

impl Kind {
    fn matches(self, stored: &[u8], wanted: &[u8]) -> bool {
        match self {
            Kind::Headers => stored.eq_ignore_ascii_case(wanted),
            Kind::Context => stored == wanted,
        }
    }
}

/// A list of name/value pairs as received in the flat `fields` encoding, with the changes made
/// to it since.
///
/// The received entries are `buf[start..]`; the bytes before `start` belong to someone else (the
/// request line's pseudo-header entries, which [`Request`](crate::Request) reads in place). The
/// buffer is never changed, so offsets into it stay valid.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Fields {
    buf: Vec<u8>,
    start: usize,
    kind: Kind,
    /// The changes, in order, encoded as [`Kind`] says.
    changes: Vec<u8>,
}

impl Fields {
    /// Wraps a buffer received from the host, without decoding it.
    pub(crate) fn from_bytes(buf: Vec<u8>, kind: Kind) -> Self {
        Fields::after(buf, 0, kind)
    }

    /// Wraps a buffer whose entries start at `start` (at most `buf.len()`).
    pub(crate) fn after(buf: Vec<u8>, start: usize, kind: Kind) -> Self {
        Fields { start: start.min(buf.len()), buf, kind, changes: Vec::new() }
    }

    /// The whole received buffer, the bytes before `start` included.
    pub(crate) fn buffer(&self) -> &[u8] {
        &self.buf
    }

    /// An empty list.
    pub(crate) fn new(kind: Kind) -> Self {
        Fields::from_bytes(Vec::new(), kind)
    }

    /// The received entries' bytes.
    #[cfg(test)]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The received entries' bytes, for the host.
    #[cfg(test)]
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }

    /// The recorded changes, encoded for the host.
    pub(crate) fn changes(&self) -> &[u8] {
        &self.changes
    }

    /// Takes the recorded changes, encoded for the host.
    pub(crate) fn take_changes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.changes)
    }

    /// Every entry of an encoded buffer, in order.
    pub(crate) fn entries(buf: &[u8]) -> Iter<'_> {
        Iter { rest: buf }
    }

    /// The received entries, in order, as if no change had been made.
    fn received(&self) -> Iter<'_> {
        Iter { rest: &self.buf[self.start..] }
    }

    /// The recorded changes, decoded, in order.
    fn edits(&self) -> Edits<'_> {
        Edits { rest: &self.changes, kind: self.kind }
    }

    /// Every value of `name`, in order, with the changes made.
    pub(crate) fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        let (kind, name) = (self.kind, name.as_bytes());
        // The last change that replaced or removed every value: the values before it are gone.
        let reset = match self.changes.is_empty() {
            true => None,
            false => self
                .edits()
                .enumerate()
                .filter(|(_, (change, n, _))| *change != Change::Append && kind.matches(n, name))
                .last()
                .map(|(at, _)| at),
        };
        let received = self.received().filter(move |(n, _)| reset.is_none() && kind.matches(n, name));
        let added = self
            .edits()
            .skip(reset.unwrap_or(0))
            .filter(move |(change, n, _)| *change != Change::Remove && kind.matches(n, name));
        received.map(|(_, v)| v).chain(added.map(|(_, _, v)| v))
    }

    /// The first value of `name`.
    pub(crate) fn first(&self, name: &str) -> Option<&[u8]> {
        if self.changes.is_empty() {
            // The usual case: nothing changed yet, so only what came is read.
            return self.received().find(|(n, _)| self.kind.matches(n, name.as_bytes())).map(|(_, v)| v);
        }
        self.values(name).next()
    }

    /// The first value of `name`, if it is UTF-8.
    pub(crate) fn first_str(&self, name: &str) -> Option<&str> {
        self.first(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every entry, in order, with the changes made: the received entries that no change replaced
    /// or removed, then the values changes added that no later change replaced or removed.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let kind = self.kind;
        let reset_from = move |from: usize, name: &[u8]| {
            self.edits().skip(from).any(|(change, n, _)| change != Change::Append && kind.matches(n, name))
        };
        let received = self.received().filter(move |(n, _)| !reset_from(0, n));
        let added = self
            .edits()
            .enumerate()
            .filter(move |(at, (change, n, _))| *change != Change::Remove && !reset_from(at + 1, n))
            .map(|(_, (_, n, v))| (n, v));
        received.chain(added)
    }

    /// Replaces every value of `name` with `value` (for the context, an empty value removes the key).
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        self.record(Change::Set, name, value);
    }

    /// Adds a value to the header `name`, keeping the existing ones.
    pub(crate) fn append(&mut self, name: &str, value: &str) {
        debug_assert_eq!(self.kind, Kind::Headers, "context keys have one value");
        self.record(Change::Append, name, value);
    }

    /// Removes every value of `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        self.record(Change::Remove, name, "");
    }

    fn record(&mut self, change: Change, name: &str, value: &str) {
        match self.kind {
            Kind::Headers => push_change(&mut self.changes, change, name, value),
            Kind::Context => push_entry(&mut self.changes, name.as_bytes(), value.as_bytes()),
        }
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))))
            .finish()
    }
}

/// The entries of a `fields` buffer, read in place.
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

/// Recorded changes, read in place: kind, name, value (empty for a removal). Headers' are a
/// `header-changes` list; the context's a `fields` list in which an empty value removes the key.
/// Stops at an unknown kind or a cut-off entry.
struct Edits<'a> {
    rest: &'a [u8],
    kind: Kind,
}

impl<'a> Iterator for Edits<'a> {
    type Item = (Change, &'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let edit = (|| {
            let mut entry = Iter { rest: self.rest };
            let edit = match self.kind {
                Kind::Headers => {
                    let (&kind, rest) = self.rest.split_first()?;
                    entry.rest = rest;
                    let change = Change::from_byte(kind)?;
                    let name = entry.chunk()?;
                    (change, name, if change == Change::Remove { &[][..] } else { entry.chunk()? })
                }
                Kind::Context => {
                    let (key, value) = entry.entry()?;
                    (if value.is_empty() { Change::Remove } else { Change::Set }, key, value)
                }
            };
            self.rest = entry.rest;
            Some(edit)
        })();
        if edit.is_none() {
            self.rest = &[];
        }
        edit
    }
}

/// Makes room for `additional` more bytes, growing the capacity to the next power of two. The
/// changes a hook records cross to the host as a boxed slice, which shrinks the buffer to its
/// length; a power-of-two capacity keeps the length in the same size class of the SDK's
/// allocator (see [`crate::alloc`]), where that shrink moves nothing.
fn make_room(buf: &mut Vec<u8>, additional: usize) {
    let needed = buf.len().saturating_add(additional);
    if needed > buf.capacity() {
        buf.reserve_exact(needed.checked_next_power_of_two().unwrap_or(needed) - buf.len());
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
    put(buf, name, Case::Keep);
    buf.extend_from_slice(&value_len.to_le_bytes());
    put(buf, value, Case::Keep);
}

/// The kind of a header change, numbered as the WIT's `header-changes` encoding numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Change {
    Set = 0,
    Append = 1,
    Remove = 2,
}

impl Change {
    /// The kind numbered `byte`, if any.
    fn from_byte(byte: u8) -> Option<Change> {
        match byte {
            0 => Some(Change::Set),
            1 => Some(Change::Append),
            2 => Some(Change::Remove),
            _ => None,
        }
    }
}

/// Appends a header change to a `header-changes` buffer, lower-casing the name. `value` is
/// ignored for [`Change::Remove`].
pub(crate) fn push_change(buf: &mut Vec<u8>, change: Change, name: &str, value: &str) {
    let (Ok(name_len), Ok(value_len)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
        // Over 4 GiB: cannot be encoded; the gateway would refuse such a header anyway.
        return;
    };
    make_room(buf, 9 + name.len() + value.len());
    buf.push(change as u8);
    buf.extend_from_slice(&name_len.to_le_bytes());
    put(buf, name.as_bytes(), Case::Lower);
    if change != Change::Remove {
        buf.extend_from_slice(&value_len.to_le_bytes());
        put(buf, value.as_bytes(), Case::Keep);
    }
}

/// Whether [`put`] lower-cases ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
}

/// Appends `bytes` to `buf`, lower-cased if asked. Up to 32 bytes (a header name, a short value)
/// are copied as a few overlapping 8- or 4-byte words, lower-cased a word at a time: a `memcpy` in
/// a plugin is Wasm's `memory.copy`, a call out of the sandbox that costs more than such a copy,
/// and a byte loop costs a branch or two per byte. Longer slices go through `memcpy`.
#[inline(always)]
fn put(buf: &mut Vec<u8>, bytes: &[u8], case: Case) {
    let n = bytes.len();
    if n > 32 {
        match case {
            Case::Keep => buf.extend_from_slice(bytes),
            Case::Lower => buf.extend(bytes.iter().map(u8::to_ascii_lowercase)),
        }
        return;
    }
    buf.reserve(n);
    let word = |w: u64| if case == Case::Lower { lower_ascii(w) } else { w };
    let at = buf.len();
    let (src, dst) = (bytes.as_ptr(), buf.spare_capacity_mut().as_mut_ptr().cast::<u8>());
    // SAFETY: every window below lies within `bytes` (offset + width <= n) and within the
    // reserved spare capacity (at least n bytes); windows may overlap, and each writes the same
    // bytes any other writes there. All n bytes are written before the length covers them.
    unsafe {
        let copy8 =
            |i: usize| dst.add(i).cast::<u64>().write_unaligned(word(src.add(i).cast::<u64>().read_unaligned()));
        let copy4 = |i: usize| {
            let w = u64::from(src.add(i).cast::<u32>().read_unaligned());
            dst.add(i).cast::<u32>().write_unaligned(word(w) as u32);
        };
        let copy1 = |i: usize| *dst.add(i) = word(u64::from(*src.add(i))) as u8;
        match n {
            0 => {}
            1..4 => {
                copy1(0);
                copy1(n / 2);
                copy1(n - 1);
            }
            4..8 => {
                copy4(0);
                copy4(n - 4);
            }
            8..=16 => {
                copy8(0);
                copy8(n - 8);
            }
            _ => {
                copy8(0);
                copy8(8);
                copy8(n - 16);
                copy8(n - 8);
            }
        }
        buf.set_len(at + n);
    }
}

/// Lower-cases the ASCII letters among a word's eight bytes, leaving every other byte as it is.
fn lower_ascii(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES * 0x80;
    // Per byte, on its low seven bits (no carry into the next byte): the high bit says `>= 'A'`,
    // and in the second sum `> 'Z'`. A letter is between them and has its own high bit clear.
    let low = word & !HIGH;
    let at_least_a = low + ONES * u64::from(0x80 - b'A');
    let past_z = low + ONES * u64::from(0x7f - b'Z');
    let upper = at_least_a & !past_z & !word & HIGH;
    word | (upper >> 2)
}

/// The changes of a `header-changes` buffer, for tests to read; stops at a malformed entry.
pub(crate) fn header_ops(buf: &[u8]) -> Vec<HeaderOp> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Edits { rest: buf, kind: Kind::Headers }
        .map(|(change, name, value)| match change {
            Change::Set => HeaderOp::Set(text(name), text(value)),
            Change::Append => HeaderOp::Append(text(name), text(value)),
            Change::Remove => HeaderOp::Remove(text(name)),
        })
        .collect()
}

/// Encodes string pairs (used by the test builders).
pub(crate) fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, kind: Kind) -> Fields {
    let mut buf = Vec::new();
    for (n, v) in pairs {
        push_entry(&mut buf, n.as_bytes(), v.as_bytes());
    }
    Fields::from_bytes(buf, kind)
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
        let f = encode([("ab", "xyz")], Kind::Headers);
        assert_eq!(f.as_bytes(), b"\x02\0\0\0ab\x03\0\0\0xyz", "name length, name, value length, value");
    }

    #[test]
    fn round_trips_repeated_and_empty_entries() {
        let f = encode([("accept", "a"), ("x", ""), ("accept", "b")], Kind::Headers);
        let again = Fields::from_bytes(f.as_bytes().to_vec(), Kind::Headers);
        assert_eq!(pairs(&again), [("accept", "a"), ("x", ""), ("accept", "b")].map(|(n, v)| (n.into(), v.into())));
        let accepts: Vec<_> = again.values("ACCEPT").collect();
        assert_eq!(accepts, [b"a".as_slice(), b"b".as_slice()]);
    }

    #[test]
    fn header_names_ignore_case_but_context_keys_do_not() {
        let headers = encode([("x-key", "1")], Kind::Headers);
        assert_eq!(headers.first_str("X-Key"), Some("1"));
        let context = encode([("user", "1")], Kind::Context);
        assert_eq!(context.first_str("User"), None);
        assert_eq!(context.first_str("user"), Some("1"));
    }

    #[test]
    fn malformed_buffers_are_read_up_to_the_last_whole_entry() {
        let mut bytes = encode([("a", "1")], Kind::Context).as_bytes().to_vec();
        bytes.extend_from_slice(b"\x05\0\0\0ab"); // name length 5, only 2 bytes
        let f = Fields::from_bytes(bytes, Kind::Context);
        assert_eq!(pairs(&f), [("a".into(), "1".into())]);

        for broken in [&b"\x01"[..], b"\xff\xff\xff\xff", b"\x01\0\0\0a\x09\0\0\0v"] {
            assert_eq!(Fields::from_bytes(broken.to_vec(), Kind::Context).iter().count(), 0);
        }
    }

    fn values<'a>(f: &'a Fields, name: &'a str) -> Vec<&'a [u8]> {
        f.values(name).collect()
    }

    #[test]
    fn changes_are_read_through_and_recorded_without_touching_what_came() {
        let mut f = encode([("a", "1"), ("b", "2"), ("A", "3"), ("c", "4")], Kind::Headers);
        let received = f.as_bytes().to_vec();
        f.set("A", "9");
        assert_eq!(pairs(&f), [("b", "2"), ("c", "4"), ("a", "9")].map(|(n, v)| (n.into(), v.into())));
        f.remove("B");
        f.append("c", "5");
        assert_eq!(pairs(&f), [("c", "4"), ("a", "9"), ("c", "5")].map(|(n, v)| (n.into(), v.into())));
        assert_eq!(values(&f, "C"), [b"4", b"5"]);
        f.remove("absent");
        assert_eq!(f.iter().count(), 3);
        f.append("a", "10");
        f.set("c", "6");
        f.append("b", "7");
        assert_eq!(pairs(&f), [("a", "9"), ("a", "10"), ("c", "6"), ("b", "7")].map(|(n, v)| (n.into(), v.into())));
        assert_eq!(
            (values(&f, "a"), f.first("b"), f.first("c")),
            (vec![&b"9"[..], b"10"], Some(&b"7"[..]), Some(&b"6"[..]))
        );
        f.remove("a");
        assert_eq!(f.first("a"), None);
        assert_eq!(f.as_bytes(), received, "the received entries are never rewritten");
        assert_eq!(
            header_ops(f.changes()),
            [
                HeaderOp::Set("a".into(), "9".into()),
                HeaderOp::Remove("b".into()),
                HeaderOp::Append("c".into(), "5".into()),
                HeaderOp::Remove("absent".into()),
                HeaderOp::Append("a".into(), "10".into()),
                HeaderOp::Set("c".into(), "6".into()),
                HeaderOp::Append("b".into(), "7".into()),
                HeaderOp::Remove("a".into()),
            ]
        );
    }

    #[test]
    fn context_changes_are_entries_and_an_empty_value_removes() {
        let mut f = encode([("user", "ann"), ("tier", "gold")], Kind::Context);
        f.set("user", "bob");
        f.set("tier", "");
        f.set("User", "case");
        assert_eq!(pairs(&f), [("user", "bob"), ("User", "case")].map(|(n, v)| (n.into(), v.into())));
        assert_eq!((f.first_str("tier"), f.first_str("user")), (None, Some("bob")));
        assert_eq!(f.changes(), encode([("user", "bob"), ("tier", ""), ("User", "case")], Kind::Context).as_bytes());
    }

    #[test]
    fn header_changes_lower_case_names_and_decode_in_order() {
        let mut buf = Vec::new();
        push_change(&mut buf, Change::Set, "X-A", "1");
        push_change(&mut buf, Change::Remove, "B", "ignored");
        push_change(&mut buf, Change::Append, "c", "");
        assert_eq!(&buf[..13], b"\0\x03\0\0\0x-a\x01\0\0\0\x31", "kind, name length, name, value length, value");
        let expected = [
            HeaderOp::Set("x-a".into(), "1".into()),
            HeaderOp::Remove("b".into()),
            HeaderOp::Append("c".into(), "".into()),
        ];
        assert_eq!(header_ops(&buf), expected);
        buf.extend_from_slice(b"\x07\x01\0\0\0z");
        assert_eq!(header_ops(&buf), expected, "an unknown kind ends the list");
        assert_eq!(header_ops(&buf[..buf.len() - 9]).len(), 2, "so does a cut-off entry");
    }

    #[test]
    fn put_copies_every_length_and_lower_cases_only_ascii_letters() {
        let text: Vec<u8> = (0..40u8).map(|i| b"@AZ[`az{\xc1\xda-0Mx"[usize::from(i) % 14]).collect();
        for n in 0..=text.len() {
            for (case, expected) in [
                (Case::Keep, text[..n].to_vec()),
                (Case::Lower, text[..n].iter().map(u8::to_ascii_lowercase).collect()),
            ] {
                let mut buf = b"head".to_vec();
                put(&mut buf, &text[..n], case);
                assert_eq!(buf[4..], expected[..], "{n} bytes");
                assert_eq!(&buf[..4], b"head");
            }
        }
    }

    #[test]
    fn non_utf8_values_are_bytes_only() {
        let f = Fields::from_bytes(b"\x01\0\0\0x\x01\0\0\0\xff".to_vec(), Kind::Headers);
        assert_eq!(f.first("x"), Some(&b"\xff"[..]));
        assert_eq!(f.first_str("x"), None);
    }
}
