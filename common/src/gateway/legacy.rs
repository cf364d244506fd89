//! The first take-home's callback, `POST /callback/{transaction id}` with
//! `{"gateway_txn_id", "status", "amount", "currency"?}`: not a gateway protocol but an
//! older shape any gateway may still send, bound to the transaction whose URL it is
//! posted to.
//!
//! - **Signed with the transaction id.** `X-Paygate-Signature: t=<unix>,v1=<hex
//!   HMAC-SHA256(secret, "<t>.<transaction id>.<body>")>` with the secret of the gateway
//!   the transaction names ([`signed_payload`] is what follows `"<t>."`), so a body
//!   signed for one transaction is refused on another's URL.
//! - **Deduplicated per transaction.** Its identity is the transaction id and the digest
//!   of its bytes ([`dedup_key`]): the same body twice to one transaction is one
//!   callback, and identical bodies to two transactions are two.
//! - **Its own amount.** `amount` (a decimal string) is required and read from the body,
//!   so a callback that disagrees with its transaction is rejected and kept. `currency`
//!   may be left out (the original shape had none): then it is the transaction's.

use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{CallbackNotice, CallbackParseError, CallbackResult};
use crate::transactions::TransactionRecord;

/// How a legacy callback is stored, so that its reader can be told from the adapters'.
pub const CONTENT_TYPE: &str = "application/vnd.paygate.legacy-callback+json";

#[derive(Debug, Deserialize)]
struct LegacyCallback {
    gateway_txn_id: Option<String>,
    status: String,
    reason: Option<String>,
    /// A decimal string, e.g. `"33.00"`.
    amount: String,
    currency: Option<String>,
}

/// What the signature covers after `"<t>."`: `"<transaction id>.<body>"`.
pub fn signed_payload(transaction_id: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(transaction_id.len() + 1 + body.len());
    payload.extend_from_slice(transaction_id.as_bytes());
    payload.push(b'.');
    payload.extend_from_slice(body);
    payload
}

/// The identity a legacy body about `transaction_id` is stored under: the transaction
/// and the digest of the body's bytes.
pub fn dedup_key(transaction_id: &str, body: &[u8]) -> String {
    format!(
        "legacy:{transaction_id}:{}",
        hex::encode(Sha256::digest(body))
    )
}

/// Reads a verified legacy body about `transaction`.
pub fn parse(
    body: &[u8],
    transaction: &TransactionRecord,
) -> Result<CallbackNotice, CallbackParseError> {
    let malformed = |e: String| CallbackParseError::Malformed("legacy", e);
    let callback: LegacyCallback =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let amount = Decimal::from_str_exact(callback.amount.trim())
        .map_err(|_| malformed(format!("amount {:?} is not a decimal", callback.amount)))?;
    let result = match callback.status.to_ascii_lowercase().as_str() {
        "completed" | "approved" | "success" | "succeeded" => CallbackResult::Approved,
        "failed" | "declined" => CallbackResult::Declined {
            reason: callback.reason.unwrap_or_else(|| "declined".to_owned()),
        },
        other => return Err(malformed(format!("unknown status {other:?}"))),
    };
    Ok(CallbackNotice {
        event_id: dedup_key(transaction.id.as_str(), body),
        reference: transaction.id.to_string(),
        gateway_txn_id: callback.gateway_txn_id,
        result,
        amount,
        currency: callback
            .currency
            .unwrap_or_else(|| transaction.currency.trim().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_body_about_two_transactions_has_two_identities() {
        let body = br#"{"status":"completed","amount":"1.00"}"#;
        assert_ne!(dedup_key("txn_a", body), dedup_key("txn_b", body));
        assert_eq!(dedup_key("txn_a", body), dedup_key("txn_a", body));
    }

    #[test]
    fn the_signed_payload_binds_the_transaction_id_to_the_body() {
        assert_eq!(signed_payload("txn_a", b"{}"), b"txn_a.{}");
    }
}
