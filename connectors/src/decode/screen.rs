//! A quick look at a JSON message against a table's schema, for chunks the fast path
//! could not decode: which messages will surely not fit (an unknown field, an object
//! where a string is expected, not JSON at all). The rest of the chunk is then decoded in
//! one go and only the suspects one by one, instead of bisecting the whole chunk.
//!
//! The screen is a heuristic, never the judge: a suspect is still tried on its own (and
//! lands if it fits), and when the rest of the chunk does not decode after all, the
//! decoder falls back to bisecting it. Its cost is one parse of the message without
//! building values: keys are borrowed, values kept as raw text and looked at by their
//! first byte; nested objects are opened only where the schema has a struct or a list.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use arrow::datatypes::{DataType, Fields};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// What the screen knows of a table's schema: each field's name and shape, indexed.
pub(crate) struct Shape(HashMap<String, Kind>);

enum Kind {
    Struct(Shape),
    List(Box<Kind>),
    Map,
    Boolean,
    /// Text, numbers, dates and the rest: any scalar.
    Scalar,
}

impl Shape {
    pub(crate) fn of(fields: &Fields) -> Self {
        Self(
            fields
                .iter()
                .map(|f| (f.name().clone(), Kind::of(f.data_type())))
                .collect(),
        )
    }

    /// Whether `bytes` (one message) may fit under strict decoding: `false` when it surely
    /// does not.
    pub(crate) fn may_fit(&self, bytes: &[u8]) -> bool {
        match serde_json::from_slice::<Members<'_>>(bytes) {
            Ok(m) => self.members_fit(&m.0),
            Err(_) => false,
        }
    }

    fn members_fit(&self, members: &[(Key<'_>, &RawValue)]) -> bool {
        members.iter().all(|(k, v)| match self.0.get(k.0.as_ref()) {
            Some(kind) => kind.fits(v),
            None => false,
        })
    }
}

impl Kind {
    fn of(dt: &DataType) -> Self {
        match dt {
            DataType::Struct(fields) => Kind::Struct(Shape::of(fields)),
            DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) => {
                Kind::List(Box::new(Kind::of(f.data_type())))
            }
            DataType::Map(..) => Kind::Map,
            DataType::Boolean => Kind::Boolean,
            _ => Kind::Scalar,
        }
    }

    fn fits(&self, v: &RawValue) -> bool {
        let text = v.get();
        let first = text.as_bytes().first().copied().unwrap_or(b'n');
        if first == b'n' {
            return true;
        }
        match self {
            Kind::Struct(shape) => {
                first == b'{'
                    && serde_json::from_str::<Members<'_>>(text)
                        .is_ok_and(|m| shape.members_fit(&m.0))
            }
            Kind::List(item) => {
                first == b'['
                    && serde_json::from_str::<Elements<'_>>(text)
                        .is_ok_and(|e| e.0.iter().all(|v| item.fits(v)))
            }
            Kind::Map => first == b'{',
            Kind::Boolean => first == b't' || first == b'f',
            // Text takes strings, and numbers and booleans coerced; numbers and other
            // primitives take what arrow parses (a string may hold a number).
            Kind::Scalar => first != b'{' && first != b'[',
        }
    }
}

/// An object's members, keys borrowed where they hold no escapes.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

struct Key<'a>(Cow<'a, str>);

/// An array's elements.
struct Elements<'a>(Vec<&'a RawValue>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Elements<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elements<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elements<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<&'de RawValue>()? {
                    out.push(v);
                }
                Ok(Elements(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn fields() -> Fields {
        Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new(
                "after",
                DataType::Struct(vec![Field::new("name", DataType::Utf8, true)].into()),
                true,
            ),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                true,
            ),
        ])
        .fields()
        .clone()
    }

    #[test]
    fn messages_that_surely_do_not_fit_are_suspects_and_the_rest_may_fit() {
        let shape = Shape::of(&fields());
        let may_fit = |bytes: &[u8], _: &()| shape.may_fit(bytes);
        let f = ();
        for fits in [
            r#"{}"#,
            r#"{"id": "a", "n": 1, "ok": true, "after": {"name": "é"}, "tags": ["x", null]}"#,
            r#"{"id": 12, "n": "12", "after": null, "tags": null}"#,
            r#"{"n": 99999999999999999999999}"#,
            // An escaped key is the same key.
            r#"{"\u0069d": "a"}"#,
        ] {
            assert!(may_fit(fits.as_bytes(), &f), "{fits}");
        }
        for suspect in [
            "not json",
            "[1]",
            r#"{"id": "a"} {"id": "b"}"#,
            r#"{"_kafka_topic": 1}"#,
            r#"{"id": {"name": "x"}}"#,
            r#"{"ok": "yes"}"#,
            r#"{"after": {"name": "x", "other": 1}}"#,
            r#"{"after": "x"}"#,
            r#"{"tags": [{"a": 1}]}"#,
            r#"{"tags": "x"}"#,
        ] {
            assert!(!may_fit(suspect.as_bytes(), &f), "{suspect}");
        }
        let mut invalid = br#"{"id": ""#.to_vec();
        invalid.extend_from_slice(b"\xff\xfe\"}");
        assert!(!may_fit(&invalid, &f));
        let deep = format!("{{\"id\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(!may_fit(deep.as_bytes(), &f));
    }
}
