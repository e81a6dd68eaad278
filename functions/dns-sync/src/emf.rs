//! A run as CloudWatch Embedded Metric Format: one JSON line that is both a
//! log entry and a set of metrics.

use loopmesh_shared::dns::sync::Report;

pub fn emf(report: &Report, timestamp_ms: u64) -> serde_json::Value {
    let metrics = [
        ("Planned", report.planned),
        ("Applied", report.applied),
        ("Conflicts", report.conflicts),
        ("Failed", report.failed),
        ("Collected", report.collected),
        ("Repaired", report.repaired),
        ("Adopted", report.adopted),
        ("ZonesFailed", report.zones_failed),
        ("Route53Calls", report.calls),
        ("Throttles", report.throttles),
    ];
    let mut doc = serde_json::json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": "loopmesh",
                "Dimensions": [["Function"]],
                "Metrics": metrics.iter().map(|(n, _)| serde_json::json!({"Name": n, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        },
        "Function": "dns-sync",
    });
    for (name, value) in metrics {
        doc[name] = value.into();
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_has_every_count() {
        let r = Report { planned: 3, applied: 2, calls: 4, ..Report::default() };
        let doc = emf(&r, 1);
        assert_eq!(doc["Applied"], 2);
        assert_eq!(doc["Route53Calls"], 4);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap().len(), 10);
    }
}
