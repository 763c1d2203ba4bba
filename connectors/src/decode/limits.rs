//! The limits every message and every table schema are held to, so that no producer can
//! make one message cost more than milliseconds, or a table grow without bound.
//!
//! A message beyond a limit is a dead letter, never an error of the run:
//!
//! | limit | checked on | stage |
//! |---|---|---|
//! | `decode.max_message_bytes` | the payload | `limit` |
//! | `decode.max_nesting_depth` | objects and arrays inside the message; every table schema | `limit` |
//! | `decode.max_fields` | fields of the message, at every level | `limit` |
//! | `decode.max_columns` | columns of the table the message would widen, at every level | `schema` |
//! | `decode.max_new_columns_per_batch` | columns one decoded batch adds to a table | `schema` |
//! | reserved names ([`is_reserved_name`]) and names differing only in case | new columns | `schema` |
//!
//! The checks run where a message does not fit the table as it is (the slow path of the
//! decoders): a message that decodes into the table's schema is within its shape already.

use arrow::datatypes::{DataType, Field, Fields, Schema};
use sluice_pipeline::Stage;
use sluice_pipeline::columns::is_reserved_name;
use sluice_pipeline::config::decode::DecodeConfig;

use super::debezium::is_image;

/// The limits of one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_message_bytes: usize,
    pub max_nesting_depth: usize,
    pub max_fields: usize,
    pub max_columns: usize,
    pub max_new_columns_per_batch: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::from_config(&DecodeConfig::default())
    }
}

impl DecodeLimits {
    pub fn from_config(c: &DecodeConfig) -> Self {
        Self {
            max_message_bytes: c.max_message_bytes,
            max_nesting_depth: c.max_nesting_depth,
            max_fields: c.max_fields,
            max_columns: c.max_columns,
            max_new_columns_per_batch: c.max_new_columns_per_batch,
        }
    }

    /// Whether a message nested `depth` deep (see [`Outline`]) is allowed.
    pub(crate) fn check_depth(&self, depth: usize) -> Result<(), (Stage, String)> {
        if depth > self.max_nesting_depth {
            return Err((
                Stage::Limit,
                format!(
                    "nested {depth} levels deep; decode.max_nesting_depth is {}",
                    self.max_nesting_depth
                ),
            ));
        }
        Ok(())
    }

