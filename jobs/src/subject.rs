//! A data subject and every form it takes in the lake: the raw identifier and its
//! pseudonyms under the PII policy's keys. Finds the subject in rows (whole values of key
//! columns, words of free text, opened dead letters), in Parquet files and in raw bytes.

use std::collections::HashSet;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StructArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type, Int64Type, Schema};
use deltalake::datafusion::common::Result as DfResult;
use deltalake::datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use deltalake::datafusion::prelude::{Expr, col};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_pipeline::config::erasure::ErasureConfig;
use sluice_transforms::seal::{DeadLetterSeal, is_sealed};

use crate::error::{Error, Result};

/// One subject (or every subject of a request at once): the forms its identifier takes,
/// never logged.
pub struct Subject {
    forms: Vec<String>,
    exact: HashSet<String>,
    /// Every form at once; `None` when there is none to search.
    finder: Option<AhoCorasick>,
    seal: Option<Arc<DeadLetterSeal>>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subject(<{} forms>)", self.forms.len())
    }
}

/// Columns of a dead-letter-shaped table (`sluice.dead_letters`, `sluice.quarantine`).
pub const LETTER_COLUMNS: [&str; 5] = [
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_key",
    "payload",
];

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl Subject {
    /// `raw` and its `pseudonyms`; `seal` opens sealed dead letters.
    pub fn new(raw: &str, pseudonyms: Vec<String>, seal: Option<Arc<DeadLetterSeal>>) -> Self {
        let mut forms = vec![raw.to_string()];
        forms.extend(pseudonyms.into_iter().filter(|p| p != raw));
        Self::of_forms(forms, seal)
    }

    fn of_forms(mut forms: Vec<String>, seal: Option<Arc<DeadLetterSeal>>) -> Self {
        forms.retain(|f| !f.is_empty());
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&forms)
            .ok()
            .filter(|_| !forms.is_empty());
        Self {
            exact: forms.iter().cloned().collect(),
            forms,
            finder,
            seal,
        }
    }

    /// Every subject of `all` at once: rows holding any of them match.
    pub fn union(all: &[Arc<Subject>]) -> Self {
        let mut forms: Vec<String> = all.iter().flat_map(|s| s.forms.iter().cloned()).collect();
        forms.sort();
        forms.dedup();
        let seal = all.iter().find_map(|s| s.seal.clone());
        Self::of_forms(forms, seal)
    }

    /// How many forms (raw + pseudonyms) are searched.
    pub fn forms(&self) -> usize {
        self.forms.len()
    }

    /// The forms searched (raw and pseudonyms), never to be logged.
    pub fn form_list(&self) -> &[String] {
        &self.forms
    }

    /// Whether `text` holds one of the subject's forms anywhere: compared on letters and
    /// digits only, after compatibility normalisation (NFKC), lowercased, so case,
    /// separators, invisible characters inserted (`DSAR-c000-0123`, a zero-width space)
    /// and full-width or other compatibility forms of letters and digits do not hide it;
    /// for text kept in the clear, such as request ids.
    pub fn held_in(&self, text: &str) -> bool {
        held_in(text, &self.forms)
    }

    /// Whether `value` is the subject's identifier in one of its forms.
    pub fn is(&self, value: &str) -> bool {
        self.exact.contains(value)
    }

    /// Occurrences of any form in `hay` standing as a word (not inside a longer identifier).
    pub fn count_in(&self, hay: &[u8]) -> usize {
        let Some(finder) = &self.finder else {
            return 0;
        };
        finder
            .find_overlapping_iter(hay)
            .filter(|m| {
                let before = m.start().checked_sub(1).map(|i| hay[i]);
                let after = hay.get(m.end()).copied();
                !before.is_some_and(is_word_byte) && !after.is_some_and(is_word_byte)
            })
            .count()
    }

    pub fn mentioned_in(&self, hay: &[u8]) -> bool {
        self.count_in(hay) > 0
    }

    /// Call `f` with each form found in `hay` standing as a word (as [`Self::count_in`]
    /// counts them), once per occurrence.
    pub fn forms_in(&self, hay: &[u8], f: &mut dyn FnMut(&str)) {
        let Some(finder) = &self.finder else {
            return;
        };
        for m in finder.find_overlapping_iter(hay) {
            let before = m.start().checked_sub(1).map(|i| hay[i]);
            let after = hay.get(m.end()).copied();
            if !before.is_some_and(is_word_byte)
                && !after.is_some_and(is_word_byte)
                && let Some(form) = self.forms.get(m.pattern().as_usize())
            {
                f(form);
            }
        }
    }

    /// Rows of `array` whose whole value is the subject.
    pub fn exact_mask(&self, array: &ArrayRef) -> Result<BooleanArray> {
        let text = as_text(array)?;
        let s = text.as_string::<i32>();
        Ok(s.iter()
            .map(|v| Some(v.is_some_and(|v| self.is(v))))
            .collect())
    }

    /// Rows of `array` (text or bytes) mentioning the subject.
    pub fn contains_mask(&self, array: &ArrayRef) -> Result<BooleanArray> {
        Ok(match array.data_type() {
            DataType::Binary => array
                .as_binary::<i32>()
                .iter()
                .map(|v| Some(v.is_some_and(|v| self.mentioned_in(v))))
                .collect(),
            _ => {
                let text = as_text(array)?;
                text.as_string::<i32>()
                    .iter()
                    .map(|v| Some(v.is_some_and(|v| self.mentioned_in(v.as_bytes()))))
                    .collect()
            }
        })
    }

    /// The plain bytes of a dead letter's key or payload: opened when sealed and the key
    /// is at hand; a sealed value that cannot be opened is searched as it is.
    fn plain<'a>(
        &self,
        value: &'a [u8],
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> std::borrow::Cow<'a, [u8]> {
        match &self.seal {
            Some(seal) if is_sealed(value) => seal
                .open(value, topic, partition, offset)
                .map_or(std::borrow::Cow::Borrowed(value), std::borrow::Cow::Owned),
            _ => std::borrow::Cow::Borrowed(value),
        }
    }

    /// Call `f(row, bytes)` with each key and payload of dead letters (columns in
    /// [`LETTER_COLUMNS`] order), opened when sealed.
    fn each_letter_value(
        &self,
        columns: &[ArrayRef],
        f: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        let [topic, partition, offset, key, payload] = columns else {
            return Err(Error::Invalid("a dead letter needs five columns".into()));
        };
        let topic = as_text(topic)?;
        let topic = topic.as_string::<i32>();
        let partition = cast(partition, &DataType::Int32)?;
        let partition = partition.as_primitive::<Int32Type>();
        let offset = cast(offset, &DataType::Int64)?;
        let offset = offset.as_primitive::<Int64Type>();
        for c in [key, payload] {
            let c = cast(c, &DataType::Binary)?;
            let c = c.as_binary::<i32>();
            for i in 0..c.len() {
                if c.is_valid(i) {
                    let t = if topic.is_valid(i) {
                        topic.value(i)
                    } else {
                        ""
                    };
                    f(
                        i,
                        &self.plain(c.value(i), t, partition.value(i), offset.value(i)),
                    );
                }
            }
        }
        Ok(())
    }

    /// Dead letters (columns in [`LETTER_COLUMNS`] order) whose key or payload mentions the subject.
    pub fn letters_mask(&self, columns: &[ArrayRef]) -> Result<BooleanArray> {
        let mut hit = vec![false; columns.first().map_or(0, |c| c.len())];
        self.each_letter_value(columns, &mut |i, v| {
            if self.mentioned_in(v) {
                hit[i] = true;
            }
        })?;
        Ok(BooleanArray::from(hit))
    }

    /// Occurrences in every text and byte value of `batch`, nested values included, with
    /// dead letters opened.
    pub fn count_in_batch(&self, batch: &RecordBatch) -> Result<usize> {
        let schema = batch.schema();
        let letters: Option<Vec<ArrayRef>> = LETTER_COLUMNS
            .iter()
            .map(|c| batch.column_by_name(c).cloned())
            .collect();
        let mut n = 0;
        if let (Some(letters), Some(_)) = (letters, &self.seal) {
            self.each_letter_value(&letters, &mut |_, v| n += self.count_in(v))?;
            for (field, column) in schema.fields().iter().zip(batch.columns()) {
                if !matches!(field.name().as_str(), "kafka_key" | "payload") {
                    n += self.count_in_array(column);
                }
            }
            return Ok(n);
        }
        for column in batch.columns() {
            n += self.count_in_array(column);
        }
        Ok(n)
    }

    fn count_in_array(&self, array: &ArrayRef) -> usize {
        match array.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Dictionary(_, _) => cast(array, &DataType::Utf8).map_or(0, |a| {
                a.as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(|v| self.count_in(v.as_bytes()))
                    .sum()
            }),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
                cast(array, &DataType::Binary).map_or(0, |a| {
                    a.as_binary::<i32>()
                        .iter()
                        .flatten()
                        .map(|v| self.count_in(v))
                        .sum()
                })
            }
            DataType::Struct(_) => array
                .as_struct()
                .columns()
                .iter()
                .map(|c| self.count_in_array(c))
                .sum(),
            DataType::List(_) => self.count_in_array(array.as_list::<i32>().values()),
            DataType::LargeList(_) => self.count_in_array(array.as_list::<i64>().values()),
            DataType::Map(_, _) => {
                let m = array.as_map();
                self.count_in_array(m.keys()) + self.count_in_array(m.values())
            }
            _ => 0,
        }
    }

    /// Occurrences in the Parquet file `name` whose bytes are `bytes`, every value decoded.
    pub fn count_in_parquet(&self, name: &str, bytes: bytes::Bytes) -> Result<usize> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(Error::parquet(name))?;
        let mut n = 0;
        for batch in reader {
            n += self.count_in_batch(&batch?)?;
        }
        Ok(n)
    }
}

