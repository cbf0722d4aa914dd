//! Quiet hours in the recipient's local time (one standard offset per country).

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};

/// Hours (recipient's local time) in which a campaign does not send; may wrap midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start_minute: u32,
    pub end_minute: u32,
}

impl QuietHours {
    /// From `"21:00"` and `"09:00"`.
    pub fn parse(start: &str, end: &str) -> Result<QuietHours, String> {
        let start_minute = minute_of_day(start)?;
        let end_minute = minute_of_day(end)?;
        if start_minute == end_minute {
            return Err("quiet hours must start and end at different times".into());
        }
        Ok(QuietHours {
            start_minute,
            end_minute,
        })
    }

    /// How long until sending may start for a recipient whose clock is `offset_minutes` from UTC;
    /// zero outside quiet hours.
    pub fn wait(&self, now: DateTime<Utc>, offset_minutes: i32) -> Duration {
        let utc_minute = i64::from(now.hour() * 60 + now.minute());
        let local = (utc_minute + i64::from(offset_minutes)).rem_euclid(1440) as u32;
        let inside = if self.start_minute < self.end_minute {
            local >= self.start_minute && local < self.end_minute
        } else {
            local >= self.start_minute || local < self.end_minute
        };
        if !inside {
            return Duration::ZERO;
        }
        let minutes = (self.end_minute + 1440 - local) % 1440;
        Duration::from_secs(u64::from(minutes) * 60)
            .saturating_sub(Duration::from_secs(u64::from(now.second())))
    }
}

fn minute_of_day(raw: &str) -> Result<u32, String> {
    let (h, m) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not HH:MM"))?;
    let h: u32 = h.parse().map_err(|_| format!("{raw:?} is not HH:MM"))?;
    let m: u32 = m.parse().map_err(|_| format!("{raw:?} is not HH:MM"))?;
    if h > 23 || m > 59 {
        return Err(format!("{raw:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

/// Standard UTC offset (minutes) of a country's main population centre, for quiet hours. One offset
/// per calling-code country: daylight saving time and multi-zone countries are approximated (the
/// US and Canada share +1 and use US Eastern time; Brazil uses Brasília; Mexico uses Mexico City).
pub fn utc_offset_minutes(country: &str) -> i32 {
    match country {
        "MX" | "GT" | "SV" | "HN" | "NI" | "CR" => -360,
        "CO" | "PE" | "EC" | "PA" | "CU" | "US" => -300,
        "VE" | "BO" | "DO" | "PR" => -240,
        "AR" | "BR" | "UY" | "PY" | "CL" => -180,
        "GB" | "PT" => 0,
        "ES" | "FR" | "DE" | "IT" | "NL" | "BE" | "CH" | "AT" | "PL" | "SE" | "NO" | "DK" => 60,
        "IN" => 330,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn quiet_hours_wrap_midnight_in_local_time() {
        let quiet = QuietHours::parse("21:00", "09:00").unwrap();
        // 03:00 UTC is 21:00 in Mexico City (UTC-6): quiet for 12 h.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 3, 0, 0).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::from_secs(12 * 3600));
        // 15:00 UTC is 09:00 in Mexico City: free.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::ZERO);
        // 14:30:30 UTC is 08:30:30 local: 29.5 min left.
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 14, 30, 30).unwrap();
        assert_eq!(quiet.wait(at, -360), Duration::from_secs(29 * 60 + 30));
        let day = QuietHours::parse("12:00", "13:00").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 12, 10, 0).unwrap();
        assert_eq!(day.wait(at, 0), Duration::from_secs(50 * 60));
        assert!(QuietHours::parse("25:00", "01:00").is_err());
        assert!(QuietHours::parse("09:00", "09:00").is_err());
    }
}
