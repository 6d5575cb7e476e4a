//! Message headers: a short list of UTF-8 names and byte values, sorted by name, each name once.
//!
//! A message carries a handful of headers and the dispatcher reads them for every message, so
//! they are kept as a short sorted list whose first entry sits in the message itself, rather
//! than as a tree: a `BTreeMap` allocates a node of more than 500 bytes for its first entry,
//! one more cache miss for every message a consumer handles (BENCHMARKS.md).

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Message headers: UTF-8 names and byte values, sorted by name, each name at most once. A
/// value is kept exactly as the broker delivered it: [`Headers::get`] reads it as text,
/// [`Headers::get_bytes`] as bytes.
///
/// Serialised as a JSON object (`{"x-event-name":"user.created"}`); a value that is not UTF-8
/// is written as `{"encoding":"base64","value":"…"}`. When an object names a header twice,
/// the last value wins.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    entries: Entries,
}

type Entries = smallvec::SmallVec<[(String, Vec<u8>); 1]>;

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self {
            entries: Entries::new_const(),
        }
    }

    /// Room for `capacity` headers without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Entries::with_capacity(capacity),
        }
    }

    /// The value of `name` as text, if present and UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// The value of `name` exactly as it arrived, if present.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        // A scan with `==` (length first) beats a binary search for the handful of headers a
        // message carries.
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_slice())
    }

    /// Whether `name` is present.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Sets `name` to `value` (text or bytes); returns the value it replaces.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let (name, value) = (name.into(), value.into());
        match self.position(&name) {
            Ok(at) => Some(std::mem::replace(&mut self.entries[at].1, value)),
            Err(at) => {
                self.entries.insert(at, (name, value));
                None
            }
        }
    }

    /// Removes `name`; returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        let at = self.position(name).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// Replaces every header with `headers` (the last of a name wins, as with
    /// [`Headers::insert`]), writing into the strings already held: a consumer that reuses
    /// its messages then allocates nothing for headers no longer than the last ones.
    pub fn refill<'a, V: AsRef<[u8]>>(&mut self, headers: impl IntoIterator<Item = (&'a str, V)>) {
        let mut used = 0;
        for (name, value) in headers {
            let value = value.as_ref();
            match self.entries.get_mut(used) {
                Some((held_name, held_value)) => {
                    held_name.clear();
                    held_name.push_str(name);
                    held_value.clear();
                    held_value.extend_from_slice(value);
                }
                None => self.entries.push((name.to_owned(), value.to_vec())),
            }
            used += 1;
        }
        self.entries.truncate(used);
        // Usually sorted already: the framework writes its headers in order.
        if !self.entries.windows(2).all(|w| w[0].0 < w[1].0) {
            self.entries.sort_by(|a, b| a.0.cmp(&b.0));
            // Stable, so of one name the later values follow: move the last into the kept.
            self.entries.dedup_by(|later, kept| {
                let same = later.0 == kept.0;
                if same {
                    std::mem::swap(&mut later.1, &mut kept.1);
                }
                same
            });
        }
    }

    /// Removes every header.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Names and values (as bytes), sorted by name.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }

    /// The names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|(name, _)| name.as_str())
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }
}

/// Bytes a broker delivers as header text, lossily (what is not UTF-8 becomes U+FFFD). Tried
/// with `str::from_utf8` first, several times faster than `String::from_utf8_lossy` on the
/// text that nearly every key and header value is.
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// An iterator over headers as `(name, value bytes)`, sorted by name.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (String, Vec<u8>)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Headers {
    type Item = (String, Vec<u8>);
    type IntoIter = smallvec::IntoIter<[(String, Vec<u8>); 1]>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Into<String>, V: Into<Vec<u8>>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, headers: I) {
        for (name, value) in headers {
            self.insert(name, value);
        }
    }
}

impl<K: Into<String>, V: Into<Vec<u8>>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(headers: I) -> Self {
        let mut all = Self::new();
        all.extend(headers);
        all
    }
}

impl<K: Into<String>, V: Into<Vec<u8>>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(headers: [(K, V); N]) -> Self {
        headers.into_iter().collect()
    }
}

/// `headers["x-event-name"]`: the value as text, or a panic when there is no such header (as
/// a map's index does) or it is not UTF-8; for code that has just checked, and for tests.
impl std::ops::Index<&str> for Headers {
    type Output = str;

    fn index(&self, name: &str) -> &str {
        match self.get_bytes(name) {
            Some(value) => match std::str::from_utf8(value) {
                Ok(text) => text,
                Err(_) => panic!("header {name:?} is not UTF-8"),
            },
            None => panic!("no header named {name:?}"),
        }
    }
}

/// A header value in JSON and `Debug`: the text, or bytes that are not UTF-8 in base64.
#[derive(Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = r#"a header value: a string, or {"encoding":"base64","value":"…"}"#
)]
enum JsonValue<'a> {
    Text(Cow<'a, str>),
    Binary { encoding: Base64Tag, value: String },
}

/// The only encoding a binary value has: `"base64"`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Base64Tag {
    Base64,
}

impl<'a> JsonValue<'a> {
    fn of(value: &'a [u8]) -> Self {
        match std::str::from_utf8(value) {
            Ok(text) => Self::Text(Cow::Borrowed(text)),
            Err(_) => Self::Binary {
                encoding: Base64Tag::Base64,
                value: BASE64.encode(value),
            },
        }
    }

