//! A quick look at a JSON message against a table's schema, for chunks the fast path
//! could not decode: which messages will surely not fit (a top-level field the table
//! lacks), which may not (an object where a string is expected, not JSON at all). The rest
//! of the chunk is then decoded in one go and only the suspects one by one, instead of
//! bisecting the whole chunk.
//!
//! The screen is a heuristic, never the judge, except for one verdict: the strict decoder
//! reads every key of the message's object and refuses one the table lacks, whatever else
//! the message holds, so such a message is not decoded alone (the look stops at that
//! field). Deeper, a struct's value may be read or not (when a key repeats, only its last
//! value is decoded), so a field a struct lacks only makes the message a suspect. A
//! suspect is still tried on its own (and lands if it fits), and when the rest of the
//! chunk does not decode after all, the decoder falls back to bisecting it. Its cost is
//! one pass over the message without building values: keys are borrowed and looked up,
//! each value is checked against its field's kind as it is read (a string in a number
//! column must hold a number), and what the schema does not describe is skipped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;

use arrow::datatypes::{DataType, Fields};
use serde::de::{
    DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};

use super::limits::printable;

/// What the screen knows of a table's schema: each field's name and shape, indexed.
pub(crate) struct Shape(HashMap<String, Kind, foldhash::fast::RandomState>);

enum Kind {
    Struct(Shape),
    List(Box<Kind>),
    Map,
    Boolean,
    /// Integers (`true`), floats and decimals: a number, or a string holding one of
    /// the kind.
    Number {
        integer: bool,
    },
    /// Text, dates and the rest: any scalar (text takes numbers and booleans coerced;
    /// dates and times take strings and numbers).
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

    /// What the screen says of `bytes` (one message). One pass over the message, however
    /// deep it nests, stopping at the first top-level field the schema lacks.
    pub(crate) fn look(&self, bytes: &[u8]) -> Verdict {
        let unknown = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let fits = Fits {
            at: At::Object(self),
            unknown: &unknown,
        }
        .deserialize(&mut de);
        if let Some(name) = unknown.into_inner() {
            return Verdict::SurelyNot(format!("column '{name}' missing from schema"));
        }
        if matches!(fits, Ok(true)) && de.end().is_ok() {
            Verdict::MayFit
        } else {
            Verdict::Suspect
        }
    }

    /// Whether `bytes` (one message) may fit under strict decoding: `false` when the
    /// screen suspects it does not.
    #[cfg(test)]
    pub(crate) fn may_fit(&self, bytes: &[u8]) -> bool {
        self.look(bytes) == Verdict::MayFit
    }
}

/// The screen's verdict on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing seen that the table's schema refuses.
    MayFit,
    /// Something seen that the decoder may refuse: try the message on its own.
    Suspect,
    /// A top-level field the table lacks: the strict decoder refuses the message (the
    /// error names the field, printable).
    SurelyNot(String),
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
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => Kind::Number { integer: true },
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Kind::Number { integer: false },
            _ => Kind::Scalar,
        }
    }
}

