//! The order event and its contract, checked in one place.
//!
//! Every record the consumer reads goes through [`decode`]: it either becomes an [`Order`] whose
//! every field fits the Cassandra and MySQL column types (so no store can refuse it), or a
//! [`Rejection`] with a low-cardinality [`Reason`] that the dead-letter topic carries. Bounds are
//! fixed constants, never relative to "now", so a replay classifies a record exactly as the first
//! pass did.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Highest platform, product and customer id: the range of a signed 32-bit column.
const MAX_DIMENSION_ID: i64 = i32::MAX as i64;
/// Largest quantity of one order.
const MAX_QUANTITY: i64 = 10_000;
/// The accepted payment methods, exactly as spelled in the tutorial's data.
const PAYMENT_METHODS: [&str; 4] = ["credit card", "debit card", "bank transfer", "paypal"];

/// Earliest accepted `created_at` (inclusive), 2000-01-01T00:00:00Z, in milliseconds.
const MIN_CREATED_AT_MS: i64 = 946_684_800_000;
/// Latest accepted `created_at` (exclusive), 2100-01-01T00:00:00Z, in milliseconds.
const MAX_CREATED_AT_MS: i64 = 4_102_444_800_000;

/// One valid e-commerce order, as stored in Cassandra and folded into MySQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub order_id: i64,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at_ms: i64,
    pub platform_id: i32,
    pub product_id: i32,
    pub quantity: i32,
    pub customer_id: i32,
    pub payment_method: PaymentMethod,
}

/// The closed set of payment methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaymentMethod {
    CreditCard,
    DebitCard,
    BankTransfer,
    Paypal,
}

impl PaymentMethod {
    pub(crate) const ALL: [PaymentMethod; 4] = [
        Self::CreditCard,
        Self::DebitCard,
        Self::BankTransfer,
        Self::Paypal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreditCard => PAYMENT_METHODS[0],
            Self::DebitCard => PAYMENT_METHODS[1],
            Self::BankTransfer => PAYMENT_METHODS[2],
            Self::Paypal => PAYMENT_METHODS[3],
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

impl Serialize for PaymentMethod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Order {
    /// `created_at` as a UTC timestamp.
    pub fn created_at(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.created_at_ms)
            .single()
            .unwrap_or_default()
    }

    /// The UTC date the order counts towards.
    pub fn order_date(&self) -> NaiveDate {
        self.created_at().date_naive()
    }

    /// The start of the UTC minute the order counts towards, in milliseconds.
    pub(crate) fn minute_ms(&self) -> i64 {
        self.created_at_ms - self.created_at_ms.rem_euclid(60_000)
    }

    /// The JSON the producer publishes: `created_at` in UTC with milliseconds.
    pub fn to_json(&self) -> Vec<u8> {
        let wire = WireOrder {
            order_id: self.order_id,
            created_at: self
                .created_at()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
            platform_id: self.platform_id,
            product_id: self.product_id,
            quantity: self.quantity,
            customer_id: self.customer_id,
            payment_method: self.payment_method.as_str(),
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct WireOrder<'a> {
    order_id: i64,
    created_at: String,
    platform_id: i32,
    product_id: i32,
    quantity: i32,
    customer_id: i32,
    payment_method: &'a str,
}

/// Why a record was refused. The `as_str` codes are the dead-letter `error` header and the
/// `reason` metric label, so they never change once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    TooLarge,
    InvalidUtf8,
    NotJson,
    NotObject,
    MissingField,
    WrongType,
    OutOfRange,
    BadTimestamp,
    UnknownPaymentMethod,
    /// A required field given twice in one object: which value counts would be a guess.
    DuplicateField,
    /// A store refused the record's data although validation accepted it (docs/DESIGN.md,
    /// rule 10).
    StoreRejected,
}

impl Reason {
    pub(crate) const ALL: [Reason; 11] = [
        Self::TooLarge,
        Self::InvalidUtf8,
        Self::NotJson,
        Self::NotObject,
        Self::MissingField,
        Self::WrongType,
        Self::OutOfRange,
        Self::BadTimestamp,
        Self::UnknownPaymentMethod,
        Self::DuplicateField,
        Self::StoreRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NotJson => "not_json",
            Self::NotObject => "not_object",
            Self::MissingField => "missing_field",
            Self::WrongType => "wrong_type",
            Self::OutOfRange => "out_of_range",
            Self::BadTimestamp => "bad_timestamp",
            Self::UnknownPaymentMethod => "unknown_payment_method",
            Self::DuplicateField => "duplicate_field",
            Self::StoreRejected => "store_rejected",
        }
    }
}

/// Longest `Rejection::detail`, in bytes.
const MAX_DETAIL: usize = 256;

/// A refused record: the reason code and a human-readable detail (never used as a label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

impl Rejection {
    /// The detail is cut to `MAX_DETAIL` bytes (at a character boundary, then `…`): it travels
    /// in a dead letter's header, and it quotes the record (a number's text, a timestamp) that
    /// may be as long as the record.
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push('…');
        }
        Self { reason, detail }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// The shape of a record, read leniently: unknown fields are ignored, and every required field
/// is optional here so that a missing one can be named. `I` is how an integer field is read:
/// as a 64-bit integer ([`Int`], the fast path every valid record takes), or as its JSON text
/// (`&RawValue`, for a record the fast read refused), because serde_json reads an integer
/// literal beyond 64 bits, or `-0`, as a float, and the contract tells an integer out of range
/// (`out_of_range`) from a number that is no integer (`wrong_type`) by how it is written.
#[derive(Deserialize)]
#[serde(bound(deserialize = "I: Deserialize<'de>"))]
struct RawOrder<'a, I> {
    order_id: Option<I>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
    platform_id: Option<I>,
    product_id: Option<I>,
    quantity: Option<I>,
    customer_id: Option<I>,
    #[serde(borrow)]
    payment_method: Option<Cow<'a, str>>,
}

