//! `POST /v1/deposits`, `POST /v1/withdrawals`, the original `POST /deposit` and
//! `POST /withdrawal`, and `GET /v1/transactions/{id}`.
//!
//! A request is parsed into domain types at the edge (JSON or XML), then intake is one
//! database transaction: the `pending` transaction, its first event (the outbox row the
//! relay publishes to `paygate.payments.requested`) and, with an `Idempotency-Key`, the
//! response to replay. Once it commits the payment cannot be lost; until it commits
//! nothing happened. A card is sealed before it reaches the database, its CVV is kept
//! only sealed in Redis for the acquirer, and every answer shows the card masked.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::xml::XmlBuilder;
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use paygate_common::domain::{Country, Currency, Kind, Money, TransactionId};
use paygate_common::events::TransactionView;
use paygate_common::metadata::Metadata;
use paygate_common::transactions::{
    self, Intake, NewTransaction, PendingPayment, TransactionRecord,
};

use crate::http::error::responses::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, ServiceUnavailable, TooManyRequests,
    Unauthorized, UnprocessableEntity, UnsupportedMediaType,
};
use crate::http::error::{ApiError, Result};
use crate::http::extract::{parse_json, Merchant, PathParam};
use crate::http::format::{Format, RawBody};
use crate::merchant::idempotency::{self, Claim, IdempotencyKeyHeader};
use crate::AppState;

/// The body of a deposit or withdrawal, as the merchant sends it (JSON, or XML under
/// `<deposit>`/`<withdrawal>` with the same names). Unknown fields are refused, not
/// ignored: a misspelt `referense` must not silently vanish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// The merchant's id for its customer.
    #[schema(example = "u-1", min_length = 1, max_length = 255)]
    pub user_id: String,
    /// A decimal string such as "100.50"; numbers are refused (floats lose cents). More
    /// than zero, with no more decimals than the currency has.
    #[schema(example = "100.50", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub amount: String,
    /// ISO 4217, upper case.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// ISO 3166-1 alpha-2; absent: the customer's country on record, else the default
    /// route.
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    pub country: Option<String>,
    /// The merchant's own reference, echoed back.
    #[schema(example = "order-7", max_length = 255)]
    pub reference: Option<String>,
    pub payment_method: Option<PaymentMethodRequest>,
    /// The merchant's own key/value pairs, shown in every answer and webhook: at most 50
    /// keys (names of up to 40 characters: ASCII letters, digits, `_`, `-`, `.`),
    /// string values of up to 500 characters, never card data. In XML, one child element
    /// per key.
    #[schema(example = json!({"order": "A-17"}))]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The gateway to use (a code such as `"simjson"`), or an ordered list of them:
    /// honoured when each is enabled, routed for the payment's country, currency and
    /// kind, and able to take its payment method; otherwise `422
    /// gateway_not_available` and nothing is stored.
    #[schema(value_type = Option<Object>, example = json!("simjson"))]
    pub gateway: Option<GatewayChoice>,
    /// With `gateway`: whether the routed gateways may be tried after the named ones
    /// prove they took nothing (`false` by default: only the named gateways are asked).
    pub gateway_fallback: Option<bool>,
    /// This payment's own webhook URL: its events go there too (beside the merchant's
    /// endpoints), signed with the merchant's webhook secret, and are listed with its
    /// deliveries. An absolute http(s) URL the egress policy allows, at most 2048
    /// characters.
    #[schema(
        example = "https://merchant.example/orders/A-17/webhooks",
        format = "uri",
        max_length = 2048
    )]
    pub notification_url: Option<String>,
}

/// The gateways a merchant pins: one code or an ordered list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum GatewayChoice {
    One(String),
    Many(Vec<String>),
}

impl GatewayChoice {
    fn codes(self) -> Vec<String> {
        match self {
            GatewayChoice::One(code) => vec![code],
            GatewayChoice::Many(codes) => codes,
        }
    }
}

