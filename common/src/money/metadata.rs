//! A merchant's own key/value pairs on a payment or a refund (its order id, its
//! customer's tier): a flat object of strings, with Stripe's limits — at most 50 keys,
//! keys up to 40 characters, values up to 500. Paygate stores it (`jsonb`), shows it in
//! every answer and webhook, and never reads it, so it must never hold card data: a
//! value that looks like a card number passing the Luhn check is refused.
//!
//! Keys are names (`order`, `customer_tier`, `shop.region`): ASCII letters, digits,
//! `_`, `-` and `.`, starting with a letter or `_`, because the API also speaks XML,
//! where each key is an element (`<metadata><order>A-17</order></metadata>`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// At most this many keys.
pub const MAX_KEYS: usize = 50;
/// A key has at most this many characters.
pub const MAX_KEY_LEN: usize = 40;
/// A value has at most this many characters.
pub const MAX_VALUE_LEN: usize = 500;

/// Checked metadata: every rule of this module holds. Sorted by key, so its JSON (and
/// the idempotent replay of an answer) is the same however the merchant ordered it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(BTreeMap<String, String>);

/// Why metadata was refused, and which input is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MetadataError {
    /// `metadata`, or `metadata.<key>` when one entry is at fault.
    pub field: String,
    pub message: String,
}

impl Metadata {
    /// Checks `entries` as a merchant sent them.
    pub fn parse(entries: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if entries.len() > MAX_KEYS {
            return Err(MetadataError {
                field: "metadata".into(),
                message: format!("at most {MAX_KEYS} keys, not {}", entries.len()),
            });
        }
        for (key, value) in &entries {
            let at_fault = |message: String| MetadataError {
                // A key that is not a name is not echoed into the field either.
                field: if is_name(key) && key.chars().count() <= MAX_KEY_LEN {
                    format!("metadata.{key}")
                } else {
                    "metadata".into()
                },
                message,
            };
            if !is_name(key) {
                return Err(at_fault(
                    "keys are names: ASCII letters, digits, '_', '-' and '.', starting with a letter or '_'"
                        .into(),
                ));
            }
            if key.chars().count() > MAX_KEY_LEN {
                return Err(at_fault(format!(
                    "keys have at most {MAX_KEY_LEN} characters"
                )));
            }
            if value.chars().count() > MAX_VALUE_LEN {
                return Err(at_fault(format!(
                    "values have at most {MAX_VALUE_LEN} characters"
                )));
            }
            if looks_like_a_card(value) {
                return Err(at_fault(
                    "must not hold card data: the value looks like a card number".into(),
                ));
            }
        }
        Ok(Metadata(entries))
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its JSON object, as stored in a `jsonb` column.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl From<Metadata> for BTreeMap<String, String> {
    fn from(metadata: Metadata) -> Self {
        metadata.0
    }
}

/// Read back from the database (`metadata::text`): stored only once checked, so it is
/// taken as it is.
impl TryFrom<String> for Metadata {
    type Error = serde_json::Error;

    fn try_from(json: String) -> Result<Self, Self::Error> {
        serde_json::from_str(&json).map(Metadata)
    }
}

fn is_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `value` is, once spaces and dashes are dropped, 12 to 19 digits passing the
/// Luhn check: how a card number is written.
fn looks_like_a_card(value: &str) -> bool {
    let digits: String = value.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (12..=19).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && crate::cards::luhn(&digits)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_within_the_limits_is_taken_as_sent() {
        let metadata = Metadata::parse(of(&[("order", "A-17"), ("shop.region", "eu")])).unwrap();
        assert_eq!(metadata.entries()["order"], "A-17");
        assert_eq!(metadata.to_json(), r#"{"order":"A-17","shop.region":"eu"}"#);
    }

    #[test]
    fn fifty_one_keys_are_refused_and_fifty_are_not() {
        let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(Metadata::parse(many(50)).is_ok());
        assert_eq!(Metadata::parse(many(51)).unwrap_err().field, "metadata");
    }

    #[test]
    fn a_long_key_or_value_is_refused_naming_its_entry() {
        let key = "k".repeat(41);
        assert_eq!(
            Metadata::parse(of(&[(key.as_str(), "v")]))
                .unwrap_err()
                .field,
            "metadata"
        );
        assert!(Metadata::parse(of(&[("k".repeat(40).as_str(), "v")])).is_ok());
        let value = "v".repeat(501);
        assert_eq!(
            Metadata::parse(of(&[("note", value.as_str())]))
                .unwrap_err()
                .field,
            "metadata.note"
        );
        assert!(Metadata::parse(of(&[("note", "v".repeat(500).as_str())])).is_ok());
    }

    #[test]
    fn a_key_that_is_not_a_name_is_refused() {
        for key in ["", "1st", "has space", "<tag>", "ünï"] {
            assert!(Metadata::parse(of(&[(key, "v")])).is_err(), "{key:?}");
        }
    }

    #[test]
    fn a_value_that_looks_like_a_card_number_is_refused_and_other_digits_are_not() {
        for card in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4000-0000-0000-0002",
        ] {
            let error = Metadata::parse(of(&[("note", card)])).unwrap_err();
            assert_eq!(error.field, "metadata.note");
            assert!(!error.message.contains("4242"), "{}", error.message);
        }
        // Fails Luhn, or too short to be a card: an order number, a phone number.
        for plain in ["4242424242424241", "12345678901", "A-17"] {
            assert!(Metadata::parse(of(&[("note", plain)])).is_ok(), "{plain}");
        }
    }
}