/// An integer field read as a JSON integer that fits 64 bits; anything else fails the read.
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 64-bit integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom("beyond 64 bits"))
            }
        }
        d.deserialize_i64(Visitor)
    }
}

/// How the contract checks one integer field, whichever way it was read.
trait IntegerField {
    fn check(value: Option<Self>, field: &str, min: i64, max: i64) -> Result<i64, Rejection>
    where
        Self: Sized;
}

impl IntegerField for Int {
    fn check(value: Option<Self>, field: &str, min: i64, max: i64) -> Result<i64, Rejection> {
        match value {
            None => Err(Rejection::new(
                Reason::MissingField,
                format!("{field} is missing"),
            )),
            Some(Int(v)) if (min..=max).contains(&v) => Ok(v),
            Some(Int(v)) => Err(Rejection::new(
                Reason::OutOfRange,
                format!("{field} = {v}, allowed {min}..={max}"),
            )),
        }
    }
}

impl IntegerField for &RawValue {
    fn check(value: Option<Self>, field: &str, min: i64, max: i64) -> Result<i64, Rejection> {
        integer(field, value, min, max)
    }
}

const FIELDS: [&str; 7] = [
    "order_id",
    "created_at",
    "platform_id",
    "product_id",
    "quantity",
    "customer_id",
    "payment_method",
];

/// Decodes and validates one record value against the event contract.
pub fn decode(payload: &[u8], max_bytes: usize) -> Result<Order, Rejection> {
    if payload.len() > max_bytes {
        return Err(Rejection::new(
            Reason::TooLarge,
            format!("{} bytes, limit {max_bytes}", payload.len()),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(Reason::InvalidUtf8, e.to_string()))?;
    // The typed read would also take a JSON array for the struct, field by field.
    if !text.trim_start().starts_with('{') {
        return Err(classify_untyped(text));
    }
    if let Ok(raw) = serde_json::from_str::<RawOrder<'_, Int>>(text) {
        return validate(raw);
    }
    // Only records the contract may refuse get here: read the integers as text, then, if even
    // that fails, find out why from the generic JSON value.
    match serde_json::from_str::<RawOrder<'_, &RawValue>>(text) {
        Ok(raw) => validate(raw),
        Err(typed) => Err(classify(text, &typed)),
    }
}

/// A record that is not a JSON object: not JSON at all, or another kind of value.
fn classify_untyped(text: &str) -> Rejection {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => Rejection::new(
            Reason::NotObject,
            format!("top level is {}", json_kind(&value)),
        ),
        Err(e) => Rejection::new(Reason::NotJson, e.to_string()),
    }
}