/// How the customer pays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodRequest {
    /// The only type taken is `card`.
    #[serde(rename = "type")]
    #[schema(example = "card")]
    pub kind: String,
    /// Required when `type` is `card`.
    pub card: Option<CardRequest>,
}

/// A card as sent. Its `Debug` never shows the number or the CVV.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(description = "A card as sent; it is stored sealed and shown only masked.")]
pub struct CardRequest {
    /// 12 to 19 digits (spaces allowed), passing the Luhn check. Stored sealed, shown
    /// masked.
    #[schema(value_type = String, example = "4242424242424242")]
    pub number: SecretString,
    #[schema(example = 12, minimum = 1, maximum = 12)]
    pub expiry_month: u32,
    /// Together with the month, not in the past.
    #[schema(example = 2030)]
    pub expiry_year: u32,
    /// 3 or 4 digits; kept only for the acquirer, sealed, for a short while.
    #[schema(value_type = Option<String>, example = "123")]
    pub cvv: Option<SecretString>,
    #[schema(example = "Ada Lovelace", max_length = 255)]
    pub holder_name: Option<String>,
}

impl std::fmt::Debug for CardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRequest")
            .field("expiry_month", &self.expiry_month)
            .field("expiry_year", &self.expiry_year)
            .finish_non_exhaustive()
    }
}

/// The first take-home's shape, for `POST /deposit` and `POST /withdrawal`: a numeric
/// `user_id`, a string amount.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyRequest {
    #[schema(example = 42)]
    pub user_id: u64,
    #[schema(example = "100.50", pattern = r"^[0-9]+(\.[0-9]+)?$")]
    pub amount: String,
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(example = "DE", pattern = "^[A-Z]{2}$")]
    pub country: Option<String>,
    #[schema(example = "order-7", max_length = 255)]
    pub reference: Option<String>,
}

/// A [`PaymentRequest`] as XML names its root: the same schema as the JSON body, but
/// under `<deposit>` or `<withdrawal>`, so a client (or a tool) following the document
/// sends the root [`Format::parse`] asks for.
fn payment_request_in_xml(root: &'static str) -> RefOr<Schema> {
    let mut schema = PaymentRequest::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.xml = Some(XmlBuilder::new().name(Some(root)).build());
        object.description = Some(format!(
            "The fields of the JSON body, as child elements of `<{root}>`."
        ));
    }
    schema
}

macro_rules! xml_payment_schema {
    ($name:ident, $root:literal) => {
        #[doc = concat!("The XML body of a payment, under `<", $root, ">`.")]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                payment_request_in_xml($root)
            }
        }

        impl ToSchema for $name {
            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                <PaymentRequest as ToSchema>::schemas(schemas);
            }
        }
    };
}

xml_payment_schema!(DepositXml, "deposit");
xml_payment_schema!(WithdrawalXml, "withdrawal");

/// 202: the payment is stored `pending`; how it ends follows by webhook (and
/// `GET /v1/transactions/{id}`). The four intake routes answer alike.
pub struct Accepted;

impl<'r> utoipa::ToResponse<'r> for Accepted {
    fn response() -> (&'r str, RefOr<utoipa::openapi::Response>) {
        let transaction = || {
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("TransactionView")))
                .build()
        };
        let header = |description: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(description))
                .build()
        };
        let response = ResponseBuilder::new()
            .description("Accepted: the payment is stored `pending`; how it ends follows by webhook.")
            .content("application/json", transaction())
            .content("application/xml", transaction())
            .header("Location", header("`/v1/transactions/{id}` of the new transaction."))
            .header(
                idempotency::REPLAYED,
                header("`true` when this is the first answer to the same `Idempotency-Key` and body, sent again."),
            )
            .build();
        ("Accepted", response.into())
    }
}

impl From<LegacyRequest> for PaymentRequest {
    fn from(legacy: LegacyRequest) -> Self {
        PaymentRequest {
            user_id: legacy.user_id.to_string(),
            amount: legacy.amount,
            currency: legacy.currency,
            country: legacy.country,
            reference: legacy.reference,
            payment_method: None,
            metadata: None,
            gateway: None,
            gateway_fallback: None,
            notification_url: None,
        }
    }
}

