//! The Luhn (mod 10) check of card numbers, shared by `redact` (is this a card?) and
//! `encrypt_fpe` (keep encrypted card numbers valid).

/// The digit that makes `body` (digits, most significant first) followed by it pass the
/// Luhn check.
pub fn check_digit(body: impl DoubleEndedIterator<Item = u32>) -> u32 {
    let sum: u32 = body
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// Whether `digits` (most significant first, check digit last) pass the Luhn check.
pub fn is_valid(digits: &[u32]) -> bool {
    digits
        .split_last()
        .is_some_and(|(check, body)| check_digit(body.iter().copied()) == *check)
}

/// `body` (decimal digits) with its check digit appended.
pub fn complete(body: &str) -> String {
    let digit = check_digit(body.chars().filter_map(|c| c.to_digit(10)));
    format!("{body}{digit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_card_numbers() {
        assert_eq!(complete("411111111111111"), "4111111111111111");
        assert!(is_valid(&[4, 9, 9, 2, 7, 3, 9, 8, 7, 1, 6]));
        assert!(!is_valid(&[4, 9, 9, 2, 7, 3, 9, 8, 7, 1, 7]));
        assert!(!is_valid(&[]));
    }
}
