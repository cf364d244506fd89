//! The first take-home's callback, `POST /callback/{transaction id}` with
//! `{"gateway_txn_id", "status"}`: not a gateway protocol but an older shape any gateway
//! may still send, signed like every callback with that gateway's secret. It names no
//! event id, amount or currency: the transaction it is posted to supplies them, and
//! its digest is its identity, so the same body twice is one callback.

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
}

/// The identity a legacy body is stored under: the digest of its bytes.
pub fn dedup_key(body: &[u8]) -> String {
    format!("legacy:{}", hex::encode(Sha256::digest(body)))
}

/// Reads a verified legacy body about `transaction`.
pub fn parse(
    body: &[u8],
    transaction: &TransactionRecord,
) -> Result<CallbackNotice, CallbackParseError> {
    let malformed = |e: String| CallbackParseError::Malformed("legacy", e);
    let callback: LegacyCallback =
        serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
    let result = match callback.status.to_ascii_lowercase().as_str() {
        "completed" | "approved" | "success" | "succeeded" => CallbackResult::Approved,
        "failed" | "declined" => CallbackResult::Declined {
            reason: callback.reason.unwrap_or_else(|| "declined".to_owned()),
        },
        other => return Err(malformed(format!("unknown status {other:?}"))),
    };
    Ok(CallbackNotice {
        event_id: dedup_key(body),
        reference: transaction.id.to_string(),
        gateway_txn_id: callback.gateway_txn_id,
        result,
        amount: transaction.amount,
        currency: transaction.currency.trim().to_owned(),
    })
}