/// What a value is screened against: a message (an object of the table's fields, never
/// null) or a field's value. Deserializing consumes the value whole and says whether it
/// may fit; a value that does not is still read to its end, without building it. A
/// top-level field the schema lacks ends the look: its name is kept in `unknown`.
#[derive(Clone, Copy)]
enum At<'s> {
    Object(&'s Shape),
    Value(&'s Kind),
}

#[derive(Clone, Copy)]
struct Fits<'s> {
    at: At<'s>,
    unknown: &'s RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Fits<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Fits<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(matches!(self.at, At::Value(_)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        // Text takes booleans coerced; numbers do not.
        Ok(matches!(self.at, At::Value(Kind::Boolean | Kind::Scalar)))
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(self.takes_number())
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(self.takes_number())
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(self.takes_number())
    }

    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(match self.at {
            At::Value(Kind::Scalar) => true,
            // A string holding a number parses into a number column (arrow trims it).
            At::Value(Kind::Number { integer }) => {
                let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
                if *integer {
                    v.parse::<i128>().is_ok()
                } else {
                    v.parse::<f64>().is_ok()
                }
            }
            _ => false,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let shape = match self.at {
            At::Object(shape) | At::Value(Kind::Struct(shape)) => Some(shape),
            _ => None,
        };
        let mut fits = matches!(
            self.at,
            At::Object(_) | At::Value(Kind::Struct(_) | Kind::Map)
        );
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match shape.map(|s| s.0.get(key.as_str())) {
                Some(Some(kind)) if fits => fits = map.next_value_seed(self.to(kind))?,
                Some(Some(_)) => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(None) if matches!(self.at, At::Object(_)) => {
                    // A top-level field the table lacks: the strict decoder reads every
                    // key of the message's object, so it refuses the message.
                    *self.unknown.borrow_mut() = Some(printable(key.as_str()));
                    return Err(A::Error::custom("a field the schema lacks"));
                }
                Some(None) => {
                    // A field a struct lacks: refused if the decoder reads this value,
                    // which it does not when a later key of the same name replaces it.
                    fits = false;
                    map.next_value::<IgnoredAny>()?;
                }
                None => {
                    // A map's entry, or an object where a scalar or list is expected: any
                    // value, read past.
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fits)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let At::Value(Kind::List(item)) = self.at else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(false);
        };
        let mut fits = true;
        loop {
            let next = if fits {
                seq.next_element_seed(self.to(item))?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| false)
            };
            match next {
                Some(f) => fits &= f,
                None => return Ok(fits),
            }
        }
    }
}

impl<'s> Fits<'s> {
    fn to(self, kind: &'s Kind) -> Self {
        Fits {
            at: At::Value(kind),
            ..self
        }
    }

    fn takes_number(self) -> bool {
        matches!(self.at, At::Value(Kind::Number { .. } | Kind::Scalar))
    }
}

