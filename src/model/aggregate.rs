//! Aggregation maths: folding a batch of orders into the deltas of the MySQL aggregate tables.
//!
//! Pure and ordered (BTreeMap), so the upserts touch rows in sorted key order: two transactions
//! that overlap take their row locks in the same order and cannot deadlock on each other.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};

use crate::model::order::Order;

/// Order count and total quantity of one aggregate key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub order_count: i64,
    pub total_quantity: i64,
}

impl Totals {
    fn add(&mut self, order: &Order) {
        self.order_count += 1;
        self.total_quantity += i64::from(order.quantity);
    }
}

/// Key of `aggregated_sales`: (UTC date, platform, product).
pub type DailyKey = (NaiveDate, i32, i32);
/// Key of `sales_per_minute`: (UTC minute, platform, product).
pub type MinuteKey = (NaiveDateTime, i32, i32);

/// The deltas one batch adds to the aggregate tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Deltas {
    pub daily: BTreeMap<DailyKey, Totals>,
    pub per_minute: BTreeMap<MinuteKey, Totals>,
}

impl Deltas {
    /// Folds orders into deltas.
    pub fn fold<'a>(orders: impl IntoIterator<Item = &'a Order>) -> Self {
        let mut deltas = Deltas::default();
        for order in orders {
            deltas.add(order);
        }
        deltas
    }

    fn add(&mut self, order: &Order) {
        self.daily
            .entry((order.order_date(), order.platform_id, order.product_id))
            .or_default()
            .add(order);
        let minute = chrono::DateTime::from_timestamp_millis(order.minute_ms())
            .unwrap_or_default()
            .naive_utc();
        self.per_minute
            .entry((minute, order.platform_id, order.product_id))
            .or_default()
            .add(order);
    }

    pub fn is_empty(&self) -> bool {
        self.daily.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::order::PaymentMethod;

    fn order(id: i64, at: &str, platform: i32, product: i32, qty: i32) -> Order {
        let ms = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        Order {
            order_id: id,
            created_at_ms: ms,
            platform_id: platform,
            product_id: product,
            quantity: qty,
            customer_id: 1,
            payment_method: PaymentMethod::Paypal,
        }
    }

    #[test]
    fn folds_by_utc_date_and_minute() {
        let orders = [
            order(1, "2024-03-10T23:59:59-05:00", 1, 2, 3), // 2024-03-11 04:59 UTC
            order(2, "2024-03-11T04:59:01Z", 1, 2, 4),
            order(3, "2024-03-11T05:00:00Z", 1, 2, 5),
            order(4, "2024-03-11T05:00:00Z", 2, 2, 1),
        ];
        let d = Deltas::fold(&orders);
        let day = NaiveDate::from_ymd_opt(2024, 3, 11).unwrap();
        assert_eq!(
            d.daily[&(day, 1, 2)],
            Totals {
                order_count: 3,
                total_quantity: 12
            }
        );
        assert_eq!(
            d.daily[&(day, 2, 2)],
            Totals {
                order_count: 1,
                total_quantity: 1
            }
        );
        let m459 = day.and_hms_opt(4, 59, 0).unwrap();
        let m500 = day.and_hms_opt(5, 0, 0).unwrap();
        assert_eq!(
            d.per_minute[&(m459, 1, 2)],
            Totals {
                order_count: 2,
                total_quantity: 7
            }
        );
        assert_eq!(
            d.per_minute[&(m500, 1, 2)],
            Totals {
                order_count: 1,
                total_quantity: 5
            }
        );
        assert_eq!(d.per_minute.len(), 3);
        // Sorted key order is what the upsert uses.
        let keys: Vec<_> = d.daily.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn folding_in_parts_equals_folding_at_once() {
        let orders: Vec<Order> = (0..100)
            .map(|i| {
                order(
                    i,
                    "2024-01-01T00:00:00Z",
                    (i % 4) as i32 + 1,
                    (i % 20) as i32 + 1,
                    (i % 7) as i32 + 1,
                )
            })
            .collect();
        let whole = Deltas::fold(&orders);
        let mut parts = Deltas::fold(&orders[..40]);
        for o in &orders[40..] {
            parts.add(o);
        }
        assert_eq!(whole, parts);
        let total: i64 = whole.daily.values().map(|t| t.total_quantity).sum();
        assert_eq!(
            total,
            orders.iter().map(|o| i64::from(o.quantity)).sum::<i64>()
        );
    }
}
