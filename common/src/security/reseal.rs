//! Re-sealing: every ciphertext moves to the newest key of its ring, so that older keys
//! can leave the ring (`paygate-api re-seal`, run after putting a new key first in
//! `cards.keys` or `secrets.keys`). Card numbers are re-sealed with the card ring,
//! secrets with the secrets ring; each row is rewritten only while it still holds what
//! was read (a compare-and-set), so it is safe beside running services and safe to run
//! again. CVVs are not re-sealed: they live in Redis for at most `cards.cvv_ttl_ms`, so
//! an old card key can leave once that long has passed since the rotation.
//!
//! An operator command, not a request path: it reads every sealed row once, in pages.

use anyhow::Context as _;
use serde::Serialize;
use sqlx::PgPool;

use crate::cards::KeyRing;
use crate::secrets::{rewrite_unless, seal_stored, Sealed};

/// Rows read per page.
const PAGE: i64 = 500;

/// What a run re-sealed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Resealed {
    /// Card numbers moved to the newest card key.
    pub cards: u64,
    /// Secrets moved to the newest secrets key (plain ones sealed included).
    pub secrets: u64,
}

/// Moves every card number to the newest key of `cards`.
pub async fn cards(pool: &PgPool, cards: &KeyRing) -> anyhow::Result<u64> {
    let newest = cards.newest().to_owned();
    let mut moved = 0;
    let mut after = String::new();
    loop {
        let page: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, card_key_id, card_ciphertext FROM transaction
              WHERE card_ciphertext IS NOT NULL AND card_key_id <> $1 AND id > $2
              ORDER BY id LIMIT $3",
        )
        .bind(&newest)
        .bind(&after)
        .bind(PAGE)
        .fetch_all(pool)
        .await
        .context("reading sealed cards")?;
        let Some((last, _, _)) = page.last() else {
            return Ok(moved);
        };
        after = last.clone();
        for (id, key_id, ciphertext) in page {
            let plain = cards
                .open_bytes(&key_id, &ciphertext)
                .with_context(|| format!("the card of {id} does not open with cards.keys"))?;
            let (new_key, sealed) = cards.seal_bytes(&plain)?;
            moved += sqlx::query(
                "UPDATE transaction SET card_key_id = $2, card_ciphertext = $3
                  WHERE id = $1 AND card_key_id = $4 AND card_ciphertext = $5",
            )
            .bind(&id)
            .bind(&new_key)
            .bind(&sealed)
            .bind(&key_id)
            .bind(&ciphertext)
            .execute(pool)
            .await
            .context("re-sealing a card")?
            .rows_affected();
        }
    }
}

/// Seals what is still plain, then moves every secret to the newest key of `secrets`.
pub async fn secrets(pool: &PgPool, secrets: &KeyRing) -> anyhow::Result<u64> {
    let sealed = seal_stored(pool, secrets).await?;
    let newest = format!("sealed:v1:{}:", secrets.newest());
    let moved = rewrite_unless(pool, &newest, |stored| {
        let secret = secrets
            .open_secret(&Sealed::from_stored(stored.to_owned()))
            .context("does not open with secrets.keys")?;
        secrets.seal_secret(secrecy::ExposeSecret::expose_secret(&secret))
    })
    .await?;
    Ok(sealed + moved)
}

/// Both rings: [`cards`] and [`secrets`].
pub async fn run(
    pool: &PgPool,
    card_ring: &KeyRing,
    secret_ring: &KeyRing,
) -> anyhow::Result<Resealed> {
    Ok(Resealed {
        cards: cards(pool, card_ring).await?,
        secrets: secrets(pool, secret_ring).await?,
    })
}