/// An object's key, borrowed where it holds no escapes.
enum Key<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_string()))
            }
        }
        d.deserialize_str(V)
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
            Field::new("x", DataType::Float64, true),
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
            r#"{"n": "-12", "x": "1.5e3"}"#,
            r#"{"n": " 12", "x": "1.5 "}"#,
            r#"{"x": 2, "n": 3.5}"#,
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
            // A string where a number is expected that holds none.
            r#"{"n": "abc"}"#,
            r#"{"n": "1.5"}"#,
            r#"{"x": "١٢"}"#,
            r#"{"n": true}"#,
            // A suspect deep inside: the rest of the message is still read.
            r#"{"after": {"name": {"x": [1, 2, {"y": null}]}}, "id": "a"}"#,
            r#"{"tags": ["a", ["b"], "c"]}"#,
        ] {
            assert!(!may_fit(suspect.as_bytes(), &f), "{suspect}");
        }
        let mut invalid = br#"{"id": ""#.to_vec();
        invalid.extend_from_slice(b"\xff\xfe\"}");
        assert!(!may_fit(&invalid, &f));
        let deep = format!("{{\"id\": {}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(!may_fit(deep.as_bytes(), &f));
    }

    #[test]
    fn a_top_level_field_the_schema_lacks_is_surely_not_and_named_printably() {
        let shape = Shape::of(&fields());
        let surely = |m: &str| match shape.look(m.as_bytes()) {
            Verdict::SurelyNot(e) => e,
            other => panic!("{m}: {other:?}"),
        };
        assert_eq!(
            surely(r#"{"id": "a", "nom": 1}"#),
            "column 'nom' missing from schema"
        );
        // After a value that does not fit, repeated, and named with escapes.
        assert_eq!(
            surely(r#"{"ok": "not a boolean", "\u005fkafka_topic": 1}"#),
            "column '_kafka_topic' missing from schema"
        );
        assert_eq!(
            surely(r#"{"ñame": 1, "id": "a", "ñame": 2}"#),
            "column 'ñame' missing from schema"
        );
        assert_eq!(
            surely("{\"id\": \"a\", \"a\\nb\": 1}"),
            "column 'a\\nb' missing from schema"
        );
        // Inside a struct the decoder may not read the value (a later key of the same
        // name replaces it): a suspect, tried on its own.
        for suspect in [
            r#"{"after": {"name": "x", "ñame": {"deep": [1]}}}"#,
            r#"{"id": 1, "after": {"zzz": 1}, "after": null}"#,
            r#"{"id": 1, "after": {"zzz": 1}, "after": {"name": "x"}}"#,
        ] {
            assert_eq!(
                shape.look(suspect.as_bytes()),
                Verdict::Suspect,
                "{suspect}"
            );
        }
        // A name of a megabyte is cut to 64 characters; the look stops there.
        let long = format!(r#"{{"{}": 1, "id": {{"x": 1}}}}"#, "é".repeat(1 << 19));
        let e = surely(&long);
        assert!(e.chars().count() < 100, "{}", e.len());
        // Where nothing types the object as a struct, any key is a value: not surely.
        assert_ne!(shape.look(br#"{"id": {"unknown": 1}}"#), Verdict::MayFit);
        assert_eq!(shape.look(br#"{"id": {"unknown": 1}}"#), Verdict::Suspect);
        assert_eq!(
            shape.look(br#"{"tags": [{"unknown": 1}]}"#),
            Verdict::Suspect
        );
        assert_eq!(shape.look(br#"not json {"unknown": 1}"#), Verdict::Suspect);
        let map = Shape::of(
            &vec![Field::new_map(
                "m",
                "entries",
                Field::new("key", DataType::Utf8, false),
                Field::new("value", DataType::Int64, true),
                false,
                true,
            )]
            .into(),
        );
        assert_eq!(map.look(br#"{"m": {"anything": 1}}"#), Verdict::MayFit);
    }

    #[test]
    fn a_message_as_deep_as_its_schema_is_screened_to_its_bottom() {
        // A schema 100 structs deep, and a message filling it with 1 MiB at the bottom
        // (the screen reads it in one pass; it used to parse it again at every level).
        let mut dt = DataType::Utf8;
        for _ in 0..100 {
            dt = DataType::Struct(vec![Field::new("a", dt, true)].into());
        }
        let shape = Shape::of(&vec![Field::new("a", dt, true)].into());
        let message = format!(
            "{}\"{}\"{}",
            "{\"a\": ".repeat(101),
            "é".repeat(1 << 19),
            "}".repeat(101)
        );
        assert!(shape.may_fit(message.as_bytes()));
        // A list at the bottom, where text is expected.
        let list = message
            .replace("\"a\": \"", "\"a\": [\"")
            .replace("\"}", "\"]}");
        assert!(!shape.may_fit(list.as_bytes()));
        // One level deeper than the schema.
        let deeper = format!("{{\"a\": {message}}}");
        assert!(!shape.may_fit(deeper.as_bytes()));
    }

    proptest::proptest! {
        /// The one verdict the decoder trusts without trying: whatever the message (keys
        /// repeated at any level among them), when the screen says it surely does not
        /// fit, arrow's strict decoder refuses it.
        #[test]
        fn what_the_screen_calls_surely_not_the_strict_decoder_refuses(
            value in message(),
        ) {
            let fields = fields();
            let shape = Shape::of(&fields);
            let mut text = String::new();
            value.write(&mut text);
            if let Verdict::SurelyNot(_) = shape.look(text.as_bytes()) {
                proptest::prop_assert!(!strictly_taken(&fields, &text), "{}", text);
            }
        }
    }

    proptest::proptest! {
        /// The other way round: a message the strict decoder takes (each field fitting its
        /// type, some fields given earlier values of any shape that a later occurrence of
        /// the key replaces) is never called surely not.
        #[test]
        fn a_message_the_strict_decoder_takes_is_never_called_surely_not(
            fitting in proptest::collection::vec(fitting_member(), 0..6),
            earlier in proptest::collection::vec(
                (proptest::sample::select(vec!["id", "n", "x", "ok", "after", "tags"]), message()),
                0..4,
            ),
        ) {
            // Earlier occurrences first, each replaced by a fitting one later.
            let mut members: Vec<(String, Json)> = earlier
                .into_iter()
                .filter(|(k, _)| fitting.iter().any(|(f, _)| f == k))
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            members.extend(fitting.into_iter().map(|(k, v)| (k.to_string(), v)));
            let mut text = String::new();
            Json::Object(members).write(&mut text);
            let fields = fields();
            proptest::prop_assume!(strictly_taken(&fields, &text));
            let verdict = Shape::of(&fields).look(text.as_bytes());
            proptest::prop_assert!(!matches!(verdict, Verdict::SurelyNot(_)), "{}", text);
        }
    }

    /// Whether the JSON decoder's own strict decoder takes `text` as a row of `fields`.
    fn strictly_taken(fields: &Fields, text: &str) -> bool {
        let schema = Arc::new(Schema::new(fields.clone()));
        let mut d = super::super::json::build_decoder(&schema, 1).expect("decoder");
        d.decode(text.as_bytes()).is_ok() && d.flush().is_ok()
    }

    /// A field of the test schema with a value of its type.
    fn fitting_member() -> impl proptest::strategy::Strategy<Value = (&'static str, Json)> {
        use proptest::prelude::*;
        let leaf = |v: serde_json::Value| Json::Leaf(v);
        let name = prop_oneof![
            Just(Json::Leaf(serde_json::Value::Null)),
            text().prop_map(move |t| leaf(t.into())),
        ];
        prop_oneof![
            text().prop_map(move |t| ("id", leaf(t.into()))),
            any::<i64>().prop_map(move |n| ("n", leaf(n.into()))),
            any::<i32>().prop_map(move |x| ("x", leaf(x.into()))),
            any::<bool>().prop_map(move |b| ("ok", leaf(b.into()))),
            name.clone()
                .prop_map(|v| ("after", Json::Object(vec![("name".to_string(), v)]))),
            proptest::collection::vec(name, 0..3).prop_map(|v| ("tags", Json::Array(v))),
        ]
    }

    /// JSON whose objects may repeat a key (which `serde_json::Value` cannot hold).
    #[derive(Debug, Clone)]
    enum Json {
        Leaf(serde_json::Value),
        Array(Vec<Json>),
        Object(Vec<(String, Json)>),
    }

    impl Json {
        fn write(&self, out: &mut String) {
            match self {
                Json::Leaf(v) => out.push_str(&v.to_string()),
                Json::Array(items) => {
                    out.push('[');
                    for (n, item) in items.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        item.write(out);
                    }
                    out.push(']');
                }
                Json::Object(members) => {
                    out.push('{');
                    for (n, (k, v)) in members.iter().enumerate() {
                        if n > 0 {
                            out.push(',');
                        }
                        out.push_str(&serde_json::Value::from(k.as_str()).to_string());
                        out.push(':');
                        v.write(out);
                    }
                    out.push('}');
                }
            }
        }
    }

    /// Objects whose keys are mostly the test schema's names (at every level, so they
    /// often repeat) and sometimes any Unicode text, with values of any shape.
    fn message() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            text().prop_map(serde_json::Value::from),
            proptest::sample::select(vec!["12", "1.5", "abc", " 7"])
                .prop_map(serde_json::Value::from),
        ]
        .prop_map(Json::Leaf);
        let value = leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                proptest::collection::vec((key_of(), inner), 0..6).prop_map(Json::Object),
            ]
        });
        proptest::collection::vec((key_of(), value), 0..6).prop_map(Json::Object)
    }

    fn key_of() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            4 => proptest::sample::select(vec!["id", "n", "x", "ok", "after", "tags", "name"])
                .prop_map(str::to_string),
            1 => text(),
        ]
    }

    /// Text of any Unicode scalar values, control characters included.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        proptest::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter)
    }
}