/// The keys of a JSON object in the order written, repeats included (serde_json's `Value`
/// keeps only the last of a repeated key).
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Keys;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn classify(text: &str, typed: &serde_json::Error) -> Rejection {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return Rejection::new(Reason::NotJson, e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return Rejection::new(
            Reason::NotObject,
            format!("top level is {}", json_kind(&value)),
        );
    };
    // A required key given twice, whatever its values: which one counts would be a guess.
    if let Ok(Keys(keys)) = serde_json::from_str::<Keys>(text) {
        for (i, key) in keys.iter().enumerate() {
            if FIELDS.contains(&key.as_str()) && keys[..i].contains(key) {
                return Rejection::new(
                    Reason::DuplicateField,
                    format!("{key} is given more than once"),
                );
            }
        }
    }
    for field in FIELDS {
        match (field, object.get(field)) {
            (_, None) | (_, Some(serde_json::Value::Null)) => {}
            ("created_at" | "payment_method", Some(serde_json::Value::String(_))) => {}
            ("created_at" | "payment_method", Some(other)) => {
                return Rejection::new(
                    Reason::WrongType,
                    format!("{field} must be a string, got {}", json_kind(other)),
                )
            }
            (_, Some(serde_json::Value::Number(_))) => {}
            (_, Some(other)) => {
                return Rejection::new(
                    Reason::WrongType,
                    format!("{field} must be an integer, got {}", json_kind(other)),
                )
            }
        }
    }
    Rejection::new(Reason::NotJson, format!("unreadable object: {typed}"))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn validate<I: IntegerField>(raw: RawOrder<'_, I>) -> Result<Order, Rejection> {
    let order_id = I::check(raw.order_id, "order_id", 1, i64::MAX)?;
    let created_at = raw
        .created_at
        .ok_or_else(|| Rejection::new(Reason::MissingField, "created_at is missing"))?;
    let created_at_ms = parse_timestamp(&created_at)?;
    let platform_id = I::check(raw.platform_id, "platform_id", 1, MAX_DIMENSION_ID)?;
    let product_id = I::check(raw.product_id, "product_id", 1, MAX_DIMENSION_ID)?;
    let quantity = I::check(raw.quantity, "quantity", 1, MAX_QUANTITY)?;
    let customer_id = I::check(raw.customer_id, "customer_id", 1, MAX_DIMENSION_ID)?;
    let method = raw
        .payment_method
        .ok_or_else(|| Rejection::new(Reason::MissingField, "payment_method is missing"))?;
    let payment_method = PaymentMethod::parse(&method).ok_or_else(|| {
        Rejection::new(
            Reason::UnknownPaymentMethod,
            format!("{method:?} is not accepted"),
        )
    })?;
    // The ranges above were checked against i32 bounds, so these conversions cannot fail.
    let narrow = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
    Ok(Order {
        order_id,
        created_at_ms,
        platform_id: narrow(platform_id),
        product_id: narrow(product_id),
        quantity: narrow(quantity),
        customer_id: narrow(customer_id),
        payment_method,
    })
}

/// An integer field from its JSON text: an integer literal (digits, optionally after a minus
/// sign) is in range or `out_of_range`, however long; anything else is `wrong_type`.
fn integer(field: &str, value: Option<&RawValue>, min: i64, max: i64) -> Result<i64, Rejection> {
    let text = value
        .ok_or_else(|| Rejection::new(Reason::MissingField, format!("{field} is missing")))?
        .get();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        let got = match text.as_bytes().first() {
            Some(b'"') => "a string".to_owned(),
            Some(b'{') => "an object".to_owned(),
            Some(b'[') => "an array".to_owned(),
            Some(b't' | b'f') => "a boolean".to_owned(),
            _ => text.to_owned(),
        };
        return Err(Rejection::new(
            Reason::WrongType,
            format!("{field} must be an integer, got {got}"),
        ));
    }
    match text.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(Rejection::new(
            Reason::OutOfRange,
            format!("{field} = {text}, allowed {min}..={max}"),
        )),
    }
}

