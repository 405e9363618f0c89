//! `orders.v1.Orders/Quote`: the price of a basket, from a price list kept
//! in the code (it is an example).

use std::time::{Duration, SystemTime};

use worker::{Status, typed::TypedRequest};

use crate::pb::{Priority, QuoteRequest, QuoteResponse};

/// How long a quoted price holds.
const VALID_FOR: Duration = Duration::from_secs(15 * 60);

/// The currency of every price here.
const CURRENCY: &str = "EUR";

/// Price in cents of one unit of `sku`, if it is sold.
fn unit_price(sku: &str) -> Option<i64> {
    match sku {
        "tea" => Some(450),
        "mug" => Some(1200),
        "honey" => Some(800),
        _ => None,
    }
}

/// Shipping in cents for `priority` (unspecified ships as standard).
fn shipping(priority: Priority) -> i64 {
    match priority {
        Priority::Express => 900,
        Priority::Unspecified | Priority::Standard => 300,
    }
}

/// The typed handler: the price of the basket in `request`.
pub(crate) async fn quote(request: TypedRequest<QuoteRequest>) -> Result<QuoteResponse, Status> {
    let response = price(&request.message, SystemTime::now())?;
    tracing::info!(total_cents = response.total_cents, items = request.message.items.len(), "quoted");
    Ok(response)
}

/// Prices `basket` at `now`.
fn price(basket: &QuoteRequest, now: SystemTime) -> Result<QuoteResponse, Status> {
    if basket.items.is_empty() {
        return Err(Status::invalid_argument("the basket is empty: quote at least one item"));
    }
    // An unknown enum number (a newer client) ships as standard, like unspecified.
    let priority = Priority::try_from(basket.priority).unwrap_or(Priority::Unspecified);
    let mut total = shipping(priority);
    for item in &basket.items {
        if item.quantity == 0 {
            return Err(Status::invalid_argument(format!("quantity of {:?} must be at least 1", item.sku)));
        }
        let unit = unit_price(&item.sku).ok_or_else(|| Status::not_found(format!("no such sku: {:?}", item.sku)))?;
        total = unit
            .checked_mul(i64::from(item.quantity))
            .and_then(|line| total.checked_add(line))
            .ok_or_else(|| Status::out_of_range("the basket's total does not fit in 64 bits"))?;
    }
    Ok(QuoteResponse { total_cents: total, currency: CURRENCY.into(), valid_until: Some((now + VALID_FOR).into()) })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test fails by panicking

    use worker::Code;

    use super::*;
    use crate::pb::LineItem;

    fn item(sku: &str, quantity: u32) -> LineItem {
        LineItem { sku: sku.into(), quantity }
    }

    #[test]
    fn sums_lines_and_shipping() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let basket = QuoteRequest { items: vec![item("tea", 2), item("mug", 1)], priority: Priority::Express.into() };
        let quoted = price(&basket, now).unwrap();
        assert_eq!(quoted.total_cents, 2 * 450 + 1200 + 900);
        assert_eq!(quoted.currency, "EUR");
        assert_eq!(quoted.valid_until.unwrap().seconds, 1_000 + 15 * 60);

        let standard = QuoteRequest { items: vec![item("honey", 1)], priority: 0 };
        assert_eq!(price(&standard, now).unwrap().total_cents, 800 + 300);
    }

    #[test]
    fn refuses_what_cannot_be_priced() {
        let now = SystemTime::now();
        let code = |items| price(&QuoteRequest { items, priority: 0 }, now).unwrap_err().code();
        assert_eq!(code(vec![]), Code::InvalidArgument);
        assert_eq!(code(vec![item("tea", 0)]), Code::InvalidArgument);
        assert_eq!(code(vec![item("caviar", 1)]), Code::NotFound);
        assert_eq!(code(vec![item("mug", u32::MAX); 2_000_000]), Code::OutOfRange);
    }
}