/// Words that stand for no identifier at all: a request naming one is refused.
const PLACEHOLDERS: [&str; 10] = [
    "null",
    "none",
    "nil",
    "true",
    "false",
    "undefined",
    "nan",
    "unknown",
    "n/a",
    "na",
];

/// Letters and digits of `s`, folded so that nothing drawn to look or read the same
/// differs: lowercased, compatibility-decomposed (full-width `Ｃ０`, superscript `¹`,
/// circled `①`, mathematical `𝟏`), marks dropped (accents, combining characters, `İ`'s
/// dot), decimal digits of every script read as ASCII (`٧` is `7`), then reduced to the
/// skeleton of Unicode's confusables (UTS #39: Cyrillic `С` is Latin `c`).
fn folded(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory as _};
    let mark = |c: &char| c.general_category_group() == GeneralCategoryGroup::Mark;
    let plain: String = s
        .chars()
        .flat_map(char::to_lowercase)
        .nfkd()
        .filter(|c| !mark(c))
        .map(ascii_digit)
        .collect();
    unicode_security::confusable_detection::skeleton(&plain)
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() && !mark(c))
        .collect()
}

/// A decimal digit of any script as its ASCII digit (Unicode keeps each script's digits
/// contiguous, zero first); any other character as it is.
fn ascii_digit(c: char) -> char {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    let digit = |c: char| c.general_category() == GeneralCategory::DecimalNumber;
    if c.is_ascii_digit() || !digit(c) {
        return c;
    }
    let mut zero = c as u32;
    while let Some(before) = zero.checked_sub(1).and_then(char::from_u32)
        && digit(before)
    {
        zero -= 1;
    }
    char::from_digit((c as u32 - zero) % 10, 10).unwrap_or(c)
}

