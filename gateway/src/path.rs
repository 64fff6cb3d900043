//! STUB
pub fn normalize(path: &str) -> std::borrow::Cow<'_, str> {
    path.into()
}
pub fn strip_prefix<'a>(path: &'a str, _prefix: &str) -> &'a str {
    path
}
