//! Domain types that carry Paygate's rules: money is a decimal with an ISO 4217
//! currency and its minor units, countries are ISO 3166-1 alpha-2, ids are typed and
//! prefixed, and the status machine lives here and nowhere else. Everything past an
//! HTTP handler or a Kafka decoder sees these types, never unchecked strings.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Why a value could not become a domain type. The message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("`{0}` is not an ISO 4217 currency code")]
    UnknownCurrency(String),
    #[error("`{0}` is not an ISO 3166-1 alpha-2 country code")]
    UnknownCountry(String),
    #[error("`{0}` is not a decimal amount such as \"100.50\"")]
    MalformedAmount(String),
    #[error("the amount must be greater than zero")]
    AmountNotPositive,
    #[error("{currency} allows at most {minor_units} decimal places")]
    TooManyDecimals {
        currency: Currency,
        minor_units: u32,
    },
    #[error("`{0}` is not a known {1}")]
    UnknownVariant(String, &'static str),
    #[error("`{0}` is not a valid {1} id")]
    MalformedId(String, &'static str),
}

/// An ISO 4217 currency, with the number of minor units (decimal places) it allows.
///
/// Codes and minor units come from the `iso_currency` crate. Only currencies a
/// merchant can be paid in are accepted; these ISO 4217 codes are refused:
/// - "special" codes, which have no minor units and are nobody's cash: precious
///   metals (`XAU`, `XAG`, `XPT`, `XPD`), the IMF's `XDR`, other units of account
///   (`XBA`..`XBD`, `XSU`, `XUA`, `XAD`), the testing code `XTS` and "no currency" `XXX`;
/// - funds and indexed units (`BOV`, `CHE`, `CHW`, `CLF`, `COU`, `MXV`, `USN`, `UYI`,
///   `UYW`);
/// - superseded codes (`HRK`, `SLL`, `CUC`, `ZWL`, and `BGN` since Bulgaria adopted the
///   euro in 2026), except `VES` (see `ACTIVE_DESPITE_SUPERSEDED_FLAG`).
///
/// `ANG`, replaced by `XCG` in 2025, is not in the crate's data at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

/// ISO 4217 codes that `iso_currency` flags as superseded but ISO 4217 still lists as
/// active, so they stay payable. `VES` (928): amendment 170 added `VED` (926) for
/// Venezuela's 2021 redenomination and kept `VES` as a valid code; the crate (0.7.1)
/// marks `VES` as superseded by `VED`.
const ACTIVE_DESPITE_SUPERSEDED_FLAG: &[&str] = &["VES"];

/// Whether an ISO 4217 code is something a merchant can be paid in: see [`Currency`].
fn is_payment_currency(currency: iso_currency::Currency) -> bool {
    !currency.is_special()
        && !currency.is_fund()
        && (currency.is_superseded().is_none()
            || ACTIVE_DESPITE_SUPERSEDED_FLAG.contains(&currency.code()))
}

impl Currency {
    /// The three-letter code, e.g. `"EUR"`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// How many decimal places an amount in this currency may have.
    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }
}

impl FromStr for Currency {
    type Err = DomainError;

    /// Codes are upper case, as ISO 4217 writes them; `"usd"` is refused rather than guessed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `from_code` matches the upper-case code exactly.
        iso_currency::Currency::from_code(s)
            .filter(|currency| is_payment_currency(*currency))
            .and_then(|currency| {
                Some(Currency {
                    code: currency.code(),
                    minor_units: u32::from(currency.exponent()?),
                })
            })
            .ok_or_else(|| DomainError::UnknownCurrency(s.to_owned()))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// A positive amount of money in a currency, with no more decimals than the currency
/// allows, scaled to exactly its minor units (`"100.5"` USD is `100.50`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

impl Money {
    /// Parses a decimal string such as `"100.50"`. Exponents, signs other than the
    /// implied positive one, and floats are refused.
    pub fn parse(amount: &str, currency: Currency) -> Result<Self, DomainError> {
        let well_formed = !amount.is_empty()
            && amount
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
            && amount.matches('.').count() <= 1
            && !amount.starts_with('.')
            && !amount.ends_with('.');
        let parsed = well_formed
            .then(|| Decimal::from_str_exact(amount).ok())
            .flatten()
            .ok_or_else(|| DomainError::MalformedAmount(amount.to_owned()))?;
        Self::new(parsed, currency)
    }

