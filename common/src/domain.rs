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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

/// Active ISO 4217 codes and their minor units (precious metals, funds and testing codes
/// are left out: nobody pays a merchant in XAU).
const CURRENCIES: &[(&str, u32)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("ANG", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

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
        CURRENCIES
            .iter()
            .find(|(code, _)| *code == s)
            .map(|&(code, minor_units)| Currency { code, minor_units })
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

/// An ISO 3166-1 alpha-2 country code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country(&'static str);

/// Officially assigned ISO 3166-1 alpha-2 codes.
const COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

impl Country {
    pub fn code(&self) -> &'static str {
        self.0
    }
}

impl FromStr for Country {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        COUNTRIES
            .iter()
            .find(|code| **code == s)
            .map(|code| Country(code))
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
typed_id!(/// A stored gateway callback: `cb_…`.
    CallbackId, "cb");
typed_id!(/// A webhook delivery: `whd_…`.
    DeliveryId, "whd");
typed_id!(/// An API key's record (not the key): `key_…`.
    ApiKeyId, "key");

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
