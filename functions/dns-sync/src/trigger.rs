//! What started an invocation, read from its payload.

use loopmesh_shared::dns::sync::Trigger;
use loopmesh_shared::excerpt::quoted;

/// What started an invocation, from its payload: a DynamoDB stream batch (the
/// desired state changed), an EventBridge "Scheduled Event", or an
/// EventBridge Scheduler input `{"trigger": "schedule"}` / `{"trigger": "changed"}`.
pub fn trigger_of(payload: &serde_json::Value) -> Result<Trigger, String> {
    if let Some(records) = payload.get("Records").and_then(|r| r.as_array()) {
        return match records.first().and_then(|r| r.get("eventSource")).and_then(|s| s.as_str()) {
            Some("aws:dynamodb") | None => Ok(Trigger::Changed),
            Some(other) => Err(format!("Records[0].eventSource: {} is not aws:dynamodb", quoted(other))),
        };
    }
    if let Some(kind) = payload.get("detail-type").and_then(|d| d.as_str()) {
        return match kind {
            "Scheduled Event" => Ok(Trigger::Schedule),
            other => Err(format!("detail-type: {} is not \"Scheduled Event\"", quoted(other))),
        };
    }
    match payload.get("trigger").and_then(|t| t.as_str()) {
        Some("schedule") => Ok(Trigger::Schedule),
        Some("changed") => Ok(Trigger::Changed),
        Some(other) => Err(format!("trigger: {} is not \"schedule\" or \"changed\"", quoted(other))),
        None => Err("expected a DynamoDB stream batch (Records), an EventBridge Scheduled Event (detail-type), or {\"trigger\": \"schedule\"}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_from_payloads() {
        let stream = serde_json::json!({"Records": [{"eventSource": "aws:dynamodb", "eventName": "MODIFY"}]});
        assert_eq!(trigger_of(&stream), Ok(Trigger::Changed));
        let scheduled = serde_json::json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        assert_eq!(trigger_of(&scheduled), Ok(Trigger::Schedule));
        assert_eq!(trigger_of(&serde_json::json!({"trigger": "schedule"})), Ok(Trigger::Schedule));
        assert!(trigger_of(&serde_json::json!({"hello": 1})).unwrap_err().contains("Scheduled Event"));
        assert!(
            trigger_of(&serde_json::json!({"Records": [{"eventSource": "aws:sqs"}]}))
                .unwrap_err()
                .starts_with("Records[0].eventSource")
        );
    }
}
