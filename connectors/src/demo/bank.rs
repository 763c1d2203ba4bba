//! A deterministic synthetic data set: the Customer 360 model of a retail bank.
//!
//! Four topics: `customers`, `accounts`, `txn-events` (card transactions) and
//! `touchpoint-events` (app, web, branch and call-centre interactions). The values look
//! like the PII a bank holds (names, emails, UK phone numbers, dates of birth, card
//! numbers, free-text notes) but are generated from a fixed seed: the same `scale` always
//! gives the same messages in the same order. A few deliberately bad messages are mixed
//! in so the dead-letter table has something to show.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::decode::debezium::UNAVAILABLE;

/// One generated message.
#[derive(Debug, Clone)]
pub struct BankMessage {
    pub topic: &'static str,
    pub key: String,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: i64,
}

/// Topics of the data set and their partition counts.
pub const TOPICS: [(&str, i32); 4] = [
    ("customers", 2),
    ("accounts", 2),
    ("txn-events", 4),
    ("touchpoint-events", 4),
];

/// How big a data set to make.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub customers: usize,
    pub transactions: usize,
    pub touchpoints: usize,
    /// Mix in malformed messages.
    pub with_bad_messages: bool,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            customers: 2_000,
            transactions: 40_000,
            touchpoints: 15_000,
            with_bad_messages: true,
        }
    }
}

const FIRST: [&str; 16] = [
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Grace", "Sophia", "Freya", "Noah", "Oliver",
    "George", "Arthur", "Leo", "Harry", "Oscar", "Muhammad",
];
const LAST: [&str; 16] = [
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Patel", "Khan", "Walker", "Wright", "Robinson",
];
const CITIES: [&str; 10] = [
    "London",
    "Manchester",
    "Birmingham",
    "Leeds",
    "Glasgow",
    "Bristol",
    "Cardiff",
    "Edinburgh",
    "Belfast",
    "Newcastle",
];
const MERCHANTS: [(&str, u16); 12] = [
    ("Tesco", 5411),
    ("Sainsbury's", 5411),
    ("Pret A Manger", 5814),
    ("TfL", 4111),
    ("Amazon UK", 5942),
    ("Shell", 5541),
    ("Boots", 5912),
    ("Greggs", 5814),
    ("Argos", 5311),
    ("Trainline", 4112),
    ("Deliveroo", 5812),
    ("British Gas", 4900),
];
const SEGMENTS: [&str; 4] = ["mass", "affluent", "premier", "student"];
const CHANNELS: [&str; 4] = ["app", "web", "branch", "call_centre"];
const ACTIONS: [&str; 6] = [
    "login",
    "view_statement",
    "payment_setup",
    "card_freeze",
    "complaint",
    "address_change",
];

/// 2026-01-01T00:00:00Z in milliseconds.
const EPOCH_MS: i64 = 1_767_225_600_000;