    /// Whether the fields of one message, as inferred, are within the limits.
    /// Refuse a message whose objects hold more members (outside arrays, as written) than
    /// `max_fields`, before its fields are inferred.
    pub(crate) fn check_members(&self, members: usize) -> Result<(), (Stage, String)> {
        if members > self.max_fields {
            return Err((
                Stage::Limit,
                format!(
                    "has {members} fields (object members outside arrays, as written); decode.max_fields is {}",
                    self.max_fields
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn check_message_fields(&self, fields: &Fields) -> Result<(), (Stage, String)> {
        let depth = fields_depth(fields);
        self.check_depth(depth)?;
        let n = count_fields(fields);
        if n > self.max_fields {
            return Err((
                Stage::Limit,
                format!(
                    "has {n} fields (at every level); decode.max_fields is {}",
                    self.max_fields
                ),
            ));
        }
        Ok(())
    }
}

/// Call `f` with every byte of a JSON text outside its strings (quotes included, escapes
/// skipped): the structure, scanned without parsing. Strings are skipped by searching
/// for their closing quote, not byte by byte.
fn outside_strings(bytes: &[u8], mut f: impl FnMut(u8)) {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        f(b);
        i += 1;
        if b == b'"' {
            // Inside a string: to the quote closing it, past escaped bytes.
            loop {
                match bytes
                    .get(i..)
                    .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                {
                    None => return,
                    Some(k) if bytes[i + k] == b'"' => {
                        i += k + 1;
                        break;
                    }
                    Some(k) => i += k + 2,
                }
            }
        }
    }
}

/// What a JSON text holds, counted on its bytes without parsing them (strings skipped);
/// malformed text gives numbers all the same, parsing it fails later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outline {
    /// Levels of objects and arrays nested inside the top-level value (`{"a": 1}` is 0,
    /// `{"a": {"b": [1]}}` is 2).
    pub depth: usize,
    /// Members of the objects outside any array, as written (a key repeated counts each
    /// time): a bound below which the fields inferred from it stay (up to repeated
    /// keys), so a message of thousands of fields outside arrays is refused before
    /// anything is built from it (fields inside arrays are counted once inferred).
    pub members: usize,
}

/// The [`Outline`] of a JSON text, in one pass.
pub fn json_outline(bytes: &[u8]) -> Outline {
    let (mut depth, mut max, mut arrays, mut members) = (0usize, 0usize, 0usize, 0usize);
    outside_strings(bytes, |b| match b {
        b'{' | b'[' => {
            depth += 1;
            max = max.max(depth);
            arrays += usize::from(b == b'[');
        }
        b'}' => depth = depth.saturating_sub(1),
        b']' => {
            depth = depth.saturating_sub(1);
            arrays = arrays.saturating_sub(1);
        }
        b':' if arrays == 0 => members += 1,
        _ => {}
    });
    Outline {
        depth: max.saturating_sub(1),
        members,
    }
}

/// Levels of nesting of a type: 0 for a primitive, one more for every struct, list or
/// map around it.
pub fn type_depth(dt: &DataType) -> usize {
    match dt {
        DataType::Struct(fields) => 1 + fields_depth(fields),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => 1 + type_depth(f.data_type()),
        DataType::Dictionary(_, v) => type_depth(v),
        DataType::Union(fields, _) => {
            1 + fields
                .iter()
                .map(|(_, f)| type_depth(f.data_type()))
                .max()
                .unwrap_or(0)
        }
        _ => 0,
    }
}

/// The deepest of the types of `fields`.
pub fn fields_depth(fields: &Fields) -> usize {
    fields
        .iter()
        .map(|f| type_depth(f.data_type()))
        .max()
        .unwrap_or(0)
}

/// Fields of `fields`, counted at every level (struct members, and those of the structs
/// lists and maps hold).
pub fn count_fields(fields: &Fields) -> usize {
    fields
        .iter()
        .map(|f| 1 + nested_fields(f.data_type()))
        .sum()
}

fn nested_fields(dt: &DataType) -> usize {
    match dt {
        DataType::Struct(fields) => count_fields(fields),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => nested_fields(f.data_type()),
        _ => 0,
    }
}

/// Why `new` fields cannot become columns of a table whose columns are `existing`
/// (reserved names; a name equal to another but for ASCII case, which Delta readers
/// take for the same column), or `None`. For change-event envelopes (`envelope`) the
/// columns of the row images `before` and `after` are checked too: they become the
/// columns of silver tables.
pub(crate) fn name_problem(new: &[Field], existing: &Schema, envelope: bool) -> Option<String> {
    if let Some(p) = new
        .iter()
        .find_map(|f| character_problem(f.name(), f.data_type()))
    {
        return Some(p);
    }
    let mut names: Vec<&str> = existing
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for f in new {
        if let Some(p) = one_name_problem(f.name(), &names) {
            return Some(p);
        }
        names.push(f.name());
    }
    if envelope {
        for f in new
            .iter()
            .chain(existing.fields().iter().map(AsRef::as_ref))
            .filter(|f| is_image(f.name()))
        {
            if let DataType::Struct(children) = f.data_type() {
                let mut seen: Vec<&str> = Vec::new();
                for c in children {
                    if let Some(p) = one_name_problem(c.name(), &seen) {
                        return Some(format!("in '{}': {p}", f.name()));
                    }
                    seen.push(c.name());
                }
            }
        }
    }
    None
}

pub use sluice_pipeline::columns::REFUSED_NAME_CHARACTERS;

/// Why a field `name` of type `dt`, or a field nested in it, cannot be a column name.
fn character_problem(name: &str, dt: &DataType) -> Option<String> {
    if name.is_empty() {
        return Some("a field has an empty name".into());
    }
    if name
        .chars()
        .any(|c| c.is_control() || REFUSED_NAME_CHARACTERS.contains(c))
    {
        return Some(format!(
            "field '{}' has a character column names cannot hold (space, one of ,;{{}}()=. or a control character)",
            printable(name)
        ));
    }
    let nested = match dt {
        DataType::Struct(fields) => fields.iter().collect::<Vec<_>>(),
        DataType::List(f) | DataType::LargeList(f) | DataType::Map(f, _) => vec![f],
        _ => Vec::new(),
    };
    nested.into_iter().find_map(|f| {
        // A list's item and a map's entries are named by the writer, not the producer.
        if matches!(dt, DataType::Struct(_)) {
            character_problem(f.name(), f.data_type())
        } else {
            nested_problem(f.data_type())
        }
    })
}

fn nested_problem(dt: &DataType) -> Option<String> {
    match dt {
        DataType::Struct(fields) => fields
            .iter()
            .find_map(|f| character_problem(f.name(), f.data_type())),
        DataType::List(f) | DataType::LargeList(f) | DataType::Map(f, _) => {
            nested_problem(f.data_type())
        }
        _ => None,
    }
}

fn one_name_problem(name: &str, others: &[&str]) -> Option<String> {
    if is_reserved_name(name) {
        return Some(format!(
            "field '{}' would collide with the columns sluice adds (names starting with {}, in any case, are reserved)",
            printable(name),
            sluice_pipeline::columns::RESERVED_PREFIXES.join(", ")
        ));
    }
    if let Some(other) = others
        .iter()
        .find(|o| **o != name && o.eq_ignore_ascii_case(name))
    {
        return Some(format!(
            "field '{}' differs only in case from column '{}' (Delta readers take them for one column)",
            printable(name),
            printable(other)
        ));
    }
    None
}

/// A field name fit for an error message: control characters escaped, at most 64
/// characters. (A field name is not a value: it names what is wrong.)
pub(crate) fn printable(name: &str) -> String {
    let mut out: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn outline_depth_counts_levels_inside_the_top_object_and_skips_strings() {
        assert_eq!(json_outline(br#"{"a": 1}"#).depth, 0);
        assert_eq!(json_outline(br#"{"a": {"b": [1, {"c": 2}]}}"#).depth, 3);
        assert_eq!(json_outline(br#"{"a": "{{{[[[\"}}}"}"#).depth, 0);
        assert_eq!(json_outline(b"[[[[[[[[[[1]]]]]]]]]]").depth, 9);
        let deep = format!("{}{}", "{\"a\":".repeat(120), "}".repeat(120));
        assert_eq!(json_outline(deep.as_bytes()).depth, 119);
        assert_eq!(json_outline(b"").depth, 0);
        assert_eq!(
            json_outline(b"}}]]").depth,
            0,
            "unbalanced text does not underflow"
        );
    }

    #[test]
    fn outline_members_counts_keys_outside_arrays_and_skips_strings() {
        assert_eq!(json_outline(br#"{"a": 1, "b": {"c": 2}}"#).members, 3);
        assert_eq!(
            json_outline(br#"{"a": [{"b": 1}, {"b": 2}], "c": "x:y"}"#).members,
            2
        );
        assert_eq!(json_outline(br#"{"a\":": 1}"#).members, 1);
        assert_eq!(
            json_outline(br#"{"a": 1, "a": 2}"#).members,
            2,
            "as written"
        );
        assert_eq!(
            json_outline(b"]]]:").members,
            1,
            "unbalanced text does not underflow"
        );
    }

    proptest::proptest! {
        /// The outline counted on the bytes equals the one counted on the parsed value,
        /// whatever the text holds (quotes, backslashes, brackets, colons and control
        /// characters in keys and strings, escaped as JSON writes them).
        #[test]
        fn the_outline_of_any_json_text_matches_its_parsed_value(v in json_value()) {
            fn levels(v: &serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Array(a) => 1 + a.iter().map(levels).max().unwrap_or(0),
                    serde_json::Value::Object(o) => 1 + o.values().map(levels).max().unwrap_or(0),
                    _ => 0,
                }
            }
            fn members(v: &serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Object(o) => o.len() + o.values().map(members).sum::<usize>(),
                    _ => 0,
                }
            }
            let text = serde_json::to_vec_pretty(&v).expect("serialize");
            let outline = json_outline(&text);
            proptest::prop_assert_eq!(outline.depth, levels(&v).saturating_sub(1));
            proptest::prop_assert_eq!(outline.members, members(&v));
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        // Any Unicode scalar values, and the bytes that mean something to the outline.
        let text = proptest::collection::vec(
            prop_oneof![
                any::<char>(),
                proptest::sample::select(vec!['"', '\\', '{', '[', ':', '}', ']'])
            ],
            0..12,
        )
        .prop_map(String::from_iter);
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            text.clone().prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                proptest::collection::vec((text.clone(), inner), 0..5)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    #[test]
    fn type_depth_and_field_count_see_every_level() {
        let inner = DataType::Struct(Fields::from(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Utf8, true),
        ]));
        let list = DataType::List(Arc::new(Field::new("item", inner.clone(), true)));
        let fields = Fields::from(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("s", inner, true),
            Field::new("l", list, true),
        ]);
        assert_eq!(fields_depth(&fields), 2);
        assert_eq!(count_fields(&fields), 3 + 2 + 2);
    }

    #[test]
    fn reserved_and_case_colliding_names_are_refused_with_their_rule() {
        let existing = Schema::new(vec![Field::new("email", DataType::Utf8, true)]);
        let f = |n: &str| Field::new(n, DataType::Utf8, true);
        for bad in [
            "_kafka_topic",
            "_KAFKA_OFFSET",
            "_ingest_date",
            "_Cdc_op",
            "_is_current",
            "__sluice_row",
        ] {
            let p = name_problem(&[f(bad)], &existing, false).expect(bad);
            assert!(p.contains("reserved"), "{p}");
        }
        let p = name_problem(&[f("EMAIL")], &existing, false).expect("case");
        assert!(p.contains("differs only in case"), "{p}");
        let p = name_problem(&[f("Name"), f("name")], &existing, false).expect("case among new");
        assert!(p.contains("'name'"), "{p}");
        assert_eq!(
            name_problem(
                &[f("kafka_topic"), f("名前"), f("ingest")],
                &existing,
                false
            ),
            None
        );
        let after = Field::new(
            "after",
            DataType::Struct(Fields::from(vec![f("id"), f("_cdc_op")])),
            true,
        );
        assert!(
            name_problem(std::slice::from_ref(&after), &existing, false).is_none(),
            "only envelopes look inside"
        );
        let p = name_problem(&[after], &existing, true).expect("in after");
        assert!(p.starts_with("in 'after'"), "{p}");
    }

    #[test]
    fn names_with_characters_delta_readers_refuse_are_refused_at_any_depth() {
        let existing = Schema::empty();
        let f = |n: &str| Field::new(n, DataType::Utf8, true);
        for bad in ["a b", "a,b", "x=y", "user.id", "", "tab\t", "nul\0", "f(x)"] {
            assert!(
                name_problem(&[f(bad)], &existing, false).is_some(),
                "{bad:?}"
            );
        }
        let nested = Field::new(
            "s",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(Fields::from(vec![f("ok"), f("not ok")])),
                true,
            ))),
            true,
        );
        assert!(name_problem(&[nested], &existing, false).is_some());
        assert_eq!(
            name_problem(&[f("名前"), f("emoji_😀"), f("a-b")], &existing, false),
            None
        );
    }

    #[test]
    fn printable_names_escape_control_characters_and_stay_short() {
        assert_eq!(printable("a\nb"), "a\\nb");
        assert_eq!(printable(&"x".repeat(100)).chars().count(), 65);
    }
}