/// Whether `text` holds one of `forms`, compared as [`Subject::held_in`] does.
pub fn held_in(text: &str, forms: &[String]) -> bool {
    FoldedForms::of(forms).held_in(text)
}

/// Forms folded once (see [`Subject::held_in`]), to look for in many texts: folding
/// (normalisation and the confusable skeleton) costs far more than the search.
pub struct FoldedForms(Vec<String>);

impl FoldedForms {
    pub fn of(forms: &[String]) -> Self {
        Self(
            forms
                .iter()
                .map(|f| folded(f))
                .filter(|f| !f.is_empty())
                .collect(),
        )
    }

    /// Whether `text` holds one of the forms.
    pub fn held_in(&self, text: &str) -> bool {
        let text = folded(text);
        self.0.iter().any(|f| text.contains(f.as_str()))
    }
}

/// Check a requested identifier against `[erasure]`'s rules: at least
/// `min_subject_length` characters, no placeholder word, no control character, and the
/// whole of `subject_pattern` when one is set. The error says why, never the identifier.
pub fn check_identifier(config: &ErasureConfig, raw: &str) -> std::result::Result<(), String> {
    let chars = raw.chars().count();
    if chars < config.min_subject_length {
        return Err(format!(
            "an identifier of {chars} characters; [erasure] min_subject_length is {} (a short identifier matches words everywhere)",
            config.min_subject_length
        ));
    }
    if raw.chars().any(char::is_control) {
        return Err("an identifier with a control character".into());
    }
    if PLACEHOLDERS.contains(&raw.trim().to_ascii_lowercase().as_str()) {
        return Err("a placeholder word, not an identifier".into());
    }
    if let Some(pattern) = &config.subject_pattern {
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            format!("[erasure] subject_pattern is not a valid regular expression: {e}")
        })?;
        if !re.is_match(raw) {
            return Err("an identifier not matching [erasure] subject_pattern".into());
        }
    }
    Ok(())
}

