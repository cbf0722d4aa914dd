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

/// Money is shown to a hundredth of a cent: finer than any rate card, coarse enough that sums of
/// floats do not show their noise.
pub fn round_money(amount: f64) -> f64 {
    (amount * 10_000.0).round() / 10_000.0
}

/// Which cost a counter row of a campaign counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostKind {
    /// Planned to be sent: the estimate, in the campaign's category.
    Planned,
    /// Delivered and billable, as Meta reported it: what the campaign costs so far.
    Billed,
}

impl CostKind {
    pub fn code(self) -> &'static str {
        match self {
            CostKind::Planned => "planned",
            CostKind::Billed => "billed",
        }
    }

    pub fn parse(raw: &str) -> Option<CostKind> {
        [CostKind::Planned, CostKind::Billed]
            .into_iter()
            .find(|k| k.code() == raw)
    }
}

/// Messages counted by recipient country and category (as Meta or the campaign names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostCount {
    pub kind: CostKind,
    pub country: String,
    pub category: String,
    pub n: i64,
}

/// An amount from counted messages, and how many of them the rate card has no price for (left
/// out of the amount, not guessed).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Priced {
    pub amount: f64,
    pub unpriced: u64,
}

/// A campaign's estimated cost (what it planned) beside what it has been billed so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct CampaignCost {
    pub currency: String,
    pub rate_card_valid_from: String,
    pub estimated: Priced,
    pub billed: Priced,
}

impl RateCard {
    /// Prices a campaign's cost counters with this card.
    pub fn campaign_cost(&self, counts: &[CostCount]) -> CampaignCost {
        let priced = |kind: CostKind| {
            let mut p = Priced::default();
            for c in counts.iter().filter(|c| c.kind == kind && c.n > 0) {
                match Category::parse(&c.category).and_then(|cat| self.price(&c.country, cat)) {
                    Some(price) => p.amount += price * c.n as f64,
                    None => p.unpriced += c.n as u64,
                }
            }
            p.amount = round_money(p.amount);
            p
        };
        CampaignCost {
            currency: self.currency.clone(),
            rate_card_valid_from: self.valid_from.clone(),
            estimated: priced(CostKind::Planned),
            billed: priced(CostKind::Billed),
        }
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

    #[test]
    fn campaign_costs_price_planned_and_billed_counts_apart() {
        let card = RateCard::parse(
            "country,category,price,currency,valid_from\nMX,marketing,0.03,USD,2026-10-01\nMX,utility,0.01,USD,2026-10-01\n",
        )
        .unwrap();
        let count = |kind, country: &str, category: &str, n| CostCount {
            kind,
            country: country.into(),
            category: category.into(),
            n,
        };
        // (counts, estimated (amount, unpriced), billed (amount, unpriced))
        type Case<'a> = (&'a [CostCount], (f64, u64), (f64, u64));
        let cases: &[Case] = &[
            (&[], (0.0, 0), (0.0, 0)),
            (
                &[count(CostKind::Planned, "MX", "marketing", 100)],
                (3.0, 0),
                (0.0, 0),
            ),
            // Billed in the category Meta reports, which may differ from the campaign's.
            (
                &[
                    count(CostKind::Planned, "MX", "marketing", 3),
                    count(CostKind::Billed, "MX", "marketing", 1),
                    count(CostKind::Billed, "MX", "utility", 1),
                ],
                (0.09, 0),
                (0.04, 0),
            ),
            // No price: counted apart, not guessed; an unknown category likewise.
            (
                &[
                    count(CostKind::Planned, "BR", "marketing", 7),
                    count(CostKind::Billed, "MX", "marketing_future", 2),
                ],
                (0.0, 7),
                (0.0, 2),
            ),
        ];
        for (counts, estimated, billed) in cases {
            let cost = card.campaign_cost(counts);
            assert_eq!(
                (cost.estimated.amount, cost.estimated.unpriced),
                *estimated,
                "{counts:?}"
            );
            assert_eq!(
                (cost.billed.amount, cost.billed.unpriced),
                *billed,
                "{counts:?}"
            );
            assert_eq!(cost.currency, "USD");
        }
        assert_eq!(CostKind::parse("billed"), Some(CostKind::Billed));
        assert_eq!(CostKind::parse("x"), None);
        assert_eq!(round_money(0.1 + 0.2), 0.3);
    }
}
