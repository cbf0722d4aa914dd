//! Campaign rules: template parameter slots and per-recipient variables, who is left out and why,
//! quiet hours in the recipient's local time, which sender a recipient sticks to, how long a
//! campaign will take, what it will cost (from a rate card) and which state changes are allowed.

mod cost;
mod exclusion;
mod quiet_hours;
mod senders;
mod variables;

pub use cost::*;
pub use exclusion::*;
pub use quiet_hours::*;
pub use senders::*;
pub use variables::*;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Launch,
    Pause,
    Resume,
    Cancel,
}

/// Where a campaign is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    Draft,
    /// Launched with a start time still to come.
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl CampaignState {
    pub const ALL: [CampaignState; 6] = [
        CampaignState::Draft,
        CampaignState::Scheduled,
        CampaignState::Running,
        CampaignState::Paused,
        CampaignState::Completed,
        CampaignState::Cancelled,
    ];

    /// The stable code stored in PostgreSQL, mirrored to Redis and returned by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "draft",
            CampaignState::Scheduled => "scheduled",
            CampaignState::Running => "running",
            CampaignState::Paused => "paused",
            CampaignState::Completed => "completed",
            CampaignState::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<CampaignState> {
        CampaignState::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Nothing more will be sent.
    pub fn is_final(self) -> bool {
        matches!(self, CampaignState::Completed | CampaignState::Cancelled)
    }
}

impl std::fmt::Display for CampaignState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for CampaignState {
    type Error = String;
    fn try_from(raw: String) -> Result<CampaignState, String> {
        CampaignState::parse(&raw).ok_or_else(|| format!("unknown campaign state {raw}"))
    }
}

/// The state an action leads to, or why it is not allowed from `state`.
pub fn transition(state: CampaignState, action: Action) -> Result<CampaignState, String> {
    use CampaignState::*;
    match (state, action) {
        (Draft, Action::Launch) => Ok(Running),
        (Scheduled | Running, Action::Pause) => Ok(Paused),
        (Paused, Action::Resume) => Ok(Running),
        (Draft | Scheduled | Running | Paused, Action::Cancel) => Ok(Cancelled),
        (_, Action::Launch) => Err(format!("a {state} campaign cannot be launched again")),
        (_, Action::Pause) => Err(format!("a {state} campaign cannot be paused")),
        (_, Action::Resume) => Err(format!("a {state} campaign cannot be resumed")),
        (_, Action::Cancel) => Err(format!("a {state} campaign cannot be cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaigns_launch_once_and_move_only_forward() {
        use CampaignState::*;
        assert_eq!(transition(Draft, Action::Launch), Ok(Running));
        assert!(transition(Running, Action::Launch).is_err());
        assert!(transition(Completed, Action::Launch).is_err());
        assert_eq!(transition(Running, Action::Pause), Ok(Paused));
        assert_eq!(transition(Paused, Action::Resume), Ok(Running));
        assert!(transition(Running, Action::Resume).is_err());
        assert_eq!(transition(Paused, Action::Cancel), Ok(Cancelled));
        assert!(transition(Cancelled, Action::Cancel).is_err());
    }

    #[test]
    fn campaign_states_read_back_from_their_codes() {
        for state in CampaignState::ALL {
            assert_eq!(CampaignState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        assert_eq!(CampaignState::try_from("done".to_string()).ok(), None);
    }
}