/// `array` as a nullable Utf8 array.
fn as_text(array: &ArrayRef) -> Result<ArrayRef> {
    Ok(match array.data_type() {
        DataType::Utf8 => Arc::clone(array),
        _ => cast(array, &DataType::Utf8)?,
    })
}

/// The column at dotted `path` of `schema`, if it exists (through structs).
pub fn has_path(schema: &Schema, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return false;
    };
    let Ok(mut field) = schema.field_with_name(first) else {
        return false;
    };
    for part in parts {
        let DataType::Struct(children) = field.data_type() else {
            return false;
        };
        match children.iter().find(|c| c.name() == part) {
            Some(c) => field = c,
            None => return false,
        }
    }
    true
}

/// The column at dotted `path` of `batch`.
pub fn column_at(batch: &RecordBatch, path: &str) -> Option<ArrayRef> {
    let mut parts = path.split('.');
    let mut array = batch.column_by_name(parts.next()?)?.clone();
    for part in parts {
        let s: &StructArray = array.as_struct_opt()?;
        array = s.column_by_name(part)?.clone();
    }
    Some(array)
}

/// An expression reading dotted `path` (struct fields by name).
pub fn path_expr(path: &str) -> Expr {
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let mut e = col(deltalake::datafusion::common::Column::new_unqualified(
        first,
    ));
    for part in parts {
        e = deltalake::datafusion::functions::core::expr_fn::get_field(e, part);
    }
    e
}

/// Where the subject is looked for in one table.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// Columns whose whole value identifies a subject.
    pub exact: Vec<String>,
    /// Text columns mentioning subjects.
    pub contains: Vec<String>,
    /// Whether rows are dead letters (key and payload searched, opened when sealed).
    pub letters: bool,
}

