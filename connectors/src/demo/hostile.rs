//! Hostile card transactions, for `sluice bench --hostile` and the decode benchmark: the
//! shapes a producer can send to crash, stall or bloat a pipeline, each in the form of the
//! demo's `txn-events` (whose policy tokenizes `customer_id` and encrypts `card_number`).

/// One hostile kind: its name and a message of that kind (`n` makes names unique where a
/// kind needs it).
pub struct Kind {
    pub name: &'static str,
    pub make: fn(n: usize) -> Vec<u8>,
}

/// Every kind, none larger than about 200 KB.
pub const KINDS: [Kind; 10] = [
    Kind {
        name: "non-ASCII card number",
        make: |n| {
            format!(r#"{{"txn_id": "H{n}", "card_number": "££££ ÄÖÜ ¹²³", "customer_id": "C1"}}"#)
                .into_bytes()
        },
    },
    Kind {
        name: "field named like a lineage column",
        make: |n| {
            format!(r#"{{"txn_id": "H{n}", "_kafka_topic": 1, "_ingest_date": "2099-01-01"}}"#)
                .into_bytes()
        },
    },
    Kind {
        name: "120 levels of nesting",
        make: |n| {
            format!(
                r#"{{"txn_id": "H{n}", "deep": {}1{}}}"#,
                "{\"a\": ".repeat(120),
                "}".repeat(120)
            )
            .into_bytes()
        },
    },
    Kind {
        name: "200,000 digits under encrypt_fpe",
        make: |n| {
            format!(
                r#"{{"txn_id": "H{n}", "card_number": "{}"}}"#,
                "4".repeat(200_000)
            )
            .into_bytes()
        },
    },
    Kind {
        name: "invalid UTF-8",
        make: |n| {
            let mut m = format!(r#"{{"txn_id": "H{n}", "merchant": ""#).into_bytes();
            m.extend_from_slice(b"\xff\xfe\xc3\x28\"}");
            m
        },
    },
    Kind {
        name: "integer beyond 64 bits",
        make: |n| {
            format!(r#"{{"txn_id": "H{n}", "amount_gbp": 99999999999999999999999}}"#).into_bytes()
        },
    },
    Kind {
        name: "a new field name",
        make: |n| format!(r#"{{"txn_id": "H{n}", "field_{n}": {n}}}"#).into_bytes(),
    },
    Kind {
        name: "object where a string was inferred",
        make: |n| format!(r#"{{"txn_id": "H{n}", "merchant": {{"name": "x"}}}}"#).into_bytes(),
    },
    Kind {
        name: "3,000 fields",
        make: |n| {
            let fields: String = (0..3000).map(|i| format!(",\"x{i}\": {i}")).collect();
            format!(r#"{{"txn_id": "H{n}"{fields}}}"#).into_bytes()
        },
    },
    Kind {
        name: "not JSON",
        make: |n| format!("\u{0}{n}\u{7f}{{[").into_bytes(),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_distinct_and_bounded() {
        for (i, k) in KINDS.iter().enumerate() {
            let m = (k.make)(i);
            assert!(!m.is_empty() && m.len() < 256 * 1024, "{}", k.name);
            assert_ne!((k.make)(1), (k.make)(2), "{} varies with n", k.name);
        }
    }
}