/// RFC 3339 (fractional seconds and offset optional in the sense of RFC 3339), or the tutorial's
/// `YYYY-MM-DD HH:MM:SS` read as UTC; within [2000-01-01, 2100-01-01).
fn parse_timestamp(text: &str) -> Result<i64, Rejection> {
    // chrono's parsers accept one-digit fields and a missing separator; the contract does not.
    let shaped = |t: &[u8]| {
        t.len() >= 19
            && t[..19].iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                10 => matches!(b, b'T' | b't' | b' '),
                13 | 16 => *b == b':',
                _ => b.is_ascii_digit(),
            })
    };
    // chrono reads second 60 as a leap second at any minute and stores it as the next minute's
    // first second; the contract takes no leap seconds.
    let ms = if !shaped(text.as_bytes()) {
        return Err(Rejection::new(
            Reason::BadTimestamp,
            format!("created_at {text:?} is neither RFC 3339 nor YYYY-MM-DD HH:MM:SS"),
        ));
    } else if text.get(17..19) == Some("60") {
        return Err(Rejection::new(
            Reason::BadTimestamp,
            format!("created_at {text:?} has second 60: leap seconds are not accepted"),
        ));
    } else if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        dt.timestamp_millis()
    } else if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        naive.and_utc().timestamp_millis()
    } else {
        return Err(Rejection::new(
            Reason::BadTimestamp,
            format!("created_at {text:?} is neither RFC 3339 nor YYYY-MM-DD HH:MM:SS"),
        ));
    };
    if !(MIN_CREATED_AT_MS..MAX_CREATED_AT_MS).contains(&ms) {
        return Err(Rejection::new(
            Reason::OutOfRange,
            format!("created_at {text} is outside 2000-01-01 .. 2100-01-01"),
        ));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "order_id": 42,
            "created_at": "2024-05-01T10:20:30.123Z",
            "platform_id": 1,
            "product_id": 7,
            "quantity": 3,
            "customer_id": 99,
            "payment_method": "paypal"
        })
    }

    fn with(field: &str, value: serde_json::Value) -> Vec<u8> {
        let mut v = valid();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&v).unwrap()
    }

    fn reason(payload: &[u8]) -> Reason {
        decode(payload, LIMIT).unwrap_err().reason
    }

    #[test]
    fn a_valid_order_decodes_with_every_field() {
        let order = decode(&serde_json::to_vec(&valid()).unwrap(), LIMIT).unwrap();
        assert_eq!(order.order_id, 42);
        assert_eq!(order.created_at_ms, 1_714_558_830_123);
        assert_eq!((order.platform_id, order.product_id), (1, 7));
        assert_eq!((order.quantity, order.customer_id), (3, 99));
        assert_eq!(order.payment_method, PaymentMethod::Paypal);
    }

    #[test]
    fn the_producer_wire_format_round_trips() {
        let order = decode(&serde_json::to_vec(&valid()).unwrap(), LIMIT).unwrap();
        assert_eq!(decode(&order.to_json(), LIMIT).unwrap(), order);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(decode(&with("coupon", serde_json::json!("X")), LIMIT).is_ok());
    }

    #[test]
    fn size_limit_is_inclusive() {
        let base = serde_json::to_vec(&valid()).unwrap();
        // Pad with spaces before the closing brace: still valid JSON.
        let pad = |total: usize| {
            let mut p = base[..base.len() - 1].to_vec();
            p.resize(total - 1, b' ');
            p.push(b'}');
            p
        };
        assert!(decode(&pad(LIMIT), LIMIT).is_ok());
        assert_eq!(reason(&pad(LIMIT + 1)), Reason::TooLarge);
    }

    #[test]
    fn structural_errors_have_their_own_reasons() {
        assert_eq!(reason(b"\xff\xfe{}"), Reason::InvalidUtf8);
        assert_eq!(reason(b"{not json"), Reason::NotJson);
        assert_eq!(reason(b""), Reason::NotJson);
        assert_eq!(reason(b"[1,2,3]"), Reason::NotObject);
        assert_eq!(reason(b"\"order\""), Reason::NotObject);
        assert_eq!(reason(b"17"), Reason::NotObject);
    }

    #[test]
    fn every_missing_field_is_named() {
        for field in FIELDS {
            let err = decode(&without(field), LIMIT).unwrap_err();
            assert_eq!(err.reason, Reason::MissingField, "{field}");
            assert!(err.detail.contains(field), "{field}: {}", err.detail);
            assert_eq!(
                reason(&with(field, serde_json::Value::Null)),
                Reason::MissingField
            );
        }
    }

    #[test]
    fn wrong_types_are_refused() {
        for field in [
            "order_id",
            "platform_id",
            "product_id",
            "quantity",
            "customer_id",
        ] {
            assert_eq!(
                reason(&with(field, serde_json::json!("1"))),
                Reason::WrongType,
                "{field}"
            );
            assert_eq!(
                reason(&with(field, serde_json::json!(1.5))),
                Reason::WrongType,
                "{field}"
            );
            assert_eq!(
                reason(&with(field, serde_json::json!(2.0))),
                Reason::WrongType,
                "{field}"
            );
            assert_eq!(
                reason(&with(field, serde_json::json!(true))),
                Reason::WrongType,
                "{field}"
            );
            assert_eq!(
                reason(&with(field, serde_json::json!([1]))),
                Reason::WrongType,
                "{field}"
            );
        }
        assert_eq!(
            reason(&with("created_at", serde_json::json!(1_700_000_000))),
            Reason::WrongType
        );
        assert_eq!(
            reason(&with("payment_method", serde_json::json!(1))),
            Reason::WrongType
        );
    }

    #[test]
    fn order_id_bounds() {
        assert_eq!(
            reason(&with("order_id", serde_json::json!(0))),
            Reason::OutOfRange
        );
        assert_eq!(
            reason(&with("order_id", serde_json::json!(-5))),
            Reason::OutOfRange
        );
        assert!(decode(&with("order_id", serde_json::json!(1)), LIMIT).is_ok());
        assert!(decode(&with("order_id", serde_json::json!(i64::MAX)), LIMIT).is_ok());
        let over = br#"{"order_id":9223372036854775808,"created_at":"2024-05-01 10:00:00","platform_id":1,"product_id":1,"quantity":1,"customer_id":1,"payment_method":"paypal"}"#;
        assert_eq!(reason(over), Reason::OutOfRange);
        // Integers beyond 64 bits are integers too, however serde_json would read them.
        for huge in [
            "18446744073709551616",
            "1000000000000000000000000000000",
            "-99999999999999999999",
        ] {
            let text = String::from_utf8(valid_json())
                .unwrap()
                .replace(":42,", &format!(":{huge},"));
            let err = decode(text.as_bytes(), LIMIT).unwrap_err();
            assert_eq!(err.reason, Reason::OutOfRange, "{huge}");
            assert_eq!(
                err.detail,
                format!("order_id = {huge}, allowed 1..=9223372036854775807")
            );
        }
    }

    fn valid_json() -> Vec<u8> {
        serde_json::to_vec(&valid()).unwrap()
    }

    #[test]
    fn minus_zero_is_an_integer_out_of_range() {
        let text = String::from_utf8(valid_json())
            .unwrap()
            .replace("\"quantity\":3", "\"quantity\":-0");
        let err = decode(text.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(err.reason, Reason::OutOfRange);
        assert_eq!(err.detail, "quantity = -0, allowed 1..=10000");
        let float = text.replace("\"quantity\":-0", "\"quantity\":-0.0");
        assert_eq!(reason(float.as_bytes()), Reason::WrongType);
    }

    #[test]
    fn a_required_key_given_twice_is_named() {
        let text = String::from_utf8(valid_json())
            .unwrap()
            .replacen('{', "{\"quantity\":5,", 1);
        let err = decode(text.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(err.reason, Reason::DuplicateField);
        assert_eq!(err.detail, "quantity is given more than once");
        // An unknown key twice is ignored, like any unknown key.
        let text =
            String::from_utf8(valid_json())
                .unwrap()
                .replacen('{', "{\"note\":1,\"note\":2,", 1);
        assert!(decode(text.as_bytes(), LIMIT).is_ok());
        // Twice, the first time with the wrong kind of value: still the repeat that is named.
        let text = String::from_utf8(valid_json())
            .unwrap()
            .replacen('{', "{\"created_at\":5,", 1);
        let err = decode(text.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(err.reason, Reason::DuplicateField);
        assert_eq!(err.detail, "created_at is given more than once");
    }

    #[test]
    fn an_array_is_not_an_order_even_with_every_value_in_place() {
        let array = br#"[42,"2024-05-01 10:00:00",1,7,3,99,"paypal"]"#;
        let err = decode(array, LIMIT).unwrap_err();
        assert_eq!(err.reason, Reason::NotObject);
        assert_eq!(err.detail, "top level is an array");
        assert_eq!(reason(b"  \n [1]"), Reason::NotObject);
        assert_eq!(reason(b"\"x\""), Reason::NotObject);
        assert_eq!(reason(b"nope"), Reason::NotJson);
    }

    #[test]
    fn a_detail_quoting_the_record_is_cut_short() {
        let digits = "9".repeat(50_000);
        let text = String::from_utf8(valid_json())
            .unwrap()
            .replace(":42,", &format!(":{digits},"));
        let err = decode(text.as_bytes(), LIMIT).unwrap_err();
        assert_eq!(err.reason, Reason::OutOfRange);
        assert!(
            err.detail.len() <= MAX_DETAIL + '…'.len_utf8(),
            "{}",
            err.detail.len()
        );
        assert!(err.detail.ends_with('…'));
    }

    #[test]
    fn dimension_id_bounds_follow_int_columns() {
        for field in ["platform_id", "product_id", "customer_id"] {
            assert!(
                decode(&with(field, serde_json::json!(1)), LIMIT).is_ok(),
                "{field}"
            );
            assert!(decode(&with(field, serde_json::json!(2_147_483_647i64)), LIMIT).is_ok());
            assert_eq!(
                reason(&with(field, serde_json::json!(2_147_483_648i64))),
                Reason::OutOfRange
            );
            assert_eq!(
                reason(&with(field, serde_json::json!(0))),
                Reason::OutOfRange
            );
            assert_eq!(
                reason(&with(field, serde_json::json!(-1))),
                Reason::OutOfRange
            );
        }
    }

    #[test]
    fn quantity_bounds() {
        assert_eq!(
            reason(&with("quantity", serde_json::json!(0))),
            Reason::OutOfRange
        );
        assert!(decode(&with("quantity", serde_json::json!(1)), LIMIT).is_ok());
        assert!(decode(&with("quantity", serde_json::json!(10_000)), LIMIT).is_ok());
        assert_eq!(
            reason(&with("quantity", serde_json::json!(10_001))),
            Reason::OutOfRange
        );
    }

    #[test]
    fn payment_methods_are_a_closed_set() {
        for method in PAYMENT_METHODS {
            assert!(decode(&with("payment_method", serde_json::json!(method)), LIMIT).is_ok());
        }
        for bad in ["bitcoin", "Paypal", "credit_card", ""] {
            assert_eq!(
                reason(&with("payment_method", serde_json::json!(bad))),
                Reason::UnknownPaymentMethod
            );
        }
    }

    #[test]
    fn timestamp_formats() {
        let ms = |t: &str| {
            decode(&with("created_at", serde_json::json!(t)), LIMIT).map(|o| o.created_at_ms)
        };
        assert_eq!(ms("2024-05-01T10:20:30Z").unwrap(), 1_714_558_830_000);
        assert_eq!(
            ms("2024-05-01T10:20:30.5+02:00").unwrap(),
            1_714_551_630_500
        );
        assert_eq!(ms("2024-05-01 10:20:30").unwrap(), 1_714_558_830_000);
        for bad in [
            "yesterday",
            "2024-05-01",
            "2024-13-01 10:00:00",
            "2024-05-01T25:00:00Z",
            "2024-5-1 1:2:3",
            "2024-05-0110:20:30",
            "2024-05-01 10:20:30 ",
            "2024-05-01T1:02:03Z",
            "2024-05-01T10:20:60Z",
            "2024-05-01 10:20:60",
            "2016-12-31T23:59:60Z",
        ] {
            assert_eq!(
                decode(&with("created_at", serde_json::json!(bad)), LIMIT)
                    .unwrap_err()
                    .reason,
                Reason::BadTimestamp,
                "{bad}"
            );
        }
    }

    #[test]
    fn timestamp_bounds_are_fixed() {
        let r = |t: &str| decode(&with("created_at", serde_json::json!(t)), LIMIT);
        assert!(r("2000-01-01T00:00:00Z").is_ok());
        assert_eq!(
            r("1999-12-31T23:59:59.999Z").unwrap_err().reason,
            Reason::OutOfRange
        );
        assert!(r("2099-12-31T23:59:59.999Z").is_ok());
        assert_eq!(
            r("2100-01-01T00:00:00Z").unwrap_err().reason,
            Reason::OutOfRange
        );
        // The offset counts: 2100-01-01T00:30+01:00 is 1999..2099 in UTC? No: 2099-12-31T23:30Z.
        assert!(r("2100-01-01T00:30:00+01:00").is_ok());
    }

    #[test]
    fn order_date_is_the_utc_date() {
        let order = decode(
            &with("created_at", serde_json::json!("2024-03-10T23:59:59-05:00")),
            LIMIT,
        )
        .unwrap();
        assert_eq!(
            order.order_date(),
            NaiveDate::from_ymd_opt(2024, 3, 11).unwrap()
        );
        assert_eq!(order.minute_ms() % 60_000, 0);
        assert_eq!(
            order.created_at().format("%H:%M:%S").to_string(),
            "04:59:59"
        );
        assert_eq!(order.minute_ms(), order.created_at_ms - 59_000);
    }
}
