//! No development secret in production. The repository publishes keys and tokens so
//! that a development stack starts with nothing to prepare (the development keys in
//! `common/config/default.toml`, compose's demo secrets); anyone can read them, so they
//! protect nothing. Unless `environment = "development"`, a service refuses to start
//! when a setting it uses holds one of them, a short or placeholder (`CHANGE-ME`) admin
//! token, or an egress policy that lets its outgoing HTTP reach plain http, loopback or
//! private addresses. The error names every setting to fix.
//!
//! Each service says what it [`Uses`], so a service is never stopped by a setting it
//! does not read (the callback-dispatcher has no card keys to check).

use anyhow::bail;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{Environment, Settings};

/// What a service uses, and so what is checked before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    /// `cards.keys`.
    CardKeys,
    /// `secrets.keys`.
    SecretKeys,
    /// `api.idempotency.fingerprint_keys`.
    FingerprintKeys,
    /// `admin.token`.
    AdminToken,
    /// `callback_dispatcher.allow_*`: where webhooks may go.
    WebhookEgress,
    /// `payment_processor.allow_*`: where gateways may be reached.
    GatewayEgress,
}

/// Key material and tokens committed to this repository (base64 of a key, or a whole
/// token). `every_key_committed_to_the_repository_is_known_as_published` keeps this list
/// complete.
const PUBLISHED: &[&str] = &[
    // common/config/default.toml
    "ZGV2ZWxvcG1lbnQta2V5LW5vdC1mb3ItcHJvZHVjdGk=",
    "ZGV2ZWxvcG1lbnQtc2VjcmV0cy1ub3QtZm9yLXByb2Q=",
    "ZGV2ZWxvcG1lbnQtaWRlbXBvdGVuY3ktbm90LXByb2Q=",
    // compose/secrets
    "DGesxRXYiSLucVC1Bve8nu5V50XBheS8RbeeUP0zbzM=",
    "x/dIOdRutw8H6nU0aksOs8YbmDquCRlVHWgiKQb4S20=",
    "+4qeAU6h+3OX8kiNuolaO4uplfOzy27+jU+q/A+mu8w=",
    "pga_342420b5990740b71e36a19c77cde4f3e59030d3e046a7437953c8b63b63470a",
];

/// An admin token shorter than this is refused outside development.
pub const MIN_ADMIN_TOKEN: usize = 32;

/// Whether `value` is published in this repository or is a placeholder to replace.
pub fn is_published(value: &str) -> bool {
    let value = value.trim();
    PUBLISHED.contains(&value) || value.to_ascii_lowercase().contains("change-me")
}

/// Whether a key list holds a published or placeholder key.
fn holds_published(entries: &[SecretString]) -> bool {
    entries.iter().any(|entry| {
        let entry = entry.expose_secret();
        let key = entry.split_once(':').map_or(entry, |(_, key)| key);
        is_published(key)
    })
}

/// The HMAC keys of `api.idempotency.fingerprint_keys`, newest first.
pub fn fingerprint_keys(entries: &[SecretString]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    crate::cards::parse_keys(entries)
}

impl Uses {
    /// Everything: what the api uses (it seals both rings, fingerprints requests, takes
    /// the admin token, and checks webhook and gateway URLs with both egress policies).
    pub const ALL: &[Uses] = &[
        Uses::CardKeys,
        Uses::SecretKeys,
        Uses::FingerprintKeys,
        Uses::AdminToken,
        Uses::WebhookEgress,
        Uses::GatewayEgress,
    ];
}