    /// Checks an already decimal amount against the currency's rules.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, DomainError> {
        if amount <= Decimal::ZERO {
            return Err(DomainError::AmountNotPositive);
        }
        let normalized = amount.normalize();
        if normalized.scale() > currency.minor_units {
            return Err(DomainError::TooManyDecimals {
                currency,
                minor_units: currency.minor_units,
            });
        }
        let mut amount = normalized;
        amount.rescale(currency.minor_units);
        Ok(Money { amount, currency })
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// An officially assigned ISO 3166-1 alpha-2 country code, upper case, from the `celes`
/// crate's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country(&'static str);

/// Codes that `celes` knows but ISO 3166-1 does not assign: `XK` (Kosovo) is a
/// user-assigned code.
const NOT_ISO_3166_1: &[&str] = &["XK"];

impl Country {
    pub fn code(&self) -> &'static str {
        self.0
    }
}

impl FromStr for Country {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `celes` ignores case; requiring its own upper-case code back refuses `"de"`.
        celes::Country::from_alpha2(s)
            .ok()
            .filter(|country| country.alpha2 == s && !NOT_ISO_3166_1.contains(&s))
            .map(|country| Country(country.alpha2))
            .ok_or_else(|| DomainError::UnknownCountry(s.to_owned()))
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Declares a string enum with its wire names in one place.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($variant:ident => $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wire => Ok(Self::$variant),)+
                    other => Err(DomainError::UnknownVariant(other.to_owned(), $what)),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Money in (deposit) or out (withdrawal) of the merchant's user's account.
    Kind, "kind" { Deposit => "deposit", Withdrawal => "withdrawal" }
);

wire_enum!(
    /// Where a transaction is in its life. See [`Status::can_become`] for the machine.
    Status, "status" {
        Pending => "pending",
        Processing => "processing",
        Completed => "completed",
        Failed => "failed",
    }
);

impl Status {
    /// The status machine, in one place:
    /// `pending -> processing -> completed | failed`, and `pending -> failed`.
    /// Nothing leaves a final state.
    pub fn can_become(self, next: Status) -> bool {
        use Status::*;
        matches!(
            (self, next),
            (Pending, Processing)
                | (Pending, Failed)
                | (Processing, Completed)
                | (Processing, Failed)
        )
    }

    /// The statuses a transaction may be in for it to move to `next`.
    pub fn allowed_sources(next: Status) -> Vec<Status> {
        Self::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .collect()
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }

    pub const ALL: [Status; 4] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::Failed,
    ];
}