const MAX_TEXT: usize = 255;

/// A request parsed into domain types: the transaction to create, the CVV to keep and
/// the gateways the merchant pinned (checked against the routing table before intake).
struct Parsed {
    new: NewTransaction,
    cvv: Option<SecretString>,
    pinned: Option<Pinned>,
    /// Not yet checked against the egress policy (that resolves its host: see
    /// [`Parsed::check_notification_url`]).
    notification_url: Option<String>,
}

/// The longest `notification_url` taken.
const MAX_URL: usize = 2048;

impl Parsed {
    /// Checks the payment's own webhook URL as an endpoint's is checked.
    async fn check_notification_url(&self, state: &AppState) -> Result<()> {
        let Some(url) = &self.notification_url else {
            return Ok(());
        };
        if url.len() > MAX_URL {
            return Err(ApiError::invalid(
                "notification_url",
                format!("must be at most {MAX_URL} characters"),
            ));
        }
        crate::admin::check_egress(state, "notification_url", url).await
    }
}

/// The most gateways a request may name.
const MAX_PINNED: usize = 10;

impl PaymentRequest {
    /// Parses the request into domain types, naming the field at fault.
    fn parse(self, state: &AppState, merchant: &Merchant, kind: Kind) -> Result<Parsed> {
        let user_id = self.user_id.trim().to_owned();
        if user_id.is_empty() || user_id.len() > MAX_TEXT {
            return Err(ApiError::invalid(
                "user_id",
                format!("must be 1 to {MAX_TEXT} characters"),
            ));
        }
        let currency: Currency = self
            .currency
            .parse()
            .map_err(|e| ApiError::invalid("currency", e))?;
        let money =
            Money::parse(&self.amount, currency).map_err(|e| ApiError::invalid("amount", e))?;
        let country = self
            .country
            .map(|c| c.parse::<Country>())
            .transpose()
            .map_err(|e| ApiError::invalid("country", e))?;
        if self.reference.as_ref().is_some_and(|r| r.len() > MAX_TEXT) {
            return Err(ApiError::invalid(
                "reference",
                format!("must be at most {MAX_TEXT} characters"),
            ));
        }
        let metadata = parse_metadata(self.metadata)?;
        let pinned = match (self.gateway, self.gateway_fallback) {
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "gateway_fallback",
                    "only means something with `gateway`",
                ))
            }
            (None, None) => None,
            (Some(choice), fallback) => {
                let codes = choice.codes();
                if codes.is_empty() || codes.len() > MAX_PINNED {
                    return Err(ApiError::invalid(
                        "gateway",
                        format!("name 1 to {MAX_PINNED} gateways"),
                    ));
                }
                if codes.iter().any(|c| c.is_empty() || c.len() > MAX_TEXT) {
                    return Err(ApiError::invalid(
                        "gateway",
                        "a gateway code is 1 to 255 characters",
                    ));
                }
                Some(Pinned {
                    codes,
                    fallback: fallback.unwrap_or(false),
                })
            }
        };
        let (card, cvv) = match self.payment_method {
            None => (None, None),
            Some(method) => {
                let card = crate::merchant::cards::check(method)?;
                let cvv = card.cvv.clone();
                let sealed = state.cards.seal(&card).map_err(ApiError::Internal)?;
                (Some(sealed), cvv)
            }
        };
        Ok(Parsed {
            new: NewTransaction {
                merchant_id: merchant.id.clone(),
                kind,
                money,
                user_id,
                country,
                reference: self.reference,
                card,
                metadata,
            },
            cvv,
            pinned,
            notification_url: self.notification_url,
        })
    }
}

/// The gateways a request names, in its order, and whether routed ones may follow.
struct Pinned {
    codes: Vec<String>,
    fallback: bool,
}

/// Checks the metadata of a request (payment or refund); absent is empty.
pub(crate) fn parse_metadata(entries: Option<BTreeMap<String, String>>) -> Result<Metadata> {
    Metadata::parse(entries.unwrap_or_default()).map_err(|e| ApiError::Invalid {
        message: e.message,
        field: Some(e.field),
    })
}