fn luhn_complete(prefix: &str) -> String {
    let digits: Vec<u32> = prefix.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    format!("{prefix}{}", (10 - sum % 10) % 10)
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// The final rows of the source database's `customers` and `accounts` tables, by key, after
/// every change the data set streams: what silver must equal.
#[derive(Debug, Clone, Default)]
pub struct SourceTables {
    pub customers: std::collections::BTreeMap<String, serde_json::Value>,
    pub accounts: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Emits Debezium change events (Postgres connector, JSON without the schema wrapper) of
/// the bank's operational database and keeps the table state they lead to.
struct Cdc {
    lsn: i64,
    tables: SourceTables,
}

impl Cdc {
    /// One change event; `row` is the new image (`None` for a delete).
    fn event(
        &mut self,
        out: &mut Vec<BankMessage>,
        table: &'static str,
        op: &str,
        id: &str,
        row: Option<serde_json::Value>,
        ts: i64,
    ) {
        let (topic, key_field) = match table {
            "customers" => ("customers", "customer_id"),
            _ => ("accounts", "account_id"),
        };
        let state = match table {
            "customers" => &mut self.tables.customers,
            _ => &mut self.tables.accounts,
        };
        // Snapshot rows share the snapshot's position in the log, as with Debezium.
        let lsn = if op == "r" { 10_000_000 } else { self.lsn };
        self.lsn += 8;
        let before = if op == "d" {
            json!({ key_field: id })
        } else {
            serde_json::Value::Null
        };
        match &row {
            Some(r) => {
                // An unchanged TOASTed column arrives as a placeholder; the table keeps its value.
                let mut stored = r.clone();
                if let (Some(obj), Some(old)) = (stored.as_object_mut(), state.get(id)) {
                    for (k, v) in obj.iter_mut() {
                        if v == UNAVAILABLE {
                            *v = old.get(k).cloned().unwrap_or_default();
                        }
                    }
                }
                state.insert(id.to_string(), stored);
            }
            None => {
                state.remove(id);
            }
        }
        let envelope = json!({
            "before": before,
            "after": row,
            "source": {
                "version": "2.7.3.Final", "connector": "postgresql", "name": "bank",
                "ts_ms": ts, "snapshot": if op == "r" { "true" } else { "false" },
                "db": "bank", "schema": "public", "table": table,
                "txId": 5_000 + lsn / 8, "lsn": lsn,
            },
            "op": op,
            "ts_ms": ts + 40,
        });
        let key = json!({ key_field: id }).to_string();
        out.push(BankMessage {
            topic,
            key: key.clone(),
            payload: serde_json::to_vec(&envelope).ok(),
            timestamp_ms: ts,
        });
        if op == "d" {
            // The tombstone that lets Kafka compact the key away.
            out.push(BankMessage {
                topic,
                key,
                payload: None,
                timestamp_ms: ts,
            });
        }
    }
}

/// Generate the data set, in production order.
pub fn generate(scale: Scale) -> Vec<BankMessage> {
    generate_with_tables(scale).0
}

/// The data set and the source tables its change events lead to.
pub fn generate_with_tables(scale: Scale) -> (Vec<BankMessage>, SourceTables) {
    let mut rng = StdRng::seed_from_u64(0x5_1u64 << 32 | 0xce);
    let mut out = Vec::with_capacity(scale.customers * 2 + scale.transactions + scale.touchpoints);
    let mut accounts: Vec<(String, String, String)> = Vec::new(); // (account, customer, card)
    let mut cdc = Cdc {
        lsn: 20_000_000,
        tables: SourceTables::default(),
    };
    let mut customer_rows: Vec<(String, serde_json::Value, i64)> = Vec::new();
    let mut account_rows: Vec<(String, serde_json::Value, i64)> = Vec::new();
    for c in 0..scale.customers {
        let id = format!("C{:07}", c + 1);
        let first = FIRST[rng.random_range(0..FIRST.len())];
        let last = LAST[rng.random_range(0..LAST.len())];
        let phone = format!("+44 7700 {:06}", rng.random_range(0..1_000_000));
        let dob = format!(
            "{}-{:02}-{:02}",
            rng.random_range(1940..2006),
            rng.random_range(1..13),
            rng.random_range(1..29)
        );
        let city = CITIES[rng.random_range(0..CITIES.len())];
        let ts = EPOCH_MS + c as i64 * 1000;
        let customer = json!({
            "customer_id": id,
            "first_name": first,
            "last_name": last,
            "email": format!("{}.{}{}@example.co.uk", first.to_lowercase(), last.to_lowercase(), c),
            "phone": phone,
            "date_of_birth": dob,
            "address": {"line1": format!("{} High Street", rng.random_range(1..200)), "city": city, "postcode": format!("{}{} {}AB", &city[..1], rng.random_range(1..20), rng.random_range(1..9))},
            "segment": SEGMENTS[rng.random_range(0..SEGMENTS.len())],
            "marketing_opt_in": rng.random_bool(0.4),
            "created_at": iso(ts),
            "notes": format!("KYC verified by phone on {phone}; prefers {}", CHANNELS[rng.random_range(0..CHANNELS.len())]),
        });
        customer_rows.push((id.clone(), customer, ts));
        for a in 0..rng.random_range(1..3) {
            let acc = format!("A{:08}", accounts.len() + 1);
            let card = luhn_complete(&format!(
                "4{:014}",
                rng.random_range(0..100_000_000_000_000u64)
            ));
            let kind = if a == 0 {
                "current"
            } else {
                ["savings", "credit_card", "isa"][rng.random_range(0..3usize)]
            };
            let account = json!({
                "account_id": acc,
                "customer_id": id,
                "product": kind,
                "sort_code": format!("{:02}-{:02}-{:02}", rng.random_range(10..99), rng.random_range(0..99), rng.random_range(0..99)),
                "account_number": format!("{:08}", rng.random_range(0..100_000_000)),
                "opened_at": iso(ts + 500),
                "balance_gbp": (rng.random_range(-50_000..2_500_000) as f64) / 100.0,
            });
            account_rows.push((acc.clone(), account, ts + 500));
            accounts.push((acc, id.clone(), card));
        }
    }
    // The initial snapshot of both tables, then a day of changes streamed from the log.
    for (id, row, ts) in &customer_rows {
        cdc.event(&mut out, "customers", "r", id, Some(row.clone()), *ts);
    }
    for (id, row, ts) in &account_rows {
        cdc.event(&mut out, "accounts", "r", id, Some(row.clone()), *ts);
    }
    let day = EPOCH_MS + 86_400_000;
    for (i, (id, row, _)) in customer_rows.iter().enumerate() {
        let ts = day + i as i64 * 37;
        if i % 10 == 4 {
            // A segment change; the long notes column is unchanged (TOASTed).
            let mut r = row.clone();
            r["segment"] = json!(SEGMENTS[rng.random_range(0..SEGMENTS.len())]);
            r["notes"] = json!(UNAVAILABLE);
            cdc.event(&mut out, "customers", "u", id, Some(r), ts);
        }
        if i % 25 == 9 {
            let mut r = cdc
                .tables
                .customers
                .get(id)
                .cloned()
                .unwrap_or_else(|| row.clone());
            r["email"] = json!(format!("moved{i}@example.org"));
            r["marketing_opt_in"] = json!(false);
            cdc.event(&mut out, "customers", "u", id, Some(r), ts + 5);
        }
        if i % 50 == 7 {
            cdc.event(&mut out, "customers", "d", id, None, ts + 9);
        }
    }
    // New customers, and one primary-key change (delete + tombstone + create).
    for n in 0..scale.customers / 20 {
        let id = format!("C{:07}", scale.customers + n + 1);
        if let Some((_, template, _)) = customer_rows.get(n) {
            let mut r = template.clone();
            r["customer_id"] = json!(id);
            r["created_at"] = json!(iso(day + 3_600_000 + n as i64));
            cdc.event(
                &mut out,
                "customers",
                "c",
                &id,
                Some(r),
                day + 3_600_000 + n as i64,
            );
        }
    }
    if let Some((old, row, _)) = customer_rows.get(2)
        && let Some(mut r) = cdc.tables.customers.get(old).cloned().or(Some(row.clone()))
    {
        let new = format!("C9{}", &old[2..]);
        cdc.event(&mut out, "customers", "d", old, None, day + 7_200_000);
        r["customer_id"] = json!(new);
        cdc.event(&mut out, "customers", "c", &new, Some(r), day + 7_200_001);
    }
    for (i, (id, row, _)) in account_rows.iter().enumerate() {
        let ts = day + 10_800_000 + i as i64 * 29;
        if i % 5 == 1 {
            let mut r = row.clone();
            r["balance_gbp"] = json!((rng.random_range(-50_000..2_500_000) as f64) / 100.0);
            cdc.event(&mut out, "accounts", "u", id, Some(r), ts);
        }
        if i % 40 == 11 {
            cdc.event(&mut out, "accounts", "d", id, None, ts + 3);
        }
    }
    let start = EPOCH_MS + 86_400_000;
    for t in 0..scale.transactions {
        let (acc, cust, card) = &accounts[rng.random_range(0..accounts.len())];
        let (merchant, mcc) = MERCHANTS[rng.random_range(0..MERCHANTS.len())];
        let ts = start + t as i64 * 250;
        let pay_channel =
            ["contactless", "chip_pin", "online", "apple_pay"][rng.random_range(0..4)];
        let txn = json!({
            "txn_id": format!("T{:010}", t + 1),
            "account_id": acc,
            "customer_id": cust,
            "card_number": card,
            "amount_gbp": (rng.random_range(50..25_000) as f64) / 100.0,
            "currency": "GBP",
            "merchant": merchant,
            "mcc": mcc,
            "channel": pay_channel,
            "status": if rng.random_bool(0.02) { "declined" } else { "approved" },
            "location": {"city": CITIES[rng.random_range(0..CITIES.len())], "country": "GB"},
            "event_time": iso(ts),
        });
        out.push(BankMessage {
            topic: "txn-events",
            key: cust.clone(),
            payload: serde_json::to_vec(&txn).ok(),
            timestamp_ms: ts,
        });
    }
    for e in 0..scale.touchpoints {
        let cust = format!("C{:07}", rng.random_range(1..=scale.customers.max(1)));
        let ts = start + e as i64 * 600;
        let channel = CHANNELS[rng.random_range(0..CHANNELS.len())];
        let action = ACTIONS[rng.random_range(0..ACTIONS.len())];
        let tp = json!({
            "event_id": format!("E{:010}", e + 1),
            "customer_id": cust,
            "channel": channel,
            "action": action,
            "session_id": format!("{:016x}", rng.random_range(0..u64::MAX)),
            "ip_address": format!("81.{}.{}.{}", rng.random_range(0..256), rng.random_range(0..256), rng.random_range(1..255)),
            "event_time": iso(ts),
            "note": if action == "complaint" { Some(format!("Customer called from +44 7700 {:06} unhappy about a fee", rng.random_range(0..1_000_000))) } else { None },
        });
        out.push(BankMessage {
            topic: "touchpoint-events",
            key: cust,
            payload: serde_json::to_vec(&tp).ok(),
            timestamp_ms: ts,
        });
    }
    if scale.with_bad_messages {
        let bad: [(&'static str, Option<&[u8]>); 4] = [
            (
                "touchpoint-events",
                Some(b"{\"event_id\": \"E-broken\", \"customer_id\": "),
            ),
            ("touchpoint-events", Some(b"")),
            (
                "txn-events",
                Some(b"{\"txn_id\": \"T-bad\", \"amount_gbp\": {\"oops\": true}}"),
            ),
            ("txn-events", Some(b"[1, 2, 3]")),
        ];
        for (i, (topic, payload)) in bad.into_iter().enumerate() {
            out.push(BankMessage {
                topic,
                key: format!("C{:07}", i + 1),
                payload: payload.map(<[u8]>::to_vec),
                timestamp_ms: start + i as i64,
            });
        }
    }
    (out, cdc.tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_scale_gives_the_same_messages() {
        let s = Scale {
            customers: 20,
            transactions: 50,
            touchpoints: 30,
            with_bad_messages: true,
        };
        let a = generate(s);
        let b = generate(s);
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.payload == y.payload && x.key == y.key)
        );
    }

    #[test]
    fn card_numbers_pass_the_luhn_check() {
        let n = luhn_complete("411111111111111");
        assert_eq!(n, "4111111111111111");
    }

    #[test]
    fn transactions_are_about_three_hundred_bytes() {
        let s = Scale {
            customers: 50,
            transactions: 200,
            touchpoints: 0,
            with_bad_messages: false,
        };
        let txns: Vec<usize> = generate(s)
            .iter()
            .filter(|m| m.topic == "txn-events")
            .filter_map(|m| m.payload.as_ref().map(Vec::len))
            .collect();
        let mean = txns.iter().sum::<usize>() / txns.len();
        assert!((250..=400).contains(&mean), "mean {mean}");
    }
}