    fn into_bytes(self) -> Result<Vec<u8>, base64::DecodeError> {
        match self {
            Self::Text(text) => Ok(text.into_owned().into_bytes()),
            Self::Binary { value, .. } => BASE64.decode(value),
        }
    }
}

impl fmt::Debug for JsonValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(text) => fmt::Debug::fmt(text, f),
            Self::Binary { value, .. } => write!(f, "base64:{value}"),
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, JsonValue::of(value))),
            )
            .finish()
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (name, value) in self {
            map.serialize_entry(name, &JsonValue::of(value))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of header names and string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Headers::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some((name, value)) = map.next_entry::<String, JsonValue<'de>>()? {
                    let value = value.into_bytes().map_err(|error| {
                        serde::de::Error::custom(format!("header {name:?}: {error}"))
                    })?;
                    headers.insert(name, value);
                }
                Ok(headers)
            }
        }

        deserializer.deserialize_map(HeadersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(headers: &Headers) -> Vec<(&str, &str)> {
        headers.keys().map(|name| (name, &headers[name])).collect()
    }

    #[test]
    fn binary_values_are_kept_exactly_and_written_in_base64() {
        let mut headers = Headers::from([("id", &[0x00, 0xff][..]), ("name", b"a.b")]);
        assert_eq!(headers.get("id"), None, "not text");
        assert_eq!(headers.get_bytes("id"), Some(&[0x00, 0xff][..]));
        assert_eq!(headers.get("name"), Some("a.b"));
        assert!(headers.contains_key("id"));
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(
            json,
            r#"{"id":{"encoding":"base64","value":"AP8="},"name":"a.b"}"#
        );
        assert_eq!(serde_json::from_str::<Headers>(&json).unwrap(), headers);
        assert_eq!(
            format!("{headers:?}"),
            r#"{"id": base64:AP8=, "name": "a.b"}"#
        );
        let garbled = r#"{"id":{"encoding":"base64","value":"%%"}}"#;
        let error = serde_json::from_str::<Headers>(garbled).unwrap_err();
        assert!(error.to_string().contains(r#"header "id""#), "{error}");
        headers.refill([("id", &[0xfe][..])]);
        assert_eq!(headers.get_bytes("id"), Some(&[0xfe][..]));
    }

    #[test]
    fn names_stay_sorted_and_unique() {
        let mut headers = Headers::new();
        assert_eq!(headers.insert("b", "2"), None);
        assert_eq!(headers.insert("a", "1"), None);
        assert_eq!(headers.insert("c", "3"), None);
        assert_eq!(headers.insert("b", "two"), Some(b"2".to_vec()));
        assert_eq!(text_of(&headers), [("a", "1"), ("b", "two"), ("c", "3")]);
        assert_eq!(headers.get("b"), Some("two"));
        assert_eq!(headers.get("bb"), None);
        assert_eq!(headers.remove("a"), Some(b"1".to_vec()));
        assert_eq!(headers.remove("a"), None);
        assert_eq!(headers.keys().collect::<Vec<_>>(), ["b", "c"]);
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn refilled_headers_are_sorted_unique_and_keep_the_last_of_a_name() {
        let mut headers = Headers::from([("old", "1"), ("older", "2"), ("oldest", "3")]);
        headers.refill([("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("b", "5")]);
        assert_eq!(text_of(&headers), [("a", "2"), ("b", "5"), ("c", "4")]);
        assert_eq!(headers, Headers::from([("c", "4"), ("b", "5"), ("a", "2")]));
        headers.refill([("x", String::from("9"))]);
        assert_eq!(text_of(&headers), [("x", "9")]);
        headers.refill(std::iter::empty::<(&str, &str)>());
        assert!(headers.is_empty());
    }

    #[test]
    fn refilling_reuses_the_strings_held() {
        let mut headers = Headers::from([("x-event-name", "order.created.v2")]);
        let name_buffer = headers.entries[0].0.as_ptr();
        headers.refill([("x-event-id", "order.created")]);
        assert_eq!(headers.get("x-event-id"), Some("order.created"));
        assert_eq!(
            headers.entries[0].0.as_ptr(),
            name_buffer,
            "the name's buffer is reused"
        );
    }

    #[test]
    fn text_is_borrowed_when_valid_and_replaced_where_not() {
        assert!(matches!(
            text(b"order.created"),
            Cow::Borrowed("order.created")
        ));
        assert_eq!(text(&[0x66, 0xff, 0x6f]), "f\u{fffd}o");
    }

    #[test]
    fn the_same_headers_in_any_order_are_equal() {
        let one = Headers::from([("x", "1"), ("y", "2")]);
        let other = Headers::from([("y", "2"), ("x", "1")]);
        assert_eq!(one, other);
    }

    #[test]
    fn serialised_as_an_object_sorted_by_name_with_the_last_duplicate_winning() {
        let headers = Headers::from([("z", "1"), ("a", "2")]);
        assert_eq!(
            serde_json::to_string(&headers).unwrap(),
            r#"{"a":"2","z":"1"}"#
        );
        let read: Headers = serde_json::from_str(r#"{"k":"1","j":"0","k":"2"}"#).unwrap();
        assert_eq!(read, Headers::from([("j", "0"), ("k", "2")]));
        let error = serde_json::from_str::<Headers>(r#"{"k":1}"#).unwrap_err();
        assert!(error.to_string().contains("a header value"), "{error}");
        assert!(serde_json::from_str::<Headers>("[]").is_err());
    }
}
