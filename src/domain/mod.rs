//! Domain types parsed at the boundary.
//!
//! Request bodies and job payloads become these types through `parse`; their fields are private,
//! so code behind the boundary holds only valid values and never re-checks them. Each `parse`
//! returns a message a caller can act on; the API attaches the field name.

mod api_key;
mod dates;
mod email;
mod order;
mod product;
mod stock;
mod tenant;

pub use api_key::{ApiKey, ApiKeyHash};
pub use dates::DateWindow;
pub use email::EmailAddress;
pub use order::{Totals, parse_tax_rate, totals};
pub use product::{Amount, Currency, ProductName, Sku, format_amount, parse_count};
pub use stock::{Delta, IdempotencyKey, Reason};
pub use tenant::{TenantName, TenantSlug, TimeZoneName};

/// Text a person typed: trimmed, non-empty, at most `max` characters, and free of control
/// characters (which could forge log lines, headers or PDF text).
pub(crate) fn clean_text(raw: &str, max: usize) -> Result<String, String> {
    let text = raw.trim();
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(text.to_string())
}