impl Lookup {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.contains.is_empty() && !self.letters
    }

    /// Rows of `batch` holding the subject; columns the batch lacks hold nothing.
    pub fn mask(&self, subject: &Subject, batch: &RecordBatch) -> Result<BooleanArray> {
        let mut hit = BooleanArray::from(vec![false; batch.num_rows()]);
        for c in &self.exact {
            if let Some(a) = column_at(batch, c) {
                hit = arrow::compute::or(&hit, &subject.exact_mask(&a)?)?;
            }
        }
        for c in &self.contains {
            if let Some(a) = column_at(batch, c) {
                hit = arrow::compute::or(&hit, &subject.contains_mask(&a)?)?;
            }
        }
        if self.letters {
            let cols: Option<Vec<ArrayRef>> =
                LETTER_COLUMNS.iter().map(|c| column_at(batch, c)).collect();
            if let Some(cols) = cols {
                hit = arrow::compute::or(&hit, &subject.letters_mask(&cols)?)?;
            }
        }
        Ok(hit)
    }

    /// Call `f(row, form)` for each form of `subject` that makes a row of `batch` hold it:
    /// whole values of the exact columns, words of the text columns, words of opened dead
    /// letters. A row [`Self::mask`] finds gets at least one call.
    pub fn forms_per_row(
        &self,
        subject: &Subject,
        batch: &RecordBatch,
        f: &mut dyn FnMut(usize, &str),
    ) -> Result<()> {
        for c in &self.exact {
            if let Some(a) = column_at(batch, c) {
                let text = as_text(&a)?;
                for (i, v) in text.as_string::<i32>().iter().enumerate() {
                    if let Some(v) = v.filter(|v| subject.is(v)) {
                        f(i, v);
                    }
                }
            }
        }
        for c in &self.contains {
            if let Some(a) = column_at(batch, c) {
                if a.data_type() == &DataType::Binary {
                    for (i, v) in a.as_binary::<i32>().iter().enumerate() {
                        if let Some(v) = v {
                            subject.forms_in(v, &mut |form| f(i, form));
                        }
                    }
                } else {
                    let text = as_text(&a)?;
                    for (i, v) in text.as_string::<i32>().iter().enumerate() {
                        if let Some(v) = v {
                            subject.forms_in(v.as_bytes(), &mut |form| f(i, form));
                        }
                    }
                }
            }
        }
        if self.letters {
            let cols: Option<Vec<ArrayRef>> =
                LETTER_COLUMNS.iter().map(|c| column_at(batch, c)).collect();
            if let Some(cols) = cols {
                subject.each_letter_value(&cols, &mut |i, v| {
                    subject.forms_in(v, &mut |form| f(i, form));
                })?;
            }
        }
        Ok(())
    }

    /// Whether any row of the Parquet file `name`, whose bytes are `bytes`, holds the
    /// subject.
    pub fn holds_in(
        &self,
        subject: &Subject,
        name: &impl std::fmt::Display,
        bytes: bytes::Bytes,
    ) -> Result<bool> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(Error::parquet(name.to_string()))?;
        for batch in reader {
            if self.mask(subject, &batch?)?.true_count() > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A predicate true on the rows holding the subject. Its text names a function, never
    /// the subject, so the Delta log's record of the operation holds no identifier.
    pub fn predicate(&self, subject: Arc<Subject>) -> Expr {
        let mut args: Vec<Expr> = self.exact.iter().map(|c| path_expr(c)).collect();
        args.extend(self.contains.iter().map(|c| path_expr(c)));
        if self.letters {
            args.extend(LETTER_COLUMNS.iter().map(|c| path_expr(c)));
        }
        let udf = ScalarUDF::new_from_impl(SubjectRows {
            lookup: self.clone(),
            subject,
            signature: Signature::variadic_any(Volatility::Immutable),
        });
        udf.call(args)
    }
}

/// `sluice_erasure_subject(columns…)`: true on rows holding the subject.
#[derive(Debug)]
struct SubjectRows {
    lookup: Lookup,
    subject: Arc<Subject>,
    signature: Signature,
}

impl PartialEq for SubjectRows {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.subject, &other.subject)
            && self.lookup.exact == other.lookup.exact
            && self.lookup.contains == other.lookup.contains
            && self.lookup.letters == other.lookup.letters
    }
}

impl Eq for SubjectRows {}

impl std::hash::Hash for SubjectRows {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.lookup.exact.hash(state);
        self.lookup.contains.hash(state);
        self.lookup.letters.hash(state);
    }
}

