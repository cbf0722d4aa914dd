//! What a campaign will cost, from a rate card of prices per country and category.

use std::collections::HashMap;

use crate::domain::Category;

/// Prices per delivered template by recipient country and category, with the date they hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateCard {
    pub valid_from: String,
    pub currency: String,
    prices: HashMap<(String, String), f64>,
}

impl RateCard {
    /// CSV with the header `country,category,price,currency,valid_from`; country `*` is the
    /// price for countries not listed.
    pub fn parse(text: &str) -> Result<RateCard, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let header = lines.next().ok_or("the rate card is empty")?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        if columns != ["country", "category", "price", "currency", "valid_from"] {
            return Err(format!(
                "the rate card header must be country,category,price,currency,valid_from; got {header}"
            ));
        }
        let mut card = RateCard::default();
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 5 {
                return Err(format!("rate card row {}: expected 5 columns", i + 2));
            }
            let price: f64 = f[2]
                .parse()
                .map_err(|_| format!("rate card row {}: price {:?}", i + 2, f[2]))?;
            if Category::parse(f[1]).is_none() {
                return Err(format!("rate card row {}: category {:?}", i + 2, f[1]));
            }
            card.currency = f[3].to_string();
            card.valid_from = f[4].to_string();
            card.prices
                .insert((f[0].to_ascii_uppercase(), f[1].to_string()), price);
        }
        Ok(card)
    }

    pub fn price(&self, country: &str, category: Category) -> Option<f64> {
        self.prices
            .get(&(country.to_string(), category.as_str().to_string()))
            .or_else(|| {
                self.prices
                    .get(&("*".to_string(), category.as_str().to_string()))
            })
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_cards_parse_and_fall_back_to_the_default_country() {
        let card = RateCard::parse(
            "# example\ncountry,category,price,currency,valid_from\nMX,marketing,0.0436,USD,2026-10-01\n*,marketing,0.05,USD,2026-10-01\n",
        )
        .unwrap();
        assert_eq!(card.price("MX", Category::Marketing), Some(0.0436));
        assert_eq!(card.price("CO", Category::Marketing), Some(0.05));
        assert_eq!(card.price("CO", Category::Utility), None);
        assert_eq!(card.valid_from, "2026-10-01");
        assert!(RateCard::parse("a,b\n").is_err());
        assert!(
            RateCard::parse("country,category,price,currency,valid_from\nMX,marketing,x,USD,d")
                .is_err()
        );
    }
}