#[utoipa::path(
    post,
    path = "/v1/deposits",
    tag = "payments",
    summary = "Take a deposit",
    description = "Checks the request, stores the deposit `pending` with its first event, and \
                   answers 202; a gateway is chosen and called after the answer. JSON, or XML \
                   with the root `<deposit>` (the answer follows `Accept`, else the body's format).",
    security(("merchant_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content(
        (PaymentRequest = "application/json", example = json!({"user_id": "u-1", "amount": "100.50", "currency": "EUR", "country": "DE", "reference": "order-7", "payment_method": {"type": "card", "card": {"number": "4242424242424242", "expiry_month": 12, "expiry_year": 2030, "cvv": "123", "holder_name": "Ada Lovelace"}}, "metadata": {"order": "A-17"}})),
        (DepositXml = "application/xml", example = json!("<deposit><user_id>u-1</user_id><amount>100.50</amount><currency>EUR</currency><country>DE</country><metadata><order>A-17</order></metadata></deposit>")),
    )),
    responses(
        (status = 202, response = Accepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn create_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = body
        .format
        .parse::<PaymentRequest>(&body.bytes, "deposit")?;
    create(
        state,
        merchant,
        &headers,
        "/v1/deposits",
        &body.bytes,
        request,
        Kind::Deposit,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/withdrawals",
    tag = "payments",
    summary = "Take a withdrawal",
    description = "Checks the request, stores the withdrawal `pending` with its first event, and \
                   answers 202; a gateway is chosen and called after the answer. JSON, or XML \
                   with the root `<withdrawal>` (the answer follows `Accept`, else the body's format).",
    security(("merchant_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content(
        (PaymentRequest = "application/json", example = json!({"user_id": "u-1", "amount": "100.50", "currency": "EUR", "country": "DE", "reference": "order-7", "payment_method": {"type": "card", "card": {"number": "4242424242424242", "expiry_month": 12, "expiry_year": 2030, "cvv": "123", "holder_name": "Ada Lovelace"}}})),
        (WithdrawalXml = "application/xml", example = json!("<withdrawal><user_id>u-1</user_id><amount>100.50</amount><currency>EUR</currency><country>DE</country></withdrawal>")),
    )),
    responses(
        (status = 202, response = Accepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn create_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = body
        .format
        .parse::<PaymentRequest>(&body.bytes, "withdrawal")?;
    create(
        state,
        merchant,
        &headers,
        "/v1/withdrawals",
        &body.bytes,
        request,
        Kind::Withdrawal,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/deposit",
    tag = "payments",
    summary = "Take a deposit (the original shape)",
    description = "The first take-home's route: a numeric `user_id`, JSON only, no card; \
                   otherwise the same pipeline and answers as `POST /v1/deposits`.",
    security(("merchant_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content(
        (LegacyRequest = "application/json", example = json!({"user_id": 42, "amount": "100.50", "currency": "EUR"})),
    )),
    responses(
        (status = 202, response = Accepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn create_legacy_deposit(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = legacy(&body)?;
    create(
        state,
        merchant,
        &headers,
        "/deposit",
        &body.bytes,
        request,
        Kind::Deposit,
    )
    .await
}

#[utoipa::path(
    post,
    path = "/withdrawal",
    tag = "payments",
    summary = "Take a withdrawal (the original shape)",
    description = "The first take-home's route: a numeric `user_id`, JSON only, no card; \
                   otherwise the same pipeline and answers as `POST /v1/withdrawals`.",
    security(("merchant_key" = [])),
    params(IdempotencyKeyHeader),
    request_body(content(
        (LegacyRequest = "application/json", example = json!({"user_id": 42, "amount": "100.50", "currency": "EUR"})),
    )),
    responses(
        (status = 202, response = Accepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = UnprocessableEntity),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn create_legacy_withdrawal(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    body: RawBody,
) -> Result<Response> {
    let request = legacy(&body)?;
    create(
        state,
        merchant,
        &headers,
        "/withdrawal",
        &body.bytes,
        request,
        Kind::Withdrawal,
    )
    .await
}

/// The original routes take JSON only.
fn legacy(body: &RawBody) -> Result<PaymentRequest> {
    if body.format != Format::Json {
        return Err(ApiError::UnsupportedMediaType(
            "Content-Type: application/json",
        ));
    }
    Ok(parse_json::<LegacyRequest>(&body.bytes)?.into())
}

/// Intake. The common case is one statement ([`transactions::create_at_once`]): the
/// record, the answer and the first event are built first, then written together, with
/// the `Idempotency-Key` claimed and completed in the same statement, committed with
/// the other payments taken at that moment (`group_commit`). Where that
/// statement leaves the decision to the careful path — the merchant has limits in the
/// currency (checked under a lock), or the key is taken (a replay, a request in flight)
/// — the same record goes through [`careful`].
async fn create(
    state: AppState,
    merchant: Merchant,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    request: PaymentRequest,
    kind: Kind,
) -> Result<Response> {
    let parsed = request.parse(&state, &merchant, kind)?;
    parsed.check_notification_url(&state).await?;
    let Parsed {
        mut new,
        cvv,
        pinned,
        notification_url,
    } = parsed;
    let key = idempotency::key_of(&state.fingerprints, headers, &merchant.id, route, body)?;
    if new.country.is_none() {
        new.country = customer_country(&state.pool, &merchant, &new.user_id).await?;
    }
    let mut record = new.pending();
    if let Some(pinned) = pinned {
        crate::merchant::pinning::check(&state, &record, &pinned.codes).await?;
        record.pinned_gateways = Some(pinned.codes);
        record.gateway_fallback = pinned.fallback;
    }
    record.notification_url = notification_url;
    let answer = Answer::render(Format::wanted(headers), &record).await?;
    if let Some(cvv) = &cvv {
        // Kept before the payment is written: a write that fails leaves it to expire.
        state
            .cvvs
            .put(&record.id, cvv)
            .await
            .map_err(ApiError::Unavailable)?;
    }
    let kept = key
        .as_ref()
        .map(|key| key.kept(answer.status, &answer.headers, &answer.body));
    // Committed with the other payments of this moment (one flush for them all).
    let intake = state
        .intake
        .write(PendingPayment {
            record: record.clone(),
            card: new.card.clone(),
            answer: kept,
        })
        .await?;
    if intake == Intake::Created {
        paygate_common::trace::record_transaction(record.id.as_str());
        tracing::info!(transaction_id = %record.id, merchant_id = %merchant.id, %kind, "payment accepted");
        return Ok(answer.into_response());
    }
    // The careful path: the shape every intake route shares.
    let work_merchant = merchant.id.clone();
    accept(&state, &merchant, headers, route, body, "transaction", move |tx| {
        Box::pin(async move {
            // Refused here, the transaction rolls back: nothing of it is written.
            crate::merchant::payouts::reserve(tx, &work_merchant, &new.money, kind).await?;
            transactions::insert_pending(tx, &record, new.card.as_ref()).await?;
            paygate_common::trace::record_transaction(record.id.as_str());
            tracing::info!(transaction_id = %record.id, merchant_id = %work_merchant, %kind, "payment accepted");
            Ok::<_, ApiError>((view(&record), format!("/v1/transactions/{}", record.id)))
        })
    })
    .await
}

/// The work an intake route does inside its database transaction: what it stored, as
/// the merchant sees it, and the `Location` of that.
pub(crate) type IntakeWork<'c, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(T, String)>> + Send + 'c>>;

/// Every intake route's careful shape (refunds; payments the one statement leaves to
/// it): claims the `Idempotency-Key` (a replay answers at once), runs `work` in one
/// database transaction, answers 202 with what it returns (rendered as the client wants,
/// under `root`) and a `Location`, and stores that answer for replays in the same
/// transaction. A refusal rolls everything back and frees the key.
pub(crate) async fn accept<T, F>(
    state: &AppState,
    merchant: &Merchant,
    headers: &HeaderMap,
    route: &str,
    body: &[u8],
    root: &str,
    work: F,
) -> Result<Response>
where
    T: serde::Serialize,
    F: for<'c> FnOnce(&'c mut sqlx::PgConnection) -> IntakeWork<'c, T>,
{
    let key = match idempotency::key_of(&state.fingerprints, headers, &merchant.id, route, body)? {
        None => None,
        Some(key) => match key.claim(&state.pool).await? {
            Claim::Replay(response) => return Ok(response),
            Claim::Fresh(key) => Some(key),
        },
    };
    let format = Format::wanted(headers);
    let result = async {
        let mut tx = state.pool.begin().await?;
        let (value, location) = work(&mut tx).await?;
        let answer = Answer::of(format, &value, root, &location).await?;
        if let Some(key) = &key {
            key.complete(&mut tx, answer.status, &answer.headers, &answer.body)
                .await?;
        }
        paygate_common::outbox::commit(tx).await?;
        Ok::<_, ApiError>(answer.into_response())
    }
    .await;
    if result.is_err() {
        if let Some(key) = &key {
            key.release(&state.pool).await;
        }
    }
    result
}

/// A 202 answer, rendered once: sent, and kept for replays.
struct Answer {
    status: StatusCode,
    /// `Location` and `Content-Type`, as sent and as replayed.
    headers: Vec<(HeaderName, HeaderValue)>,
    body: axum::body::Bytes,
}

impl Answer {
    async fn render(format: Format, record: &TransactionRecord) -> Result<Answer> {
        let location = format!("/v1/transactions/{}", record.id);
        Self::of(format, &view(record), "transaction", &location).await
    }

    /// `value` rendered under `root`, with its `Location`.
    async fn of<T: serde::Serialize>(
        format: Format,
        value: &T,
        root: &str,
        location: &str,
    ) -> Result<Answer> {
        let response = format.render(StatusCode::ACCEPTED, root, value);
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        let location = HeaderValue::from_str(location).map_err(|e| ApiError::Internal(e.into()))?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = vec![(LOCATION, location)];
        if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
            headers.push((CONTENT_TYPE, content_type.clone()));
        }
        Ok(Answer {
            status: parts.status,
            headers,
            body,
        })
    }

    fn into_response(self) -> Response {
        // `insert`, not `extend`: the bytes' own `application/octet-stream` must be
        // replaced by the rendered content type, not joined by it.
        let mut response = (self.status, self.body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The country on record for the merchant's user, if any.
async fn customer_country(
    pool: &sqlx::PgPool,
    merchant: &Merchant,
    user_id: &str,
) -> Result<Option<Country>> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT country FROM customer WHERE merchant_id = $1 AND user_id = $2")
            .bind(merchant.id.as_str())
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    Ok(stored.and_then(|c| c.parse().ok()))
}

#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    tag = "transactions",
    summary = "Get a transaction",
    security(("merchant_key" = [])),
    params(("id" = String, Path, pattern = "^txn_[0-9a-fA-F]{32}$", description = "`txn_…`; another merchant's is 404.")),
    responses(
        (status = 200, description = "The transaction, its card masked.", content(
            (TransactionView = "application/json"),
            (TransactionView = "application/xml"),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = ServiceUnavailable),
    )
)]
pub async fn get_transaction(
    State(state): State<AppState>,
    merchant: Merchant,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response> {
    let not_found = ApiError::NotFound("transaction");
    let Ok(id) = id.parse::<TransactionId>() else {
        return Err(not_found);
    };
    match transactions::find(&state.pool, &id).await? {
        // Another merchant's transaction does not exist, as far as this one can tell.
        Some(record) if record.merchant_id == merchant.id => {
            Ok(Format::wanted(&headers).render(StatusCode::OK, "transaction", &view(&record)))
        }
        _ => Err(not_found),
    }
}

fn view(record: &TransactionRecord) -> TransactionView {
    TransactionView::from(&record.to_proto())
}