impl ScalarUDFImpl for SubjectRows {
    fn name(&self) -> &str {
        "sluice_erasure_subject"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let n = args.number_rows;
        let failed = |e: Error| deltalake::datafusion::error::DataFusionError::External(e.into());
        let mut hit = BooleanArray::from(vec![false; n]);
        let (exact, rest) = arrays.split_at(self.lookup.exact.len().min(arrays.len()));
        let (contains, letters) = rest.split_at(self.lookup.contains.len().min(rest.len()));
        for a in exact {
            hit = arrow::compute::or(&hit, &self.subject.exact_mask(a).map_err(failed)?)?;
        }
        for a in contains {
            hit = arrow::compute::or(&hit, &self.subject.contains_mask(a).map_err(failed)?)?;
        }
        if self.lookup.letters {
            hit = arrow::compute::or(&hit, &self.subject.letters_mask(letters).map_err(failed)?)?;
        }
        Ok(ColumnarValue::Array(Arc::new(hit)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn subject() -> Subject {
        Subject::new("C0000001", vec!["tok_k_abc".into()], None)
    }

    #[test]
    fn a_subject_is_found_as_a_whole_word_only() {
        let s = subject();
        assert_eq!(s.count_in(br#"{"customer_id":"C0000001"}"#), 1);
        assert_eq!(s.count_in(b"C00000012 xC0000001 C0000001-2"), 0);
        assert_eq!(s.count_in(b"keys: tok_k_abc, C0000001"), 2);
        let a: ArrayRef = Arc::new(StringArray::from(vec![Some("tok_k_abc"), None, Some("C1")]));
        assert_eq!(
            s.exact_mask(&a).expect("mask"),
            BooleanArray::from(vec![true, false, false])
        );
    }

    #[test]
    fn a_subject_is_held_in_text_whatever_case_separators_or_compatibility_forms_hide_it() {
        let s = subject();
        for hidden in [
            "DSAR-C0000001",
            "dsar c000-0001",
            "c\u{200B}0000001",
            "\u{FF23}\u{FF10}\u{FF10}\u{FF10}\u{FF10}\u{FF10}\u{FF10}\u{FF11}",
            "\u{1D402}\u{1D7CE}\u{1D7CE}\u{1D7CE}\u{1D7CE}\u{1D7CE}\u{1D7CE}\u{1D7CF}",
            "C\u{2070}\u{2070}\u{2070}\u{2070}\u{2070}\u{2070}\u{B9}",
            "TOK_K_ABC",
            // Digits of other scripts, marks inside, a mark merging with a letter, a
            // dotted capital I, look-alike letters.
            "C\u{660}\u{660}\u{660}\u{660}\u{660}\u{660}\u{661}",
            "C\u{966}\u{966}\u{966}\u{966}\u{966}\u{966}\u{967}",
            "C0\u{64B}000001",
            "C0\u{345}000001",
            "C\u{327}0000001",
            "\u{421}0000001",
            "TOK_K_\u{410}BC",
            "tok_k_ab\u{441}",
        ] {
            assert!(s.held_in(hidden), "{hidden:?}");
        }
        for clear in ["DSAR-2026-0042", "C000000", "tok_k_ab", "", "①②③"] {
            assert!(!s.held_in(clear), "{clear:?}");
        }
        assert!(held_in("DSAR-\u{130}BAN-7", &["iban7".to_string()]));
        assert!(held_in("iban-\u{1D7D5}", &["\u{130}BAN7".to_string()]));
    }

    #[test]
    fn identifiers_too_short_placeholders_and_off_pattern_are_refused() {
        let mut c = ErasureConfig::default();
        assert!(check_identifier(&c, "C0000001").is_ok());
        for bad in ["1", "C001", "null", "NULL ", "undefined", "C00\n0001"] {
            check_identifier(&c, bad).expect_err(bad);
        }
        c.subject_pattern = Some("C[0-9]{7}".into());
        assert!(check_identifier(&c, "C0000001").is_ok());
        assert!(check_identifier(&c, "C00000012").is_err(), "matched whole");
        assert!(check_identifier(&c, "xC0000001").is_err());
        c.subject_pattern = Some("(".into());
        assert!(
            check_identifier(&c, "C0000001")
                .expect_err("bad pattern")
                .contains("subject_pattern")
        );
        // Non-ASCII identifiers count characters, not bytes.
        c.subject_pattern = None;
        assert!(check_identifier(&c, "Zoë-Ünal").is_ok());
        assert!(check_identifier(&c, "Zoë").is_err());
    }

    #[test]
    fn many_subjects_are_found_at_once_each_as_a_whole_word() {
        let all: Vec<Arc<Subject>> = (0..1_000)
            .map(|i| {
                Arc::new(Subject::new(
                    &format!("C{i:07}"),
                    vec![format!("tok_{i}")],
                    None,
                ))
            })
            .collect();
        let u = Subject::union(&all);
        assert_eq!(u.forms(), 2_000);
        assert_eq!(
            u.count_in(b"C0000999 and tok_5, not C00009990 nor tok_50x"),
            2
        );
        assert!(u.is("tok_777"));
        assert!(!u.is("tok_1000"));
    }

    #[test]
    fn numbers_are_compared_as_text() {
        let s = Subject::new("42", vec![], None);
        let a: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![42, 420]));
        assert_eq!(
            s.exact_mask(&a).expect("mask"),
            BooleanArray::from(vec![true, false])
        );
    }
}
