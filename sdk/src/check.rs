//! Checks plugins make on text from their config and from requests, written once here so every
//! plugin accepts and refuses the same things, and the same things the gateway does.

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2): the form of a header name, and of a cookie
/// name.
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` is text a header value may hold: no control characters but tab.
pub fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Whether `a` equals `b`, comparing every byte instead of stopping at the first difference, so
/// the time a comparison takes does not tell how much of a secret a guess got right.
pub fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_values_and_secrets() {
        assert!(is_header_name("X-Api-Key") && is_header_name("a!#$%&'*+-.^_`|~9"));
        assert!(!is_header_name("") && !is_header_name("x key") && !is_header_name("x:y"));
        assert!(is_header_value("Basic realm=\"a\"\tb") && is_header_value(""));
        assert!(!is_header_value("a\r\nb") && !is_header_value("a\u{7f}"));
        assert!(equal_in_constant_time(b"key-a", b"key-a"));
        assert!(!equal_in_constant_time(b"key-a", b"key-b") && !equal_in_constant_time(b"key", b"key-a"));
    }
}
