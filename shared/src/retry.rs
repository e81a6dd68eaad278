//! How loopmesh retries a call that may succeed later: one module for the
//! policies, backon for the loops. Each policy is bounded in attempts, so a
//! caller always gets an answer; jitter spreads concurrent retriers (many
//! Lambda instances, many sidecars) so they do not come back in step.
//!
//! The SDK's own standard retry mode (see [`crate::aws::sdk_config`]) covers
//! throttling and transient failures of single calls. These policies cover
//! what the SDK cannot see: Route53 calls that must each pass loopmesh's rate
//! limiter, DynamoDB transactions cancelled by a concurrent writer, and items
//! a batch left unprocessed.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Route53 said Throttling or PriorRequestNotComplete. Beyond the limiter's
/// spacing: 100 ms doubling to 3.2 s, at most 9 retries (about 20 s), so a
/// busy zone delays a run without failing it.
pub fn route53_busy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(3_200))
        .with_max_times(9)
        .with_jitter()
}

/// A DynamoDB transaction cancelled by a concurrent one, or items a batch
/// call left unprocessed: short waits (10 ms doubling to 1 s), 7 retries.
/// Contention clears in milliseconds; a longer wait only delays the caller.
pub fn dynamo_contention() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(7)
        .with_jitter()
}

/// An HTTP answer that did not arrive (the custom resource's response to
/// CloudFormation): 500 ms doubling, 3 retries, well inside a Lambda timeout.
pub fn http_answer() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(4))
        .with_max_times(3)
        .with_jitter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn every_policy_is_bounded_in_attempts_and_total_wait() {
        for (policy, max_total) in [
            (route53_busy(), Duration::from_secs(40)),
            (dynamo_contention(), Duration::from_secs(5)),
            (http_answer(), Duration::from_secs(20)),
        ] {
            let waits: Vec<Duration> = policy.build().collect();
            assert!(!waits.is_empty() && waits.len() <= 9, "{} retries", waits.len());
            let total: Duration = waits.iter().sum();
            assert!(total <= max_total, "{total:?} of waiting");
        }
    }
}
