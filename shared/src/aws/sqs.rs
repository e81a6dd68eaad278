//! SQS: task-events' on-failure destination, which the reconciliation drains.

use crate::error::StoreError;
use crate::registration::reconcile::{FailedInvocation, FailedInvocations};

#[derive(Debug, Clone)]
pub struct SqsFailedInvocations {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsFailedInvocations {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        Self { client, queue_url: queue_url.into() }
    }
}

impl FailedInvocations for SqsFailedInvocations {
    async fn receive(&self) -> Result<Vec<FailedInvocation>, StoreError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            // A pass deletes what it read within seconds; a crashed one's
            // messages come back for the next pass.
            .visibility_timeout(120)
            .send()
            .await
            .map_err(|e| super::sdk_error("ReceiveMessage", &self.queue_url, e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(FailedInvocation::from_record(m.receipt_handle()?.to_owned(), m.body().unwrap_or_default()))
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), StoreError> {
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::new(crate::error::StoreErrorKind::Rejected, e.to_string()))?;
        if entries.is_empty() {
            return Ok(());
        }
        self.client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| super::sdk_error("DeleteMessageBatch", &self.queue_url, e))?;
        Ok(())
    }
}
