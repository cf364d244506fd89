//! A card as a merchant sends it, checked at the edge: the number by length and Luhn,
//! the expiry in the future, the CVV's shape. Each refusal names its field
//! (`payment_method.card.number`, …) and never quotes the number.

use chrono::Datelike as _;
use secrecy::{ExposeSecret as _, SecretString};

use paygate_common::cards::luhn;
use paygate_common::gateway::CardDetails;

use crate::http::error::{ApiError, Result};
use crate::merchant::payments::PaymentMethodRequest;

/// Checks a payment method; the card it carries, ready to seal.
pub fn check(method: PaymentMethodRequest) -> Result<CardDetails> {
    if method.kind != "card" {
        return Err(ApiError::invalid(
            "payment_method.type",
            "the only payment method taken is \"card\"",
        ));
    }
    let card = method
        .card
        .ok_or_else(|| ApiError::invalid("payment_method.card", "a card payment needs its card"))?;
    let number: String = card
        .number
        .expose_secret()
        .chars()
        .filter(|c| *c != ' ')
        .collect();
    if !(12..=19).contains(&number.len()) || !number.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(
            "payment_method.card.number",
            "must be 12 to 19 digits",
        ));
    }
    if !luhn(&number) {
        return Err(ApiError::invalid(
            "payment_method.card.number",
            "is not a valid card number (Luhn check)",
        ));
    }
    if !(1..=12).contains(&card.expiry_month) {
        return Err(ApiError::invalid(
            "payment_method.card.expiry_month",
            "must be 1 to 12",
        ));
    }
    let today = chrono::Utc::now().date_naive();
    let expired = (card.expiry_year, card.expiry_month)
        < (
            u32::try_from(today.year()).unwrap_or_default(),
            today.month(),
        );
    if expired || card.expiry_year > 9999 {
        return Err(ApiError::invalid(
            "payment_method.card.expiry_year",
            "the card has expired",
        ));
    }
    if let Some(cvv) = &card.cvv {
        let cvv = cvv.expose_secret();
        if !(3..=4).contains(&cvv.len()) || !cvv.chars().all(|c| c.is_ascii_digit()) {
            return Err(ApiError::invalid(
                "payment_method.card.cvv",
                "must be 3 or 4 digits",
            ));
        }
    }
    if card.holder_name.as_ref().is_some_and(|n| n.len() > 255) {
        return Err(ApiError::invalid(
            "payment_method.card.holder_name",
            "must be at most 255 characters",
        ));
    }
    Ok(CardDetails {
        number: SecretString::from(number),
        expiry_month: card.expiry_month,
        expiry_year: card.expiry_year,
        holder_name: card.holder_name,
        cvv: card.cvv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_cards_pass_luhn_and_a_changed_digit_does_not() {
        for good in ["4242424242424242", "4000000000000002", "4000000000009995"] {
            assert!(luhn(good), "{good}");
        }
        assert!(!luhn("4242424242424241"));
    }
}