/// Declares a typed, prefixed id: `txn_<32 hex>`, built on a time-ordered UUIDv7 so ids
/// sort roughly by creation and index well.
macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let valid = s
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
                if valid {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(DomainError::MalformedId(s.to_owned(), $prefix))
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

typed_id!(/// A payment: `txn_…`.
    TransactionId, "txn");
typed_id!(/// A merchant: `mer_…`.
    MerchantId, "mer");
typed_id!(/// An event in a transaction's history, and the `webhook-id` of its webhook: `evt_…`.
    EventId, "evt");
typed_id!(/// A refund of a payment: `rfd_…`, also the gateway's idempotency reference for it.
    RefundId, "rfd");
typed_id!(/// A stored gateway callback: `cb_…`.
    CallbackId, "cb");
typed_id!(/// A webhook delivery: `whd_…`.
    DeliveryId, "whd");
typed_id!(/// An API key's record (not the key): `key_…`.
    ApiKeyId, "key");
typed_id!(/// A merchant's webhook endpoint: `whe_…`.
    EndpointId, "whe");

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        "USD".parse().unwrap()
    }

    #[test]
    fn amounts_are_scaled_to_the_currency_minor_units() {
        assert_eq!(
            Money::parse("100.5", usd()).unwrap().amount().to_string(),
            "100.50"
        );
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(
            Money::parse("1000", jpy).unwrap().amount().to_string(),
            "1000"
        );
        let kwd: Currency = "KWD".parse().unwrap();
        assert_eq!(
            Money::parse("1.234", kwd).unwrap().amount().to_string(),
            "1.234"
        );
    }

    #[test]
    fn too_many_decimals_for_the_currency_are_refused() {
        assert!(matches!(
            Money::parse("10.001", usd()),
            Err(DomainError::TooManyDecimals { minor_units: 2, .. })
        ));
        let jpy: Currency = "JPY".parse().unwrap();
        assert!(Money::parse("10.5", jpy).is_err());
        // Trailing zeros carry no precision and are fine.
        assert!(Money::parse("10.500", usd()).is_ok());
    }

    #[test]
    fn zero_negative_and_malformed_amounts_are_refused() {
        assert_eq!(
            Money::parse("0", usd()),
            Err(DomainError::AmountNotPositive)
        );
        assert_eq!(
            Money::parse("-1.00", usd()),
            Err(DomainError::AmountNotPositive)
        );
        for bad in ["", "1e3", "1.", ".5", "1,00", "abc", "1.2.3", " 1"] {
            assert!(
                matches!(
                    Money::parse(bad, usd()),
                    Err(DomainError::MalformedAmount(_))
                ),
                "{bad:?} should be malformed"
            );
        }
    }

    #[test]
    fn currencies_and_countries_must_be_iso_codes() {
        assert!("EUR".parse::<Currency>().is_ok());
        assert!("eur".parse::<Currency>().is_err());
        assert!("XYZ".parse::<Currency>().is_err());
        assert!("DE".parse::<Country>().is_ok());
        assert!("XX".parse::<Country>().is_err());
        assert!("de".parse::<Country>().is_err());
    }

    fn refused_currency(code: &str) -> bool {
        code.parse::<Currency>() == Err(DomainError::UnknownCurrency(code.to_owned()))
    }

    fn refused_country(code: &str) -> bool {
        code.parse::<Country>() == Err(DomainError::UnknownCountry(code.to_owned()))
    }

    #[test]
    fn xcg_and_ved_are_currencies_and_ang_is_not() {
        let xcg: Currency = "XCG".parse().unwrap();
        assert_eq!((xcg.code(), xcg.minor_units()), ("XCG", 2));
        let ved: Currency = "VED".parse().unwrap();
        assert_eq!((ved.code(), ved.minor_units()), ("VED", 2));
        assert!(refused_currency("ANG"));
    }

    #[test]
    fn ves_is_still_a_currency_though_the_crate_calls_it_superseded() {
        assert_eq!(
            iso_currency::Currency::VES.is_superseded(),
            Some(iso_currency::Currency::VED)
        );
        assert_eq!("VES".parse::<Currency>().unwrap().minor_units(), 2);
    }

    #[test]
    fn jpy_has_no_minor_units_and_bhd_has_three() {
        for (code, minor_units) in [
            ("JPY", 0),
            ("KRW", 0),
            ("CLP", 0),
            ("XAF", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("TND", 3),
            ("EUR", 2),
        ] {
            let currency: Currency = code.parse().unwrap();
            assert_eq!(currency.minor_units(), minor_units, "{code}");
        }
        let bhd: Currency = "BHD".parse().unwrap();
        assert_eq!(
            Money::parse("1.5", bhd).unwrap().amount().to_string(),
            "1.500"
        );
    }

    #[test]
    fn precious_metals_and_test_codes_are_not_payment_currencies() {
        for code in [
            "XAU", "XAG", "XPT", "XPD", "XDR", "XSU", "XUA", "XTS", "XXX",
        ] {
            assert!(refused_currency(code), "{code} should be refused");
        }
    }

    #[test]
    fn funds_and_superseded_currencies_are_not_payment_currencies() {
        for code in [
            "BOV", "CLF", "UYW", "USN", "HRK", "SLL", "CUC", "ZWL", "BGN",
        ] {
            assert!(refused_currency(code), "{code} should be refused");
        }
    }

    #[test]
    fn every_payment_currency_has_at_most_three_minor_units() {
        let payable: Vec<Currency> = (1..1000)
            .filter_map(iso_currency::Currency::from_numeric)
            .filter_map(|iso| iso.code().parse::<Currency>().ok())
            .collect();
        assert!(payable.len() > 150, "only {} currencies", payable.len());
        for currency in payable {
            assert!(currency.minor_units() <= 3, "{currency}");
            assert_eq!(currency.code().parse::<Currency>(), Ok(currency));
        }
    }

    #[test]
    fn a_refused_currency_is_named_in_the_error() {
        assert_eq!(
            "usd".parse::<Currency>().unwrap_err().to_string(),
            "`usd` is not an ISO 4217 currency code"
        );
    }

    #[test]
    fn a_lowercase_or_unknown_country_is_refused() {
        for code in ["de", "De", "dE", "XX", "UK", "AN", "DEU", "D", "", "XK"] {
            assert!(refused_country(code), "{code:?} should be refused");
        }
        assert_eq!(
            "gb".parse::<Country>().unwrap_err().to_string(),
            "`gb` is not an ISO 3166-1 alpha-2 country code"
        );
    }

    #[test]
    fn an_assigned_country_code_reads_back_as_itself() {
        for code in ["DE", "GB", "US", "SS", "CW", "SX", "BQ", "AQ", "AX"] {
            let country: Country = code.parse().unwrap();
            assert_eq!(country.code(), code);
            assert_eq!(country.to_string(), code);
        }
    }

    #[test]
    fn final_statuses_never_change() {
        for next in Status::ALL {
            assert!(!Status::Completed.can_become(next));
            assert!(!Status::Failed.can_become(next));
        }
        assert!(Status::Pending.can_become(Status::Processing));
        assert!(Status::Pending.can_become(Status::Failed));
        assert!(!Status::Pending.can_become(Status::Completed));
        assert!(Status::Processing.can_become(Status::Completed));
        assert_eq!(
            Status::allowed_sources(Status::Failed),
            vec![Status::Pending, Status::Processing]
        );
    }

    #[test]
    fn typed_ids_carry_their_prefix_and_reject_others() {
        let id = TransactionId::new();
        assert!(id.as_str().starts_with("txn_"));
        assert_eq!(id.as_str().parse::<TransactionId>().unwrap(), id);
        assert!(id
            .as_str()
            .replace("txn_", "mer_")
            .parse::<TransactionId>()
            .is_err());
        assert!("txn_123".parse::<TransactionId>().is_err());
    }
}
