//! A projection (`hostile-projection`) over the `hostile` aggregate's streams
//! whose queries can answer more than the host accepts, for the sandbox tests.
//!
//! | query                  | answers                                  |
//! |------------------------|------------------------------------------|
//! | `pongs`                | behaves: how many `Ponged` it folded     |
//! | `answer?bytes=N`       | a JSON string of `N` bytes               |

use foldhost_guest::{EventMeta, Projection, Subscription, export_projection};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostileProjection {
    pub pongs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub enum HostileEvent {
    Ponged,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct AnswerArgs {
    bytes: usize,
}

impl Projection for HostileProjection {
    const NAME: &'static str = "hostile-projection";
    const VERSION: &'static str = "1.0.0";
    type Event = HostileEvent;

    fn subscription() -> Subscription {
        Subscription::categories(["hostile"])
    }

    fn apply(&mut self, event: HostileEvent, _meta: &EventMeta<'_>) {
        if event == HostileEvent::Ponged {
            self.pongs += 1;
        }
    }

    fn query(&self, name: &str, args: Value) -> Result<Value, String> {
        match name {
            "pongs" => Ok(Value::from(self.pongs)),
            "answer" => {
                let AnswerArgs { bytes } =
                    serde_json::from_value(args).map_err(|e| format!("bad arguments: {e}"))?;
                Ok(Value::String("x".repeat(bytes)))
            }
            _ => Err(format!("unknown query `{name}`; try `pongs` or `answer`")),
        }
    }
}

export_projection!(HostileProjection);

#[cfg(test)]
mod tests {
    use foldhost_guest::Projection;
    use serde_json::json;

    use super::HostileProjection;

    #[test]
    fn answers_as_large_as_asked() {
        let projection = HostileProjection::default();
        let answer = projection.query("answer", json!({"bytes": 5})).unwrap();
        assert_eq!(answer, json!("xxxxx"));
        assert_eq!(projection.query("pongs", json!(null)).unwrap(), json!(0));
    }
}