impl Settings {
    /// Refuses development secrets and permissive egress among what the service
    /// [`Uses`], unless this is a development environment.
    pub fn refuse_development_secrets(&self, uses: &[Uses]) -> anyhow::Result<()> {
        if self.environment == Environment::Development {
            return Ok(());
        }
        let mut wrong = Vec::new();
        let keys = |setting: &str, variable: &str| {
            format!("{setting} holds a key published in Paygate's repository or a placeholder: give your own with {variable}")
        };
        for used in uses {
            match used {
                Uses::CardKeys if holds_published(&self.cards.keys) => {
                    wrong.push(keys("cards.keys", "PAYGATE__CARDS__KEYS"));
                }
                Uses::SecretKeys if holds_published(&self.secrets.keys) => {
                    wrong.push(keys("secrets.keys", "PAYGATE__SECRETS__KEYS"));
                }
                Uses::FingerprintKeys
                    if holds_published(&self.api.idempotency.fingerprint_keys) =>
                {
                    wrong.push(keys(
                        "api.idempotency.fingerprint_keys",
                        "PAYGATE__API__IDEMPOTENCY__FINGERPRINT_KEYS",
                    ));
                }
                Uses::AdminToken => {
                    let token = self.admin.token.expose_secret();
                    // Empty turns the admin API off: nothing to guess.
                    if !token.is_empty() && (token.len() < MIN_ADMIN_TOKEN || is_published(token)) {
                        wrong.push(format!("admin.token is shorter than {MIN_ADMIN_TOKEN} characters, a placeholder or published: set PAYGATE__ADMIN__TOKEN to a long random token (or empty, to turn the admin API off)"));
                    }
                }
                Uses::WebhookEgress => {
                    let d = &self.callback_dispatcher;
                    wrong.extend(permissive(
                        "callback_dispatcher",
                        [d.allow_http, d.allow_loopback, d.allow_private],
                    ));
                }
                Uses::GatewayEgress => {
                    let p = &self.payment_processor;
                    wrong.extend(permissive(
                        "payment_processor",
                        [p.allow_http, p.allow_loopback, p.allow_private],
                    ));
                }
                _ => {}
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        bail!(
            "environment is production (PAYGATE__ENVIRONMENT), and {}; for a development stack set PAYGATE__ENVIRONMENT=development",
            wrong.join("; ")
        )
    }
}

/// The `<section>.allow_*` settings that are on.
fn permissive(section: &str, [http, loopback, private]: [bool; 3]) -> Vec<String> {
    [
        ("allow_http", http),
        ("allow_loopback", loopback),
        ("allow_private", private),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| {
        format!(
            "{section}.{name} is true: set PAYGATE__{}__{}=false",
            section.to_uppercase(),
            name.to_uppercase()
        )
    })
    .collect()
}

/// Whether `key` (base64) decodes to 32 bytes: what the published-keys test looks for.
#[cfg(test)]
fn is_key(key: &str) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .is_ok_and(|bytes| bytes.len() == 32)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;
    use crate::config::tests::defaults;

    const ALL: &[Uses] = Uses::ALL;

    fn own_key(id: &str, byte: u8) -> SecretString {
        format!(
            "{id}:{}",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        )
        .into()
    }

    /// The defaults with every key and the token replaced and egress closed.
    fn production() -> Settings {
        let mut settings = defaults();
        settings.cards.keys = vec![own_key("c1", 1)];
        settings.secrets.keys = vec![own_key("s1", 2)];
        settings.api.idempotency.fingerprint_keys = vec![own_key("i1", 3)];
        settings.admin.token = "pga_0123456789abcdef0123456789abcdef".to_owned().into();
        for d in [
            &mut settings.callback_dispatcher.allow_http,
            &mut settings.callback_dispatcher.allow_loopback,
            &mut settings.payment_processor.allow_http,
            &mut settings.payment_processor.allow_loopback,
        ] {
            *d = false;
        }
        settings
    }

    #[test]
    fn the_defaults_are_refused_in_production_naming_every_setting_to_fix() {
        let error = defaults()
            .refuse_development_secrets(ALL)
            .unwrap_err()
            .to_string();
        for setting in [
            "cards.keys",
            "secrets.keys",
            "api.idempotency.fingerprint_keys",
            "callback_dispatcher.allow_http",
            "callback_dispatcher.allow_loopback",
            "payment_processor.allow_http",
            "payment_processor.allow_loopback",
            "PAYGATE__ENVIRONMENT",
        ] {
            assert!(error.contains(setting), "{setting} in {error}");
        }
        assert!(
            !error.contains("admin.token"),
            "an empty token turns the admin API off: {error}"
        );
    }

    #[test]
    fn the_defaults_start_in_development_and_own_keys_start_in_production() {
        let mut development = defaults();
        development.environment = Environment::Development;
        development.refuse_development_secrets(ALL).unwrap();
        production().refuse_development_secrets(ALL).unwrap();
    }

    #[test]
    fn a_short_or_placeholder_admin_token_is_refused_in_production() {
        for token in [
            "s3cret",
            "CHANGE-ME",
            "CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
        ] {
            let mut settings = production();
            settings.admin.token = token.to_owned().into();
            let error = settings
                .refuse_development_secrets(&[Uses::AdminToken])
                .unwrap_err();
            assert!(error.to_string().contains("admin.token"), "{token}");
        }
    }

    #[test]
    fn a_service_is_only_stopped_by_what_it_uses() {
        let mut settings = production();
        settings.cards.keys = defaults().cards.keys;
        settings
            .refuse_development_secrets(&[Uses::SecretKeys, Uses::WebhookEgress])
            .unwrap();
        assert!(settings
            .refuse_development_secrets(&[Uses::CardKeys])
            .is_err());
    }

    #[test]
    fn the_example_secret_of_the_kubernetes_manifests_is_refused() {
        let mut settings = production();
        settings.cards.keys = vec!["prod1:CHANGE-ME-base64-of-32-random-bytes"
            .to_owned()
            .into()];
        assert!(settings
            .refuse_development_secrets(&[Uses::CardKeys])
            .is_err());
    }

    /// Every `<id>:<base64 of 32 bytes>` and admin token in the repository's committed
    /// configuration.
    fn committed_keys() -> Vec<String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = vec![root.join("common/config/default.toml")];
        for dir in ["compose/secrets", "deploy/examples"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                files.push(entry.unwrap().path());
            }
        }
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for word in text.split(|c: char| c.is_whitespace() || "\"[],".contains(c)) {
                let key = word.split_once(':').map_or(word, |(_, key)| key);
                if is_key(key) || word.starts_with("pga_") {
                    found.push(key.to_owned());
                }
            }
        }
        found
    }

    #[test]
    fn every_key_committed_to_the_repository_is_known_as_published() {
        let found = committed_keys();
        assert!(found.len() >= 6, "{found:?}");
        for key in found {
            assert!(
                is_published(&key),
                "{key} is committed but not in PUBLISHED"
            );
        }
    }
}
