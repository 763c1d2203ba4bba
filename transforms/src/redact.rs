//! `redact`: find personal data inside free text and replace it by a typed placeholder.
//!
//! One pass of one regular expression over each value, with checks where a pattern alone
//! would over-match: card numbers must pass the Luhn check, IBANs the ISO 7064 mod-97
//! check, IPv6 addresses must parse. Detectors and placeholders:
//! email `[EMAIL]`, card number `[CARD]`, IBAN `[IBAN]`, UK National Insurance number
//! `[NINO]`, IPv4/IPv6 `[IP]`, phone (E.164 and UK national) `[PHONE]`, UK postcode
//! `[POSTCODE]`.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use regex::{Captures, Regex};
use sluice_pipeline::{Result, Transform};

use crate::path::{ColumnPath, check, map_column, schema_error};

/// The detectors, in the order they are tried at each position.
const DETECTORS: [(&str, &str); 8] = [
    (
        "EMAIL",
        r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    ),
    ("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    (
        "NINO",
        r"(?i:\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b)",
    ),
    (
        "IPV4",
        r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
    ),
    ("IPV6", r"(?i:\b[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}\b)"),
    ("CARD", r"\b\d(?:[ -]?\d){12,18}\b"),
    (
        "PHONE",
        r"(?:\+[1-9](?:[ -]?\d){7,14}\b|\b0(?:[ -]?\d){9,10}\b|\(0\d{2,4}\) ?\d{3,4}[ -]?\d{3,4}\b)",
    ),
    ("POSTCODE", r"(?i:\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b)"),
];

/// The compiled detectors.
pub struct Redactor {
    re: Regex,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

/// Whether `s` holds a card number: 13 to 19 digits passing the Luhn check.
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    (13..=19).contains(&digits.len()) && crate::luhn::is_valid(&digits)
}

/// ISO 7064 mod-97 check of an IBAN (spaces ignored).
pub fn iban_valid(s: &str) -> bool {
    // Characters, not bytes: the pattern's `\d` also matches digits of other scripts.
    let compact: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.len() < 15 || compact.len() > 34 {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u64 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c.to_digit(36) {
            Some(v) => v as u64,
            None => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

impl Redactor {
    pub fn new() -> Self {
        let pattern = DETECTORS
            .iter()
            .map(|(name, re)| format!("(?P<{name}>{re})"))
            .collect::<Vec<_>>()
            .join("|");
        // The pattern is a constant of this file, covered by the tests.
        let re = Regex::new(&pattern).unwrap_or_else(|e| panic!("redact patterns: {e}"));
        Self { re }
    }

    /// `text` with every detected value replaced by its placeholder.
    pub fn redact<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        self.re.replace_all(text, |c: &Captures<'_>| {
            let (name, m) = DETECTORS
                .iter()
                .find_map(|(n, _)| c.name(n).map(|m| (*n, m.as_str())))
                .unwrap_or(("", ""));
            let keep = match name {
                "CARD" => !luhn_valid(m),
                "IBAN" => !iban_valid(m),
                "IPV6" => m.parse::<std::net::Ipv6Addr>().is_err(),
                _ => false,
            };
            if keep {
                m.to_string()
            } else {
                let label = if name.starts_with("IP") { "IP" } else { name };
                format!("[{label}]")
            }
        })
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

/// Redact one free-text column.
#[derive(Debug)]
pub struct Redact {
    pub path: ColumnPath,
    pub redactor: Arc<Redactor>,
}

impl Transform for Redact {
    fn name(&self) -> &str {
        "redact"
    }
    fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        check(self.name(), input, &self.path, &|dt| {
            matches!(dt, DataType::Utf8)
        })
        .map_err(|_| {
            schema_error(
                self.name(),
                &format!("column '{}' must be a string column", self.path),
            )
        })?;
        Ok(input.clone())
    }
    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let r = self.redactor.clone();
        map_column(&batch, &self.path, "redact", &move |a| {
            let s = a.as_string::<i32>();
            let out: StringArray = s.iter().map(|v| v.map(|v| r.redact(v))).collect();
            Ok(Arc::new(out) as ArrayRef)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static REDACTOR: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(Redactor::new);

    fn r(s: &str) -> String {
        REDACTOR.redact(s).into_owned()
    }

    #[test]
    fn each_detector_finds_its_kind() {
        assert_eq!(r("mail jane.doe+x@example.co.uk now"), "mail [EMAIL] now");
        assert_eq!(r("card 4111 1111 1111 1111 ok"), "card [CARD] ok");
        assert_eq!(r("iban GB82 WEST 1234 5698 7654 32 ok"), "iban [IBAN] ok");
        assert_eq!(r("nino JG 10 37 85 A ok"), "nino [NINO] ok");
        assert_eq!(
            r("QQ 12 34 56 C"),
            "QQ 12 34 56 C",
            "Q is never a NINO prefix letter"
        );
        assert_eq!(r("from 81.2.69.160 ok"), "from [IP] ok");
        assert_eq!(r("from 2001:db8::8a2e:370:7334 ok"), "from [IP] ok");
        assert_eq!(r("call +44 7700 900123 ok"), "call [PHONE] ok");
        assert_eq!(r("call 07700 900123 ok"), "call [PHONE] ok");
        assert_eq!(r("call (020) 7946 0018 ok"), "call [PHONE] ok");
        assert_eq!(r("lives at SW1A 1AA ok"), "lives at [POSTCODE] ok");
    }

    #[test]
    fn checksums_keep_lookalikes() {
        assert_eq!(
            r("ref 4111 1111 1111 1112"),
            "ref 4111 1111 1111 1112",
            "fails Luhn"
        );
        assert!(!iban_valid("GB82WEST12345698765433"));
        assert_eq!(
            r("at 12:30:45"),
            "at 12:30:45",
            "a time is not an IPv6 address"
        );
    }

    fn planted() -> impl Strategy<Value = (String, &'static str)> {
        prop_oneof![
            ("[a-z]{1,8}", "[a-z]{2,8}").prop_map(|(u, d)| (format!("{u}@{d}.com"), "[EMAIL]")),
            (0u64..1_000_000).prop_map(|n| (format!("+44 7700 {n:06}"), "[PHONE]")),
            (0u64..100_000_000_000_000).prop_map(|n| {
                let body = format!("4{n:014}");
                let check = (0..10)
                    .find(|d| luhn_valid(&format!("{body}{d}")))
                    .unwrap_or(0);
                (format!("{body}{check}"), "[CARD]")
            }),
            (0u32..100, 0u32..100, 0u32..100)
                .prop_map(|(a, b, c)| (format!("AB {a:02} {b:02} {c:02} C"), "[NINO]")),
            (1u8..=254, 0u8..=255, 0u8..=255, 1u8..=254)
                .prop_map(|(a, b, c, d)| (format!("{a}.{b}.{c}.{d}"), "[IP]")),
        ]
    }

    proptest! {
        #[test]
        fn finds_every_planted_value_in_random_text(
            words in proptest::collection::vec("[a-z]{1,10}", 1..20),
            plants in proptest::collection::vec(planted(), 1..6),
        ) {
            let mut text = words.join(" ");
            for (v, _) in &plants {
                text.push(' ');
                text.push_str(v);
                text.push_str(" and ");
            }
            let out = r(&text);
            for (v, label) in &plants {
                prop_assert!(!out.contains(v.as_str()), "{} left in {}", v, out);
                prop_assert!(out.contains(label), "{} missing in {}", label, out);
            }
        }
    }
}
