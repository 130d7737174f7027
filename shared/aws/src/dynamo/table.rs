//! The table definition: keys, the two sparse global secondary indexes (unsent journal entries,
//! active runs) and on-demand billing. The deployment declares the same table in
//! `template.yaml`; this function creates it for tests and for development against an emulator.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType,
};

use super::keys;
use crate::error::AwsError;

/// Create the store's table (on-demand) and wait until it is active.
pub async fn create_table(client: &Client, table: &str) -> Result<(), AwsError> {
    let build = |what, e| AwsError::build(what, e);
    let attr = |name: &str, ty| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(ty).build().map_err(|e| build("table", e))
    };
    let key = |name: &str, ty| {
        KeySchemaElement::builder().attribute_name(name).key_type(ty).build().map_err(|e| build("table", e))
    };
    let unsent = GlobalSecondaryIndex::builder()
        .index_name(keys::UNSENT_INDEX)
        .key_schema(key(keys::UNSENT, KeyType::Hash)?)
        .key_schema(key(keys::SK, KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| build("unsent index", e))?;
    let active = GlobalSecondaryIndex::builder()
        .index_name(keys::ACTIVE_INDEX)
        .key_schema(key(keys::ACTIVE_SHARD, KeyType::Hash)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| build("active index", e))?;
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr(keys::PK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(keys::SK, ScalarAttributeType::S)?)
        .attribute_definitions(attr(keys::UNSENT, ScalarAttributeType::S)?)
        .attribute_definitions(attr(keys::ACTIVE_SHARD, ScalarAttributeType::S)?)
        .key_schema(key(keys::PK, KeyType::Hash)?)
        .key_schema(key(keys::SK, KeyType::Range)?)
        .global_secondary_indexes(unsent)
        .global_secondary_indexes(active)
        .send()
        .await
        .map_err(|e| AwsError::dynamo("CreateTable", e))?;
    wait_until_active(client, table).await
}
async fn wait_until_active(client: &Client, table: &str) -> Result<(), AwsError> {
    for _ in 0..600 {
        let out = client.describe_table().table_name(table).send().await;
        let out = out.map_err(|e| AwsError::dynamo("DescribeTable", e))?;
        let status = out.table().and_then(|t| t.table_status());
        if status.is_some_and(|s| s.as_str() == "ACTIVE") {
            return Ok(());
        }
        // Why a sleep: table creation is asynchronous on DynamoDB and there is nothing to await.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(AwsError::Corrupt { key: table.to_owned(), problem: "table did not become active within 60 s" })
}
