//! Persistence: the table's definition and key layout, and the DynamoDB
//! adapters.

pub mod dynamo;
pub mod keys;
pub mod table;
