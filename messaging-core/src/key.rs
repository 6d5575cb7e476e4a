//! A message key: bytes, as every broker carries them, read as text where it is text.
//!
//! Kafka keys and header values are byte arrays, and services in other languages put binary
//! ids (a UUID's 16 bytes, a protobuf) there. A key is therefore kept exactly; `&str` views
//! exist for the text that nearly every key is.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

/// A message key: its bytes exactly as published. [`Key::as_str`] reads it as text when it
/// is UTF-8; a key that is not stays intact through handling, the DLQ and replay.
///
/// Built from text or bytes: `Key::from("order-42")`, `Key::from(&uuid.as_bytes()[..])`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Vec<u8>);

impl Key {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key as text, when it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The key as text, with what is not UTF-8 replaced by U+FFFD: for logs and messages,
    /// never to look a key up.
    pub fn to_text_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The bytes (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0.into()
    }

    /// Makes this key `bytes`, in the buffer it holds: a consumer that reuses its messages
    /// then allocates nothing for keys no longer than the last one.
    pub fn assign(&mut self, bytes: &[u8]) {
        self.0.clear();
        self.0.extend_from_slice(bytes);
    }

    /// How many bytes it has.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Bytes> for Key {
    fn from(bytes: Bytes) -> Self {
        Self(bytes.into())
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for Key {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl<const N: usize> From<&[u8; N]> for Key {
    fn from(bytes: &[u8; N]) -> Self {
        Self(bytes.to_vec())
    }
}

impl From<String> for Key {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&String> for Key {
    fn from(text: &String) -> Self {
        Self::from(text.as_bytes())
    }
}

impl From<&str> for Key {
    fn from(text: &str) -> Self {
        Self::from(text.as_bytes())
    }
}

impl From<Key> for Bytes {
    fn from(key: Key) -> Self {
        key.into_bytes()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<str> for Key {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Key {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<[u8]> for Key {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for Key {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Key {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.0 == other
    }
}

/// Text as a string, anything else as `b"…"` with escapes.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => fmt::Debug::fmt(text, f),
            None => write!(f, "b\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// Text as is, anything else with escapes (`\xff`): a log line shows what the bytes were.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => f.write_str(text),
            None => write!(f, "{}", self.0.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keys_read_as_text_and_binary_ones_keep_their_bytes() {
        let text = Key::from("order-42");
        assert_eq!(text.as_str(), Some("order-42"));
        assert_eq!(text, "order-42");
        assert_eq!(format!("{text:?} {text}"), r#""order-42" order-42"#);

        let binary = Key::from(&[0x00, 0xff, b'k']);
        assert_eq!(binary.as_str(), None);
        assert_eq!(binary.as_bytes(), [0x00, 0xff, b'k']);
        assert_eq!(binary.to_text_lossy(), "\0\u{fffd}k");
        assert_eq!(format!("{binary:?} {binary}"), r#"b"\x00\xffk" \x00\xffk"#);

        let mut reused = text;
        reused.assign(&[1, 2]);
        assert_eq!(reused, [1, 2]);
    }
}
